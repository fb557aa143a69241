"""Kronos tokenizer (docs/MODEL.md, 'Tokenizer'): normalized OHLCVA rows <-> hierarchical (s1, s2) ids.

Binary spherical quantization: each row becomes s1_bits + s2_bits signs; the first half
is the coarse id s1, the second the fine id s2, little-endian within each half.
"""
from __future__ import annotations

import torch
from torch import nn

from .checkpoint import PretrainedMixin
from .modules import TransformerBlock


class _BSQBuffers(nn.Module):
    """Holds the quantizer's powers-of-two buffers under the checkpoint's key names."""

    def __init__(self, codebook_dim: int, group_size: int):
        super().__init__()
        self.register_buffer("basis", 2 ** torch.arange(codebook_dim, dtype=torch.long))
        self.register_buffer("group_basis", 2 ** torch.arange(group_size, dtype=torch.long))


class _Quantizer(nn.Module):
    def __init__(self, codebook_dim: int, group_size: int):
        super().__init__()
        self.bsq = _BSQBuffers(codebook_dim, group_size)


class KronosTokenizer(PretrainedMixin, nn.Module):
    def __init__(self, d_in: int, d_model: int, n_heads: int, ff_dim: int, n_enc_layers: int,
                 n_dec_layers: int, s1_bits: int, s2_bits: int, group_size: int = 4,
                 beta: float = 0.05, gamma0: float = 1.0, gamma: float = 1.1, zeta: float = 0.05,
                 ffn_dropout_p: float = 0.0, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.config = dict(d_in=d_in, d_model=d_model, n_heads=n_heads, ff_dim=ff_dim,
                           n_enc_layers=n_enc_layers, n_dec_layers=n_dec_layers, s1_bits=s1_bits,
                           s2_bits=s2_bits, group_size=group_size, beta=beta, gamma0=gamma0,
                           gamma=gamma, zeta=zeta, ffn_dropout_p=ffn_dropout_p,
                           attn_dropout_p=attn_dropout_p, resid_dropout_p=resid_dropout_p)
        self.d_in, self.s1_bits, self.s2_bits = d_in, s1_bits, s2_bits
        self.codebook_dim = s1_bits + s2_bits
        self.embed = nn.Linear(d_in, d_model)
        # The reference builds one block fewer than the config says, on both sides.
        self.encoder = nn.ModuleList(TransformerBlock(d_model, n_heads, ff_dim) for _ in range(n_enc_layers - 1))
        self.decoder = nn.ModuleList(TransformerBlock(d_model, n_heads, ff_dim) for _ in range(n_dec_layers - 1))
        self.quant_embed = nn.Linear(d_model, self.codebook_dim)
        self.post_quant_embed_pre = nn.Linear(s1_bits, d_model)  # training only; kept for the layout
        self.post_quant_embed = nn.Linear(self.codebook_dim, d_model)
        self.head = nn.Linear(d_model, d_in)
        self.tokenizer = _Quantizer(self.codebook_dim, group_size)
        self.register_buffer("_bits1", 2 ** torch.arange(s1_bits, dtype=torch.long), persistent=False)
        self.register_buffer("_bits2", 2 ** torch.arange(s2_bits, dtype=torch.long), persistent=False)

    def _blocks(self, z: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        if len(blocks):
            rotary = blocks[0].self_attn.rotary
            cos, sin = rotary.full_pass(z.shape[1], z.device, z.dtype)
            for block in blocks:
                z = block(z, cos, sin)
        return z

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, T, d_in] normalized rows -> (s1, s2) ids, each [B, T] long. Causal in T."""
        z = self._blocks(self.embed(x), self.encoder)
        z = self.quant_embed(z)
        # L2 normalization does not change signs (scale > 0), so the ids follow from z > 0.
        positive = (z > 0).long()
        s1 = (positive[..., : self.s1_bits] * self._bits1).sum(-1)
        s2 = (positive[..., self.s1_bits:] * self._bits2).sum(-1)
        return s1, s2

    def ids_to_bits(self, s1: torch.Tensor, s2: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        bits = torch.cat([(s1.unsqueeze(-1) & self._bits1) != 0, (s2.unsqueeze(-1) & self._bits2) != 0], dim=-1)
        return (bits.to(dtype) * 2 - 1) * (1.0 / self.codebook_dim ** 0.5)

    @torch.no_grad()
    def decode(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """(s1, s2) ids [B, T] -> reconstructed normalized rows [B, T, d_in]. Causal in T."""
        z = self.post_quant_embed(self.ids_to_bits(s1, s2, self.head.weight.dtype))
        return self.head(self._blocks(z, self.decoder))

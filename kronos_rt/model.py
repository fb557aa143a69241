"""Kronos predictor: a decoder-only transformer over (s1, s2) token pairs
(docs/MODEL.md, 'Model'; what the weights depend on: 'Checkpoint quirks').

`forward_hidden` runs the transformer over a window, optionally filling a KV cache that
kronos_rt/decode.py continues one new token per row at a time; `s1_logits` / `s2_logits`
are the two heads. The s2 head needs only the last position's query against the window's hidden
states, so callers pass the dependency layer's keys/values, which they can cache too.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .checkpoint import PretrainedMixin
from .modules import Attention, KVCache, RMSNorm, TransformerBlock, sinusoid_table

TIME_TABLES = (("minute", 60), ("hour", 24), ("weekday", 7), ("day", 32), ("month", 13))
DEP_HEADS = 4  # the dependency layer always has 4 heads, whatever n_heads is


class _FixedEmbedding(nn.Module):
    """Sinusoid table stored as `<name>.emb.weight` (learn_te = false checkpoints)."""

    def __init__(self, n: int, d: int):
        super().__init__()
        self.emb = nn.Embedding(n, d)
        self.emb.weight.data.copy_(sinusoid_table(n, d))
        self.emb.weight.requires_grad_(False)

    def forward(self, idx):
        return self.emb(idx)


class TemporalEmbedding(nn.Module):
    def __init__(self, d_model: int, learn_te: bool):
        super().__init__()
        for name, size in TIME_TABLES:
            table = nn.Embedding(size, d_model) if learn_te else _FixedEmbedding(size, d_model)
            setattr(self, f"{name}_embed", table)

    def forward(self, stamp: torch.Tensor) -> torch.Tensor:
        """stamp: [..., 5] integer (minute, hour, weekday, day, month)."""
        s = stamp.long()
        # Summation order as in the reference (hour, weekday, day, month, minute).
        return (self.hour_embed(s[..., 1]) + self.weekday_embed(s[..., 2]) + self.day_embed(s[..., 3])
                + self.month_embed(s[..., 4]) + self.minute_embed(s[..., 0]))


class HierarchicalEmbedding(nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.scale = math.sqrt(d_model)
        self.emb_s1 = nn.Embedding(2 ** s1_bits, d_model)
        self.emb_s2 = nn.Embedding(2 ** s2_bits, d_model)
        self.fusion_proj = nn.Linear(2 * d_model, d_model)

    def forward(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        return self.fusion_proj(torch.cat([self.emb_s1(s1) * self.scale, self.emb_s2(s2) * self.scale], dim=-1))


class DependencyLayer(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.cross_attn = Attention(d_model, DEP_HEADS, cross=True)
        self.norm = RMSNorm(d_model)


class DualHead(nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.proj_s1 = nn.Linear(d_model, 2 ** s1_bits)
        self.proj_s2 = nn.Linear(d_model, 2 ** s2_bits)


class Kronos(PretrainedMixin, nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, n_layers: int, d_model: int, n_heads: int, ff_dim: int,
                 ffn_dropout_p: float = 0.0, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0,
                 token_dropout_p: float = 0.0, learn_te: bool = True):
        super().__init__()
        # Dropouts are training-only; kept in the config so save_pretrained round-trips.
        self.config = dict(s1_bits=s1_bits, s2_bits=s2_bits, n_layers=n_layers, d_model=d_model,
                           n_heads=n_heads, ff_dim=ff_dim, ffn_dropout_p=ffn_dropout_p,
                           attn_dropout_p=attn_dropout_p, resid_dropout_p=resid_dropout_p,
                           token_dropout_p=token_dropout_p, learn_te=learn_te)
        self.d_model, self.n_heads, self.n_layers = d_model, n_heads, n_layers
        self.embedding = HierarchicalEmbedding(s1_bits, s2_bits, d_model)
        self.time_emb = TemporalEmbedding(d_model, learn_te)
        self.transformer = nn.ModuleList(TransformerBlock(d_model, n_heads, ff_dim) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        self.dep_layer = DependencyLayer(d_model)
        self.head = DualHead(s1_bits, s2_bits, d_model)

    # -- transformer ---------------------------------------------------------------------
    @property
    def rotary(self):
        return self.transformer[0].self_attn.rotary

    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        return KVCache.empty(self.n_layers, batch, self.n_heads, max_len, self.d_model // self.n_heads, device, dtype)

    def rope_table(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [n, head_dim] for positions 0..n-1 (Rotary.cos_sin)."""
        return self.rotary.cos_sin(torch.arange(n, device=device), self.norm.weight.dtype)

    def forward_hidden(self, s1: torch.Tensor, s2: torch.Tensor, stamp: torch.Tensor,
                       cache: KVCache | None = None) -> torch.Tensor:
        """Final-normed hidden states h [B, T, d] of a full pass over positions 0..T-1,
        filling the first T positions of `cache` if given (kronos_rt/decode.py continues)."""
        x = self.embedding(s1, s2) + self.time_emb(stamp)
        cos, sin = self.rotary.full_pass(x.shape[1], x.device, x.dtype)
        for i, block in enumerate(self.transformer):
            x = block(x, cos, sin, None if cache is None else (cache.k[i], cache.v[i]))
        return self.norm(x)

    # -- heads ---------------------------------------------------------------------------
    def s1_logits(self, h_last: torch.Tensor) -> torch.Tensor:
        return self.head.proj_s1(h_last)

    def dep_kv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dependency-layer keys/values of hidden states h [B, T, d] -> [B, 4, T, d/4] each.

        The reference applies RoPE with the angles of a length-1 query, i.e. position 0
        everywhere: the identity, so keys need no rotation and can be cached.
        """
        attn = self.dep_layer.cross_attn
        k, v = attn.project_kv(h)
        return attn._heads(k), attn._heads(v)

    def s2_logits(self, s1_ids: torch.Tensor, h: torch.Tensor, dep_k: torch.Tensor, dep_v: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """s1_ids [B] and h [B, d] of one position per row (or [B, P] and [B, P, d] of P
        positions), dep_k/v [B, 4, T, d/4] -> s2 logits [B, V2] (or [B, P, V2])."""
        one = s1_ids.dim() == 1
        if one:
            s1_ids, h = s1_ids[:, None], h[:, None]
        attn = self.dep_layer.cross_attn
        q = attn._heads(attn.q_proj(self.embedding.emb_s1(s1_ids)))
        a = attn.attend(q, dep_k, dep_v, mask)
        logits = self.head.proj_s2(self.dep_layer.norm(h + a))
        return logits[:, 0] if one else logits

"""Building blocks shared by the Kronos tokenizer and predictor (docs/MODEL.md, 'Building blocks').

Parameter and buffer names match the public checkpoints exactly, so a state_dict from
the Hub loads unchanged. Attention runs a full causal pass and can fill a preallocated
key/value cache (`KVCache`) on the way, for the decode step in kronos_rt/decode.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one operator, the same numbers as below (tests/kronos_rt/test_model.py)
        return torch.rms_norm(x, weight.shape, weight, eps)
    # Normalise in float32 (fp16 squares overflow), cast back before the weight multiply.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf.type_as(x) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)
        self.w13 = None  # w1 and w3 as one product, set by kronos_rt.packing.prepare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x) if self.w13 is not None else (self.w1(x), self.w3(x))
        return self.w2(F.silu(a) * b)


class Rotary(nn.Module):
    """RoPE tables; `inv_freq` is a buffer in the public checkpoints (derivable, so accepted)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("inv_freq", self._inv_freq(torch.device("cpu")))

    def _inv_freq(self, device) -> torch.Tensor:
        return 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim))

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: any integer shape S -> the tables `apply_rope` takes, each S + (head_dim,):
        cos, and sin with its first half negated.

        Angles in float32 from a fresh inv_freq: the buffer is cast with the module under
        .half(), and fp16 angles would drift from the reference's."""
        freqs = positions.float()[..., None] * self._inv_freq(positions.device)
        sin = freqs.sin()
        return torch.cat((freqs, freqs), dim=-1).cos().to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)

    def full_pass(self, n: int, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables of positions 0..n-1 as `Attention.forward` takes them: [n, 1, 1, head_dim]."""
        return tuple(t[:, None, None] for t in self.cos_sin(torch.arange(n, device=device), dtype))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_rot: torch.Tensor) -> torch.Tensor:
    """The reference's x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1), as
    x * cos + cat(x2, x1) * cat(-sin, sin): the same products and sums element by element
    (so the same bits), in four operators instead of seven."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin_rot


class KVCache:
    """Keys/values for every layer: `k[i]`, `v[i]` of layer i, each [rows, H, T_max, head_dim].

    The tensors are given (e.g. views of a buffer kept between calls, as the engine's
    workspace) or allocated by `KVCache.empty`. Positions are written before they are read:
    a full pass fills the prefix, each decode step (kronos_rt/decode.py) its own position.
    Unwritten positions hold arbitrary memory (zeroing every cache cost a pass over it per
    call); callers whose masked reads can reach them `clear_from` that position first.
    """

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor]):
        self.k, self.v = list(k), list(v)

    @classmethod
    def empty(cls, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int,
              device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (batch, n_heads, max_len, head_dim)
        return cls([torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)],
                   [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)])

    def rows(self, a: int, b: int) -> KVCache:
        """Rows a..b-1 of every layer (views)."""
        return KVCache([t[a:b] for t in self.k], [t[a:b] for t in self.v])

    def clear_from(self, pos: int) -> None:
        for t in self.k + self.v:
            t[:, :, pos:].zero_()


def fill_rows(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[:, :, :T] = src for src [B, n, T, ...] and dst [B * r, n, T_max, ...]: row b of src
    fills rows b*r .. b*r + r - 1 (a series' r sample paths share its prefix)."""
    dst[:, :, :src.shape[2]].unflatten(0, (src.shape[0], -1)).copy_(src[:, None])


class Attention(nn.Module):
    """Multi-head attention with RoPE; q/k/v/out projections with bias.

    `cross`: used only through `project_kv` and `attend` (the predictor's dependency layer),
    never `forward`; it tells `prepare` which projections to fuse.
    """

    def __init__(self, d_model: int, n_heads: int, cross: bool = False):
        super().__init__()
        self.cross = cross
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = Rotary(self.head_dim)
        # q/k/v (self-attention) or k/v (cross) as one product, set by kronos_rt.packing.prepare.
        self.qkv = self.kv = None

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """q, k and v side by side: [..., 3 * d_model]."""
        if self.qkv is not None:
            return self.qkv.product(x)
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)

    def project_kv(self, x: torch.Tensor):
        return self.kv(x) if self.kv is not None else (self.k_proj(x), self.v_proj(x))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None, keep: int | None = None) -> torch.Tensor:
        """Causal self-attention over positions 0..T-1, filling the first T positions of
        `cache` if given (the decode step that continues from there: kronos_rt/decode.py).
        cos/sin (Rotary.cos_sin) broadcast against [B, T, 2, H, head_dim]: queries and keys
        are rotated together. `keep`: the output of the last `keep` positions only
        ([B, keep, d]); the attention itself is the same call, so those rows are the same bits."""
        B, T, _ = x.shape
        qkv = self.project_qkv(x).view(B, T, 3, self.n_heads, self.head_dim)
        qk = apply_rope(qkv[:, :, :2], cos, sin)
        q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        if cache is not None:  # (its rows may repeat each of ours: see fill_rows)
            fill_rows(cache[0], k)
            fill_rows(cache[1], v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self._merge(y if keep is None else y[:, :, T - keep:])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unmasked attention of given (already projected, head-split) q over k/v, no RoPE."""
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ff_dim: int):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = Attention(d_model, n_heads)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim)

    def forward(self, x, cos, sin, cache=None, keep: int | None = None):
        """`keep`: only the last `keep` positions' outputs (every position's keys and values
        are still computed): what a caller that needs the last rows only pays for."""
        a = self.self_attn(self.norm1(x), cos, sin, cache, keep)
        x = x + a if keep is None else x[:, x.shape[1] - keep:] + a
        return x + self.ffn(self.norm2(x))


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    """Fixed time-embedding table (learn_te=false): col 2k sin, col 2k+1 cos."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table

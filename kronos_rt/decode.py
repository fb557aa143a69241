"""The decode step: one new token per row through the whole predictor, written flat.

A decode step computes little (a few rows per product) and so costs mostly what each
operator costs to call: module calls, views of [rows, 1, d] tensors, the prepared
products' per-call checks. `DecodePlan` runs the operations of `Kronos.forward_hidden`,
`dep_kv`, `s1_logits` and `s2_logits` for one token per row, in the order the full pass
does, but over [rows, d] tensors with the products bound once per call: about a fifth
less time per step for Kronos-mini (BENCHMARKS.md). Its products equal the full pass's bit
for bit; attention over one query rounds slightly differently from the same row of a
causal pass (~1e-7). tests/kronos_rt/test_decode.py checks one step against the full pass,
tests/kronos_rt/test_engine.py whole forecasts against full recompute (identical).

A plan is made per engine call, after the caller prepared the model
(kronos_rt/packing.py): it binds the weights as they are then.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import DEP_HEADS, Kronos
from .modules import KVCache, apply_rope, rms_norm
from .packing import bound_product


class DecodePlan:
    def __init__(self, model: Kronos):
        self.d = model.d_model
        self.layers = []
        for block in model.transformer:
            attn, ffn = block.self_attn, block.ffn
            if attn.qkv is None or ffn.w13 is None:
                raise ValueError("prepare the model first (kronos_rt.packing.prepare)")
            # (a tuple unpacked per layer and step: attribute lookups are part of the cost)
            self.layers.append((block.norm1.weight, block.norm1.eps, bound_product(attn.qkv),
                                bound_product(attn.out_proj), block.norm2.weight, block.norm2.eps,
                                bound_product(ffn.w13), ffn.w1.out_features, bound_product(ffn.w2),
                                attn.n_heads, attn.head_dim))
        emb = model.embedding
        self.emb_s1, self.emb_s2, self.scale = emb.emb_s1.weight, emb.emb_s2.weight, emb.scale
        self.fusion = bound_product(emb.fusion_proj)
        self.norm = (model.norm.weight, model.norm.eps)
        dep = model.dep_layer.cross_attn
        self.dep_kv, self.dep_q, self.dep_out = (bound_product(p) for p in (dep.kv, dep.q_proj, dep.out_proj))
        self.dep_norm = (model.dep_layer.norm.weight, model.dep_layer.norm.eps)
        self.s1_head, self.s2_head = bound_product(model.head.proj_s1), bound_product(model.head.proj_s2)

    def hidden(self, s1: torch.Tensor, s2: torch.Tensor, time_emb: torch.Tensor, cache: KVCache, at,
               read: int, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Final-normed hidden states [R, d] of one new token per row, written into `cache`.

        s1, s2: ids [R]; time_emb [R, d]; `at`: the new tokens' position, an int when all
        rows share it, else (rows, pos) index tensors; the attention reads positions
        0..read-1, `mask` [R, 1, 1, read] hiding each row's later ones (None when shared);
        cos, sin: the RoPE tables of the new positions ([head_dim], or [R, 1, 1, head_dim]).
        """
        R, d = s1.shape[0], self.d
        x = self.fusion(torch.cat([F.embedding(s1, self.emb_s1) * self.scale,
                                   F.embedding(s2, self.emb_s2) * self.scale], dim=-1)) + time_emb
        for layer, kc, vc in zip(self.layers, cache.k, cache.v):
            n1, eps1, qkv_fn, out_fn, n2, eps2, w13_fn, ff, w2_fn, H, hd = layer
            qkv = qkv_fn(rms_norm(x, n1, eps1)).view(R, 3, H, hd)
            qk = apply_rope(qkv[:, :2], cos, sin)
            _write(kc, at, qk[:, 1])
            _write(vc, at, qkv[:, 2])
            y = F.scaled_dot_product_attention(qk[:, 0, :, None], kc.narrow(2, 0, read), vc.narrow(2, 0, read),
                                               attn_mask=mask)
            x = x + out_fn(y.reshape(R, d))
            ab = w13_fn(rms_norm(x, n2, eps2))
            x = x + w2_fn(F.silu(ab[:, :ff]) * ab[:, ff:])
        return rms_norm(x, *self.norm)

    def write_dep(self, h: torch.Tensor, dep_k: torch.Tensor, dep_v: torch.Tensor, at) -> None:
        """The dependency layer's key/value of the new tokens into dep_k/dep_v [R, 4, T, d/4]."""
        kv = self.dep_kv(h).view(h.shape[0], 2, DEP_HEADS, self.d // DEP_HEADS)
        _write(dep_k, at, kv[:, 0])
        _write(dep_v, at, kv[:, 1])

    def s1_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.s1_head(h)

    def s2_logits(self, s1_ids: torch.Tensor, h: torch.Tensor, dep_k: torch.Tensor, dep_v: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """As Kronos.s2_logits for one position per row: ids [R], h [R, d], keys/values in use."""
        R, d = h.shape
        q = self.dep_q(F.embedding(s1_ids, self.emb_s1)).view(R, DEP_HEADS, 1, d // DEP_HEADS)
        y = F.scaled_dot_product_attention(q, dep_k, dep_v, attn_mask=mask)
        return self.s2_head(rms_norm(h + self.dep_out(y.reshape(R, d)), *self.dep_norm))


def _write(cache: torch.Tensor, at, value: torch.Tensor) -> None:
    """cache [R, n, T, e] at position `at` (an int: a slice; (rows, pos): a scatter) = value [R, n, e]."""
    if isinstance(at, int):
        cache[:, :, at] = value
    else:
        cache[at[0], :, at[1]] = value

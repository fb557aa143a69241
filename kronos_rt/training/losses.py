"""The reference's training losses (docs/MODEL.md, "Training"), on our plain modules.

The inference modules (kronos_rt/modules.py, model.py, tokenizer.py) carry no dropout and
no training-only paths; the forwards here reuse their parameters and add what training
needs: dropout where the reference has it (token dropout after the embeddings, attention
dropout inside attention, residual dropout after out_proj, ffn dropout after w2), the
tokenizer's straight-through quantizer and its coarse reconstruction, and the
dependency layer's full-length causal pass. Dropout is active when the module is in
training mode (`module.train()`), with the rates of its config.

Both losses return (total, parts): parts are detached scalars, for logging.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..modules import TransformerBlock, apply_rope


def _rope(rotary, T: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [T, head_dim] for positions 0..T-1, broadcasting over [B, H, T, hd]."""
    return rotary.cos_sin(torch.arange(T, device=like.device), like.dtype)


def block_forward(block: TransformerBlock, x: torch.Tensor, cos, sin, attn_p: float, resid_p: float,
                  ffn_p: float, training: bool) -> torch.Tensor:
    """TransformerBlock.forward with the reference's dropouts, through the unfused projections
    (the engine's fused copies are inference-only and may be stale while training)."""
    attn = block.self_attn
    h = block.norm1(x)
    q, k, v = (attn._heads(p(h)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=attn_p if training else 0.0)
    x = x + F.dropout(attn._merge(y), resid_p, training)  # _merge applies out_proj
    ffn, h = block.ffn, block.norm2(x)
    return x + F.dropout(ffn.w2(F.silu(ffn.w1(h)) * ffn.w3(h)), ffn_p, training)


def _blocks(blocks, x: torch.Tensor, config: dict, training: bool) -> torch.Tensor:
    if len(blocks):
        cos, sin = _rope(blocks[0].self_attn.rotary, x.shape[1], x)
        for block in blocks:
            x = block_forward(block, x, cos, sin, config.get("attn_dropout_p", 0.0),
                              config.get("resid_dropout_p", 0.0), config.get("ffn_dropout_p", 0.0), training)
    return x


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -p * torch.log(p + 1e-8) - (1 - p) * torch.log(1 - p + 1e-8)


def tokenizer_forward(tokenizer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference tokenizer's training forward: z (L2-normalized), zq (straight-through,
    scaled by 1/sqrt(K)), and the coarse and full reconstructions."""
    training = tokenizer.training
    cfg = tokenizer.config
    z = tokenizer.quant_embed(_blocks(tokenizer.encoder, tokenizer.embed(x), cfg, training))
    z = F.normalize(z, dim=-1)
    K = tokenizer.codebook_dim
    sign = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
    zq = (z + (sign - z).detach()) / math.sqrt(K)  # straight-through: forward sign, backward identity
    coarse = tokenizer.post_quant_embed_pre(zq[..., : tokenizer.s1_bits])
    full = tokenizer.post_quant_embed(zq)
    # The same decoder blocks and head for both reconstructions.
    x_coarse = tokenizer.head(_blocks(tokenizer.decoder, coarse, cfg, training))
    x_full = tokenizer.head(_blocks(tokenizer.decoder, full, cfg, training))
    return {"z": z, "zq": zq, "x_coarse": x_coarse, "x_full": x_full}


def bsq_loss(z: torch.Tensor, zq: torch.Tensor, beta: float, gamma0: float, gamma: float,
             zeta: float) -> dict[str, torch.Tensor]:
    """Quantizer loss of z (normalized, [..., K]) and its scaled quantization zq."""
    K = z.shape[-1]
    commit = beta * ((zq.detach() - z) ** 2).sum(-1).mean()
    p = torch.sigmoid(-4.0 * z / math.sqrt(K))
    h_sample = _binary_entropy(p).sum(-1).mean()
    h_code = _binary_entropy(p.reshape(-1, K).mean(0)).sum()
    total = commit + zeta * (gamma0 * h_sample - gamma * h_code)
    return {"bsq": total, "commit": commit, "entropy_sample": h_sample, "entropy_code": h_code}


def tokenizer_loss(tokenizer, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x: normalized windows [B, T, 6] -> (loss, parts).

    loss = (mse(x_coarse, x) + mse(x_full, x) + bsq) / 2; parts: recon_coarse, recon_full
    (the validation metric), bsq, commit, entropy_sample, entropy_code."""
    if x.dim() != 3 or x.shape[-1] != tokenizer.d_in:
        raise ValueError(f"x must be [B, T, {tokenizer.d_in}], got {tuple(x.shape)}")
    out = tokenizer_forward(tokenizer, x)
    cfg = tokenizer.config
    q = bsq_loss(out["z"], out["zq"], cfg["beta"], cfg["gamma0"], cfg["gamma"], cfg["zeta"])
    recon_coarse = F.mse_loss(out["x_coarse"], x)
    recon_full = F.mse_loss(out["x_full"], x)
    total = (recon_coarse + recon_full + q["bsq"]) / 2
    parts = {"recon_coarse": recon_coarse, "recon_full": recon_full, **q}
    return total, {k: v.detach() for k, v in parts.items()}


def predictor_hidden(model, s1_in, s2_in, stamp_in) -> torch.Tensor:
    """Final-normed hidden states h [B, T, d] with the reference's training dropouts."""
    cfg = model.config
    x = model.embedding(s1_in, s2_in) + model.time_emb(stamp_in)
    x = F.dropout(x, cfg.get("token_dropout_p", 0.0), model.training)
    return model.norm(_blocks(model.transformer, x, cfg, model.training))


def dependency_s2_logits(model, h: torch.Tensor, s1_query: torch.Tensor) -> torch.Tensor:
    """s2 logits at every position: the dependency layer queried with s1_query ids [B, T],
    a causal pass with RoPE positions 0..T-1 for queries and keys (as the reference trains
    it; at inference RoPE is the identity there)."""
    attn = model.dep_layer.cross_attn
    q = attn._heads(attn.q_proj(model.embedding.emb_s1(s1_query)))
    k, v = attn._heads(attn.k_proj(h)), attn._heads(attn.v_proj(h))
    cos, sin = _rope(attn.rotary, h.shape[1], h)
    a = F.scaled_dot_product_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, is_causal=True)
    return model.head.proj_s2(model.dep_layer.norm(h + attn._merge(a)))


def predictor_loss(model, tokenizer, x: torch.Tensor, x_stamp: torch.Tensor, teacher_forcing: bool = True,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x: normalized windows [B, T, 6]; x_stamp: their time features [B, T, 5] -> (loss, parts).

    The frozen tokenizer encodes x to ids; inputs are positions 0..T-2 (with their time
    features), targets 1..T-1. loss = (CE(s1) + CE(s2)) / 2 over all positions; parts:
    s1_ce, s2_ce. The dependency layer's query is the target s1 id (teacher forcing) or an
    id drawn from softmax(s1 logits)."""
    if x.dim() != 3 or x.shape[1] < 2 or x_stamp.shape[:2] != x.shape[:2]:
        raise ValueError(f"x [B, T>=2, 6] and x_stamp [B, T, 5] must match, got {tuple(x.shape)} "
                         f"and {tuple(x_stamp.shape)}")
    with torch.no_grad():
        s1, s2 = tokenizer.encode(x.to(tokenizer.head.weight.dtype))
    s1_tgt, s2_tgt = s1[:, 1:], s2[:, 1:]
    h = predictor_hidden(model, s1[:, :-1], s2[:, :-1], x_stamp[:, :-1])
    s1_logits = model.head.proj_s1(h)
    if teacher_forcing:
        query = s1_tgt
    else:  # drawn from the model's own s1 distribution, no gradient through the draw
        probs = F.softmax(s1_logits.detach().float(), dim=-1)
        query = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(s1_tgt.shape)
    s2_logits = dependency_s2_logits(model, h, query)
    V1, V2 = s1_logits.shape[-1], s2_logits.shape[-1]
    s1_ce = F.cross_entropy(s1_logits.reshape(-1, V1).float(), s1_tgt.reshape(-1))
    s2_ce = F.cross_entropy(s2_logits.reshape(-1, V2).float(), s2_tgt.reshape(-1))
    total = (s1_ce + s2_ce) / 2
    return total, {"s1_ce": s1_ce.detach(), "s2_ce": s2_ce.detach()}

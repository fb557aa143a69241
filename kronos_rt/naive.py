"""Full-recompute forecasting, step for step as the reference code does it.

Every generated token re-runs the whole window through the model, the s1 and s2 heads
run over every position, and each sample path is encoded separately. Kept as the
baseline that `kronos-rt bench` measures the engine against, and as an independent
oracle in tests (sliding windows, sample paths).
"""
from __future__ import annotations

import numpy as np
import torch

from .engine import Engine
from .sampling import SamplingParams, sample


@torch.inference_mode()
def naive_forecast_arrays(engine: Engine, x: np.ndarray, x_stamp: np.ndarray, y_stamp: np.ndarray, pred_len: int,
                          sampling: SamplingParams = SamplingParams(), return_paths: bool = False):
    """Same contract as Engine.forecast_arrays, for equal-length windows x [B, L, 6]."""
    model, tokenizer, dev, C, S = engine.model, engine.tokenizer, engine.device, engine.max_context, sampling.sample_count
    x = torch.as_tensor(np.asarray(x, np.float32), device=dev).repeat_interleave(S, 0)
    stamp = torch.as_tensor(np.concatenate([x_stamp, y_stamp], axis=1), device=dev).repeat_interleave(S, 0)
    s1, s2 = tokenizer.encode(x.to(engine.tokenizer_dtype))
    generator = None
    if sampling.seed is not None and not sampling.greedy:
        generator = torch.Generator(device=dev).manual_seed(int(sampling.seed))
    L = x.shape[1]
    for k in range(pred_len):
        start, end = max(0, L + k - C), L + k
        h = model.forward_hidden(s1[:, start:end], s2[:, start:end], stamp[:, start:end])
        logits1 = model.head.proj_s1(h)[:, -1]  # the reference's head runs over every position
        new1 = sample(logits1, sampling, generator)
        dep_k, dep_v = model.dep_kv(h)
        attn = model.dep_layer.cross_attn
        q = attn._heads(attn.q_proj(model.embedding.emb_s1(new1))[:, None, :])
        a = attn.attend(q, dep_k, dep_v)
        logits2 = model.head.proj_s2(model.dep_layer.norm(h + a))[:, -1]
        new2 = sample(logits2, sampling, generator)
        s1 = torch.cat([s1, new1[:, None]], 1)
        s2 = torch.cat([s2, new2[:, None]], 1)
    start = max(0, L + pred_len - C)
    z = tokenizer.decode(s1[:, start:], s2[:, start:])[:, -pred_len:].float()
    paths = z.reshape(-1, S, pred_len, z.shape[-1]).cpu().numpy()
    return paths.mean(axis=1), (paths if return_paths else None)

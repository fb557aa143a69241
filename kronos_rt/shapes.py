"""The public Kronos checkpoint shapes (docs/MODEL.md, 'Layout'), and random-weight pairs built from them.

The configs are the constructor arguments exactly as the public `config.json` files hold
them, so `Kronos(**MODEL_SHAPES["small"])` has the same parameters (names and shapes) as
NeoQuasar/Kronos-small. Random pairs let the benchmarks and the model registry's
`init --shape` run without downloading weights; they forecast nothing meaningful.
"""
from __future__ import annotations

import torch

from .model import Kronos
from .tokenizer import KronosTokenizer

_TOKENIZER_BASE = dict(d_in=6, d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4,
                       s1_bits=10, s2_bits=10, group_size=4, beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05,
                       ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0)

TOKENIZER_SHAPES = {
    "base": dict(_TOKENIZER_BASE),  # NeoQuasar/Kronos-Tokenizer-base
    "2k": dict(_TOKENIZER_BASE, group_size=5),  # NeoQuasar/Kronos-Tokenizer-2k
}

_DROPOUTS = dict(ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, token_dropout_p=0.0)

MODEL_SHAPES = {
    # NeoQuasar/Kronos-mini: 4.1M parameters
    "mini": dict(s1_bits=10, s2_bits=10, n_layers=4, d_model=256, n_heads=4, ff_dim=512, learn_te=True, **_DROPOUTS),
    # NeoQuasar/Kronos-small: 24.7M parameters
    "small": dict(s1_bits=10, s2_bits=10, n_layers=8, d_model=512, n_heads=8, ff_dim=1024, learn_te=True, **_DROPOUTS),
    # NeoQuasar/Kronos-base: 102.3M parameters
    "base": dict(s1_bits=10, s2_bits=10, n_layers=12, d_model=832, n_heads=16, ff_dim=2048, learn_te=True, **_DROPOUTS),
}

# Published parameter counts of the models (predictor only, tokenizer not included).
PUBLISHED_PARAMS = {"mini": 4.1e6, "small": 24.7e6, "base": 102.3e6}

# shape name -> (model shape, tokenizer shape, max context), as the model cards pair them.
PAIRS = {
    "mini": ("mini", "2k", 2048),
    "small": ("small", "base", 512),
    "base": ("base", "base", 512),
}


def random_pair(shape: str, seed: int = 0) -> tuple[Kronos, KronosTokenizer, int]:
    """(model, tokenizer, max_context) of a public shape with seeded random weights.

    Weights are PyTorch's default initialization (Linear: Kaiming-uniform, Embedding:
    N(0, 1), RMSNorm: ones). That is enough for non-degenerate outputs: the final RMSNorm
    gives h unit scale, so each head's logits have a standard deviation of about
    1/sqrt(3) ~ 0.58 over 1024 ids: distinct values with a well-defined argmax, and the
    tokenizer's sign pattern varies with the input, so ids vary too. (Sampling with
    top_p from such logits is close to uniform; that changes no cost, only the meaning,
    which random weights do not have anyway.) The same seed gives the same weights on
    every machine; the global RNG state is left as it was.
    """
    if shape not in PAIRS:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(PAIRS)}")
    model_shape, tokenizer_shape, max_context = PAIRS[shape]
    # fork_rng(devices=[]) restores the CPU generator afterwards and leaves CUDA alone
    # (forking CUDA state would initialize CUDA on machines that have it).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Kronos(**MODEL_SHAPES[model_shape])
        tokenizer = KronosTokenizer(**TOKENIZER_SHAPES[tokenizer_shape])
    return model.eval(), tokenizer.eval(), max_context


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shape_param_count(shape: str) -> int:
    """Parameter count of a model shape, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return count_params(Kronos(**MODEL_SHAPES[shape]))

"""Checkpoints to a ready Engine: the one loader the registry's health check and the
streaming worker share."""
from __future__ import annotations

import os

from .engine import Engine
from .model import Kronos
from .tokenizer import KronosTokenizer


def load_engine(model_location: str | os.PathLike, tokenizer_location: str | os.PathLike, *, device=None,
                dtype=None, max_context: int = 512, revision: str | None = None,
                tokenizer_revision: str | None = None) -> Engine:
    """An Engine over a model and a tokenizer checkpoint.

    Each location is a checkpoint directory or a Hugging Face Hub id (with its revision),
    loaded strictly by from_pretrained (kronos_rt/checkpoint.py). device and dtype as
    Engine takes them (None: cuda:0 and float16 if there is a GPU, else cpu and float32).
    """
    model = Kronos.from_pretrained(model_location, revision=revision)
    tokenizer = KronosTokenizer.from_pretrained(tokenizer_location, revision=tokenizer_revision)
    return Engine(model, tokenizer, device=device, dtype=dtype, max_context=max_context)

"""Strict loading and saving in the public checkpoint layout (config.json + model.safetensors).

Every weight in the file must be used and every parameter filled, with matching shapes;
a wrong or partial checkpoint fails with a message naming the keys. Buffers that the
code can derive (RoPE inv_freq, the quantizer's powers of two) are accepted if present
and recomputed either way. Pickled weights are refused unless the caller opts in.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .hub import snapshot

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (names the offending keys)."""


def _is_derivable(key: str) -> bool:
    return key.endswith("rotary.inv_freq") or key.startswith("tokenizer.bsq.")


def resolve_checkpoint(path_or_hub_id: str | os.PathLike, revision: str | None = None,
                       allow_pickle: bool = False) -> Path:
    """A local directory holding the checkpoint; a Hub id ("org/name") goes through
    kronos_rt.hub.snapshot (the local Hub cache when offline)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(path_or_hub_id).startswith((".", "/", "~")) or str(path_or_hub_id).count("/") != 1:
        raise FileNotFoundError(f"checkpoint directory not found: {path_or_hub_id!s}")
    patterns = [CONFIG_NAME, WEIGHTS_NAME] + ([PICKLE_NAME] if allow_pickle else [])
    return snapshot(str(path_or_hub_id), revision, allow_patterns=patterns)


def read_config(directory: Path) -> dict:
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing")
    with open(cfg_path) as f:
        return json.load(f)


def read_state_dict(directory: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    weights = directory / WEIGHTS_NAME
    if weights.is_file():
        return load_file(str(weights))
    pickled = directory / PICKLE_NAME
    if pickled.is_file():
        if not allow_pickle:
            raise CheckpointError(f"{pickled} is a pickled checkpoint; refusing to load it. "
                                  "Convert it to model.safetensors, or pass allow_pickle=True "
                                  "(loaded with torch.load(weights_only=True)).")
        return torch.load(str(pickled), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    required = {k for k in own if not _is_derivable(k)}
    missing = sorted(required - state.keys())
    unexpected = sorted(k for k in state if k not in own)
    bad_shape = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if bad_shape:
        problems.append(f"shape mismatches {bad_shape}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit {type(module).__name__}: " + "; ".join(problems))
    with torch.no_grad():
        for k, t in own.items():
            if k in state and not _is_derivable(k):
                t.copy_(state[k])


class PretrainedMixin:
    """from_pretrained / save_pretrained for modules built from a flat config dict."""

    config: dict

    @classmethod
    def from_pretrained(cls, path_or_hub_id, revision: str | None = None, allow_pickle: bool = False):
        directory = resolve_checkpoint(path_or_hub_id, revision, allow_pickle)
        config = read_config(directory)
        try:
            module = cls(**config)
        except TypeError as exc:
            raise CheckpointError(f"{directory / CONFIG_NAME} does not describe a {cls.__name__}: {exc}") from exc
        load_strict(module, read_state_dict(directory, allow_pickle), str(directory))
        return module.eval()

    def save_pretrained(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / CONFIG_NAME, "w") as f:
            json.dump(self.config, f, indent=2, sort_keys=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))
        return directory

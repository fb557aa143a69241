"""transformers.Trainer around our modules: best-val checkpoint, stop with a checkpoint, resume."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from kronos_rt.model import Kronos
from kronos_rt.tokenizer import KronosTokenizer
from kronos_rt.training.data import WindowDataset, default_splits, load_tapes
from kronos_rt.training.trainer import TrainConfig, TrainingInterrupted, train_stage

PARITY = Path(__file__).resolve().parents[2] / "fixtures" / "parity"


def datasets(tape):
    tapes = load_tapes([tape])
    splits = default_splits(tapes, None, None, None)
    return (WindowDataset(tapes, splits["train"], 24, 8),
            WindowDataset(tapes, splits["val"], 24, 8, "val", max_windows=16))


def test_tokenizer_stage_saves_best_in_public_layout(tape, tmp_path):
    train, val = datasets(tape)
    tok = KronosTokenizer.from_pretrained(PARITY / "tokenizer").train()
    res = train_stage(tok, None, train, val, TrainConfig(stage="tokenizer", steps=6, batch_size=8, lr=1e-3,
                                                         eval_every=3, device="cpu"), tmp_path / "run")
    assert res.best_val_loss is not None and res.best_val_loss <= max(e["eval_loss"] for e in res.loss_curve
                                                                      if "eval_loss" in e)
    assert res.samples_per_s > 0 and res.steps == 6
    back = KronosTokenizer.from_pretrained(res.out_dir)  # strict load of config.json + model.safetensors
    for k, v in tok.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_stop_leaves_a_checkpoint_and_resume_finishes(tape, tmp_path):
    train, val = datasets(tape)
    tok = KronosTokenizer.from_pretrained(PARITY / "tokenizer")
    cfg = TrainConfig(stage="predictor", steps=6, batch_size=8, lr=1e-3, eval_every=3, device="cpu")
    stop = threading.Event()
    stop.set()  # as a Ctrl-C before the first step ends
    with pytest.raises(TrainingInterrupted) as info:
        train_stage(Kronos.from_pretrained(PARITY / "model").train(), tok, train, val, cfg, tmp_path / "run",
                    stop=stop)
    assert info.value.result.steps == 1 and Path(info.value.result.checkpoint_dir).name == "checkpoint-1"
    res = train_stage(Kronos.from_pretrained(PARITY / "model").train(), tok, train, val, cfg, tmp_path / "run",
                      resume=True)
    assert res.steps == 6 and not res.interrupted
    assert res.base_val_loss is not None  # remembered from the first run
    assert Kronos.from_pretrained(res.out_dir) is not None


def test_resume_without_checkpoint_and_fp16_on_cpu_are_errors(tape, tmp_path):
    train, val = datasets(tape)
    tok = KronosTokenizer.from_pretrained(PARITY / "tokenizer")
    model = Kronos.from_pretrained(PARITY / "model")
    with pytest.raises(ValueError, match="no checkpoint"):
        train_stage(model, tok, train, val, TrainConfig(steps=2, device="cpu"), tmp_path / "none", resume=True)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        train_stage(model, tok, train, val, TrainConfig(steps=2, device="cpu", precision="fp16"), tmp_path / "x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_is_resolved_as_the_engine_resolves_it(tape, tmp_path):
    train, val = datasets(tape)
    tok = KronosTokenizer.from_pretrained(PARITY / "tokenizer")
    model = Kronos.from_pretrained(PARITY / "model")
    # auto is the cpu here, so fp16 is refused as on an explicit cpu
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        train_stage(model, tok, train, val, TrainConfig(steps=2, device="auto", precision="fp16"), tmp_path / "a")
    # the Engine's message for CUDA without CUDA (a ValueError: a bad setting), before any work
    with pytest.raises(ValueError, match="CUDA is not available on this machine .*--device cpu"):
        train_stage(model, tok, train, val, TrainConfig(steps=2, device="cuda"), tmp_path / "c")
    assert not (tmp_path / "c").exists()

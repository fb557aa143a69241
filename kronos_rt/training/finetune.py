"""Fine-tune a registry version (or a checkpoint pair) on tapes and import the result as a
new registry version, never promoted: only a walk-forward evaluation should move `latest`.

The new version's metadata.json carries, under "finetune": the base, the data files with
their sha256 and time ranges, the splits, the hyperparameters, the loss curves, the
library versions and the wall time.
"""
from __future__ import annotations

import json
import platform
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checkpoint import CONFIG_NAME
from ..registry import (DEFAULT_MAX_CONTEXT, ModelVersion, Registry, RegistryError, metadata_max_context,
                        pair_issues)
from .data import DataError, TapeSet, WindowDataset, default_splits, load_tapes
from .trainer import TrainConfig, finished_stage, train_stage


@dataclass
class Base:
    spec: str  # how it was named: NAME@VERSION, a directory, or HUB_ID
    model_dir: Path
    tokenizer_dir: Path
    max_context: int
    random_weights: bool
    source: dict


def resolve_base(spec: str, registry: Registry, tokenizer_hub_id: str | None = None) -> Base:
    """NAME[@VERSION] in the registry, a directory holding model/ and tokenizer/ (a registry
    version's or the parity fixture's layout), or a Hub model id with tokenizer_hub_id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not ((path / "model" / CONFIG_NAME).is_file() and (path / "tokenizer" / CONFIG_NAME).is_file()):
            raise DataError(f"--base {spec}: a directory must hold model/ and tokenizer/ checkpoints "
                            "(config.json + model.safetensors each)")
        meta = {}
        if (path / "metadata.json").is_file():
            meta = json.loads((path / "metadata.json").read_text())
        return Base(spec, path / "model", path / "tokenizer", metadata_max_context(meta),
                    bool(meta.get("random_weights")), {"type": "directory", "path": str(path.resolve())})
    if "@" in spec or (registry.root / spec.split("@")[0]).is_dir() or "/" not in spec:
        mv: ModelVersion = registry.resolve(spec)
        return Base(mv.spec, mv.model_dir, mv.tokenizer_dir, mv.max_context,
                    mv.random_weights, {"type": "registry", "spec": mv.spec, "source": mv.metadata.get("source")})
    if not tokenizer_hub_id:
        raise DataError(f"--base {spec} looks like a Hub id: give its tokenizer with --base-tokenizer HUB_ID")
    from ..checkpoint import resolve_checkpoint

    return Base(spec, resolve_checkpoint(spec), resolve_checkpoint(tokenizer_hub_id), DEFAULT_MAX_CONTEXT, False,
                {"type": "hub", "model": spec, "tokenizer": tokenizer_hub_id})


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("kronos-rt", "torch", "transformers", "accelerate", "numpy", "pandas", "safetensors"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def import_version(registry: Registry, name: str, model_dir, tokenizer_dir, source: dict, extra: dict,
                   random_weights: bool, version: str | None = None) -> ModelVersion:
    """Import a checkpoint pair with extra metadata, never promoting it."""
    return registry.import_dirs(name, model_dir, tokenizer_dir, version=version, source=source, promote=False,
                                random_weights=random_weights, extra=extra)


def _num(v, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


@dataclass
class FinetuneResult:
    version: ModelVersion
    stages: dict
    wall_s: float


def finetune(base_spec: str, data, name: str, registry: Registry, config: TrainConfig, stage: str = "predictor",
             train: str | None = None, val: str | None = None, test: str | None = None, out_dir=None,
             resume: bool = False, stop: threading.Event | None = None, drop_bad_rows: bool = False,
             base_tokenizer: str | None = None, version: str | None = None, log=print) -> FinetuneResult:
    """Train stage "tokenizer", "predictor" or "both" (tokenizer first, then the predictor on
    its ids) and import the best weights as a new, unpromoted version of `name`."""
    from ..model import Kronos
    from ..tokenizer import KronosTokenizer

    t0 = time.perf_counter()
    if stage not in ("tokenizer", "predictor", "both"):
        raise DataError(f"--stage must be tokenizer, predictor or both, got {stage!r}")
    try:
        registry.versions(name)  # validates the name before any work
    except RegistryError as exc:
        raise DataError(str(exc)) from exc
    base = resolve_base(base_spec, registry, base_tokenizer)
    model_cfg = json.loads((base.model_dir / CONFIG_NAME).read_text())
    tokenizer_cfg = json.loads((base.tokenizer_dir / CONFIG_NAME).read_text())
    problems = pair_issues(model_cfg, tokenizer_cfg)  # the registry's check, as verify() runs it
    if problems:
        raise DataError(f"base {base.spec}: the tokenizer does not fit the model ({'; '.join(problems)})")
    window = config.lookback + config.horizon
    if window > base.max_context + 1:
        raise DataError(f"lookback + horizon = {window} exceeds the base's max_context + 1 = {base.max_context + 1}")

    tapes: TapeSet = load_tapes(data, drop_bad_rows=drop_bad_rows)
    if tapes.bad_rows:
        log(f"dropped {tapes.bad_rows} bad rows, e.g. {'; '.join(tapes.bad_examples)}")
    splits = default_splits(tapes, train, val, test)
    train_ds = WindowDataset(tapes, splits["train"], config.lookback, config.horizon, "train")
    val_ds = WindowDataset(tapes, splits["val"], config.lookback, config.horizon, "val",
                           max_windows=config.eval_windows)
    train_range, val_range = train_ds.time_range(), val_ds.time_range()
    log(f"{len(train_ds)} train windows {train_range}, {len(val_ds)} val windows {val_range}")

    out_dir = Path(out_dir or Path("kronos-finetune") / name)
    tokenizer = KronosTokenizer.from_pretrained(base.tokenizer_dir)
    model = Kronos.from_pretrained(base.model_dir)
    tokenizer_dir, model_dir = base.tokenizer_dir, base.model_dir
    stages = {}
    for st in (("tokenizer", "predictor") if stage == "both" else (stage,)):
        run_dir = out_dir / st
        done = finished_stage(run_dir) if resume else None
        module = tokenizer if st == "tokenizer" else model
        if done is not None:
            log(f"{st}: finished in an earlier run (best val loss {done.best_val_loss}); reusing {done.out_dir}")
            module.load_state_dict(type(module).from_pretrained(done.out_dir).state_dict())
            result = done
        else:
            stage_resume = resume and any(run_dir.glob("checkpoint-*"))
            if not stage_resume and run_dir.exists():
                shutil.rmtree(run_dir)  # a fresh run: old checkpoints would be resumed or mixed in
            cfg = TrainConfig(**{**asdict(config), "stage": st})
            result = train_stage(module.train(), tokenizer if st == "predictor" else None, train_ds, val_ds, cfg,
                                 run_dir, resume=stage_resume, stop=stop)
            module.eval()
            log(f"{st}: val loss {_num(result.base_val_loss)} (base) -> {_num(result.best_val_loss)} "
                f"(best, step {result.best_step}); {_num(result.samples_per_s, '.0f')} samples/s")
        stages[st] = {**result.as_dict(), "hyperparameters": asdict(TrainConfig(**{**asdict(config), "stage": st}).resolved())}
        if st == "tokenizer":
            tokenizer_dir = Path(result.out_dir)
        else:
            model_dir = Path(result.out_dir)

    hyper = {k: v for k, v in asdict(config).items() if k not in ("stage", "progress")}
    hyper.update(stage=stage, drop_bad_rows=drop_bad_rows)
    extra = {
        "max_context": base.max_context,
        "finetune": {
            "base": {"spec": base.spec, "source": base.source, "random_weights": base.random_weights},
            "data": {"files": [f.as_dict() for f in tapes.files], "bad_rows_dropped": tapes.bad_rows,
                     "splits": {k: v.describe() for k, v in splits.items()},
                     "train_windows": {"count": len(train_ds), "range": train_range},
                     "val_windows": {"count": len(val_ds), "range": val_range}},
            "hyperparameters": hyper,
            "stages": stages,
            "libraries": library_versions(),
            "wall_s": round(time.perf_counter() - t0, 3),
        },
    }
    # A few dozen steps from random weights are still random weights for every practical purpose.
    mv = import_version(registry, name, model_dir, tokenizer_dir, {"type": "finetune", "base": base.spec}, extra,
                        random_weights=base.random_weights, version=version)
    return FinetuneResult(mv, stages, extra["finetune"]["wall_s"])

"""Fine-tuning with `transformers.Trainer` around our plain modules (docs/MODEL.md, "Training").

The Trainer brings AdamW, schedules, gradient accumulation and clipping, autocast,
checkpoints (with optimizer, scheduler and RNG state, so a stopped run resumes exactly),
evaluation every N steps, early stopping and multi-GPU launches. Our modules stay plain
`torch.nn.Module`s: `TokenizerObjective` / `PredictorObjective` wrap one of them and
return {"loss": ...} from forward, which is all the Trainer needs. The checkpoint with the
lowest validation loss is loaded at the end and saved in the public layout.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .losses import predictor_loss, tokenizer_loss

STAGES = ("tokenizer", "predictor")
DONE_NAME = "done.json"  # written beside best/ when a stage finished


@dataclass
class TrainConfig:
    """Hyperparameters of one stage. None means the reference recipe's value for the stage."""
    stage: str = "predictor"
    lookback: int = 90
    horizon: int = 10
    lr: float | None = None  # tokenizer 2e-4, predictor 4e-5
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 16
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16
    teacher_forcing: bool = True
    device: str = "auto"  # as the Engine takes it (kronos_rt.engine.resolve_device): auto, cpu, cuda, cuda:N
    seed: int = 0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float | None = None  # tokenizer 2.0, predictor 3.0
    schedule: str = "onecycle"  # onecycle | cosine | linear | constant
    warmup: float = 0.03
    eval_every: int | None = None  # steps; default: about 10 evaluations per run
    eval_windows: int = 512  # validation windows (evenly spaced over the split)
    early_stopping: int | None = None  # evaluations without improvement
    progress: bool = False

    def resolved(self) -> "TrainConfig":
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        c = TrainConfig(**asdict(self))
        if c.lr is None:
            c.lr = 2e-4 if c.stage == "tokenizer" else 4e-5
        if c.max_grad_norm is None:
            c.max_grad_norm = 2.0 if c.stage == "tokenizer" else 3.0
        for name in ("batch_size", "grad_accum"):
            if getattr(c, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
        if c.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {c.precision!r}")
        if c.schedule not in ("onecycle", "cosine", "linear", "constant"):
            raise ValueError(f"schedule must be onecycle, cosine, linear or constant, got {c.schedule!r}")
        if not c.lr > 0:
            raise ValueError(f"lr must be > 0, got {c.lr}")
        return c


@dataclass
class StageResult:
    stage: str
    out_dir: str  # best checkpoint, public layout
    steps: int
    best_step: int | None
    best_val_loss: float | None
    base_val_loss: float | None
    loss_curve: list[dict] = field(default_factory=list)
    samples_per_s: float | None = None
    train_windows: int = 0
    val_windows: int = 0
    wall_s: float = 0.0
    interrupted: bool = False
    checkpoint_dir: str | None = None  # where --resume continues from

    def as_dict(self) -> dict:
        return asdict(self)


class TrainingInterrupted(Exception):
    """Training stopped on request; a resumable checkpoint was written."""

    def __init__(self, result: StageResult):
        super().__init__(f"{result.stage} training stopped at step {result.steps}; checkpoint in "
                         f"{result.checkpoint_dir}")
        self.result = result


class TokenizerObjective(nn.Module):
    """Trains a KronosTokenizer. Validation loss: mse of the full reconstruction (the reference's)."""

    def __init__(self, tokenizer: nn.Module):
        super().__init__()
        self.module = tokenizer

    def forward(self, x, x_stamp=None, return_loss: bool = True):  # return_loss: Trainer evaluates without labels
        loss, parts = tokenizer_loss(self.module, x)
        return {"loss": loss if self.training else parts["recon_full"]}


class PredictorObjective(nn.Module):
    """Trains a Kronos model with a frozen tokenizer (not a submodule: not saved, not optimized)."""

    def __init__(self, model: nn.Module, tokenizer: nn.Module, teacher_forcing: bool = True):
        super().__init__()
        self.module = model
        self.teacher_forcing = teacher_forcing
        tokenizer.eval().requires_grad_(False)
        self.__dict__["tokenizer"] = tokenizer  # bypass nn.Module registration

    def forward(self, x, x_stamp, return_loss: bool = True):
        if self.tokenizer.head.weight.device != x.device:
            self.tokenizer.to(x.device)
        # Validation always teacher-forced: a deterministic number to pick checkpoints by.
        loss, _ = predictor_loss(self.module, self.tokenizer, x, x_stamp,
                                 teacher_forcing=self.teacher_forcing or not self.training)
        return {"loss": loss}


def _trainer_classes():
    """transformers is imported only when training (it is slow to import)."""
    from transformers import Trainer, TrainerCallback

    class KronosTrainer(Trainer):
        one_cycle = False
        warmup = 0.03

        def get_decay_parameter_names(self, model):
            # The reference's AdamW decays every parameter (norms and biases too).
            return [n for n, _ in model.named_parameters()]

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.one_cycle and self.lr_scheduler is None:
                # The reference's one-cycle: warm up from lr/10 over the first 3 %, anneal after.
                self.lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(
                    optimizer or self.optimizer, max_lr=self.args.learning_rate,
                    total_steps=max(2, num_training_steps), pct_start=self.warmup, div_factor=10)
                self._created_lr_scheduler = True
                return self.lr_scheduler
            return super().create_scheduler(num_training_steps, optimizer)

    class StopOnRequest(TrainerCallback):
        """Ends training at the next step boundary with a checkpoint, when `event` is set."""

        def __init__(self, event: threading.Event):
            self.event = event
            self.stopped_at = None

        def on_step_end(self, args, state, control, **kw):
            if self.event.is_set():
                control.should_save = True
                control.should_training_stop = True
                self.stopped_at = state.global_step
            return control

    class Throughput(TrainerCallback):
        """Samples per second over the training steps alone (evaluation and saving excluded)."""

        def __init__(self, samples_per_step: int):
            self.samples_per_step = samples_per_step
            self.seconds, self.steps, self._t0 = 0.0, 0, None

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self._t0 is not None:
                self.seconds += time.perf_counter() - self._t0
                self.steps += 1

        @property
        def samples_per_s(self):
            return self.samples_per_step * self.steps / self.seconds if self.seconds > 0 else None

    return KronosTrainer, StopOnRequest, Throughput


def _autocast_ok(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 needs a GPU; on CPU use --precision bf16 or fp32")


def _last_checkpoint(run_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(c) if run_dir.is_dir() and (c := get_last_checkpoint(str(run_dir))) else None


def train_stage(module: nn.Module, tokenizer: nn.Module | None, train_ds, val_ds, config: TrainConfig,
                run_dir, resume: bool = False, stop: threading.Event | None = None) -> StageResult:
    """Train `module` (a KronosTokenizer for stage "tokenizer", a Kronos for "predictor",
    then with the frozen `tokenizer`) on train_ds, evaluating on val_ds; keep the best
    checkpoint and save it to run_dir/best in the public layout. The module is updated in
    place with the best weights. Raises TrainingInterrupted (after writing a checkpoint)
    when `stop` is set during training."""
    from transformers import EarlyStoppingCallback, TrainingArguments

    from ..engine import resolve_device

    cfg = config.resolved()
    run_dir = Path(run_dir)
    KronosTrainer, StopOnRequest, Throughput = _trainer_classes()
    try:
        device = resolve_device(cfg.device)  # the Engine's rule and messages
    except RuntimeError as exc:  # CUDA without CUDA, an unknown device name: a bad setting, as before
        raise ValueError(str(exc)) from exc
    _autocast_ok(cfg.precision, device)

    per_step = cfg.batch_size * cfg.grad_accum
    if cfg.steps is not None:
        steps = int(cfg.steps)
    else:
        epochs = cfg.epochs if cfg.epochs is not None else 1.0
        steps = max(1, math.ceil(len(train_ds) / per_step * epochs))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    eval_every = cfg.eval_every or max(1, steps // 10)

    if cfg.stage == "tokenizer":
        objective = TokenizerObjective(module)
    else:
        if tokenizer is None:
            raise ValueError("the predictor stage needs the tokenizer")
        objective = PredictorObjective(module, tokenizer, cfg.teacher_forcing)

    args = TrainingArguments(
        output_dir=str(run_dir),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.betas[0],
        adam_beta2=cfg.betas[1],
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type="constant" if cfg.schedule in ("onecycle", "constant") else cfg.schedule,
        warmup_steps=0 if cfg.schedule in ("onecycle", "constant") else max(0, round(cfg.warmup * steps)),
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, min(eval_every, 10)),
        logging_first_step=True,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        use_cpu=device.type == "cpu",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=not cfg.progress,
        prediction_loss_only=True,
        label_names=[],
    )
    event = stop or threading.Event()
    stopper, speed = StopOnRequest(event), Throughput(per_step)
    callbacks = [stopper, speed]
    if cfg.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping))
    trainer = KronosTrainer(model=objective, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                            callbacks=callbacks)
    trainer.one_cycle = cfg.schedule == "onecycle"
    trainer.warmup = cfg.warmup

    t0 = time.perf_counter()
    checkpoint = _last_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise ValueError(f"--resume: no checkpoint in {run_dir} to resume from")
    base_val = None
    prior = run_dir / "base_val_loss.json"
    if checkpoint is None:
        base_val = float(trainer.evaluate()["eval_loss"])  # the base weights, for comparison
        run_dir.mkdir(parents=True, exist_ok=True)
        prior.write_text(json.dumps({"base_val_loss": base_val}))
    elif prior.is_file():
        base_val = json.loads(prior.read_text())["base_val_loss"]
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - t0

    state = trainer.state
    curve = [{k: v for k, v in entry.items() if k in ("step", "epoch", "loss", "eval_loss", "learning_rate",
                                                       "grad_norm")} for entry in state.log_history]
    curve = [e for e in curve if "loss" in e or "eval_loss" in e]
    best_step = None
    if state.best_model_checkpoint:
        best_step = int(Path(state.best_model_checkpoint).name.split("-")[-1])
    result = StageResult(stage=cfg.stage, out_dir=str(run_dir / "best"), steps=int(state.global_step),
                         best_step=best_step,
                         best_val_loss=None if state.best_metric is None else float(state.best_metric),
                         base_val_loss=base_val, loss_curve=curve, samples_per_s=speed.samples_per_s,
                         train_windows=len(train_ds), val_windows=len(val_ds), wall_s=wall)
    if stopper.stopped_at is not None and state.global_step < steps:
        result.interrupted = True
        result.checkpoint_dir = str(_last_checkpoint(run_dir))
        raise TrainingInterrupted(result)
    module.save_pretrained(run_dir / "best")  # the best weights: load_best_model_at_end loaded them
    (run_dir / DONE_NAME).write_text(json.dumps(result.as_dict(), indent=2))
    return result


def finished_stage(run_dir) -> StageResult | None:
    """The result of a stage that already finished in run_dir (for --resume), else None."""
    done = Path(run_dir) / DONE_NAME
    if not done.is_file():
        return None
    return StageResult(**json.loads(done.read_text()))

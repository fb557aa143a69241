"""`kronos-rt finetune`: fine-tune a model on your tapes into a new registry version.

    kronos-rt finetune --base NAME@VERSION|DIR|HUB_ID --data PATH... --name NAME
        [--stage tokenizer|predictor|both] [--lookback N --horizon N]
        [--train A:B --val A:B --test A:B] [--lr --steps|--epochs --batch-size --grad-accum]
        [--precision fp32|bf16|fp16 --teacher-forcing|--sampled-s2 --device --seed --out DIR --resume]

The best checkpoint (lowest validation loss) is imported as a new version of NAME and is
NOT promoted: evaluate it (`kronos-rt eval`) and promote it on the evidence
(`kronos-rt models promote NAME VERSION --if-better-than V --on EVAL.json`).
Ctrl-C stops at the next step with a checkpoint in --out; rerun with --resume.
Exit codes: 0 ok, 1 failure, 2 bad flags or data, 130 interrupted (resumable).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from kronos_rt.registry import Registry
from worker.adapters import security
from worker.errors import ConfigError, StartupError

# Errors are printed by worker/cli/errors.py: bad flags, data, or a base that does not fit
# (ValueError: DataError, CheckpointError) exit 2, as does an unknown registry version; other
# failures of the run exit 1 with their type and message; a stop on Ctrl-C (TrainingInterrupted,
# a checkpoint written) exits 130 and says to --resume.
USAGE_ERRORS = (ValueError,)
FAILURE_ERRORS = (OSError, RuntimeError)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, metavar="NAME@VERSION|DIR|HUB_ID",
                        help="model to start from: a registry version, a directory with model/ and tokenizer/, "
                             "or a Hub model id (with --base-tokenizer)")
    parser.add_argument("--base-tokenizer", metavar="HUB_ID", help="tokenizer Hub id when --base is a Hub id")
    parser.add_argument("--data", nargs="+", default=[], metavar="PATH",
                        help="CSV/Parquet tapes or folders of them (one symbol per file, or a symbol column)")
    parser.add_argument("--from-topic", action="append", default=[], metavar="TOPIC",
                        help="also train on a bar topic, read from Kafka up to its current end (repeatable); "
                             "saved as a tape in OUT/data/ so the version's metadata can name its sha256")
    parser.add_argument("--brokers", default="127.0.0.1:9092", help="Kafka bootstrap servers for --from-topic")
    security.add_args(parser)
    parser.add_argument("--name", required=True, help="registry name for the fine-tuned version")
    parser.add_argument("--version", help="semantic version (default: next patch)")
    parser.add_argument("--registry", metavar="ROOT", help="registry root (default: $KRONOS_RT_REGISTRY)")
    parser.add_argument("--stage", default="predictor", choices=["tokenizer", "predictor", "both"],
                        help="what to train: the tokenizer, the predictor, or both in turn")
    parser.add_argument("--lookback", type=int, default=90, help="context rows per window (default 90)")
    parser.add_argument("--horizon", type=int, default=10, help="rows after the lookback per window (default 10)")
    parser.add_argument("--train", help="train range, fractions (0:0.7) or dates (2024-01-01:2024-06-01)")
    parser.add_argument("--val", help="validation range (default 0.7:0.85)")
    parser.add_argument("--test", help="test range, held out for `kronos-rt eval` (default 0.85:1)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: tokenizer 2e-4, predictor 4e-5)")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, help="optimizer steps")
    g.add_argument("--epochs", type=float, help="passes over the train windows (default 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per optimizer micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--schedule", default="onecycle", choices=["onecycle", "cosine", "linear", "constant"],
                        help="learning-rate schedule")
    parser.add_argument("--eval-every", type=int, help="steps between validations (default: about 10 per run)")
    parser.add_argument("--eval-windows", type=int, default=512, help="validation windows (default 512)")
    parser.add_argument("--early-stopping", type=int, metavar="N", help="stop after N validations without improvement")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="training precision (bf16/fp16: mixed precision on a GPU)")
    tf = parser.add_mutually_exclusive_group()
    tf.add_argument("--teacher-forcing", dest="teacher_forcing", action="store_true", default=True,
                    help="s2 head queried with the true s1 ids (default)")
    tf.add_argument("--sampled-s2", dest="teacher_forcing", action="store_false",
                    help="s2 head queried with s1 ids sampled from the model (the reference scripts' form)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of data order, sampling and initialisation")
    parser.add_argument("--out", help="run directory for checkpoints (default: kronos-finetune/NAME)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--drop-bad-rows", action="store_true", help="drop (and report) unusable rows instead of failing")
    parser.add_argument("--progress", action="store_true", help="progress bars")


def _stop_on_sigint() -> threading.Event:
    """First Ctrl-C: finish the step, write a checkpoint, stop. Second: the usual KeyboardInterrupt."""
    event = threading.Event()

    def handler(signum, frame):
        if event.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        event.set()
        print("\nstopping after this step with a checkpoint (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    return event


def _topic_tape(args: argparse.Namespace, topic: str) -> Path:
    """Read a bar topic into OUT/data/topic-TOPIC.csv (the library trains on tapes)."""
    import asyncio

    from worker.tools.tape import tape_from_topic

    df, stats = asyncio.run(tape_from_topic(args.brokers, topic, security.from_args(args)))
    path = Path(args.out or Path("kronos-finetune") / args.name) / "data" / f"topic-{topic}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    spans = ", ".join(f"p{p}: {a}..{b}" for p, (a, b) in sorted(stats["offsets"].items()))
    print(f"topic {topic}: {stats['messages']} messages ({spans}), {len(df)} bars of "
          f"{df['symbol'].nunique()} symbols kept, {stats['invalid']} invalid skipped -> {path}")
    return path


def main(args: argparse.Namespace) -> int:
    from kronos_rt.training.finetune import finetune
    from kronos_rt.training.trainer import TrainConfig

    for flag in ("lookback", "batch_size", "grad_accum", "eval_windows"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.horizon < 1:
        raise ConfigError("--horizon must be >= 1")
    if args.steps is not None and args.steps < 1:
        raise ConfigError("--steps must be >= 1")
    if not args.data and not args.from_topic:
        raise ConfigError("no data: give --data PATH... and/or --from-topic TOPIC")
    data = list(args.data)
    for topic in args.from_topic:
        try:
            data.append(_topic_tape(args, topic))
        except (ValueError, OSError, RuntimeError) as exc:
            raise StartupError(f"reading topic {topic!r} from {args.brokers}: {exc}") from exc
    config = TrainConfig(lookback=args.lookback, horizon=args.horizon, lr=args.lr, steps=args.steps,
                         epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         precision=args.precision, teacher_forcing=args.teacher_forcing, device=args.device,
                         seed=args.seed, schedule=args.schedule, eval_every=args.eval_every,
                         eval_windows=args.eval_windows, early_stopping=args.early_stopping, progress=args.progress)
    stop = _stop_on_sigint()
    try:
        result = finetune(args.base, data, args.name, Registry(args.registry), config, stage=args.stage,
                          train=args.train, val=args.val, test=args.test, out_dir=args.out, resume=args.resume,
                          stop=stop, drop_bad_rows=args.drop_bad_rows, base_tokenizer=args.base_tokenizer,
                          version=args.version)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    mv = result.version
    note = " (RANDOM WEIGHTS base: forecasts are meaningless)" if mv.random_weights else ""
    print(f"imported {mv.spec} at {mv.path}{note}; not promoted")
    for st, r in result.stages.items():
        print(f"  {st}: {r['steps']} steps, val loss {r['base_val_loss']} -> {r['best_val_loss']} "
              f"(best at step {r['best_step']}), {r['samples_per_s'] or 0:.1f} samples/s")
    print(f"next: kronos-rt eval --model {mv.spec} --model BASELINE --data ... ; then "
          f"kronos-rt models promote {mv.name} {mv.version} --if-better-than VERSION --on EVAL.json")
    return 0


if __name__ == "__main__":
    from worker.cli import main as cli_main

    sys.exit(cli_main(["finetune", *sys.argv[1:]]))

"""`kronos-rt eval`: walk-forward backtest of registry versions on held-out time.

    kronos-rt eval --model NAME@VERSION [--model NAME@VERSION ...] --data PATH...
        [--test A:B] [--lookback N --pred-len N --sample-count N --stride N] [--out DIR] [--record]

Every model and the persistence and drift baselines are scored on the same windows
(kronos_rt/training/evaluate.py says how). Writes DIR/eval.json, DIR/eval.md and PNG
plots; prints the Markdown table. Exit codes: 0 ok, 1 failure, 2 bad flags, data or version.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kronos_rt.registry import Registry
from worker.errors import ConfigError

# Errors are printed by worker/cli/errors.py: bad data, ranges or a checkpoint that does not
# fit (ValueError: DataError, CheckpointError) exit 2; an unknown registry version exits 2
# there too; other failures of the run exit 1 with their type and message.
USAGE_ERRORS = (ValueError,)
FAILURE_ERRORS = (OSError, RuntimeError)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="NAME@VERSION",
                        help="registry version to evaluate (repeat for side by side; NAME = NAME@latest)")
    parser.add_argument("--data", required=True, nargs="+", metavar="PATH", help="CSV/Parquet tapes or folders")
    parser.add_argument("--test", default="0.85:1",
                        help="range the forecast bars must lie in: fractions (0.85:1) or dates (default 0.85:1)")
    parser.add_argument("--lookback", type=int, default=90, help="bars of context per forecast")
    parser.add_argument("--pred-len", type=int, default=10, help="bars forecast per window")
    parser.add_argument("--stride", type=int, default=1, help="bars between forecast origins (default 1)")
    parser.add_argument("--sample-count", type=int, default=8, help="sample paths per window (1: no bands/CRPS)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=0, help="top-k sampling (0 = off, 1 = greedy)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per engine call")
    parser.add_argument("--max-windows", type=int, help="evaluate at most N windows, evenly spaced")
    parser.add_argument("--device", default="auto", help="torch device: auto (GPU if any), cpu, cuda:N")
    parser.add_argument("--registry", metavar="ROOT", help="registry root (default: $KRONOS_RT_REGISTRY)")
    parser.add_argument("--out", default="kronos-eval", help="output folder (default kronos-eval)")
    parser.add_argument("--no-plots", action="store_true", help="write eval.json and eval.md only")
    parser.add_argument("--record", action="store_true",
                        help="also keep each version's figures (beside the baselines') in its metadata.json, "
                             "as metrics.walk_forward: what `models push` puts in the model card")
    parser.add_argument("--drop-bad-rows", action="store_true",
                        help="drop rows that fail validation (NaN, high < low, ...) instead of stopping")


def main(args: argparse.Namespace) -> int:
    from kronos_rt.training.data import load_tapes, parse_range
    from kronos_rt.training.evaluate import Candidate, EvalConfig, evaluate
    from worker.tools.eval_report import markdown, write_report

    for flag in ("lookback", "pred_len", "stride", "sample_count", "batch_size"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.lookback < 2:
        raise ConfigError("--lookback must be >= 2")
    reg = Registry(args.registry)
    candidates, versions = [], []
    for spec in args.model:
        mv = reg.resolve(spec)
        versions.append(mv)
        candidates.append(Candidate(mv.spec, mv.model_dir, mv.tokenizer_dir, mv.max_context, mv.random_weights))
    if len({c.label for c in candidates}) != len(candidates):
        raise ConfigError("the same version is named twice")
    config = EvalConfig(lookback=args.lookback, pred_len=args.pred_len, stride=args.stride,
                        sample_count=args.sample_count, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, device=args.device,
                        max_windows=args.max_windows)
    tapes = load_tapes(args.data, drop_bad_rows=args.drop_bad_rows)
    if tapes.bad_rows:
        print(f"dropped {tapes.bad_rows} bad rows, e.g. {'; '.join(tapes.bad_examples)}", file=sys.stderr)
    test = parse_range(args.test, "--test", tapes.start, tapes.end)
    report = evaluate(candidates, tapes, test, config, log=lambda m: print(m, file=sys.stderr))
    paths = write_report(report, Path(args.out), plot=not args.no_plots)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.record and versions:
        from kronos_rt.training.evaluate import walk_forward_record

        for mv in versions:
            reg.record_metrics(mv.name, mv.version, {"walk_forward": walk_forward_record(report, mv.spec)})
        print("recorded in " + ", ".join(f"{mv.spec}'s metadata.json" for mv in versions))
    return 0


if __name__ == "__main__":
    from worker.cli import main as cli_main

    sys.exit(cli_main(["eval", *sys.argv[1:]]))

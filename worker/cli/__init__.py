"""`kronos-rt` console script: one subcommand per module, imported only when used."""
from __future__ import annotations

import argparse
import importlib
import sys

from worker.allocator import retain_freed_memory

# name -> (module, help). Each module defines configure(parser) and main(args) -> int.
COMMANDS = {
    "worker": ("worker.cli.worker", "run a streaming worker (Kafka bars -> forecasts)"),
    "replay": ("worker.tools.replay", "publish a CSV/Parquet tape as bar events"),
    "bench": ("worker.cli.bench", "benchmark the inference engine against full recompute"),
    "bench-stream": ("worker.tools.bench_stream", "benchmark broker -> worker -> broker latency"),
    "models": ("worker.cli.models", "manage the local model registry"),
    "finetune": ("worker.cli.finetune", "fine-tune a model on your tapes into a new (unpromoted) registry version"),
    "eval": ("worker.cli.evaluate", "walk-forward backtest of registry versions against persistence and drift"),
    "report": ("worker.tools.report", "write a Markdown report of a replay"),
    "demo": ("worker.tools.demo", "one-command demo: embedded broker, Redis, worker, replay"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kronos-rt", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Every command forecasts over and over: keep freed memory for the next call instead of
    # page-faulting it in again each time (worker/allocator.py).
    retain_freed_memory()
    # Build only the chosen subcommand's parser so `kronos-rt bench` does not import Kafka code.
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        p = argparse.ArgumentParser(prog=f"kronos-rt {argv[0]}", description=COMMANDS[argv[0]][1])
        module.configure(p)
        return int(module.main(p.parse_args(argv[1:])) or 0)
    build_parser().parse_args(argv)  # prints help / usage error
    return 2


if __name__ == "__main__":
    sys.exit(main())

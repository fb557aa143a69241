"""`kronos-rt tail`: print forecasts as they arrive, one line each (kronos_rt_client/client.py's
ForecastClient: duplicates dropped, no group, nothing committed)."""
from __future__ import annotations

import argparse
import asyncio
import sys

from worker.adapters import security


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brokers", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="forecasts.5m", help="topic of forecast.v1 messages")
    parser.add_argument("--symbol", action="append", dest="symbols", metavar="SYMBOL",
                        help="only this symbol (repeatable; default: all)")
    parser.add_argument("--from-beginning", action="store_true",
                        help="start at the oldest retained forecast instead of the next new one")
    parser.add_argument("--count", type=int, default=0, help="stop after this many forecasts (0 = run until Ctrl-C)")
    security.add_args(parser)


def format_line(fc) -> str:
    """symbol, as_of, next close, its band, end-to-end latency, model (and a RANDOM WEIGHTS mark)."""
    band = fc.close_band()
    band_text = (f"[{band[0]:.6g}, {band[1]:.6g}] (q{fc.quantile_levels[0]:g}-q{fc.quantile_levels[-1]:g})"
                 if band else "(no band)")
    latency = fc.latency_ms.get("total")
    return (f"{fc.symbol:<12} {fc.as_of_raw:<25} next close {fc.horizon[0].close:<10.6g} {band_text:<34} "
            f"{'latency %.0f ms' % latency if latency is not None else 'latency n/a':<16} "
            f"{fc.model_name}@{fc.model_version}" + ("  RANDOM WEIGHTS" if fc.random_weights else ""))


async def tail(args: argparse.Namespace, out=sys.stdout) -> int:
    from kronos_rt_client.client import ForecastClient

    n = 0
    async with ForecastClient(args.brokers, topic=args.topic, symbols=args.symbols,
                              from_beginning=args.from_beginning, security=security.from_args(args)) as client:
        print(f"kronos-rt tail: {args.topic} on {args.brokers}"
              + (f", symbols {', '.join(args.symbols)}" if args.symbols else "")
              + ("; from the beginning" if args.from_beginning else "; new forecasts only")
              + " (Ctrl-C stops)", file=sys.stderr, flush=True)
        async for fc in client:
            print(format_line(fc), file=out, flush=True)
            n += 1
            if args.count and n >= args.count:
                break
    return n


def main(args: argparse.Namespace) -> int:
    if args.count < 0:
        from worker.errors import ConfigError

        raise ConfigError("--count must be >= 0")
    try:
        asyncio.run(tail(args))
    except KeyboardInterrupt:
        print("", file=sys.stderr)  # Ctrl-C is how one stops tailing: not an error
    return 0

"""`kronos-rt view`: serve the live forecast page (worker/view/): candles, the latest forecasts'
mean paths and bands, updated as messages arrive. Reads the topics group-less; commits nothing."""
from __future__ import annotations

import argparse
import asyncio
import sys

from worker.adapters import security
from worker.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brokers", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--bars-topic", default="bars.5m", help="topic of bar.v1 events (the candles)")
    parser.add_argument("--forecasts-topic", default="forecasts.5m", help="topic of forecast.v1 messages")
    parser.add_argument("--scores-topic", default="", help="topic of score.v1 messages (optional: the last "
                                                           "score of each symbol is listed)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8050, help="port to serve on (0: any free port)")
    parser.add_argument("--history", type=int, default=20000,
                        help="start each partition this many messages before its end (0: from the beginning)")
    parser.add_argument("--max-bars", type=int, default=500, help="bars kept per symbol")
    parser.add_argument("--max-forecasts", type=int, default=20, help="forecasts kept per symbol")
    parser.add_argument("--max-symbols", type=int, default=1000,
                        help="symbols kept; the one updated longest ago makes room for a new one")
    security.add_args(parser)


def build(args: argparse.Namespace):
    """A not yet started ViewServer from parsed flags (ConfigError for bad values)."""
    from worker.view.app import ViewServer
    from worker.view.feed import Feed
    from worker.view.state import Limits, ViewState

    for name in ("max_bars", "max_forecasts", "max_symbols"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if args.history < 0:
        raise ConfigError("--history must be >= 0")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be 0..65535")
    if not args.bars_topic or not args.forecasts_topic:
        raise ConfigError("--bars-topic and --forecasts-topic must not be empty")
    state = ViewState(Limits(args.max_bars, args.max_forecasts, args.max_symbols))
    topics = {"bars": args.bars_topic, "forecasts": args.forecasts_topic, "scores": args.scores_topic}
    feed = Feed(state, args.brokers, topics, security=security.from_args(args), history=args.history)
    return ViewServer(state, feed, host=args.host, port=args.port)


async def serve(args: argparse.Namespace) -> None:
    view = build(args)
    url = await view.start()
    try:
        print(f"kronos-rt view: {url} (bars {args.bars_topic}, forecasts {args.forecasts_topic}"
              + (f", scores {args.scores_topic}" if args.scores_topic else "") + f" on {args.brokers}; "
              "Ctrl-C stops)", flush=True)
        if view.feed.missing:
            print(f"kronos-rt view: waiting for topics {', '.join(view.feed.missing)} to exist", file=sys.stderr,
                  flush=True)
        await view.wait()
    finally:
        await view.stop()


def main(args: argparse.Namespace) -> int:
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        print("", file=sys.stderr)  # Ctrl-C is how one stops the view: not an error
    return 0


USAGE_ERRORS = ()
FAILURE_ERRORS = (OSError,)

"""`kronos-rt replay TAPE`: publish a CSV/Parquet tape as bar.v1 events (key = symbol).

Bars of all symbols are interleaved by time, bar by bar, as a live feed sends them.
`--fanout N` turns a one-symbol tape into N distinct synthetic symbols; `--speed`
is `max` or a multiple of real time (bar timestamps are spaced out accordingly).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from worker.contracts import events
from worker.config import parse_interval
from worker.errors import ConfigError
from worker.adapters import security
from worker.adapters.kafka import ensure_topics, make_producer, stop_all
from worker.tools.tape import bar_events, fan_out, interleave, read_tape

log = logging.getLogger(__name__)


@dataclass
class ReplaySummary:
    bars: int
    symbols: int
    seconds: float
    rate: float        # bars per second, counting until the last one was acknowledged
    topic: str
    first_ts: str
    last_ts: str

    def line(self) -> str:
        return (f"sent {self.bars} bar{'s' * (self.bars != 1)} of {self.symbols} "
                f"symbol{'s' * (self.symbols != 1)} to {self.topic} "
                f"({self.first_ts} .. {self.last_ts}) in {self.seconds:.2f}s, {self.rate:,.0f} bars/s")


def prepare(tape: str | Path | pd.DataFrame, symbol: str | None = None, fanout: int = 1,
            limit: int | None = None, skip: int = 0) -> pd.DataFrame:
    """The rows a replay sends, in sending order. `skip`/`limit` count bars per symbol."""
    df = tape if isinstance(tape, pd.DataFrame) else read_tape(tape, symbol or ("SYM" if fanout > 1 else None))
    if fanout > 1:
        # Fan out before cutting, so a bar's synthetic values do not depend on skip/limit.
        df = fan_out(df, fanout, base=symbol or "SYM")
    if skip or limit is not None:
        n = df.groupby("symbol").cumcount()
        keep = n >= skip
        if limit is not None:
            keep &= n < skip + limit
        df = df[keep]
    return interleave(df)


def parse_speed(speed: str | float | None) -> float | None:
    """None for as fast as possible, else the multiple of real time."""
    if speed in (None, "max", "MAX", ""):
        return None
    try:
        value = float(speed)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"--speed {speed!r}: use 'max' or a positive multiple of real time, e.g. 60")
    return value


async def replay(tape: str | Path | pd.DataFrame, brokers: str, topic: str, *, symbol: str | None = None,
                 fanout: int = 1, speed: str | float | None = "max", limit: int | None = None,
                 skip: int = 0, partitions: int | None = None, progress: bool = False,
                 producer=None, max_gap: str | None = None, security=None) -> ReplaySummary:
    """Publish a tape; returns once every bar is acknowledged. Pass a started `producer` to reuse one.

    max_gap (e.g. "5m"): with a paced speed, a longer pause in the tape (lunch, overnight,
    weekend) is replayed as if it lasted max_gap, so closed hours do not stall a replay."""
    rows = prepare(tape, symbol, fanout, limit, skip)
    factor = parse_speed(speed)
    if partitions:
        await ensure_topics(brokers, {topic: partitions}, security=security)
    own_producer = producer is None
    if own_producer:
        producer = make_producer(brokers, client_id="kronos-rt-replay", security=security)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # a producer that never connected still holds a client to close
            raise
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(rows), unit="bar", desc=f"replay -> {topic}")
    pending = []
    t0 = time.monotonic()
    first_time = rows["time"].iloc[0] if len(rows) else None
    cap = parse_interval(max_gap).total_seconds() if max_gap else None
    clock, last = 0.0, first_time  # tape seconds elapsed, gaps capped
    try:
        for sym, event, t in bar_events(rows):
            if factor is not None:
                gap = (t - last).total_seconds()
                clock += min(gap, cap) if cap is not None else gap
                last = t
                due = t0 + clock / factor
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            key, value = sym.encode(), events.dumps(event)
            pending.append((await producer.send(topic, key=key, value=value), key, value))
            if len(pending) >= 5000:
                await _settle(producer, topic, pending)
                pending.clear()
            if bar is not None:
                bar.update(1)
        await _settle(producer, topic, pending)
    finally:
        if bar is not None:
            bar.close()
        if own_producer:
            await stop_all(producer)
    seconds = time.monotonic() - t0
    return ReplaySummary(
        bars=len(rows), symbols=rows["symbol"].nunique(), seconds=seconds,
        rate=len(rows) / seconds if seconds > 0 else 0.0, topic=topic,
        first_ts=str(first_time) if first_time is not None else "",
        last_ts=str(rows["time"].iloc[-1]) if len(rows) else "",
    )


async def _settle(producer, topic: str, pending: list, attempts: int = 6) -> None:
    """Wait for the sends' acks; a send that timed out (the bar may well have arrived: the
    ack did not) or failed with a retriable error is sent again, with growing pauses. A bar
    sent twice is harmless: the worker sees the same bar again (a duplicate)."""
    from aiokafka.errors import KafkaError, KafkaTimeoutError

    for attempt in range(attempts):
        results = await asyncio.gather(*(fut for fut, _, _ in pending), return_exceptions=True)
        failed = [(item, r) for item, r in zip(pending, results) if isinstance(r, BaseException)]
        if not failed:
            return
        for _, err in failed:
            if not (isinstance(err, KafkaTimeoutError) or (isinstance(err, KafkaError) and err.retriable)):
                raise err
        if attempt == attempts - 1:
            raise failed[0][1]
        log.warning("%d of %d sends failed (%r): sending them again (%d/%d)", len(failed), len(pending),
                    failed[0][1], attempt + 1, attempts - 1)
        await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))
        pending = [(await producer.send(topic, key=key, value=value), key, value)
                   for (_, key, value), _ in failed]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tape", help="CSV or Parquet file: a time column, open, high, low, close, "
                                     "optional volume, amount and symbol")
    parser.add_argument("--brokers", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="bars.5m", help="topic to publish bar.v1 events to")
    parser.add_argument("--symbol", help="symbol of a tape without a symbol column; with --fanout, "
                                         "the prefix of the synthetic symbols (default SYM)")
    parser.add_argument("--fanout", type=int, default=1,
                        help="make N distinct synthetic symbols (SYM-0001..) from a one-symbol tape")
    parser.add_argument("--speed", default="max",
                        help="'max' (as fast as the broker takes them) or a multiple of real time, e.g. 60")
    parser.add_argument("--max-gap", help="with --speed N: replay pauses longer than this (e.g. 5m: lunch, "
                                          "overnight) as if they lasted this long")
    parser.add_argument("--limit", type=int, help="send at most this many bars per symbol")
    parser.add_argument("--skip", type=int, default=0, help="skip this many bars per symbol first")
    parser.add_argument("--partitions", type=int,
                        help="create the topic with this many partitions if it does not exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    security.add_args(parser)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = asyncio.run(replay(
        args.tape, args.brokers, args.topic, symbol=args.symbol, fanout=args.fanout, speed=args.speed,
        limit=args.limit, skip=args.skip, partitions=args.partitions, progress=not args.no_progress,
        max_gap=args.max_gap, security=security.from_args(args),
    ))
    print(summary.line())
    return 0


"""Ingest: a consumed bar message -> its symbol's window in Redis -> a window ready for
inference, a dead-letter item, or nothing more to do.

No Kafka here: messages are anything with key, value, offset and timestamp (ms), and
the partition's bookkeeping is its PartitionState. The worker records the outcome in
the partition's offsets (ready and dead-letter items block commits until published).
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from worker import events
from worker.partition import PartitionState
from worker.windows import Upsert, WindowStore

log = logging.getLogger(__name__)

# Bars Redis keeps beyond the lookback: a bar re-read after its worker died is forecast on
# its own window even if that worker had already stored newer bars.
REDELIVERY_SLACK = 64


@dataclass
class Ready:
    """A window waiting for inference: everything needed to forecast and publish it."""
    bar: events.Bar
    partition: PartitionState
    offset: int
    key: bytes | None
    value: bytes
    kafka_ts: float        # seconds; the bar message's Kafka timestamp
    received: float        # seconds; when the worker took the message
    values: np.ndarray     # [L, 6]
    times: np.ndarray      # datetime64[s] [L]
    horizon: list[_dt.datetime]

    @property
    def tp(self):
        return self.partition.tp


@dataclass
class DeadLetter:
    """A message that goes to the dead-letter topic, with why."""
    partition: PartitionState
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str


@dataclass
class Parsed:
    """A message parsed once per fetch: the Bar (or why it is not one) and, for bars whose
    symbol occurs once in the fetch, the upsert reply fetched ahead in one round trip."""
    bar: events.Bar | events.InvalidEvent
    reply: object = None
    generation: int = 0


class Ingest:
    def __init__(self, store: WindowStore, *, lookback: int, min_history: int, pred_len: int,
                 interval: _dt.timedelta, calendar_for, metrics,
                 on_lost: Callable[[], Awaitable[None]]):
        self.store = store
        self.lookback = lookback
        self.min_history = min_history
        self.pred_len = pred_len
        self.interval = interval
        self.calendar_for = calendar_for
        self.metrics = metrics
        self.on_lost = on_lost  # Redis forgot a window we had: rebuild every partition's windows

    async def parse_fetch(self, batch: dict) -> dict:
        """(tp, offset) -> Parsed for every message of a fetch ({tp: [msg, ...]}).

        Bars whose symbol occurs once in the fetch (a live burst of N symbols) are upserted
        in one pipelined round trip instead of N; the replies are applied when each bar is
        handled, in order. Symbols with several bars in the fetch (replays) keep the per-bar
        upsert so each bar sees its own window."""
        parsed: dict = {}
        counts: dict[str, int] = {}
        for tp, msgs in batch.items():
            for msg in msgs:
                try:
                    bar = events.parse_bar(msg.value, msg.key)
                    counts[bar.symbol] = counts.get(bar.symbol, 0) + 1
                except events.InvalidEvent as err:
                    bar = err
                parsed[(tp, msg.offset)] = Parsed(bar, None, self.store.generation)
        once = [(key, p) for key, p in parsed.items()
                if isinstance(p.bar, events.Bar) and counts[p.bar.symbol] == 1]
        if len(once) > 1:
            replies = await self.store.upsert_ahead([(p.bar, offset) for (_, offset), p in once])
            for (_, p), reply in zip(once, replies):
                p.reply = reply
        return parsed

    async def handle(self, state: PartitionState, msg, parsed: Parsed) -> Ready | DeadLetter | None:
        """One message, in partition order: upsert its bar, and say what else it needs.
        None: nothing more (stored, buffered, duplicate, too old, or revoked meanwhile)."""
        received = time.time()
        self.metrics.stage_latency.labels(stage="receive").observe(max(0.0, received - msg.timestamp / 1000))
        bar = parsed.bar
        if isinstance(bar, events.InvalidEvent):
            state.handled(msg.offset)
            return DeadLetter(state, msg.offset, msg.key, msg.value, bar.reason, bar.detail)
        # A rebuild since the reply was fetched (store.generation moved) makes it stale:
        # upsert again (the same offset again, which counts as a redelivery).
        if parsed.reply is not None and parsed.generation == self.store.generation:
            result = await self.store.apply(bar, msg.offset, parsed.reply)
        else:
            result = await self.store.upsert(bar, msg.offset)
        state.handled(msg.offset)
        status = result.status
        if result.lost:
            log.warning("Redis lost the window of %s: rebuilding windows from the bar topic", bar.symbol)
            await self.on_lost()
            status = Upsert.APPENDED  # re-decide on the rebuilt window below
        # A re-read of the very message already stored (its worker died before the forecast was
        # acknowledged and committed) is forecast again: at-least-once, never lost.
        redelivered = result.redelivered and not result.lost
        if not status.forecastable and not redelivered:
            self.metrics.events.labels(outcome=status.value).inc()
            return None
        window = await self.store.window(bar.symbol)
        state.note_window(bar.symbol, window)
        t = np.datetime64(bar.time, "s")
        if redelivered:  # its own window: the bars up to it
            window = window.upto(t)
        newest = len(window) and window.times[-1] == t
        if not newest or len(window) < self.min_history:
            self.metrics.events.labels(outcome="buffered" if newest else status.value).inc()
            return None
        self.metrics.events.labels(outcome=status.value).inc()
        if not state.owned:  # revoked while we awaited Redis: the next owner forecasts it
            return None
        horizon = self.calendar_for(bar.symbol).next_times(bar.time, self.interval, self.pred_len)
        return Ready(bar, state, msg.offset, msg.key, msg.value, msg.timestamp / 1000, received,
                     window.values[-self.lookback:], window.times[-self.lookback:], horizon)

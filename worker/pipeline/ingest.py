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
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from worker.adapters.histograms import observe_many
from worker.contracts import events
from worker.pipeline import poison
from worker.pipeline.partition import PartitionState
from worker.pipeline.windows import Upsert, WindowStore

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
    quality: object = None  # the stored form of its forecast (worker/quality/live.py), set at publish

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
    claims: object = None   # scoring claims fetched with the upsert (worker/quality/live.py)
    scores: list = field(default_factory=list)  # score.v1 documents this bar caused


class Ingest:
    def __init__(self, store: WindowStore, *, lookback: int, min_history: int, pred_len: int,
                 interval: _dt.timedelta, calendar_for, metrics,
                 on_lost: Callable[[], Awaitable[None]], policy: events.BarPolicy | None = None,
                 quality=None):
        self.store = store
        self.policy = policy  # grid and timestamp checks (events.BarPolicy), before Redis
        self.lookback = lookback
        self.min_history = min_history
        self.pred_len = pred_len
        self.interval = interval
        self.calendar_for = calendar_for
        self.metrics = metrics
        self._children: dict = {}  # _metric's cache
        self.on_lost = on_lost  # Redis forgot a window we had: rebuild every partition's windows
        self.quality = quality  # live scoring (worker/quality/live.py): claims ride on the upsert round trip
        self._warned_closed: set[str] = set()  # symbols whose closed-period bars were logged once
        self._receive: list[float] = []  # receive-stage figures not yet in the histogram (flush_metrics)

    def _metric(self, name: str):
        """The receive-stage histogram ("receive") or the events counter of an outcome, its
        labelled child looked up once (labels() costs more than the count, per bar)."""
        child = self._children.get(name)
        if child is None:
            child = self._children[name] = (self.metrics.stage_latency.labels(stage=name) if name == "receive"
                                            else self.metrics.events.labels(outcome=name))
        return child

    def _claim(self):
        q = self.quality
        if q is None:
            return None
        return lambda pipe, bar, offset: q.claim_into(pipe, bar.symbol, bar.time, bar.close, offset)

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
                bar = self.parse(msg)
                if isinstance(bar, events.Bar):
                    counts[bar.symbol] = counts.get(bar.symbol, 0) + 1
                parsed[(tp, msg.offset)] = Parsed(bar, None, self.store.generation)
        once = [(key, p) for key, p in parsed.items()
                if isinstance(p.bar, events.Bar) and counts[p.bar.symbol] == 1]
        if len(once) > 1:
            replies = await self.store.upsert_ahead([(p.bar, offset) for (_, offset), p in once],
                                                    also=self._claim())
            for (_, p), reply in zip(once, replies):
                if self.quality is not None:
                    p.reply, p.claims = reply
                else:
                    p.reply = reply
        return parsed

    def flush_metrics(self) -> None:
        """Put the messages handled since the last call into the receive-stage histogram, all
        at once (the fetch loop calls it after each fetch)."""
        if self._receive:
            observe_many(self._metric("receive"), self._receive)
            self._receive = []

    def note_closed_period(self, bar: events.Bar) -> None:
        """Count (and log once per symbol) a bar stamped inside a closed period of its
        calendar: a holiday, a lunch break, after the close. It is still stored and
        forecast: the tape is the truth when it and the calendar disagree (an unscheduled
        session, a late print, extended hours), and refusing it would leave a hole in the
        symbol's window. Its horizon starts at the calendar's next open part. Daily and
        longer bars are not checked: they carry whatever time of day the feed uses."""
        if self.interval >= _dt.timedelta(days=1):
            return
        try:
            cal = self.calendar_for(bar.symbol)
            period = cal.closed_reason(bar.time)
        except Exception:  # noqa: BLE001 - counting must never cost the bar
            log.debug("closed-period check of %s %s failed", bar.symbol, bar.ts, exc_info=True)
            return
        if period is None:
            return
        self.metrics.closed_period_bars.labels(calendar=cal.name, period=period).inc()
        if bar.symbol not in self._warned_closed and len(self._warned_closed) < 10_000:
            self._warned_closed.add(bar.symbol)
            log.warning("%s %s lies in a closed period of calendar %s (%s): accepted and counted "
                        "(kronos_rt_bars_closed_period_total); further ones of this symbol are counted only",
                        bar.symbol, bar.ts, cal.name, period)

    def parse(self, msg) -> events.Bar | events.InvalidEvent:
        """The message's Bar, or why it is none, under this worker's bar policy."""
        return parse_message(msg, self.policy)

    async def handle(self, state: PartitionState, msg, parsed: Parsed) -> Ready | DeadLetter | None:
        """One message, in partition order: upsert its bar, and say what else it needs.
        None: nothing more (stored, buffered, duplicate, too old, or revoked meanwhile)."""
        received = time.time()
        self._receive.append(max(0.0, received - msg.timestamp / 1000))
        if len(self._receive) >= 4096:
            self.flush_metrics()
        bar = parsed.bar
        if isinstance(bar, events.InvalidEvent):
            state.handled(msg.offset)
            return DeadLetter(state, msg.offset, msg.key, msg.value, bar.reason, bar.detail)
        self.note_closed_period(bar)
        # A rebuild since the reply was fetched (store.generation moved) makes it stale:
        # upsert again (the same offset again, which counts as a redelivery).
        if parsed.reply is not None and parsed.generation == self.store.generation:
            result = await self.store.apply(bar, msg.offset, parsed.reply)
        elif self.quality is not None:
            if parsed.claims is None:  # the scoring claim shares the upsert's round trip
                (reply, parsed.claims), = await self.store.upsert_ahead([(bar, msg.offset)], also=self._claim())
            else:
                reply = (await self.store.upsert_ahead([(bar, msg.offset)]))[0]
            result = await self.store.apply(bar, msg.offset, reply)
        else:
            result = await self.store.upsert(bar, msg.offset)
        if self.quality is not None:  # scored off the inference thread; published by the worker
            try:
                parsed.scores = self.quality.score(self.quality.claims(parsed.claims, bar.close))
            except Exception:  # a scoring fault must never send the bar itself to the DLQ
                log.exception("scoring the steps %s@%s realized failed; they go unscored", bar.symbol, bar.ts)
                parsed.scores = []
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
            self._metric(status.value).inc()
            if status is Upsert.TOO_OLD:  # never silent: a bar not forecast says why
                log.warning("not forecast: %s %s (offset %d) is older than its whole stored window",
                            bar.symbol, bar.ts, msg.offset)
            return None
        if result.appended and not result.lost:
            # The live path: the bar went onto the end of the local copy, so it is the newest of
            # its window and nothing stored is newer (no re-read, nothing written ahead).
            times, values, oldest = self.store.latest(bar.symbol)
            state.note_oldest(bar.symbol, oldest)
            return self._ready(state, msg, bar, status, received, times, values)
        window = await self.store.window(bar.symbol)
        state.note_window(bar.symbol, window)
        t = np.datetime64(bar.time, "s")
        # Newer bars from later offsets of this partition are already stored: someone ran ahead
        # of this bar (a previous owner that went on after losing the partition, or before
        # Redis lost the bars in between). This bar is a re-read as much as a redelivery is:
        # forecast on its own window, never dropped as "not the newest" and committed past.
        if not redelivered and written_ahead(window, t, msg.offset):
            log.info("%s %s (offset %d): newer bars from later offsets are already stored; "
                     "forecast on its own window", bar.symbol, bar.ts, msg.offset)
            redelivered = True
        if redelivered:  # its own window: the bars up to it
            stored = len(window)
            window = window.upto(t)
            # Redis trimmed the front of the window since this bar was first handled: its worker
            # ran further ahead of its commit than Redis keeps (worker/pipeline/runahead.py bounds that).
            if len(window) < self.lookback and stored >= self.store.lookback:
                short = len(window) < self.min_history
                log.warning("re-read %s %s (offset %d): %d of its window's bars are still in Redis%s",
                            bar.symbol, bar.ts, msg.offset, len(window),
                            ": not forecast (reread_trimmed)" if short else "; forecast on those")
                if short:
                    self.metrics.events.labels(outcome="reread_trimmed").inc()
                    return None
        if not (len(window) and window.times[-1] == t):  # never silent: a late bar (newer ones came
            # from earlier offsets) or a correction of an older one
            self._metric(status.value).inc()
            log.info("not forecast: %s %s (offset %d) is older than the newest bar of its window (a late bar or a "
                     "correction of an older one)",
                     bar.symbol, bar.ts, msg.offset)
            return None
        return self._ready(state, msg, bar, status, received, window.times, window.values)

    def _ready(self, state: PartitionState, msg, bar: events.Bar, status: Upsert, received: float,
               times: np.ndarray, values: np.ndarray) -> Ready | None:
        """The Ready item of a bar that is its window's newest (None: too little history yet, or
        the partition was revoked meanwhile)."""
        if len(times) < self.min_history:
            self._metric("buffered").inc()
            return None
        self._metric(status.value).inc()
        if not state.owned:  # revoked while we awaited Redis: the next owner forecasts it
            return None
        horizon = self.calendar_for(bar.symbol).next_times(bar.time, self.interval, self.pred_len)
        return Ready(bar, state, msg.offset, msg.key, msg.value, msg.timestamp / 1000, received,
                     values[-self.lookback:], times[-self.lookback:], horizon)


def written_ahead(window, t: np.datetime64, offset: int) -> bool:
    """Does `window` hold a bar newer than `t` that came from an offset past `offset`? In one
    partition read in order, only a re-read meets bars from its future (a late bar's newer
    neighbours came from earlier offsets)."""
    later = window.times > t
    return bool(later.any() and (window.offsets[later] > offset).any())


def parse_message(msg, policy: events.BarPolicy | None = None) -> events.Bar | events.InvalidEvent:
    """A bar message's Bar, or why it is none: never raises (a surprise is `internal_error`).
    The one parse of the live path and of rebuilds (worker/pipeline/recovery.py), so a rebuild never
    stores a bar the DLQ got."""
    try:
        return events.parse_bar(msg.value, msg.key, policy=policy, timestamp_ms=getattr(msg, "timestamp", None))
    except events.InvalidEvent as err:
        return err
    except Exception as exc:  # noqa: BLE001 - one message must not stop the partition
        poison.log_internal("parsing", getattr(msg, "topic", "?"), getattr(msg, "partition", "?"), msg.offset, exc)
        return poison.as_invalid(exc)

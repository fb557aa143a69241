"""`kronos-rt worker`: Kafka bars in, micro-batched Kronos forecasts out.

One Worker per process (tests run several in one process). Its pieces:

- the fetch loop: consumes the bar topic in a consumer group, validates each event
  (invalid -> dead-letter topic), upserts it into its symbol's rolling window in Redis,
  and hands windows that are ready to the micro-batcher;
- the micro-batcher (worker/batcher.py): batches windows and runs the Engine on one
  inference thread; finished batches are published as forecast.v1 messages;
- at-least-once commits (worker/offsets.py): a partition's offset is committed only
  once every forecast / DLQ copy of the bars before it is acknowledged by the broker;
- window recovery: the worker remembers, per partition, the Kafka offset of the oldest
  bar in any of its symbols' windows (also written into the commit metadata). When
  Redis loses the windows (flush, failover onto an empty Redis) it re-reads the
  partition from there and re-upserts the bars without forecasting them again;
- a tick loop for commits, consumer lag, Redis health and GPU memory metrics.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from worker import config, events
from worker.batcher import Batch, MicroBatcher
from worker.config import ModelRef, Settings, is_registry_spec, resolve_model
from worker.hotswap import ModelWatcher, follows_latest
from worker.kafka import dlq_headers, ensure_topics, make_producer, read_partition, topic_partitions
from worker.metrics import MetricsServer, WorkerMetrics
from worker.offsets import OffsetTracker
from worker.sessions import parse_session_map
from worker.windows import WindowStore

log = logging.getLogger("kronos_rt.worker")

FORECAST_STATUSES = ("appended", "corrected", "inserted")
REDELIVERY_SLACK = 64


def build_engine(settings: Settings):
    """Load model and tokenizer as the settings say; returns (engine, model ModelRef)."""
    model_ref = resolve_model(settings.model, "model", settings.registry)
    tok_ref = resolve_model(config.tokenizer_spec(settings), "tokenizer", settings.registry)
    device = None if settings.device == "auto" else settings.device
    engine = load_engine(settings, model_ref.location, tok_ref.location, device, settings.dtype,
                         model_ref.revision, tok_ref.revision)
    return engine, model_ref


def load_engine(settings: Settings, model_location, tokenizer_location, device, dtype,
                model_revision=None, tokenizer_revision=None):
    """An Engine over the checkpoints at these locations, with the settings' context."""
    from kronos_rt import Engine, Kronos, KronosTokenizer

    model = Kronos.from_pretrained(model_location, revision=model_revision)
    tokenizer = KronosTokenizer.from_pretrained(tokenizer_location, revision=tokenizer_revision)
    return Engine(model, tokenizer, device=device, dtype=dtype, max_context=settings.max_context)


@dataclass
class Ready:
    """A window waiting for inference: everything needed to forecast and publish it."""
    bar: events.Bar
    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes
    kafka_ts: float        # seconds; the bar message's Kafka timestamp
    received: float        # seconds; when the worker took the message
    values: np.ndarray     # [L, 6]
    times: np.ndarray      # datetime64[s] [L]
    horizon: list[_dt.datetime]


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: "Worker"):
        self.worker = worker

    async def on_partitions_revoked(self, revoked):
        await self.worker._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned):
        await self.worker._on_assigned(list(assigned))


class Worker:
    def __init__(self, settings: Settings, engine=None, model_ref: ModelRef | None = None,
                 metrics: WorkerMetrics | None = None):
        self.s = settings
        self.engine = engine
        self.model_ref = model_ref
        self.metrics = metrics or WorkerMetrics()
        self.calendar_for = parse_session_map(settings.sessions)
        self.interval = settings.interval_td
        self.tracker = OffsetTracker()
        self.metrics_port: int | None = None
        self.stats = {"forecasts": 0, "dlq": 0, "rebuilds": 0, "bars": 0}
        self._stop = asyncio.Event()
        self._assigned: set[TopicPartition] = set()
        self._processed: dict[TopicPartition, int] = {}       # next offset after the last handled bar
        self._generation = 0  # bumped by every rebuild (see _upsert_ahead)
        self._oldest: dict[TopicPartition, dict[str, int]] = {}  # symbol -> oldest offset in its window
        self._floor: dict[TopicPartition, int] = {}           # inherited re-read position (earlier owner)
        self._unchecked: set[TopicPartition] = set()          # assigned, Redis state not yet verified
        self._committed: dict[TopicPartition, int] = {}
        self._lost = False                                    # Redis lost windows: rebuild before going on
        self._ready = {"model_loaded": False, "kafka": False, "redis": False}
        self._sampling = None
        self._tasks: list[asyncio.Task] = []
        self._next_model = None                               # LoadedModel to switch to before the next batch
        self._reload = asyncio.Event()                        # SIGHUP: re-check the registry now
        self.watcher = None

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask run() to stop fetching, drain, commit and return (thread-unsafe; call on the loop)."""
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: look for a new model version now (call on the loop)."""
        self._reload.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> bool:
        """Run until stop(); returns True when everything in flight was published and committed."""
        s = self.s
        from kronos_rt import SamplingParams

        self._sampling = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                        sample_count=s.sample_count, seed=s.seed)
        self._server = MetricsServer(self.metrics, s.metrics_port, ready_checks=lambda: dict(self._ready))
        self.metrics_port = self._server.start()

        if self.engine is None:
            loop = asyncio.get_running_loop()
            self.engine, self.model_ref = await loop.run_in_executor(None, build_engine, s)
        if self.model_ref is None:
            try:
                self.model_ref = resolve_model(s.model, "model", s.registry)
            except ValueError:
                self.model_ref = ModelRef(str(s.model), str(s.model), "unknown")
        self.metrics.set_model(self.model_ref.name, self.model_ref.version,
                               str(self.engine.device), str(self.engine.dtype).replace("torch.", ""))

        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(s.redis)
        # Room for REDELIVERY_SLACK bars beyond the lookback: a bar re-read after its worker died
        # is forecast on its own window even if that worker had already stored newer bars.
        self.store = WindowStore(self.redis, s.redis_prefix, s.lookback + REDELIVERY_SLACK)
        self._ready["redis"] = await self._ping_redis()

        self.batcher = MicroBatcher(self._compute, self._publish_batch, s.max_batch, s.max_wait_ms / 1000)
        self.batcher.start()
        await self.batcher.run_in_thread(self._warm_up)
        self._ready["model_loaded"] = True

        parts = await topic_partitions(s.brokers, [s.bars_topic])
        await ensure_topics(s.brokers, {s.forecasts_topic: parts.get(s.bars_topic, 1), s.dlq_topic: 1})
        self.producer = make_producer(s.brokers, client_id=f"kronos-rt-{s.worker_id}")
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.brokers, group_id=s.group, client_id=f"kronos-rt-{s.worker_id}",
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(100, s.session_timeout_ms // 4),
            rebalance_timeout_ms=max(s.session_timeout_ms, int(s.drain_timeout_s * 1000)),
            # Kafka answers a fetch as soon as a bar is there; some brokers (Tansu) hold it for
            # the whole wait, which then adds to every bar's latency.
            max_partition_fetch_bytes=1 << 20, fetch_max_wait_ms=s.fetch_max_wait_ms,
        )
        await self.consumer.start()
        self.consumer.subscribe([s.bars_topic], listener=_Rebalance(self))
        self._ready["kafka"] = True
        log.info("worker %s consuming %s as group %s; model %s@%s on %s", s.worker_id, s.bars_topic,
                 s.group, self.model_ref.name, self.model_ref.version, self.engine.device)

        self._tasks = [asyncio.create_task(self._tick_loop(), name="tick")]
        if follows_latest(s.model) and is_registry_spec(s.model):
            self._tasks.append(asyncio.create_task(self._model_loop(), name="models"))
        fetch = asyncio.create_task(self._fetch_loop(), name="fetch")
        stop_wait = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([fetch, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            if fetch.done() and fetch.exception() is not None:
                raise fetch.exception()
            self._stop.set()
            await fetch
            return await self._shutdown()
        finally:
            for t in (fetch, stop_wait, *self._tasks):
                t.cancel()
            await self._close()

    async def _shutdown(self) -> bool:
        """Stop fetching (done by now), finish queued work, publish, commit."""
        deadline = time.monotonic() + self.s.drain_timeout_s
        drained = await self.batcher.drain(timeout=max(0.0, deadline - time.monotonic()))
        try:
            await asyncio.wait_for(self.producer.flush(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            drained = False
        while self.tracker.outstanding() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        clean = drained and self.tracker.outstanding() == 0
        await self._commit(list(self._assigned))
        log.info("worker %s stopped (%s): %s", self.s.worker_id, "clean" if clean else "drain timed out",
                 self.stats)
        return clean

    async def _close(self) -> None:
        for name in ("consumer", "producer"):
            client = getattr(self, name, None)
            if client is not None:
                try:
                    await client.stop()
                except Exception:
                    log.exception("stopping %s", name)
        if getattr(self, "batcher", None) is not None:
            await self.batcher.close()
        if getattr(self, "redis", None) is not None:
            await self.redis.aclose()
        if getattr(self, "_server", None) is not None:
            self._server.stop()

    def _warm_up(self) -> None:
        """One tiny forecast so the first real batch does not pay for lazy initialisation."""
        n = max(2, min(self.s.min_history, 16))
        times = np.datetime64("2024-01-02T09:30:00") + np.arange(n + 1) * np.timedelta64(300, "s")
        vals = np.tile([10.0, 10.2, 9.9, 10.1, 1000.0, 10000.0], (n, 1)) + np.arange(n)[:, None] * 0.01
        self.engine.forecast([vals], [times[:n]], [times[n:]], 1, self._sampling)

    # ------------------------------------------------------------------ fetch path
    async def _fetch_loop(self) -> None:
        while not self.stopping:
            if self._lost:
                await self._rebuild_all()
            batch = await self.consumer.getmany(timeout_ms=100, max_records=500)
            ahead = await self._upsert_ahead(batch)
            for tp, msgs in batch.items():
                for msg in msgs:
                    if self.stopping or tp not in self._assigned:
                        break  # revoked mid-batch: the next owner reads it from the committed offset
                    await self._backpressure()
                    await self._handle_message(tp, msg, *ahead[(tp, msg.offset)])

    async def _upsert_ahead(self, batch) -> dict:
        """Parse every bar of a fetch once, and write those whose symbol occurs once in it to
        Redis in one round trip (a burst of N symbols costs one, not N); the bars are then
        handled one by one as usual. Returns (tp, offset) -> (Bar or InvalidEvent, upsert
        reply or None, generation). Symbols with several bars in the fetch (replays) keep the
        per-bar upsert, so each bar still sees its own window. A rebuild in between makes the
        replies stale (`_generation`); such bars are upserted again (a duplicate of the same
        offset, which is forecast as a redelivery)."""
        for tp, msgs in batch.items():
            if msgs and tp in self._unchecked and tp in self._assigned:
                await self._check_partition(tp, msgs[0].offset)
        parsed: dict = {}
        counts: dict[str, int] = {}
        for tp, msgs in batch.items():
            for msg in msgs:
                try:
                    bar = events.parse_bar(msg.value, msg.key)
                    counts[bar.symbol] = counts.get(bar.symbol, 0) + 1
                except events.InvalidEvent as err:
                    bar = err  # the handler sends it to the DLQ
                parsed[(tp, msg.offset)] = bar
        once = [(key, bar) for key, bar in parsed.items()
                if isinstance(bar, events.Bar) and counts[bar.symbol] == 1]
        replies = {}
        if len(once) > 1:
            got = await self.store.upsert_ahead([(bar, offset) for (_, offset), bar in once])
            replies = {key: reply for (key, _), reply in zip(once, got)}
        return {key: (bar, replies.get(key), self._generation) for key, bar in parsed.items()}

    async def _backpressure(self) -> None:
        """Never drop: when the queue is full, pause every partition until it halves."""
        if self.batcher.pending < self.s.max_queue:
            return
        paused = list(self.consumer.assignment())
        self.consumer.pause(*paused)
        self.metrics.paused_partitions.set(len(paused))
        log.info("queue full (%d): paused %d partitions", self.batcher.pending, len(paused))
        while self.batcher.pending > self.s.max_queue // 2:
            await asyncio.sleep(0.002)
        self.consumer.resume(*[tp for tp in paused if tp in self.consumer.assignment()])
        self.metrics.paused_partitions.set(0)

    async def _handle_message(self, tp: TopicPartition, msg, bar, reply, generation: int) -> None:
        """One bar, as parsed (or rejected) by `_upsert_ahead`: upsert it (or apply the reply
        already fetched), forecast if its window is ready."""
        received = time.time()
        self.stats["bars"] += 1
        if tp in self._unchecked:
            await self._check_partition(tp, msg.offset)
        self.metrics.stage_latency.labels(stage="receive").observe(max(0.0, received - msg.timestamp / 1000))
        if isinstance(bar, events.InvalidEvent):
            await self._send_dlq(tp, msg, bar.reason, bar.detail)
            self._processed[tp] = msg.offset + 1
            return
        if reply is not None and generation == self._generation:
            result = await self.store.apply(bar, msg.offset, reply)
        else:
            result = await self.store.upsert(bar, msg.offset)
        self._processed[tp] = msg.offset + 1
        if result.lost:
            log.warning("Redis lost the window of %s: rebuilding windows from the bar topic", bar.symbol)
            await self._rebuild_all()
            status = "appended"  # re-decide on the rebuilt window below
        else:
            status = result.status
        # A re-read of the very message already stored (its worker died before the forecast was
        # acknowledged and committed) is forecast again: at-least-once, never lost.
        redelivered = result.redelivered and not result.lost
        if status not in FORECAST_STATUSES and not redelivered:
            self.metrics.events.labels(outcome=status).inc()
            self.tracker.seen(tp, msg.offset)
            return
        window = await self.store.window(bar.symbol)
        self._note_window(tp, bar.symbol, window)
        t = np.datetime64(bar.time, "s")
        if redelivered:  # its own window: the bars up to it
            window = window.upto(t)
        newest = len(window) and window.times[-1] == t
        if not newest or len(window) < self.s.min_history:
            self.metrics.events.labels(outcome="buffered" if newest else status).inc()
            self.tracker.seen(tp, msg.offset)
            return
        self.metrics.events.labels(outcome=status).inc()
        if tp not in self._assigned:  # revoked while we awaited Redis: the next owner forecasts it
            return
        values, times = window.values[-self.s.lookback:], window.times[-self.s.lookback:]
        horizon = self.calendar_for(bar.symbol).next_times(bar.time, self.interval, self.s.pred_len)
        self.tracker.add(tp, msg.offset)
        self.batcher.submit(Ready(bar, tp, msg.offset, msg.key, msg.value, msg.timestamp / 1000, received,
                                  values, times, horizon))
        self.metrics.queue_depth.set(self.batcher.queued)

    def _note_window(self, tp: TopicPartition, symbol: str, window) -> None:
        if len(window):
            self._oldest.setdefault(tp, {})[symbol] = int(window.offsets.min())

    # ------------------------------------------------------------------ inference + publish
    def _compute(self, items: list[Ready]) -> list[Any]:
        """Runs on the inference thread: switches to a newly loaded model between batches,
        then forecasts; each result carries the ModelRef of the engine that made it."""
        incoming, self._next_model = self._next_model, None
        if incoming is not None:
            old = self.model_ref
            self.engine = incoming.engine
            self.model_ref = ModelRef(incoming.location, incoming.name, incoming.version)
            self.metrics.model_swaps.labels(result="ok").inc()
            self.metrics.set_model(incoming.name, incoming.version, str(self.engine.device),
                                   str(self.engine.dtype).replace("torch.", ""))
            log.info("switched model %s@%s -> %s@%s", old.name, old.version, incoming.name, incoming.version)
        engine, ref = self.engine, self.model_ref
        # One engine call per window length: a window's forecast is then the same bits whatever
        # else is in the batch (ragged batches are padded, which moves the last bits), so a bar
        # forecast again after a failover gets an identical copy. All windows have the full
        # lookback once warm, so this is one call in steady state.
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(len(it.values), []).append(i)
        out: list[Any] = [None] * len(items)
        for idx in groups.values():
            part = [items[i] for i in idx]
            forecasts = engine.forecast(
                [it.values for it in part], [it.times for it in part],
                [np.array(it.horizon, dtype="datetime64[s]") for it in part],
                self.s.pred_len, self._sampling, quantiles=self.s.quantiles,
            )
            for i, fc in zip(idx, forecasts):
                out[i] = (fc, ref)
        return out

    async def _publish_batch(self, batch: Batch) -> None:
        self.metrics.batch_size.observe(len(batch.items))
        self.metrics.stage_latency.labels(stage="inference").observe(batch.finished - batch.started)
        self.metrics.queue_depth.set(self.batcher.queued)
        if batch.error is not None:
            it = batch.items[0]
            await self._send_dlq(it.tp, it, "inference_error", repr(batch.error)[:500], kafka_msg=False)
            return
        s = self.s
        sampling = {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                    "sample_count": s.sample_count, "lookback": s.lookback, "pred_len": s.pred_len}
        for it, enqueued, (fc, ref) in zip(batch.items, batch.enqueued, batch.results):
            self.metrics.stage_latency.labels(stage="queue").observe(max(0.0, batch.started - enqueued))
            now = time.time()
            latency = {
                "broker_to_received": (it.received - it.kafka_ts) * 1000,
                "queue_wait": (batch.started - enqueued) * 1000,
                "inference": (batch.finished - batch.started) * 1000,
                "total": (now - it.kafka_ts) * 1000,
            }
            doc = events.build_forecast(
                symbol=it.bar.symbol, as_of=it.bar.ts, interval_s=int(self.interval.total_seconds()),
                horizon_times=it.horizon, mean=fc.mean, quantiles=fc.quantiles,
                model_name=ref.name, model_version=ref.version, sampling=sampling,
                latency_ms=latency, topic=it.tp.topic, partition=it.tp.partition, offset=it.offset,
                worker_id=s.worker_id,
            )
            doc["batch_size"] = len(batch.items)
            await self._send(s.forecasts_topic, it.bar.symbol.encode(), events.dumps(doc), None,
                             it.tp, it.offset, on_ack=self._forecast_acked(it, batch.finished))

    def _forecast_acked(self, it: Ready, inference_end: float):
        def acked() -> None:
            now = time.time()
            self.metrics.e2e_latency.observe(max(0.0, now - it.kafka_ts))
            self.metrics.stage_latency.labels(stage="publish").observe(max(0.0, now - inference_end))
            self.metrics.forecasts.inc()
            self.stats["forecasts"] += 1
        return acked

    async def _send_dlq(self, tp: TopicPartition, msg, reason: str, detail: str, kafka_msg: bool = True) -> None:
        self.metrics.dlq.labels(reason=reason).inc()
        self.metrics.events.labels(outcome="dlq").inc()
        self.stats["dlq"] += 1
        if kafka_msg:
            self.tracker.add(tp, msg.offset)  # a Ready item already holds its offset
        await self._send(self.s.dlq_topic, msg.key, msg.value,
                         dlq_headers(reason, detail, tp.topic, tp.partition, msg.offset), tp, msg.offset)

    async def _send(self, topic, key, value, headers, tp, offset, on_ack=None, attempt: int = 0) -> None:
        """Produce; the source offset counts as done only when the broker acknowledged it.
        A failed send is retried (never dropped), so commits cannot skip past it."""
        fut = await self.producer.send(topic, key=key, value=value, headers=headers)

        def done(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                if self.producer._closed:
                    return
                log.warning("publish to %s failed (%s); retrying", topic, None if f.cancelled() else f.exception())
                asyncio.get_running_loop().call_later(
                    min(2.0, 0.05 * 2 ** attempt),
                    lambda: asyncio.ensure_future(self._send(topic, key, value, headers, tp, offset,
                                                             on_ack, attempt + 1)))
                return
            if on_ack is not None:
                on_ack()
            self.tracker.done(tp, offset)

        fut.add_done_callback(done)

    # ------------------------------------------------------------------ commits
    def rebuild_from(self, tp: TopicPartition) -> int | None:
        """Where to re-read `tp` from to rebuild all its symbols' windows (None: nothing to rebuild)."""
        candidates = list(self._oldest.get(tp, {}).values())
        if tp in self._floor:
            candidates.append(self._floor[tp])
        return min(candidates) if candidates else None

    async def _commit(self, tps: list[TopicPartition]) -> None:
        offsets = {}
        for tp in tps:
            c = self.tracker.committable(tp)
            if c is None or c <= self._committed.get(tp, -1):
                continue
            start = self.rebuild_from(tp)
            meta = json.dumps({"rebuild_from": start, "worker": self.s.worker_id})
            offsets[tp] = OffsetAndMetadata(c, meta)
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (KafkaError, AssertionError) as err:  # e.g. mid-rebalance: the next tick (or revoke) retries
            log.info("commit failed: %r", err)
            return
        for tp, om in offsets.items():
            self._committed[tp] = om.offset

    # ------------------------------------------------------------------ rebalance
    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self._assigned.update(assigned)
        try:
            committed = await self.consumer._coordinator.fetch_committed_offsets(assigned)
        except Exception:
            log.exception("reading committed offsets")
            committed = {}
        for tp in assigned:
            om = committed.get(tp)
            self._floor.pop(tp, None)
            if om is not None and om.offset >= 0:
                self._committed[tp] = om.offset
                try:
                    start = json.loads(om.metadata).get("rebuild_from")
                except (TypeError, ValueError, AttributeError):
                    start = None
                # Without a recorded position (e.g. a broker that drops commit metadata),
                # a rebuild must re-read the partition from its beginning.
                self._floor[tp] = int(start) if start is not None else 0
            self._unchecked.add(tp)
        log.info("assigned %s", sorted(tp.partition for tp in self._assigned))

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        revoked = [tp for tp in revoked if tp in self._assigned]
        if not revoked:
            return
        self._assigned.difference_update(revoked)  # the fetch loop drops their remaining messages
        deadline = time.monotonic() + self.s.drain_timeout_s
        while any(self.tracker.outstanding(tp) for tp in revoked) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await self._commit(revoked)
        for tp in revoked:
            self.store.forget(self._oldest.pop(tp, {}).keys())
            self.tracker.reset(tp)
            for d in (self._processed, self._floor, self._committed):
                d.pop(tp, None)
            self._unchecked.discard(tp)
            try:
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        log.info("revoked %s", sorted(tp.partition for tp in revoked))

    # ------------------------------------------------------------------ window recovery
    def _marker(self, tp: TopicPartition) -> str:
        # Present while Redis holds this partition's windows; a flush removes it with them.
        return f"{self.s.redis_prefix}:partition:{tp.topic}:{tp.partition}"

    async def _check_partition(self, tp: TopicPartition, first_offset: int) -> None:
        """First message after assignment: are this partition's windows in Redis?"""
        self._unchecked.discard(tp)
        if not await self.redis.exists(self._marker(tp)) and first_offset > 0 and tp in self._floor:
            log.warning("Redis has no windows for %s: rebuilding from offset %d", tp, self._floor[tp])
            await self._rebuild(tp, first_offset)
        await self.redis.set(self._marker(tp), self.s.worker_id)

    async def _rebuild_all(self) -> None:
        self._lost = False
        for tp in sorted(self._assigned):
            if tp in self._processed:
                await self._rebuild(tp, self._processed[tp])
                await self.redis.set(self._marker(tp), self.s.worker_id)

    async def _rebuild(self, tp: TopicPartition, end: int) -> None:
        """Re-upsert the partition's bars in [rebuild_from, end) into Redis, forecasting nothing."""
        self._generation += 1  # replies of _upsert_ahead from before this are stale
        start = self.rebuild_from(tp)
        if start is None or start >= end:
            return
        t0 = time.monotonic()
        symbols = set(self._oldest.get(tp, {}))
        await self.store.delete(symbols)  # start clean so bars land in their original order
        n = 0
        async for msg in read_partition(self.s.brokers, tp, start, end):
            try:
                bar = events.parse_bar(msg.value, msg.key)
            except events.InvalidEvent:
                continue
            await self.store.upsert(bar, msg.offset)
            symbols.add(bar.symbol)
            n += 1
        oldest = self._oldest.setdefault(tp, {})
        for sym in symbols:
            window = await self.store.window(sym)
            if len(window):
                oldest[sym] = int(window.offsets.min())
        self.metrics.window_rebuilds.inc()
        self.stats["rebuilds"] += 1
        log.warning("rebuilt %d windows of %s from %d bars (offsets %d..%d) in %.2fs",
                    len(symbols), tp, n, start, end - 1, time.monotonic() - t0)

    # ------------------------------------------------------------------ housekeeping
    async def _ping_redis(self) -> bool:
        try:
            return await asyncio.wait_for(self.store.ping(), 2.0)
        except Exception:
            return False

    async def _tick_loop(self) -> None:
        period = self.s.commit_interval_ms / 1000
        last_slow = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                await self._commit(list(self._assigned))
                if time.monotonic() - last_slow >= 1.0:
                    last_slow = time.monotonic()
                    await self._slow_tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tick failed")

    async def _model_loop(self) -> None:
        """Follow the registry's `latest` for --model NAME@latest (and re-check on SIGHUP)."""
        from kronos_rt.registry import Registry

        name = self.s.model.partition("@")[0]
        engine = self.engine
        same_tokenizer = config.tokenizer_spec(self.s) == self.s.model

        def load(mv):
            tok_dir = mv.tokenizer_dir if same_tokenizer else resolve_model(
                config.tokenizer_spec(self.s), "tokenizer", self.s.registry).location
            return load_engine(self.s, mv.model_dir, tok_dir, engine.device, engine.dtype)

        self.watcher = ModelWatcher(Registry(self.s.registry or None), name, self.model_ref.version, load,
                                    self.metrics, verify_device=engine.device)
        while True:
            try:
                await asyncio.wait_for(self._reload.wait(), timeout=self.s.model_poll_s)
            except asyncio.TimeoutError:
                pass
            forced = self._reload.is_set()
            self._reload.clear()
            try:
                loaded = await self.watcher.poll(force=forced)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("model watcher")
                continue
            if loaded is not None:
                self._next_model = loaded  # picked up by the inference thread before its next batch

    async def _slow_tick(self) -> None:
        self._ready["redis"] = await self._ping_redis()
        self.metrics.queue_depth.set(self.batcher.queued)
        for tp in list(self._assigned):
            hw = self.consumer.highwater(tp)
            if hw is not None and tp in self._processed:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - self._processed[tp]))
        # A flush while no bars arrive: notice it by the missing partition markers.
        if self._ready["redis"] and not self._lost:
            for tp in list(self._assigned):
                if tp in self._processed and tp not in self._unchecked and not await self.redis.exists(self._marker(tp)):
                    self._lost = True
                    break
        device = getattr(self.engine, "device", None)
        if device is not None and getattr(device, "type", "") == "cuda":
            import torch

            self.metrics.gpu_memory.labels(kind="allocated").set(torch.cuda.memory_allocated(device))
            self.metrics.gpu_memory.labels(kind="reserved").set(torch.cuda.memory_reserved(device))


# ---------------------------------------------------------------------- CLI
def configure(parser: argparse.ArgumentParser) -> None:
    config.configure(parser)
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = config.from_args(args)

    async def run() -> bool:
        worker = Worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        loop.add_signal_handler(signal.SIGHUP, worker.reload)
        return await worker.run()

    return 0 if asyncio.run(run()) else 1

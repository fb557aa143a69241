"""`kronos-rt worker`: Kafka bars in, micro-batched Kronos forecasts out.

The Worker wires small parts and runs the loops (fetch, tick, broker probe, registry follow,
shadows); each part is testable without Kafka:
- ingest (worker/ingest.py): parse and validate, upsert into the symbol's Redis window, a ready
  item or a DLQ item; poison.py keeps one bad message from stopping its partition;
- inference (worker/inference.py): engine calls on the micro-batcher's one thread (batcher.py),
  model swaps between batches (hotswap.py);
- publish (worker/publish.py): forecast and DLQ sends, retried; acks mark offsets done;
- commit (worker/commit.py): commit what every earlier copy's ack allows, with the re-read
  position in the metadata;
- recovery (worker/recovery.py): partition markers, the check on assignment, rebuilds from
  the bar topic when Redis lost the windows;
- flow control (worker/flow.py, runahead.py): backpressure, run-ahead and outage pauses;
  health (worker/health.py) and start-up waits (worker/waiting.py): what /readyz says;
- optional: live scoring and calibration (worker/quality.py), shadow models (worker/shadow.py),
  the HTTP API on the same engine (worker/http/).
One PartitionState per owned partition (worker/partition.py); revoking drops it.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time

from aiokafka import ConsumerRebalanceListener

from worker import events, kafka, poison
from worker.batcher import Batch, MicroBatcher
from worker.commit import Committer, inherited_floor
from worker.config import ModelRef, Settings, resolve_model
from worker.flow import Flow
from worker.health import Health
from worker.hotswap import follow_registry
from worker.inference import Inference, build_engine
from worker.ingest import REDELIVERY_SLACK, DeadLetter, Ingest, Ready
from worker.keys import RedisKeys
from worker.metrics import MetricsServer, WorkerMetrics
from worker.partition import PartitionState
from worker.publish import ForecastDoc, Publisher
from worker.quality import make_live_scoring
from worker.recovery import Recovery
from worker.runahead import RunAhead
from worker.shadow import Shadows, load_shadows, shadow_topic
from worker.sessions import parse_session_map
from worker.errors import hide_password
from worker.waiting import wait_until
from worker.windows import WindowStore

log = logging.getLogger("kronos_rt.worker")

# Bars of one symbol a worker may handle past its partition's committed offset: what Redis
# keeps beyond the lookback, less one for a pipelined upsert ahead and one to spare.
RUNAHEAD_LIMIT = REDELIVERY_SLACK - 2


def _redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis that went away (restart, outage, password rotated) or refuses writes for
    a while (out of memory, a replica that is read-only after a failover) raises."""
    from redis.exceptions import (
        ConnectionError as RedisConnectionError, OutOfMemoryError, ReadOnlyError, TimeoutError as RedisTimeoutError,
    )

    return (RedisConnectionError, RedisTimeoutError, OutOfMemoryError, ReadOnlyError, ConnectionError, TimeoutError)


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
        self.partitions: dict = {}          # TopicPartition -> PartitionState, owned ones only
        self.metrics_port: int | None = None
        self.inference: Inference | None = None
        self.bars = 0
        self._stop = asyncio.Event()
        self._ready_event = asyncio.Event()  # set once partitions are assigned
        self.health = Health()                # what /readyz says
        self._tasks: list[asyncio.Task] = []
        self._observers: list = []
        self._reload = asyncio.Event()       # SIGHUP: re-check the registry now
        self.http = None                     # the HTTP API server (--http-port), when on
        self.http_port: int | None = None
        self.scoring = None                  # live scoring and calibration (worker/quality.py), when on
        self.shadows: Shadows | None = None  # --shadow candidates (worker/shadow.py), when any

    # ------------------------------------------------------------------ public hooks
    def stop(self) -> None:
        """Ask run() to stop fetching, drain, commit and return (call on the loop)."""
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: look for a new model version now (call on the loop)."""
        self._reload.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def ready(self) -> None:
        """Wait until the worker owns partitions (returns early if run() ends first)."""
        await self._ready_event.wait()

    def observe_batches(self, fn) -> None:
        """fn(items, seconds) after every engine batch, on the inference thread."""
        self._observers.append(fn)
        if self.inference is not None:
            self.inference.add_observer(fn)

    @property
    def stats(self) -> dict:
        pub = getattr(self, "publisher", None)
        rec = getattr(self, "recovery", None)
        return {"forecasts": pub.forecasts if pub else 0, "dlq": pub.dead_letters if pub else 0,
                "rebuilds": rec.rebuilds if rec else 0, "bars": self.bars}

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> bool:
        """Run until stop(); returns True when everything in flight was published and committed."""
        try:
            return await self._run()
        finally:
            self._ready_event.set()  # nobody waits forever on a worker that ended

    async def _run(self) -> bool:
        s = self.s
        self._server = MetricsServer(self.metrics, s.metrics_port, host=s.metrics_host,
                                     ready_checks=self.health.checks)
        self.metrics_port = self._server.start()
        fetch = stop_wait = None
        try:
            if not await self._start():
                log.info("worker %s stopped before it started", s.worker_id)
                return True
            log.info("worker %s consuming %s as group %s (Kafka %s); model %s@%s on %s", s.worker_id, s.bars_topic,
                     s.group, s.kafka_security.describe(), self.model_ref.name, self.model_ref.version,
                     self.engine.device)
            if getattr(self.model_ref, "random_weights", False):
                log.warning("model %s@%s has RANDOM WEIGHTS (kronos-rt models init): its forecasts are "
                            "meaningless; every message says so (random_weights: true)",
                            self.model_ref.name, self.model_ref.version)

            self._tasks = [asyncio.create_task(self._tick_loop(), name="tick"),
                           asyncio.create_task(self.health.probe_broker(self.consumer), name="broker-probe")]
            if self.shadows is not None:
                self._tasks.append(asyncio.create_task(self.shadows.run(), name="shadows"))
            self._tasks.append(asyncio.create_task(  # --model NAME@latest only
                follow_registry(s, self.inference, self.batcher, self.metrics, self._reload), name="models"))
            fetch = asyncio.create_task(self._fetch_loop(), name="fetch")
            stop_wait = asyncio.create_task(self._stop.wait())
            await asyncio.wait([fetch, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            if fetch.done() and fetch.exception() is not None:
                raise fetch.exception()
            self._stop.set()
            await fetch
            return await self._shutdown()
        finally:
            for t in (fetch, stop_wait, *self._tasks):
                if t is not None:
                    t.cancel()
            await self._close()

    async def _start(self) -> bool:
        """Load the model, wait for Redis, then for the broker, then join the group: partitions
        are taken only once both answer. False: stop() came first."""
        s = self.s
        loop = asyncio.get_running_loop()
        if self.engine is None:
            self.engine, self.model_ref = await loop.run_in_executor(None, build_engine, s)
        if self.model_ref is None:
            try:
                self.model_ref = resolve_model(s.model, "model", s.registry)
            except ValueError:
                self.model_ref = ModelRef(str(s.model), str(s.model), "unknown")
        self.inference = Inference(self.engine, self.model_ref, s, self.metrics)
        for fn in self._observers:
            self.inference.add_observer(fn)
        shadow_models = await loop.run_in_executor(None, load_shadows, s, self.engine, self.model_ref,
                                                   self.metrics) if s.shadow else []

        import redis.asyncio as aioredis
        from redis.exceptions import AuthenticationError, ResponseError

        # Timeouts, so a frozen or vanished Redis raises (and is waited out) instead of hanging.
        self.redis = aioredis.from_url(s.redis, socket_connect_timeout=2, socket_timeout=10)
        keys = RedisKeys(s.redis_prefix)
        self.store = WindowStore(self.redis, s.redis_prefix, s.lookback + REDELIVERY_SLACK)
        self.scoring = make_live_scoring(s, self.redis, keys, self.store, self.metrics, lambda: self.publisher,
                                         models=1 + len(shadow_models))
        if self.scoring is not None:
            self.inference.keep_paths = True  # CRPS from the sample paths
        self.ingest = Ingest(self.store, lookback=s.lookback, min_history=s.min_history, pred_len=s.pred_len,
                             interval=self.interval, calendar_for=self.calendar_for, metrics=self.metrics,
                             on_lost=self._rebuild_all, policy=s.bar_policy(self.calendar_for),
                             quality=self.scoring.quality if self.scoring is not None else None)
        self.recovery = Recovery(self.redis, self.store, keys,
                                 lambda tp, start, end: kafka.read_partition(s.brokers, tp, start, end,
                                                                               security=s.kafka_security),
                                 s.worker_id, self.metrics, parse=self.ingest.parse)
        # A refused password (or a ResponseError such as NOAUTH) will not fix itself: say so and exit.
        where = hide_password(s.redis)  # no password in logs
        if not await wait_until(self.store.ping, f"Redis at {where}", stopping=lambda: self.stopping,
                                timeout_s=s.startup_timeout_s, fatal=(AuthenticationError, ResponseError)):
            return False
        self.health.ready["redis"] = True

        self.batcher = MicroBatcher(self.inference.compute, self._publish_batch, s.max_batch,
                                    s.max_wait_ms / 1000, low_max_queue=s.http_max_queue)
        self.batcher.start()
        await self.batcher.run_in_thread(self.inference.warm_up)
        if shadow_models:
            self.shadows = Shadows(shadow_models, s, batcher=self.batcher, primary=self.inference,
                                   publisher_of=lambda: self.publisher, forecast_doc=ForecastDoc(s),
                                   scoring=self.scoring, registry=self.metrics.registry)
            for m in shadow_models:
                await self.batcher.run_in_thread(m.inference.warm_up)
        self.health.ready["model_loaded"] = True
        if s.http_port >= 0:  # ad-hoc forecasts on this engine, behind the stream (worker/http)
            from worker.http import start_api

            self.http = await start_api(s, self.inference, self.batcher, self.metrics.registry,
                                        self.health.checks)
            self.http_port = self.http.port

        parts: dict = {}

        async def broker_answers():
            parts.update(await kafka.topic_partitions(s.brokers, [s.bars_topic], security=s.kafka_security))

        if not await wait_until(broker_answers, f"the Kafka broker at {s.brokers}", stopping=lambda: self.stopping,
                                timeout_s=s.startup_timeout_s):
            return False
        await kafka.ensure_topics(s.brokers, {s.forecasts_topic: parts.get(s.bars_topic, 1), s.dlq_topic: 1,
                                              **({s.scores_topic: parts.get(s.bars_topic, 1)} if s.scores_topic else {}),
                                              **({shadow_topic(s.forecasts_topic): parts.get(s.bars_topic, 1)}
                                                 if self.shadows is not None else {})},
                                 security=s.kafka_security)
        self.producer = kafka.make_producer(s.brokers, client_id=f"kronos-rt-{s.worker_id}", security=s.kafka_security)
        await self.producer.start()
        self.publisher = Publisher(self.producer, metrics=self.metrics, forecast_doc=ForecastDoc(s),
                                   dlq_topic=s.dlq_topic)
        self.consumer = kafka.group_consumer(s)
        await self.consumer.start()
        self.committer = Committer(self.consumer, s.worker_id)
        self.flow = Flow(self.consumer, self.metrics)
        self.consumer.subscribe([s.bars_topic], listener=_Rebalance(self))
        self.health.ready["kafka"] = True
        return True

    def _outstanding(self) -> int:
        return sum(st.offsets.outstanding() for st in self.partitions.values())

    async def _shutdown(self) -> bool:
        """Stop fetching (done by now), finish queued work, publish, commit."""
        deadline = time.monotonic() + self.s.drain_timeout_s
        if self.http is not None:  # no new HTTP requests; the ones in flight are answered
            await self.http.stop(timeout=max(0.1, self.s.drain_timeout_s / 2))
        drained = await self.batcher.drain(timeout=max(0.0, deadline - time.monotonic()))
        try:
            await asyncio.wait_for(self.producer.flush(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            drained = False
        while self._outstanding() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        clean = drained and self._outstanding() == 0
        await self.committer.commit(list(self.partitions.values()))
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
        if self.http is not None:
            await self.http.stop(timeout=1.0)
        if getattr(self, "batcher", None) is not None:
            await self.batcher.close()
        if getattr(self, "redis", None) is not None:
            await self.redis.aclose()
        if getattr(self, "_server", None) is not None:
            self._server.stop()

    # ------------------------------------------------------------------ fetch path
    async def _fetch_loop(self) -> None:
        todo: collections.deque = collections.deque()  # (tp, state, msg) of the fetch not handled yet
        parsed = None
        redis_errors = _redis_errors()
        while not self.stopping:
            try:
                if self.recovery.lost:
                    await self._rebuild_all()
                if not todo:
                    batch = await self.consumer.getmany(timeout_ms=100, max_records=500)
                    todo.extend((tp, self.partitions.get(tp), msg) for tp, msgs in batch.items() for msg in msgs)
                    parsed = None
                if parsed is None and todo:
                    # Partitions seen for the first time since assignment are checked before the
                    # pipelined upserts of parse_fetch can write to their windows.
                    batch = {}
                    for tp, st, msg in todo:
                        batch.setdefault(tp, []).append(msg)
                        if st is not None and st.owned and not st.checked:
                            await self.recovery.check(st, msg.offset)
                    parsed = await self.ingest.parse_fetch(batch)
                while todo and not self.stopping:
                    tp, st, msg = todo[0]
                    if st is None or self.partitions.get(tp) is not st:
                        todo.popleft()  # revoked meanwhile: the next owner reads it from the committed offset
                        continue
                    await self.flow.backpressure(lambda: self.batcher.pending, self.s.max_queue)
                    p = parsed[(tp, msg.offset)]
                    if isinstance(p.bar, events.Bar) and not await self.flow.within_runahead(
                            st, p.bar.symbol, lambda: self.committer.commit([st]), lambda: self.stopping):
                        continue  # revoked or stopping while it waited: looked at again above
                    await self._handle(st, msg, p)
                    todo.popleft()
            except redis_errors as err:
                # Whatever of the fetch was not handled is handled again once Redis answers (the
                # message being handled too: a repeated upsert is a redelivery, forecast again).
                parsed = None
                await self.recovery.ride_out(err, self.flow, self.health, lambda: list(self.partitions.values()),
                                             lambda: self.stopping)

    async def _handle(self, st: PartitionState, msg, parsed) -> None:
        self.bars += 1
        if isinstance(parsed.bar, events.Bar) and st.runahead is not None:
            st.runahead.handled(msg.offset, parsed.bar.symbol)
        if not st.checked:  # assigned while this fetch was being handled
            await self.recovery.check(st, msg.offset)
        try:
            out = await self.ingest.handle(st, msg, parsed)
        except Exception as exc:
            if poison.is_infrastructure(exc):
                raise  # Redis or the broker away: waited out, then the message is handled again
            poison.log_internal("handling", st.tp.topic, st.tp.partition, msg.offset, exc)
            st.handled(msg.offset)
            out = DeadLetter(st, msg.offset, msg.key, msg.value, poison.INTERNAL_ERROR, poison.describe(exc))
        if parsed.scores and self.scoring is not None:  # this bar realized stored forecasts' steps
            await self.scoring.publish(st, msg.offset, parsed.scores)
        if out is None:
            st.offsets.seen(msg.offset)
        elif isinstance(out, DeadLetter):
            st.offsets.add(msg.offset)
            await self.publisher.dead_letter(self.s.dlq_topic, out)
        else:
            st.offsets.add(msg.offset)
            self.batcher.submit(out)
            self.metrics.queue_depth.set(self.batcher.queued)

    async def _publish_batch(self, batch: Batch) -> None:
        self.metrics.queue_depth.set(self.batcher.queued)
        if batch.error is not None:  # the batcher retried it alone: it is this window that fails
            it: Ready = batch.items[0]
            await self.publisher.dead_letter(self.s.dlq_topic, DeadLetter(
                it.partition, it.offset, it.key, it.value, "inference_error", repr(batch.error)[:500]))
            return
        if self.scoring is None:
            await self.publisher.forecasts_of(self.s.forecasts_topic, batch)
        else:
            await self.scoring.before(batch)  # calibrated bands into the forecasts
            try:
                await self.publisher.forecasts_of(self.s.forecasts_topic, batch)
            finally:
                await self.scoring.after(batch)  # stored for scoring; steps already realized scored now
        if self.shadows is not None:  # the primary's forecasts are handed over: the shadows' turn
            self.shadows.offer(batch)

    # ------------------------------------------------------------------ rebalance
    async def _on_assigned(self, assigned) -> None:
        try:
            committed = await kafka.fetch_committed(self.consumer, assigned)
        except Exception:
            log.exception("reading committed offsets")
            committed = {}
        for tp in assigned:
            offset, meta = committed.get(tp, (None, None))
            self.partitions[tp] = PartitionState(
                tp, floor=inherited_floor(offset, meta),
                committed=offset if offset is not None and offset >= 0 else None,
                runahead=RunAhead(RUNAHEAD_LIMIT))
        log.info("assigned %s", sorted(tp.partition for tp in self.partitions))
        if self.partitions:
            self._ready_event.set()

    async def _on_revoked(self, revoked) -> None:
        states = [self.partitions.pop(tp) for tp in revoked if tp in self.partitions]
        if not states:
            return
        for st in states:
            st.owned = False  # the fetch loop and late ingest drop their remaining work
        deadline = time.monotonic() + self.s.drain_timeout_s
        while any(st.offsets.outstanding() for st in states) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await self.committer.commit(states)
        for st in states:
            self.store.forget(st.oldest.keys())
            try:
                self.metrics.consumer_lag.remove(st.tp.topic, str(st.tp.partition))
            except KeyError:
                pass
        log.info("revoked %s", sorted(st.tp.partition for st in states))

    async def _rebuild_all(self) -> None:
        await self.recovery.rebuild_all(list(self.partitions.values()))

    # ------------------------------------------------------------------ housekeeping
    async def _tick_loop(self) -> None:
        period = self.s.commit_interval_ms / 1000
        last_slow = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                await self.committer.commit(list(self.partitions.values()))
                if time.monotonic() - last_slow >= 1.0:
                    last_slow = time.monotonic()
                    await self._slow_tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tick failed")

    async def _slow_tick(self) -> None:
        await self.health.ping_redis(self.store)
        self.metrics.queue_depth.set(self.batcher.queued)
        if self.scoring is not None and self.health.ready["redis"]:
            await self.scoring.quality.flush()  # calibration state, for whoever takes a partition over
        for st in list(self.partitions.values()):
            hw = self.consumer.highwater(st.tp)
            if hw is not None and st.processed is not None:
                self.metrics.consumer_lag.labels(st.tp.topic, str(st.tp.partition)).set(max(0, hw - st.processed))
        if self.health.ready["redis"]:
            await self.recovery.notice_loss(list(self.partitions.values()))
        self.inference.report_memory()

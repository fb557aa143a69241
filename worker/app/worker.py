"""`kronos-rt worker`: Kafka bars in, micro-batched Kronos forecasts out.

The Worker builds its parts (worker/app/assembly.py: Redis, then the model, then the broker) and
runs the loops: fetch (worker/pipeline/fetch.py), tick, broker probe, registry follow, shadows. Each
part is testable without Kafka:
- ingest (worker/pipeline/ingest.py): parse and validate, upsert into the symbol's Redis window, a ready
  item or a DLQ item; poison.py keeps one bad message from stopping its partition;
- inference (worker/pipeline/inference.py): engine calls on the micro-batcher's one thread (batcher.py),
  model swaps between batches (hotswap.py);
- publish (worker/pipeline/publish.py): forecast and DLQ sends, retried; acks mark offsets done;
- commit (worker/pipeline/commit.py): commit what every earlier copy's ack allows, with the re-read
  position in the metadata;
- recovery (worker/pipeline/recovery.py): partition markers, the check on assignment, rebuilds from
  the bar topic when Redis lost the windows;
- flow control (worker/pipeline/flow.py, runahead.py): backpressure, run-ahead and outage pauses;
  health (worker/ops/health.py) and start-up waits (worker/adapters/waiting.py): what /readyz says;
- optional: live scoring and calibration (worker/quality/live.py), shadow models (worker/lifecycle/shadow.py),
  the HTTP API on the same engine (worker/http/).
One PartitionState per owned partition (worker/pipeline/partition.py), added and dropped by the
group's rebalances (worker/pipeline/ownership.py); finished batches go out through worker/pipeline/output.py.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time

from worker.app import assembly
from worker.adapters import kafka
from worker.config import ModelRef, Settings, resolve_model
from worker.pipeline.fetch import FetchLoop
from worker.pipeline.freeze import FreezeWatch
from worker.ops.health import Health
from worker.lifecycle.hotswap import follow_registry
from worker.pipeline.inference import Inference, build_engine, close_engine
from worker.ops.metrics import MetricsServer, WorkerMetrics
from worker.pipeline.output import BatchOutput
from worker.lifecycle.shadow import load_shadows
from worker.calendars.sessions import parse_session_map

log = logging.getLogger("kronos_rt.worker")


class Worker:
    def __init__(self, settings: Settings, engine=None, model_ref: ModelRef | None = None,
                 metrics: WorkerMetrics | None = None):
        self.s = settings
        self.engine = engine
        self._given_engine = engine  # the caller's to close; the engines this worker loads are its own
        self._shadow_models: list = []
        self.model_ref = model_ref
        self.metrics = metrics or WorkerMetrics()
        self.calendar_for = parse_session_map(settings.sessions, settings.calendar_range)
        self.interval = settings.interval_td
        self.partitions: dict = {}          # TopicPartition -> PartitionState, owned ones only
        self.metrics_port: int | None = None
        self.inference: Inference | None = None
        self.parts: assembly.Parts | None = None
        self.fetch: FetchLoop | None = None
        self._stop = asyncio.Event()
        self._ready_event = asyncio.Event()  # set once partitions are assigned
        self.health = Health()                # what /readyz says
        self._tasks: list[asyncio.Task] = []
        self._observers: list = []
        self._reload = asyncio.Event()       # SIGHUP: re-check the registry now

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
        p = self.parts
        pub, rec = (p.publisher, p.recovery) if p is not None else (None, None)
        return {"forecasts": pub.forecasts if pub else 0, "dlq": pub.dead_letters if pub else 0,
                "rebuilds": rec.rebuilds if rec else 0, "bars": self.fetch.bars if self.fetch else 0}

    # The optional parts, None when off (or not started yet).
    @property
    def scoring(self):
        return self.parts.scoring if self.parts is not None else None

    @property
    def shadows(self):
        return self.parts.shadows if self.parts is not None else None

    @property
    def http(self):
        return self.parts.http if self.parts is not None else None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def _outstanding(self) -> int:
        own = self.parts.ownership if self.parts is not None else None
        return own.outstanding() if own is not None else 0

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> bool:
        """Run until stop(); returns True when everything in flight was published and committed."""
        try:
            return await self._run()
        finally:
            self._ready_event.set()  # nobody waits forever on a worker that ended

    async def _run(self) -> bool:
        s = self.s
        server = MetricsServer(self.metrics, s.metrics_port, host=s.metrics_host, ready_checks=self.health.checks,
                               details=self.health.details)
        self.metrics_port = server.start()
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
            p = self.parts
            watch = FreezeWatch(s.session_timeout_ms / 1000, self._stood_still)
            self._tasks = [asyncio.create_task(self._tick_loop(), name="tick"),
                           asyncio.create_task(self.health.probe_broker(p.consumer), name="broker-probe"),
                           asyncio.create_task(watch.run(), name="freeze-watch")]
            if p.shadows is not None:
                self._tasks.append(asyncio.create_task(p.shadows.run(), name="shadows"))
            self._tasks.append(asyncio.create_task(  # --model NAME@latest only
                follow_registry(s, self.inference, p.batcher, self.metrics, self._reload), name="models"))
            # Everything start-up made (torch, the model, pandas, ...: ~200 000 objects) out of the
            # collector's way: a full collection then walks what the stream keeps, not all of it
            # (~0.1 s each, holding the GIL, several per 5 000-symbol burst otherwise).
            gc.freeze()
            self.fetch = FetchLoop(p, self.partitions, s, lambda: self.stopping, woke=watch.poll)
            fetch = asyncio.create_task(self.fetch.run(), name="fetch")
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
            if self.parts is not None:
                await self.parts.close()
            self._close_engines()
            server.stop()

    async def _start(self) -> bool:
        """Load the model, then build the parts (worker/app/assembly.py). False: stop() came first."""
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
        shadow_models = self._shadow_models = await loop.run_in_executor(
            None, load_shadows, s, self.engine, self.model_ref, self.metrics) if s.shadow else []
        p = self.parts = assembly.Parts(self.inference, self.health, self.metrics)
        stopping = lambda: self.stopping  # noqa: E731
        if not await assembly.connect_redis(p, s, calendar_for=self.calendar_for, shadow_models=shadow_models,
                                            stopping=stopping):
            return False
        await assembly.start_model(p, s, shadow_models=shadow_models, on_batch=BatchOutput(p, s, self.metrics))
        return await assembly.join_group(p, s, states=self.partitions, stopping=stopping,
                                         on_owned=self._ready_event.set)

    def _close_engines(self) -> None:
        """End the processes (--inference process) of the engines this worker loaded: its own
        model (the one it serves now, after any hot swap) and its shadows."""
        serving = self.inference.engine if self.inference is not None else self.engine
        for engine in (serving, self.engine):  # the same one twice when nothing was swapped: close is idempotent
            if engine is not None and engine is not self._given_engine:
                close_engine(engine)
        for m in self._shadow_models:
            close_engine(m.inference.engine)

    async def _shutdown(self) -> bool:
        """Stop fetching (done by now), finish queued work, publish, commit."""
        p = self.parts
        deadline = time.monotonic() + self.s.drain_timeout_s
        if p.http is not None:  # no new HTTP requests; the ones in flight are answered
            await p.http.stop(timeout=max(0.1, self.s.drain_timeout_s / 2))
        drained = await p.batcher.drain(timeout=max(0.0, deadline - time.monotonic()))
        try:
            await asyncio.wait_for(p.producer.flush(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            drained = False
        while self._outstanding() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        clean = drained and self._outstanding() == 0
        await p.committer.commit(p.ownership.owned())
        log.info("worker %s stopped (%s): %s", self.s.worker_id, "clean" if clean else "drain timed out",
                 self.stats)
        return clean

    def _stood_still(self, seconds: float) -> None:
        """The worker did not run for longer than its session timeout (worker/pipeline/freeze.py): drop
        every partition, committing nothing, and ask the group for a new assignment at once."""
        p = self.parts
        dropped = p.ownership.drop_all()
        log.warning("this worker stood still for %.1fs, longer than its session timeout (frozen or starved): "
                    "dropped partitions %s without committing and rejoining the group", seconds, dropped)
        kafka.rejoin(p.consumer)

    # ------------------------------------------------------------------ housekeeping
    async def _tick_loop(self) -> None:
        period = self.s.commit_interval_ms / 1000
        last_slow = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                await self.parts.committer.commit(self.parts.ownership.owned())
                if time.monotonic() - last_slow >= 1.0:
                    last_slow = time.monotonic()
                    await self._slow_tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tick failed")

    async def _slow_tick(self) -> None:
        p = self.parts
        await self.health.ping_redis(p.store)
        self.metrics.queue_depth.set(p.batcher.queued)
        if p.scoring is not None and self.health.ready["redis"]:
            await p.scoring.quality.flush()  # calibration state, for whoever takes a partition over
        for st in p.ownership.owned():
            hw = p.consumer.highwater(st.tp)
            if hw is not None and st.processed is not None:
                self.metrics.consumer_lag.labels(st.tp.topic, str(st.tp.partition)).set(max(0, hw - st.processed))
        if self.health.ready["redis"]:
            if self.health.note_redis_node(p.redis):
                p.recovery.lost = True  # failed over: what the old node never passed on is rebuilt
            await p.recovery.notice_loss(p.ownership.owned())
        self.inference.report_memory()

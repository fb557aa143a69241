"""Shadow models: candidate versions forecast the same windows as the primary, after it.

`--shadow NAME@VERSION` (repeatable) loads each candidate with build_engine on the primary's
device and dtype. Once a primary batch was handed to the publisher, its windows are queued
for the shadows; one task runs them on the inference thread (MicroBatcher.run_in_thread),
each shadow only once no stream window waits (batcher.drain), so a primary batch waits at
most for the one shadow batch already computing. Shadow forecasts are forecast.v1 with the
shadow's model name/version and `"shadow": true`, on `<forecasts-topic>.shadow`. With live
scoring on they are stored and scored like the primary's (stored forecasts are keyed by
model name@version, so neither collides), with `"shadow": true` on their scores; they carry
raw bands only and never feed the calibration, which is the primary's.

Skipped, and counted per version (kronos_rt_shadow_skipped{reason}):
- backpressure: more than --shadow-max-queue stream windows wait for the primary;
- behind: more than --shadow-max-queue windows already wait for the shadows;
- is_primary: the primary was hot-swapped to this very version.

Best effort, by choice: shadow sends gate no commit (a commit never waits for a shadow, and
the run-ahead limit never throttles the primary because of one). After a kill -9, shadow
forecasts of bars in flight may be missing or sent twice. Scores of stored shadow forecasts
realized by a later bar go out with that bar, at-least-once like the primary's.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time

from prometheus_client import CollectorRegistry, Counter

from worker.config import ModelRef, Settings, is_registry_spec
from worker.errors import ConfigError
from worker.pipeline.inference import Inference, build_engine, close_engine
from worker.ops.metrics import metric_names_of
from worker.pipeline.publish import latency_ms

log = logging.getLogger(__name__)

SUFFIX = ".shadow"


def shadow_topic(forecasts_topic: str) -> str:
    return forecasts_topic + SUFFIX


def parse_shadows(spec: str) -> list[str]:
    """'a@1, b@2' -> ['a@1', 'b@2'] (duplicates dropped, order kept)."""
    return list(dict.fromkeys(p.strip() for p in str(spec or "").split(",") if p.strip()))


class ShadowMetrics:
    def __init__(self, registry: CollectorRegistry):
        lab = ["model", "version"]
        self.forecasts = Counter("kronos_rt_shadow_forecasts", "Shadow forecasts published and acknowledged.",
                                 lab, registry=registry)
        self.skipped = Counter("kronos_rt_shadow_skipped", "Windows a shadow model did not forecast, by reason "
                               "(backpressure, behind, is_primary).", lab + ["reason"], registry=registry)
        self.errors = Counter("kronos_rt_shadow_errors", "Windows a shadow model failed to forecast.",
                              lab, registry=registry)


# What --shadow adds to the worker's registry: dashboards may use them.
SHADOW_METRIC_NAMES: frozenset[str] = metric_names_of(ShadowMetrics)


class _ShadowInference(Inference):
    def publish_model(self) -> None:
        pass  # the model gauge names the primary


@dataclasses.dataclass
class ShadowModel:
    ref: ModelRef
    inference: Inference


def load_shadows(settings: Settings, engine, primary: ModelRef, metrics) -> list[ShadowModel]:
    """Each --shadow spec loaded on the primary engine's device and dtype (blocking)."""
    specs = parse_shadows(settings.shadow)
    if not specs:
        return []
    if settings.shadow_max_queue < 1:
        raise ConfigError(f"--shadow-max-queue must be >= 1, got {settings.shadow_max_queue}")
    on_device = dataclasses.replace(settings, device=str(engine.device),
                                    dtype=str(engine.dtype).replace("torch.", ""))
    seen = {(primary.name, primary.version)}
    out = []
    try:
        for spec in specs:
            # A registry version brings its own tokenizer unless --tokenizer names one.
            tok = spec if settings.tokenizer in ("", "auto") and is_registry_spec(spec) else None
            eng, ref = build_engine(on_device, spec, tok)
            if (ref.name, ref.version) in seen:
                close_engine(eng)
                raise ConfigError(f"--shadow {spec}: {ref.name}@{ref.version} is already served "
                                  "(the primary or another shadow); its forecasts and scores would collide")
            seen.add((ref.name, ref.version))
            log.info("shadow model %s@%s loaded on %s", ref.name, ref.version, eng.device)
            out.append(ShadowModel(ref, _ShadowInference(eng, ref, settings, metrics)))
    except BaseException:
        for m in out:  # --inference process: the ones already started end with the failed start-up
            close_engine(m.inference.engine)
        raise
    return out


class Shadows:
    """Queues the primary's windows for the shadow models and runs them when the engine is idle."""

    def __init__(self, models: list[ShadowModel], settings: Settings, *, batcher, primary: Inference,
                 publisher_of, scoring, registry: CollectorRegistry):
        self.models = models
        self.topic = shadow_topic(settings.forecasts_topic)
        self.max_queue = settings.shadow_max_queue
        self.batcher = batcher
        self.primary = primary
        self.publisher_of = publisher_of    # () -> Publisher: its ForecastDoc builds the shadow documents
        self.scoring = scoring              # LiveScoring or None
        self.metrics = ShadowMetrics(registry)
        self._queue: collections.deque = collections.deque()  # (items, handed over at)
        self._queued = 0
        self._busy = 0
        self._wake = asyncio.Event()
        for m in models:
            m.inference.keep_paths = primary.keep_paths

    @property
    def pending(self) -> int:
        """Windows offered and not yet forecast or skipped."""
        return self._queued + self._busy

    def _skip(self, n: int, reason: str, models=None) -> None:
        for m in models or self.models:
            self.metrics.skipped.labels(m.ref.name, m.ref.version, reason).inc(n)

    def offer(self, batch) -> None:
        """The primary's batch, after its forecasts were handed to the publisher."""
        items = [it for it, res in zip(batch.items, batch.results or ()) if res is not None]
        if not items:
            return
        if self.batcher.queued > self.max_queue:
            self._skip(len(items), "backpressure")
        elif self._queued + len(items) > self.max_queue:
            self._skip(len(items), "behind")
        else:
            self._queue.append((items, time.time()))
            self._queued += len(items)
            self._wake.set()

    async def run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            items, handed = self._queue.popleft()
            self._queued -= len(items)
            self._busy = len(items)
            try:
                for m in self.models:
                    await self._run_one(m, items, handed)
            finally:
                self._busy = 0

    async def _run_one(self, m: ShadowModel, items: list, handed: float) -> None:
        await self.batcher.drain()  # stream windows first: the engine is the primary's
        if self.batcher.queued > self.max_queue:
            self._skip(len(items), "backpressure", [m])
            return
        cur = self.primary.model_ref
        if (cur.name, cur.version) == (m.ref.name, m.ref.version):
            self._skip(len(items), "is_primary", [m])
            return
        started = time.time()
        try:
            results = await self.batcher.run_in_thread(m.inference.compute, items)
        except Exception:
            log.warning("shadow %s@%s failed on %d windows", m.ref.name, m.ref.version, len(items), exc_info=True)
            self.metrics.errors.labels(m.ref.name, m.ref.version).inc(len(items))
            return
        await self._publish(m, items, results, handed, started, time.time())

    async def _publish(self, m: ShadowModel, items, results, handed: float, started: float,
                       finished: float) -> None:
        """Through the primary's Publisher.forecast, with no partition state: gates no commit."""
        pub = self.publisher_of()
        quality = self.scoring.quality if self.scoring is not None else None
        stored = []
        for it, (fc, ref) in zip(items, results):
            rec = None
            if quality is not None:
                rec = quality.record(it.bar.symbol, it.bar.ts, it.horizon, it.values, fc, ref)
                rec.cal_q, rec.cal_n, rec.cal_group, rec.shadow = None, 0, "", True
                stored.append((rec, it))
            await pub.forecast(self.topic, dataclasses.replace(it, quality=rec), fc, ref,
                               latency_ms(it, max(0.0, started - handed), started, finished), len(items), None,
                               on_ack=self.metrics.forecasts.labels(ref.name, ref.version).inc,
                               on_reject=self._refused(ref), shadow=True)
        if stored:
            await self._score(stored)

    def _refused(self, ref: ModelRef):
        async def refused(err: BaseException) -> None:
            log.error("%s refused a shadow forecast of %s@%s for good (%r)", self.topic, ref.name, ref.version, err)
            self.metrics.errors.labels(ref.name, ref.version).inc()
        return refused

    async def _score(self, stored) -> None:
        """Store the shadow forecasts for scoring; publish the scores of steps already realized."""
        try:
            todo = [(rec, it.horizon, await self.scoring.store.window(it.bar.symbol)) for rec, it in stored]
            for cs in await self.scoring.quality.store(todo):
                await self.scoring.publish(None, 0, self.scoring.quality.score(cs))
        except Exception:  # scoring a shadow never stops anything
            log.warning("storing %d shadow forecasts for scoring failed", len(stored), exc_info=True)

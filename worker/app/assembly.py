"""Start-up: the worker's parts, built in the order their dependencies answer.

Redis first (windows, scoring state, recovery), then the model's warm-up on the inference
thread, the shadows and the HTTP API, and only then the broker: partitions are taken once
Redis and the model are ready, so nothing is fetched that could not be handled. Each wait
can be bounded (`--startup-timeout-s`) and ends early on stop().
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from worker.adapters import kafka
from worker.pipeline import poison
from worker.pipeline.batcher import MicroBatcher
from worker.pipeline.commit import Committer
from worker.errors import hide_password
from worker.pipeline.flow import Flow
from worker.ops.health import Health
from worker.pipeline.inference import Inference
from worker.pipeline.ingest import REDELIVERY_SLACK, Ingest
from worker.adapters.keys import RedisKeys
from worker.pipeline.ownership import Ownership
from worker.pipeline.publish import ForecastDoc, Publisher
from worker.quality.live import make_live_scoring
from worker.pipeline.recovery import Recovery
from worker.lifecycle.shadow import Shadows, shadow_topic
from worker.adapters.waiting import wait_until
from worker.pipeline.windows import WindowStore


@dataclass
class Parts:
    """Everything a running worker is made of; None until built (a stop during start-up
    leaves the rest None, and close() stops what exists)."""
    inference: Inference
    health: Health
    metrics: Any
    redis: Any = None
    store: WindowStore | None = None
    scoring: Any = None          # live scoring and calibration (worker/quality/live.py), when on
    ingest: Ingest | None = None
    recovery: Recovery | None = None
    batcher: MicroBatcher | None = None
    shadows: Shadows | None = None
    http: Any = None             # the HTTP API server (--http-port), when on
    producer: Any = None
    publisher: Publisher | None = None
    consumer: Any = None
    committer: Committer | None = None
    flow: Flow | None = None
    ownership: Ownership | None = None

    async def close(self) -> None:
        await kafka.stop_all(self.consumer, self.producer)
        if self.http is not None:
            await self.http.stop(timeout=1.0)
        if self.batcher is not None:
            await self.batcher.close()
        if self.redis is not None:
            from worker.adapters import redis_connect

            await redis_connect.close(self.redis)


async def connect_redis(parts: Parts, s, *, calendar_for, shadow_models: list,
                        stopping: Callable[[], bool]) -> bool:
    """Redis and what keeps its state there: windows, ingest, scoring, recovery. False: stop() came first."""
    from redis.exceptions import AuthenticationError, ConnectionError as RedisConnectionError, ResponseError

    from worker.adapters import redis_connect

    keys = RedisKeys(s.redis_prefix)  # its script layouts were checked with the settings (config.py)
    # Timeouts, so a frozen or vanished Redis raises (and is waited out) instead of hanging.
    parts.redis = redis_connect.connect(s.redis, socket_connect_timeout=2, socket_timeout=10)
    parts.store = WindowStore(parts.redis, s.redis_prefix, s.lookback + REDELIVERY_SLACK)
    parts.scoring = make_live_scoring(s, parts.redis, keys, parts.store, parts.metrics, lambda: parts.publisher,
                                      models=1 + len(shadow_models))
    if parts.scoring is not None:
        parts.inference.keep_paths = True  # CRPS from the sample paths
    parts.ingest = Ingest(parts.store, lookback=s.lookback, min_history=s.min_history, pred_len=s.pred_len,
                          interval=s.interval_td, calendar_for=calendar_for, metrics=parts.metrics,
                          on_lost=lambda: parts.recovery.rebuild_all(parts.ownership.owned()),
                          policy=s.bar_policy(calendar_for),
                          quality=parts.scoring.quality if parts.scoring is not None else None)
    parts.recovery = Recovery(parts.redis, parts.store, keys,
                              lambda tp, start, end: kafka.read_partition(s.brokers, tp, start, end,
                                                                            security=s.kafka_security),
                              s.worker_id, parts.metrics, parse=parts.ingest.parse)
    # A refused password (or a ResponseError such as NOAUTH) will not fix itself: say so and exit.
    async def answers() -> None:
        try:
            await parts.store.ping()
        except ResponseError as exc:
            if poison.is_outage(exc):  # a Cluster still forming or failing over: wait, as for a refused connection
                raise RedisConnectionError(str(exc)) from exc
            raise

    if not await wait_until(answers, f"Redis at {hide_password(s.redis)}", stopping=stopping,
                            timeout_s=s.startup_timeout_s, fatal=(AuthenticationError, ResponseError)):
        return False
    parts.health.note_redis_node(parts.redis, parts.metrics)
    parts.health.ready["redis"] = True
    return True


async def start_model(parts: Parts, s, *, shadow_models: list, on_batch) -> None:
    """The inference thread, the warm-up of every model on it, then the HTTP API on the same engine."""
    parts.batcher = MicroBatcher(parts.inference.compute, on_batch, s.max_batch, s.max_wait_ms / 1000,
                                 low_max_queue=s.http_max_queue)
    parts.batcher.start()
    await parts.batcher.run_in_thread(parts.inference.warm_up)
    if shadow_models:
        parts.shadows = Shadows(shadow_models, s, batcher=parts.batcher, primary=parts.inference,
                                publisher_of=lambda: parts.publisher, scoring=parts.scoring, registry=parts.metrics.registry)
        for m in shadow_models:
            await parts.batcher.run_in_thread(m.inference.warm_up)
    parts.health.ready["model_loaded"] = True
    if s.http_port >= 0:  # ad-hoc forecasts on this engine, behind the stream (worker/http)
        from worker.http import start_api

        parts.http = await start_api(s, parts.inference, parts.batcher, parts.metrics.registry, parts.health.checks)


async def join_group(parts: Parts, s, *, states: dict, stopping: Callable[[], bool], on_owned) -> bool:
    """Wait for the broker, create the output topics, start the producer, join the group.
    False: stop() came first."""
    found: dict = {}

    async def broker_answers():
        found.update(await kafka.topic_partitions(s.brokers, [s.bars_topic], security=s.kafka_security))

    if not await wait_until(broker_answers, f"the Kafka broker at {s.brokers}", stopping=stopping,
                            timeout_s=s.startup_timeout_s):
        return False
    n = found.get(s.bars_topic, 1)  # outputs keyed by symbol, partitioned as the bars are
    topics = {s.forecasts_topic: n, s.dlq_topic: 1}
    if s.scores_topic:
        topics[s.scores_topic] = n
    if parts.shadows is not None:
        topics[shadow_topic(s.forecasts_topic)] = n
    await kafka.ensure_topics(s.brokers, topics, security=s.kafka_security)
    parts.producer = kafka.make_producer(s.brokers, client_id=f"kronos-rt-{s.worker_id}", security=s.kafka_security)
    await parts.producer.start()
    parts.publisher = Publisher(parts.producer, metrics=parts.metrics, forecast_doc=ForecastDoc(s),
                                dlq_topic=s.dlq_topic)
    parts.consumer = kafka.group_consumer(s)
    await parts.consumer.start()
    parts.committer = Committer(parts.consumer, s.worker_id)
    parts.flow = Flow(parts.consumer, parts.metrics)
    parts.ownership = Ownership(states, parts.consumer, parts.committer, parts.store, parts.metrics,
                                kafka.revoke_drain_s(s), on_owned=on_owned)
    parts.consumer.subscribe([s.bars_topic], listener=parts.ownership)
    parts.health.ready["kafka"] = True
    return True

"""Publish: forecast and dead-letter sends, retried with backoff, acks handed to the committer.

A source offset counts as done only when the broker acknowledged every copy it caused:
each send's ack calls `PartitionState.offsets.done(offset)`. A failed send is retried,
never dropped, so commits cannot skip past it; the delays grow as `Backoff` says. A send
refused for good (kafka.send_rejected: too large, not bytes) is not retried: a forecast
then goes to the DLQ instead (reason publish_rejected), a dead-letter copy is cut down
to a few kB, and only if even that is refused is it logged and given up.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from worker.contracts import events
from worker.adapters import kafka
from worker.adapters.histograms import observe_many, observe_repeated
from worker.pipeline import poison
from worker.pipeline.batcher import Batch
from worker.pipeline.ingest import DeadLetter, Ready
from worker.pipeline.partition import PartitionState

log = logging.getLogger(__name__)

SMALL_DLQ_BYTES = 4096  # a dead-letter copy the broker refused is sent again cut down to this


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds before retry number `attempt + 1` (attempt 0 failed first)."""
        return min(self.cap_s, self.base_s * 2 ** min(attempt, 30))


def latency_ms(it: Ready, queue_wait_s: float, started: float, finished: float) -> dict:
    """A forecast's latency figures (forecast.v1 latency_ms): "total" runs up to now."""
    return {
        "broker_to_received": (it.received - it.kafka_ts) * 1000,
        "queue_wait": queue_wait_s * 1000,
        "inference": (finished - started) * 1000,
        "total": (time.time() - it.kafka_ts) * 1000,
    }


class ForecastDoc:
    """Builds the forecast.v1 document of a ready item from the worker's settings."""

    def __init__(self, settings):
        s = settings
        self.interval_s = int(s.interval_td.total_seconds())
        self.worker_id = s.worker_id
        self.sampling = {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                         "sample_count": s.sample_count, "lookback": s.lookback, "pred_len": s.pred_len}

    def __call__(self, it: Ready, fc, ref, latency_ms: dict) -> dict:
        rec = getattr(it, "quality", None)  # live scoring on: calibrated bands (worker/quality/live.py)
        cal = {}
        if rec is not None and rec.cal_q is not None:
            from worker.quality.live import calibrated_entries

            cal = {"calibrated": calibrated_entries(rec),
                   "calibration": {"levels": rec.levels, "scores": rec.cal_n, "source": rec.cal_group}}
        return events.build_forecast(
            symbol=it.bar.symbol, as_of=it.bar.ts, interval_s=self.interval_s, horizon_times=it.horizon,
            mean=fc.mean, quantiles=fc.quantiles, model_name=ref.name, model_version=ref.version,
            sampling=self.sampling, latency_ms=latency_ms, topic=it.tp.topic, partition=it.tp.partition,
            offset=it.offset, worker_id=self.worker_id, random_weights=getattr(ref, "random_weights", False),
            **cal,
        )


class Publisher:
    def __init__(self, producer, *, metrics, forecast_doc: Callable | None = None, backoff: Backoff = Backoff(),
                 closed: Callable[[object], bool] = kafka.producer_closed, dlq_topic: str = "bars.dlq",
                 dlq_max_bytes: int = kafka.DLQ_MAX_BYTES):
        self.producer = producer
        self.metrics = metrics
        self.forecast_doc = forecast_doc  # (item, forecast, model_ref, latency_ms) -> dict
        self.backoff = backoff
        self.producer_closed = closed
        self.forecasts = 0
        self.dead_letters = 0
        self.dlq_topic = dlq_topic              # where forecasts the broker refuses send their bar
        self.dlq_max_bytes = dlq_max_bytes
        self.failing = 0  # sends failed since the last ack: publishing trouble is said once, and its end

    async def send(self, topic: str, key, value, headers, state: PartitionState | None, offset: int,
                   on_ack: Callable[[], None] | None = None, attempt: int = 0,
                   on_reject: Callable[[BaseException], Awaitable[None]] | None = None) -> None:
        """Produce; on the broker's ack run on_ack and mark the source offset done. The caller
        has added the offset to the partition's offsets (state.offsets.add) beforehand;
        state None: the send gates no commit (shadow forecasts and their scores).
        A record refused for good goes to on_reject (which adds its own work for the offset)
        instead of being retried."""
        def retry(err) -> None:
            if not self.failing:
                log.warning("publishing to %s fails (%r): retrying every send until the broker acknowledges it",
                            topic, err)
            else:
                log.debug("publish to %s failed (%r); retry %d", topic, err, attempt + 1)
            self.failing += 1
            self.metrics.publish_retries.labels(topic=topic).inc()
            asyncio.get_running_loop().call_later(
                self.backoff.delay(attempt),
                lambda: asyncio.ensure_future(self.send(topic, key, value, headers, state, offset,
                                                        on_ack, attempt + 1, on_reject)))

        def failed(err) -> None:
            if self.producer_closed(self.producer):
                return
            if err is not None and kafka.send_rejected(err):
                asyncio.ensure_future(self._rejected(topic, err, state, offset, on_reject))
            else:
                retry(err)

        try:
            fut = await self.producer.send(topic, key=key, value=value, headers=headers)
        except Exception as exc:  # noqa: BLE001 - refused before it left (too large, no metadata yet)
            failed(exc)
            return

        def done(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                failed(None if f.cancelled() else f.exception())
                return
            if self.failing:
                log.warning("publishing works again (%d failed sends were retried)", self.failing)
                self.failing = 0
            if on_ack is not None:
                on_ack()
            if state is not None:
                state.offsets.done(offset)

        fut.add_done_callback(done)

    async def _rejected(self, topic: str, err: BaseException, state: PartitionState | None, offset: int,
                        on_reject) -> None:
        try:
            if on_reject is not None:
                await on_reject(err)  # adds its own work for the offset first: commits never skip it
            else:
                log.error("%s refused a record from offset %s for good (%r): given up", topic, offset, err)
                self.metrics.dlq.labels(reason="dlq_rejected").inc()
        finally:
            if state is not None:
                state.offsets.done(offset)

    async def dead_letter(self, topic: str, item: DeadLetter) -> None:
        self.metrics.dlq.labels(reason=item.reason).inc()
        self.metrics.events.labels(outcome="dlq").inc()
        self.dead_letters += 1
        tp = item.partition.tp
        headers = kafka.dlq_headers(item.reason, item.detail, tp.topic, tp.partition, item.offset)
        key, value, headers = kafka.dlq_record(item.key, item.value, headers, self.dlq_max_bytes)

        async def smaller(err: BaseException) -> None:
            # The broker's limit is below ours: a few kB are enough to recognize the message.
            item.partition.offsets.add(item.offset)
            refused = [("error.dlq_refused", repr(err)[:200].encode())]
            k, v, h = kafka.dlq_record(item.key, item.value, headers[:5] + refused, SMALL_DLQ_BYTES)
            await self.send(topic, k, v, h, item.partition, item.offset)

        await self.send(topic, key, value, headers, item.partition, item.offset,
                        on_reject=smaller if self.dlq_max_bytes > SMALL_DLQ_BYTES else None)

    async def forecasts_of(self, topic: str, batch: Batch) -> None:
        """Publish each item's forecast with its latency figures; the acks gate commits.
        With a producer that takes record batches (aiokafka's), the batch's forecasts go out
        as a few record batches (kafka.send_many); a record batch that fails has each of its
        forecasts sent again alone, with the usual retries and refusal handling."""
        self.metrics.batch_size.observe(len(batch.items))
        self.metrics.stage_latency.labels(stage="inference").observe(batch.finished - batch.started)
        queue = self.metrics.stage_latency.labels(stage="queue")
        if not hasattr(self.producer, "send_batch"):  # a producer that sends one record at a time
            for it, enqueued, (fc, ref) in zip(batch.items, batch.enqueued, batch.results):
                queue.observe(max(0.0, batch.started - enqueued))
                latency = latency_ms(it, batch.started - enqueued, batch.started, batch.finished)
                await self.forecast(topic, it, fc, ref, latency, len(batch.items), it.partition,
                                    on_ack=self._forecast_acked(it, batch.finished),
                                    on_reject=self._forecast_refused(it))
            return
        records = []
        for it, enqueued, (fc, ref) in zip(batch.items, batch.enqueued, batch.results):
            doc = self.forecast_doc(it, fc, ref, latency_ms(it, batch.started - enqueued, batch.started, batch.finished))
            doc["batch_size"] = len(batch.items)
            records.append((it.bar.symbol.encode(), events.dumps(doc)))
        observe_many(queue, [max(0.0, batch.started - enqueued) for enqueued in batch.enqueued])
        for fut, indices in await kafka.send_many(self.producer, topic, records):
            if fut is None:
                self._resend(topic, batch, records, indices)
            else:
                fut.add_done_callback(self._batch_done(topic, batch, records, indices))

    def _batch_done(self, topic: str, batch: Batch, records: list, indices: list[int]):
        items = batch.items

        def done(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                if not self.producer_closed(self.producer):
                    err = None if f.cancelled() else f.exception()
                    log.warning("a record batch of %d forecasts to %s failed (%s): sending them one by one",
                                len(indices), topic, err)
                    self._resend(topic, batch, records, indices)
                return
            now = time.time()
            m = self.metrics
            observe_many(m.e2e_latency, [max(0.0, now - items[i].kafka_ts) for i in indices])
            observe_repeated(m.stage_latency.labels(stage="publish"), max(0.0, now - batch.finished), len(indices))
            for i in indices:
                it = items[i]
                it.partition.offsets.done(it.offset)
            m.forecasts.inc(len(indices))
            self.forecasts += len(indices)
        return done

    def _resend(self, topic: str, batch: Batch, records: list, indices: list[int]) -> None:
        """Forecasts a record batch did not carry: each alone, through send()'s retries."""
        for i in indices:
            it = batch.items[i]
            key, value = records[i]
            asyncio.ensure_future(self.send(topic, key, value, None, it.partition, it.offset,
                                            on_ack=self._forecast_acked(it, batch.finished),
                                            on_reject=self._forecast_refused(it)))

    async def forecast(self, topic: str, it: Ready, fc, ref, latency: dict, batch_size: int,
                       state: PartitionState | None, *, on_ack: Callable[[], None],
                       on_reject: Callable[[BaseException], Awaitable[None]], shadow: bool = False) -> None:
        """Send one item's forecast.v1 (built by forecast_doc). The primary's (forecasts_of) pass
        the item's partition state, so the ack gates the commit; a shadow model's pass None and
        `shadow=True` (worker/lifecycle/shadow.py: it gates nothing and feeds none of the primary's metrics)."""
        doc = self.forecast_doc(it, fc, ref, latency)
        doc["batch_size"] = batch_size
        if shadow:
            doc["shadow"] = True
        await self.send(topic, it.bar.symbol.encode(), events.dumps(doc), None, state, it.offset,
                        on_ack=on_ack, on_reject=on_reject)

    def _forecast_refused(self, it: Ready):
        async def refused(err: BaseException) -> None:
            # Never lost silently: the bar goes to the DLQ, where it can be replayed.
            it.partition.offsets.add(it.offset)
            await self.dead_letter(self.dlq_topic, DeadLetter(it.partition, it.offset, it.key, it.value,
                                                              "publish_rejected", poison.describe(err)))
        return refused

    def _forecast_acked(self, it: Ready, inference_end: float):
        def acked() -> None:
            now = time.time()
            self.metrics.e2e_latency.observe(max(0.0, now - it.kafka_ts))
            self.metrics.stage_latency.labels(stage="publish").observe(max(0.0, now - inference_end))
            self.metrics.forecasts.inc()
            self.forecasts += 1
        return acked

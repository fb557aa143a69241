"""What happens to an engine batch once computed: its forecasts published, or its window dead-lettered.

The micro-batcher calls this on the event loop for every batch, in order. With live scoring
on, the calibrated bands go into the forecasts first and the forecasts are stored for
scoring after; with shadow models on, the shadows get the batch last, so they never delay
the primary's forecasts.
"""
from __future__ import annotations

from worker.pipeline.batcher import Batch
from worker.pipeline.ingest import DeadLetter, Ready


class BatchOutput:
    def __init__(self, parts, settings, metrics):
        self.parts = parts  # worker.app.assembly.Parts: the publisher exists only once the broker answered
        self.s = settings
        self.metrics = metrics

    async def __call__(self, batch: Batch) -> None:
        p = self.parts
        self.metrics.queue_depth.set(p.batcher.queued)
        if batch.error is not None:  # the batcher retried it alone: it is this window that fails
            it: Ready = batch.items[0]
            await p.publisher.dead_letter(self.s.dlq_topic, DeadLetter(
                it.partition, it.offset, it.key, it.value, "inference_error", repr(batch.error)[:500]))
            return
        if p.scoring is None:
            await p.publisher.forecasts_of(self.s.forecasts_topic, batch)
        else:
            await p.scoring.before(batch)  # calibrated bands into the forecasts
            try:
                await p.publisher.forecasts_of(self.s.forecasts_topic, batch)
            finally:
                await p.scoring.after(batch)  # stored for scoring; steps already realized scored now
        if p.shadows is not None:  # the primary's forecasts are handed over: the shadows' turn
            p.shadows.offer(batch)

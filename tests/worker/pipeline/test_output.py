"""worker/pipeline/output.py: a computed batch goes out as forecasts, or its window to the DLQ; scoring
wraps the publish and the shadows come last."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from worker.pipeline.batcher import Batch
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.output import BatchOutput

SETTINGS = SimpleNamespace(dlq_topic="bars.dlq", forecasts_topic="forecasts")


class Log:
    def __init__(self, fail_publish=False):
        self.calls = []
        self.fail_publish = fail_publish

    async def forecasts_of(self, topic, batch):
        self.calls.append(("publish", topic))
        if self.fail_publish:
            raise RuntimeError("broker refused")

    async def dead_letter(self, topic, item):
        self.calls.append(("dlq", topic, item.offset, item.reason))

    async def before(self, batch):
        self.calls.append(("bands",))

    async def after(self, batch):
        self.calls.append(("stored for scoring",))

    def offer(self, batch):
        self.calls.append(("shadows",))


def output(scoring=False, shadows=False, fail_publish=False):
    log = Log(fail_publish)
    parts = SimpleNamespace(batcher=SimpleNamespace(queued=0), publisher=log,
                            scoring=log if scoring else None, shadows=log if shadows else None)
    return BatchOutput(parts, SETTINGS, WorkerMetrics()), log


def batch(error=None):
    item = SimpleNamespace(partition="st", offset=42, key=b"AAA", value=b"{}")
    return Batch([item], [0.0], 0.0, 0.0, None if error else ["fc"], error)


async def test_a_failed_window_goes_to_the_dlq_and_nothing_else_happens():
    out, log = output(scoring=True, shadows=True)
    await out(batch(error=ValueError("NaN in the window")))
    assert log.calls == [("dlq", "bars.dlq", 42, "inference_error")]


async def test_forecasts_are_published_then_offered_to_the_shadows():
    out, log = output(shadows=True)
    await out(batch())
    assert log.calls == [("publish", "forecasts"), ("shadows",)]


async def test_scoring_puts_bands_in_before_publishing_and_stores_after_even_when_publishing_fails():
    out, log = output(scoring=True)
    await out(batch())
    assert log.calls == [("bands",), ("publish", "forecasts"), ("stored for scoring",)]
    out, log = output(scoring=True, shadows=True, fail_publish=True)
    with pytest.raises(RuntimeError):
        await out(batch())
    assert log.calls == [("bands",), ("publish", "forecasts"), ("stored for scoring",)]  # no shadows

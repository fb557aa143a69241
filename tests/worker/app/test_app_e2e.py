"""End to end: tape -> broker -> in-process Worker (parity checkpoint, greedy) -> forecasts,
each checked against the offline KronosPredictor on the same window and horizon.
What these tests share with others is in tests/worker/streams.py."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter

import jsonschema
import pandas as pd
import pytest

from kronos_rt.engine_process import EngineProcess
from worker.adapters.kafka import ensure_topics
from worker.app.worker import Worker
from worker.tools import TAPE
from worker.tools.replay import prepare, replay
from tests.worker.streams import (  # one_torch_thread: an autouse fixture, imported to apply here
    Offline, PRED_LEN, consume, expected_keys, forecast_schema, forecasts_of, make_settings, names, one_torch_thread,  # noqa: F401
    running_worker,
)


pytestmark = pytest.mark.slow


async def test_every_bar_after_min_history_gets_one_correct_forecast(broker, redis_url, redis_prefix):
    topics = names("e2e")
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=3, limit=110)
    want = expected_keys(rows)
    settings = make_settings(broker, redis_url, redis_prefix, topics)
    async with running_worker(settings) as worker:
        summary = await replay(rows, broker, topics["bars_topic"])
        assert summary.bars == 330
        msgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(want))
        await asyncio.sleep(0.3)  # a moment for stray extras to show up

    fcs = forecasts_of(msgs)
    counts = Counter((f["symbol"], f["as_of"]) for f in fcs)
    assert set(counts) == want
    assert max(counts.values()) == 1
    assert all(m.key.decode() == f["symbol"] for m, f in zip(msgs, fcs))

    jsonschema.validate(fcs[0], forecast_schema())
    f = fcs[-1]
    assert f["model"]["name"] == "model" and f["worker_id"] == settings.worker_id
    assert f["source"]["topic"] == topics["bars_topic"]
    assert [h["ts"] for h in f["horizon"]] == [
        (pd.Timestamp(f["as_of"]) + pd.Timedelta(minutes=5 * k)).strftime("%Y-%m-%dT%H:%M:%S")
        for k in range(1, PRED_LEN + 1)]
    assert set(f["latency_ms"]) == {"broker_to_received", "queue_wait", "inference", "total"}
    assert f["latency_ms"]["total"] >= f["latency_ms"]["inference"] >= 0

    offline = Offline(rows)
    for fc in fcs:
        offline.check(fc)
    assert worker.stats["forecasts"] == len(want)
    assert worker.metrics.forecasts._value.get() == len(want)


async def test_full_queue_pauses_partitions_and_drops_nothing(broker, redis_url, redis_prefix):
    topics = names("backpressure")
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=2, limit=60)
    want = expected_keys(rows)
    settings = make_settings(broker, redis_url, redis_prefix, topics, max_batch=2, max_queue=4)
    paused_seen = []

    def slow_inference(worker):
        def slow(items, seconds):  # inference slower than the feed, so the queue fills
            paused_seen.append(worker.metrics.paused_partitions._value.get())
            time.sleep(0.01)

        worker.observe_batches(slow)

    async with running_worker(settings, before_run=slow_inference) as worker:
        await replay(rows, broker, topics["bars_topic"])
        msgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(want))

    counts = Counter((f["symbol"], f["as_of"]) for f in forecasts_of(msgs))
    assert set(counts) == want and max(counts.values()) == 1
    assert max(paused_seen) == 2  # both partitions were paused while the queue was full
    assert worker.metrics.paused_partitions._value.get() == 0


async def test_the_engine_in_a_process_of_its_own_gives_the_same_forecasts(broker, redis_url, redis_prefix):
    """--inference process: the worker loads its model in a child process (and ends it when it
    stops); the forecasts are the in-process engine's, bit for bit."""
    rows = prepare(TAPE, fanout=2, limit=90)
    want = expected_keys(rows)
    got = {}
    for mode in ("thread", "process"):
        topics = names(f"engine-{mode}")
        await ensure_topics(broker, {topics["bars_topic"]: 2})
        settings = make_settings(broker, redis_url, f"{redis_prefix}:{mode}", topics)
        if mode == "thread":
            async with running_worker(settings):
                await replay(rows, broker, topics["bars_topic"])
                msgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(want))
        else:
            # no engine handed in: the worker builds its own, in a child with one torch thread
            # (the session's shared engine computes with one too: the same kernels, the same bits)
            worker = Worker(dataclasses.replace(settings, inference="process", engine_threads=1))
            task = asyncio.create_task(worker.run())
            await asyncio.wait_for(worker.ready(), 60)
            child = worker.inference.engine
            assert isinstance(child, EngineProcess) and child.pid is not None
            await replay(rows, broker, topics["bars_topic"])
            msgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(want))
            worker.stop()
            assert await asyncio.wait_for(task, 60)
            assert child.pid is None  # ended with the worker
        fcs = forecasts_of(msgs)
        got[mode] = {(f["symbol"], f["as_of"]): f["horizon"] for f in fcs}
        assert set(got[mode]) == want and len(fcs) == len(want)
    assert got["process"] == got["thread"]

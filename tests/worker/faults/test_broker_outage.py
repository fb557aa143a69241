"""The broker is not there when the worker starts, or freezes under it (SIGSTOP of the
Tansu process): the worker waits, /readyz says 503 with "kafka": false meanwhile, and
every bar gets its forecast once the broker answers again."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.worker.faults.report import readyz, tally
from tests.worker.faults.report import covered
from tests.worker.faults.report import until
from tests.worker.streams import (
    TAPE, Worker, consume, engine, expected_keys, make_settings, names, one_torch_thread, running_worker,
)
from worker.errors import StartupError
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay
from worker.tools.services import EmbeddedBroker, free_port

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too


async def test_broker_absent_at_start(redis_url, redis_prefix):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topics = names("no-broker")
    eng, ref = engine()
    worker = Worker(make_settings(bootstrap, redis_url, redis_prefix, topics), engine=eng, model_ref=ref)
    task = asyncio.create_task(worker.run())
    rows = prepare(TAPE, fanout=2, limit=50)
    want = expected_keys(rows)
    try:
        await until(lambda: worker.metrics_port is not None and worker.inference is not None, 30, "metrics")
        await asyncio.sleep(3.0)  # longer than the old 3 s give-up
        assert not task.done(), "the worker must wait for the broker"
        status, checks = readyz(worker.metrics_port)
        assert status == 503 and checks["kafka"] is False and checks["redis"] is True
        with EmbeddedBroker(port=port):
            t0 = time.monotonic()
            await asyncio.wait_for(worker.ready(), 60)
            await ensure_topics(bootstrap, {topics["bars_topic"]: 1})
            await replay(rows, bootstrap, topics["bars_topic"])
            msgs = await consume(bootstrap, topics["forecasts_topic"], lambda got: covered(got) >= want, timeout=60)
            recovery = time.monotonic() - t0
            assert readyz(worker.metrics_port)[0] == 200
            worker.stop()
            assert await asyncio.wait_for(task, 30)
    finally:
        worker.stop()
        if not task.done():
            task.cancel()
    row = tally("broker absent at start", len(rows), want, msgs, recovery, note="3 s before it starts")
    assert row.lost == 0 and row.duplicates == 0


async def test_startup_timeout_gives_up_with_a_clear_error(redis_url, redis_prefix):
    topics = names("no-broker-timeout")
    eng, ref = engine()
    worker = Worker(make_settings(f"127.0.0.1:{free_port()}", redis_url, redis_prefix, topics,
                                  startup_timeout_s=1.0), engine=eng, model_ref=ref)
    t0 = time.monotonic()
    with pytest.raises(StartupError, match="Kafka broker"):
        await asyncio.wait_for(worker.run(), 30)
    assert time.monotonic() - t0 < 15


async def test_frozen_broker(redis_url, redis_prefix, tmp_path):
    topics = names("frozen")
    rows = prepare(TAPE, fanout=2, limit=90)
    want = expected_keys(rows)
    before, after = prepare(TAPE, fanout=2, limit=50), prepare(TAPE, fanout=2, skip=50, limit=40)
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as b:
        await ensure_topics(b.bootstrap, {topics["bars_topic"]: 2})
        settings = make_settings(b.bootstrap, redis_url, redis_prefix, topics)
        async with running_worker(settings) as worker:
            task = next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Worker.run")
            await replay(before, b.bootstrap, topics["bars_topic"])
            await consume(b.bootstrap, topics["forecasts_topic"],
                          lambda got: covered(got) >= expected_keys(before), timeout=60)
            assert readyz(worker.metrics_port)[0] == 200
            os.kill(b._proc.pid, signal.SIGSTOP)
            try:
                t_freeze = time.monotonic()
                await until(lambda: readyz(worker.metrics_port)[0] == 503, 10, "/readyz to notice the freeze")
                noticed = time.monotonic() - t_freeze
                assert readyz(worker.metrics_port)[1]["kafka"] is False
                await asyncio.sleep(max(0.0, 8.0 - noticed))
                assert not task.done()
            finally:
                os.kill(b._proc.pid, signal.SIGCONT)
            t0 = time.monotonic()
            await until(lambda: readyz(worker.metrics_port)[0] == 200, 30, "/readyz to say 200 again")
            await replay(after, b.bootstrap, topics["bars_topic"])
            msgs = await consume(b.bootstrap, topics["forecasts_topic"], lambda got: covered(got) >= want,
                                 timeout=90)
            recovery = time.monotonic() - t0
    row = tally("broker frozen 8 s", len(rows), want, msgs, recovery, note=f"503 after {noticed:.1f} s")
    assert row.lost == 0
    assert row.identical

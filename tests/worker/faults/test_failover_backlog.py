"""A worker that ran far ahead of its commit ends badly (kill -9, or SIGTERM with a drain
timeout shorter than its queue); its replacement re-reads the uncommitted bars. Every bar
owed a forecast gets one, and a bar forecast twice gets the same numbers twice."""
from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.worker.faults.report import tally
from tests.worker.streams import (
    TAPE, consume, expected_keys, make_settings, names, one_torch_thread, running_worker,
)
from tests.worker.processes import WorkerProcess, wait_for
from worker.pipeline.ownership import RUNAHEAD_LIMIT
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay
from tests.worker.faults.report import covered

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too

SYMBOLS, BARS = 4, 220  # per symbol: far more than the 64 bars Redis keeps beyond the lookback


async def _backlog_then(end, scenario: str, broker, redis_url, redis_prefix, tmp_path, *extra_args):
    """Worker A (a process) takes a fast replay, `end(a)` ends it mid-backlog, worker B (in
    this process) takes over; returns the table row."""
    topics = names(scenario.split()[0])
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=SYMBOLS, limit=BARS)
    want = expected_keys(rows)
    a = WorkerProcess("worker-a", broker, redis_url, redis_prefix, topics, tmp_path)
    a.args += list(extra_args)
    a.start()
    try:
        await wait_for(lambda: a.partitions() == [0, 1], 90, "A to own both partitions", (a,))
        await replay(rows, broker, topics["bars_topic"])
        # End A once it has published some forecasts: most bars are still queued or unread.
        await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= 40, timeout=60)
        code = await end(a)
    finally:
        if a.proc.poll() is None:
            a.kill9()
    t0 = time.monotonic()
    settings = make_settings(broker, redis_url, redis_prefix, topics, worker_id="worker-b")
    async with running_worker(settings):
        msgs = await consume(broker, topics["forecasts_topic"], lambda got: covered(got) >= want, timeout=120)
        recovery = time.monotonic() - t0
    row = tally(scenario, len(rows), want, msgs, recovery, note=f"A exit {code}")
    assert "Traceback" not in a.log(), a.log()[-3000:]
    return row, a


async def test_kill9_with_backlog_loses_nothing(broker, redis_url, redis_prefix, tmp_path):
    async def kill(a):
        a.kill9()
        return -9

    row, _ = await _backlog_then(kill, "kill -9 with backlog", broker, redis_url, redis_prefix, tmp_path)
    assert row.lost == 0
    assert row.identical
    # Only bars A had handled past its last commit are forecast again: the run-ahead bound.
    assert row.duplicates <= SYMBOLS * (RUNAHEAD_LIMIT + 2)


async def test_sigterm_with_short_drain_loses_nothing(broker, redis_url, redis_prefix, tmp_path):
    async def term(a):
        a.proc.send_signal(signal.SIGTERM)
        return await asyncio.get_running_loop().run_in_executor(None, a.proc.wait, 30)

    row, a = await _backlog_then(term, "SIGTERM, drain 0.01 s", broker, redis_url, redis_prefix, tmp_path,
                                 "--drain-timeout-s", "0.01", "--max-batch", "8")
    assert a.proc.returncode in (0, 1), "SIGTERM must end the worker by itself"
    assert row.lost == 0
    assert row.identical
    assert row.duplicates <= SYMBOLS * (RUNAHEAD_LIMIT + 2)

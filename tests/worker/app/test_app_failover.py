"""Two worker processes in one group split a 4-partition topic; one is killed -9 mid-replay
and started again. Every bar still gets its forecast; duplicates are few and identical."""
from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from tests.worker.streams import (
    TAPE, consume, expected_keys,
    forecasts_of, names,
)
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay
from tests.worker.processes import split, wait_for, worker_pair

pytestmark = pytest.mark.slow


async def test_kill9_and_restart_loses_no_forecast(broker, redis_url, redis_prefix, tmp_path):
    topics = names("failover")
    await ensure_topics(broker, {topics["bars_topic"]: 4})
    rows = prepare(TAPE, fanout=8, limit=100)
    want = expected_keys(rows)
    phases = [prepare(TAPE, fanout=8, skip=a, limit=b - a) for a, b in ((0, 45), (45, 70), (70, 100))]

    async with worker_pair(broker, redis_url, redis_prefix, topics, tmp_path) as pair:
        a, b, procs = pair.a, pair.b, pair.procs
        await replay(phases[0], broker, topics["bars_topic"])
        n0 = len(expected_keys(phases[0]))
        first = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= n0, timeout=60)
        assert {f["worker_id"] for f in forecasts_of(first)} == {"worker-a", "worker-b"}

        # Kill A while the second phase is in flight.
        send = asyncio.create_task(replay(phases[1], broker, topics["bars_topic"], speed=30000))
        await asyncio.sleep(0.3)
        a.kill9()
        await send
        await wait_for(lambda: b.partitions() == [0, 1, 2, 3], 30, "B to take over all partitions", procs)

        a.start()
        await wait_for(lambda: split(a, b), 60, "A to rejoin", procs)
        await replay(phases[2], broker, topics["bars_topic"])

        def complete(got) -> bool:
            return {(f["symbol"], f["as_of"]) for f in forecasts_of(got)} >= want

        msgs = await consume(broker, topics["forecasts_topic"], complete, timeout=90)
    assert pair.codes == [0, 0], "workers did not exit cleanly on SIGTERM"
    assert "rebuilt" not in a.log() + b.log()  # Redis kept the windows: nothing to rebuild

    by_bar = defaultdict(list)
    for f in forecasts_of(msgs):
        by_bar[(f["symbol"], f["as_of"])].append(f)
    assert set(by_bar) == want  # nothing missing, nothing unexpected
    duplicates = {k: v for k, v in by_bar.items() if len(v) > 1}
    assert len(duplicates) <= 0.1 * len(want), f"{len(duplicates)} duplicated bars"
    for copies in duplicates.values():
        assert all(c["horizon"] == copies[0]["horizon"] for c in copies[1:])

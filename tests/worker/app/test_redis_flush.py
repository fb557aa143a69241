"""Redis loses every window mid-run (FLUSHALL): the worker rebuilds them from the bar topic,
starting at the offsets it recorded (no time lookups), and its later forecasts still equal
the offline predictor's."""
from __future__ import annotations

from collections import Counter

import pytest
import redis

from tests.worker.streams import (
    TAPE, Offline, consume, expected_keys, forecasts_of, make_settings, names, one_torch_thread,
    running_worker,
)
from worker.adapters.kafka import ensure_topics
from worker.tools.replay import prepare, replay

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too


async def test_windows_are_rebuilt_after_flushall(broker, private_redis):
    topics = names("flush")
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    rows = prepare(TAPE, fanout=3, limit=130)
    want = expected_keys(rows)
    before = prepare(TAPE, fanout=3, limit=80)
    after = prepare(TAPE, fanout=3, skip=80, limit=50)
    settings = make_settings(broker, private_redis, "krt", topics)
    async with running_worker(settings) as worker:
        await replay(before, broker, topics["bars_topic"])
        n_before = len(expected_keys(before))
        await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= n_before)
        client = redis.Redis.from_url(private_redis)
        assert client.dbsize() > 0
        client.flushall()
        client.close()
        await replay(after, broker, topics["bars_topic"])
        msgs = await consume(broker, topics["forecasts_topic"], lambda got: len(got) >= len(want))

    fcs = forecasts_of(msgs)
    counts = Counter((f["symbol"], f["as_of"]) for f in fcs)
    assert set(counts) == want
    assert max(counts.values()) == 1
    assert worker.stats["rebuilds"] >= 1
    assert worker.metrics.window_rebuilds._value.get() >= 1

    offline = Offline(rows)
    for fc in fcs:
        offline.check(fc)

"""Redis answers, but with an error for one symbol (a key of its window overwritten with a
string by hand, so every script on it fails with WRONGTYPE): before, the error escaped the
fetch loop and stopped the worker. Now the symbol's bars are retried, then dead-lettered
(`infrastructure_error`, the Redis error in the detail), the other symbols are forecast as
if nothing happened, and once the key is repaired (deleted) the symbol is forecast again."""
from __future__ import annotations

import asyncio
import time

import pandas as pd
import pytest
import redis as sync_redis

from tests.worker.faults.report import readyz, tally
from tests.worker.faults.report import covered
from tests.worker.streams import (
    TAPE, Offline, consume, expected_keys, forecasts_of, make_settings, names, one_torch_thread, running_worker,
)
from worker.pipeline import poison
from worker.adapters.kafka import ensure_topics
from worker.adapters.keys import RedisKeys
from worker.tools.replay import prepare, replay

pytestmark = pytest.mark.slow
assert one_torch_thread  # autouse fixture, imported to apply here too


async def test_a_redis_reply_error_on_one_symbol_dead_letters_its_bars_and_spares_the_others(
        broker, redis_url, redis_prefix):
    topics = names("redis-reply")
    await ensure_topics(broker, {topics["bars_topic"]: 2})
    before = prepare(TAPE, fanout=3, limit=60)
    during = prepare(TAPE, fanout=3, skip=60, limit=4)
    after = prepare(TAPE, fanout=3, skip=64, limit=6)
    victim = sorted(before["symbol"].unique())[0]
    hit = during[during["symbol"] == victim]
    rows = pd.concat([before, during, after])
    admin = sync_redis.Redis.from_url(redis_url)
    settings = make_settings(broker, redis_url, redis_prefix, topics)
    try:
        async with running_worker(settings) as worker:
            task = next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Worker.run")
            await replay(before, broker, topics["bars_topic"])
            await consume(broker, topics["forecasts_topic"],
                          lambda got: covered(got) >= expected_keys(before), timeout=60)
            bars_key = RedisKeys(redis_prefix).window(victim)[0]
            admin.delete(bars_key)
            admin.set(bars_key, "not a sorted set")  # every script on the window now fails
            t0 = time.monotonic()
            await replay(during, broker, topics["bars_topic"])
            dlq = await consume(broker, topics["dlq_topic"], lambda got: len(got) >= len(hit), timeout=90)
            assert not task.done(), "a Redis reply error must not stop the worker"
            assert readyz(worker.metrics_port)[0] == 200  # Redis answers: nothing to wait out
            admin.delete(*RedisKeys(redis_prefix).window(victim))  # the operator's repair
            await replay(after, broker, topics["bars_topic"])
            dead = {(victim, t.strftime("%Y-%m-%dT%H:%M:%S")) for t in hit["time"]}
            want = expected_keys(rows) - dead
            msgs = await consume(broker, topics["forecasts_topic"], lambda got: covered(got) >= want, timeout=90)
            recovery = time.monotonic() - t0
    finally:
        admin.close()
    assert len(dlq) == len(hit)
    for msg in dlq:
        h = {k: v for k, v in msg.headers}
        assert h["error.reason"].decode() == poison.INFRASTRUCTURE_ERROR
        assert h["error.detail"].startswith(b"ResponseError: WRONGTYPE")
        assert msg.key == victim.encode()
    row = tally("Redis reply error (1 symbol)", len(rows), want, msgs, recovery, f"{len(dlq)} bars on the DLQ")
    assert row.lost == 0
    assert row.identical
    # The repair made the worker rebuild the symbol's window from the bar topic, dead-lettered
    # bars included: its later forecasts are those of the whole tape, as without the fault.
    later = [f for f in forecasts_of(msgs) if f["symbol"] == victim and f["as_of"] > max(a for _, a in dead)]
    assert len(later) == len(after) // 3
    offline = Offline(rows)
    for fc in later[:3]:
        offline.check(fc)

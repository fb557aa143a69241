"""worker/pipeline/recovery.py against a real Redis, with the bar topic replaced by a list."""
import datetime as dt
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from worker.contracts import events
from worker.pipeline.ingest import parse_message
from worker.adapters.keys import RedisKeys
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.partition import PartitionState
from worker.pipeline.recovery import Recovery
from worker.pipeline.windows import WindowStore

T0 = dt.datetime(2024, 6, 18, 9, 35)
TP = TopicPartition("bars", 0)


def message(i, symbol):
    t = T0 + dt.timedelta(minutes=5 * (i // 2))
    c = 10.0 + i
    doc = {"symbol": symbol, "ts": t.isoformat(), "open": c, "high": c + 1, "low": c - 1, "close": c}
    return SimpleNamespace(key=symbol.encode(), value=events.dumps(doc), offset=i)


TOPIC = [message(i, "AAA" if i % 2 == 0 else "BBB") for i in range(40)]


@pytest.fixture
async def parts(redis_url, redis_prefix):
    client = aioredis.from_url(redis_url)
    reads = []

    async def read(tp, start, end):
        reads.append((tp, start, end))
        for m in TOPIC[start:end]:
            yield m

    store = WindowStore(client, redis_prefix, 8)
    rec = Recovery(client, store, RedisKeys(redis_prefix), read, "w1", WorkerMetrics(), parse=parse_message)
    yield SimpleNamespace(client=client, store=store, rec=rec, reads=reads, keys=RedisKeys(redis_prefix))
    await client.aclose()


async def test_inherited_partition_with_empty_redis_is_rebuilt_from_the_recorded_position(parts):
    st = PartitionState(TP, floor=10)
    await parts.rec.check(st, first_offset=30)
    assert parts.reads == [(TP, 10, 30)]  # from the previous owner's rebuild_from to where we start
    aaa = await parts.store.window("AAA")
    assert list(aaa.offsets) == [14, 16, 18, 20, 22, 24, 26, 28]  # the last 8 AAA bars before 30
    assert st.oldest == {"AAA": 14, "BBB": 15}
    assert await parts.client.exists(parts.keys.partition_marker("bars", 0))
    assert parts.rec.rebuilds == 1


async def test_marker_present_or_nothing_inherited_means_no_rebuild(parts):
    await parts.client.set(parts.keys.partition_marker("bars", 0), "w0")
    await parts.rec.check(PartitionState(TP, floor=10), first_offset=30)
    await parts.client.delete(parts.keys.partition_marker("bars", 0))
    await parts.rec.check(PartitionState(TP), first_offset=30)  # group never committed: fresh start
    assert parts.reads == []


async def test_a_flush_is_noticed_by_the_missing_marker_and_rebuilt_up_to_the_processed_offset(parts):
    st = PartitionState(TP)
    await parts.rec.check(st, first_offset=0)
    for m in TOPIC[:24]:
        await parts.store.upsert(events.parse_bar(m.value, m.key), m.offset)
    st.note_window("AAA", await parts.store.window("AAA"))
    st.note_window("BBB", await parts.store.window("BBB"))
    st.handled(23)
    assert not await parts.rec.lost_any([st])
    await parts.client.delete(parts.keys.partition_marker("bars", 0), *parts.store.keys("AAA"), *parts.store.keys("BBB"))
    assert await parts.rec.lost_any([st])
    await parts.rec.rebuild_all([st])
    assert parts.reads == [(TP, 8, 24)]  # the oldest offset any window still held
    assert list((await parts.store.window("BBB", refresh=True)).offsets) == [9, 11, 13, 15, 17, 19, 21, 23]
    assert not await parts.rec.lost_any([st])


class _Flow:
    def __init__(self):
        self.paused = self.resumed = None

    def pause_all(self):
        self.paused = ["p0", "p1"]
        return self.paused

    def resume(self, paused):
        self.resumed = paused


async def test_ride_out_waits_until_redis_accepts_writes_and_notes_an_empty_comeback(private_redis, redis_prefix):
    """Out of memory: pings answer, writes do not. Partitions stay paused and /readyz says
    not ready until a write succeeds; the missing marker marks the windows lost."""
    import asyncio

    import redis as sync_redis

    from worker.ops.health import Health

    client = aioredis.from_url(private_redis)
    admin = sync_redis.Redis.from_url(private_redis)
    keys = RedisKeys(redis_prefix)
    rec = Recovery(client, WindowStore(client, redis_prefix, 8), keys, None, "w1", WorkerMetrics(),
                   parse=parse_message)
    st = PartitionState(TP, checked=True)
    st.handled(5)
    flow, health = _Flow(), Health()
    health.ready["redis"] = True
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    task = asyncio.create_task(rec.ride_out(RuntimeError("OOM"), flow, health, lambda: [st], lambda: False))
    await asyncio.sleep(0.6)
    assert not task.done() and flow.paused and flow.resumed is None
    assert await health.ping_redis(rec.store) is False  # a ping answers, yet not ready
    admin.config_set("maxmemory", 0)
    await asyncio.wait_for(task, 10)
    assert flow.resumed == flow.paused and health.ready["redis"] is True
    assert rec.lost  # no marker for a partition that had handled bars: rebuild before going on
    admin.close()
    await client.aclose()

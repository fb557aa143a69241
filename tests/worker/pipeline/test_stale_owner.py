"""A partition's previous owner that goes on writing after it lost the partition (frozen past
its session timeout and woken again, or revoked in the middle of a fetch) must not cost the
next owner a forecast, whatever Redis lost in between.

The chain from the chaos runs (issue 24), replayed deterministically against a real Redis with
the bar topic replaced by a list: owner C handled bars past its last commit and froze; Redis
was restarted empty; the next owner D rebuilt the windows up to C's commit and went on from
there; C woke and upserted the next bars of its fetch before it learnt that it had lost the
partition. D then found, for each bar between C's commit and C's late write, a window that
already held a *newer* bar: "not the newest", no forecast, offset committed: lost."""
import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from worker.contracts import events
from worker.pipeline.ingest import Ingest, Ready, parse_message
from worker.adapters.keys import RedisKeys
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.partition import PartitionState
from worker.pipeline.recovery import Recovery
from worker.calendars.sessions import parse_session_map
from worker.pipeline.windows import WindowStore

T0 = dt.datetime(2024, 6, 18, 9, 35)
TP = TopicPartition("bars", 0)
LOOKBACK, MIN_HISTORY, SLACK = 8, 3, 8


def message(i: int):
    """Offset i: symbols AAA (even offsets) and BBB (odd), one bar each per 5 minutes."""
    symbol = "AAA" if i % 2 == 0 else "BBB"
    t = T0 + dt.timedelta(minutes=5 * (i // 2))
    c = 10.0 + i
    doc = {"symbol": symbol, "ts": t.isoformat(), "open": c, "high": c + 1, "low": c - 1, "close": c}
    return SimpleNamespace(key=symbol.encode(), value=events.dumps(doc), offset=i, timestamp=1_700_000_000_000)


TOPIC = [message(i) for i in range(60)]


class Owner:
    """One worker's view of the partition: its own Redis client, window store and ingest."""

    def __init__(self, redis_url: str, prefix: str, name: str):
        self.client = aioredis.from_url(redis_url)
        self.store = WindowStore(self.client, prefix, LOOKBACK + SLACK)
        self.lost = 0

        async def on_lost():
            self.lost += 1

        self.ingest = Ingest(self.store, lookback=LOOKBACK, min_history=MIN_HISTORY, pred_len=2,
                             interval=dt.timedelta(minutes=5), calendar_for=parse_session_map("continuous"),
                             metrics=WorkerMetrics(), on_lost=on_lost)

        async def read(tp, start, end):
            for m in TOPIC[start:end]:
                yield m

        self.recovery = Recovery(self.client, self.store, RedisKeys(prefix), read, name, WorkerMetrics(),
                                 parse=parse_message)

    async def handle(self, state: PartitionState, msgs) -> dict:
        """offset -> Ready (or None), the fetch loop's order: pipelined parse, then one by one."""
        parsed = await self.ingest.parse_fetch({TP: msgs})
        return {m.offset: await self.ingest.handle(state, m, parsed[(TP, m.offset)]) for m in msgs}

    async def close(self) -> None:
        await self.client.aclose()


@pytest.fixture
async def owners(redis_url, redis_prefix):
    made = []

    def make(name: str, prefix: str = redis_prefix) -> Owner:
        made.append(Owner(redis_url, prefix, name))
        return made[-1]

    yield make
    for o in made:
        await o.close()


async def wipe(owner: Owner, prefix: str) -> None:
    """What a restarted, empty Redis looks like to this test's keys."""
    keys = [k async for k in owner.client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await owner.client.delete(*keys)


async def clean_run(owners, redis_prefix) -> dict:
    """offset -> Ready of a run with no fault at all (its own key prefix)."""
    solo = owners("solo", prefix=redis_prefix + "-clean")
    st = PartitionState(TP)
    await solo.recovery.check(st, TOPIC[0].offset)
    out = await solo.handle(st, TOPIC)
    keys = [k async for k in solo.client.scan_iter(match=f"{redis_prefix}-clean:*")]
    await solo.client.delete(*keys)
    return out


def same_window(got: Ready, want: Ready) -> None:
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.times, want.times)


async def test_a_woken_owner_writing_after_a_wipe_costs_the_next_owner_no_forecast(owners, redis_prefix):
    want = {o: r for o, r in (await clean_run(owners, redis_prefix)).items() if r is not None}
    c, d = owners("worker-c"), owners("worker-d")

    # C owns the partition, has committed up to 30 and handled bars up to 37, then freezes.
    c_state = PartitionState(TP, floor=0, committed=0)
    await c.recovery.check(c_state, 0)
    await c.handle(c_state, TOPIC[:38])
    await wipe(c, redis_prefix)  # Redis restarted empty while C is frozen

    # D inherits the partition at C's commit: Redis is empty, so D rebuilds up to there.
    d_state = PartitionState(TP, floor=0, committed=30)
    await d.recovery.check(d_state, 30)
    assert d.recovery.rebuilds == 1

    # C wakes: the rest of its fetch (38..41) reaches Redis before C learns it lost the partition.
    await c.handle(c_state, TOPIC[38:42])

    # D goes on from its commit: every bar owed a forecast gets one, on the window a clean run had.
    got = await d.handle(d_state, TOPIC[30:60])
    missing = sorted(o for o in range(30, 60) if o in want and not isinstance(got[o], Ready))
    assert missing == [], f"bars D did not forecast: {missing}"
    for o in range(30, 60):
        same_window(got[o], want[o])


async def test_a_rebuild_revoked_midway_stops_writing_and_leaves_no_marker(owners, redis_prefix):
    b = owners("worker-b")
    st = PartitionState(TP, floor=0, committed=30)
    reads = 0

    async def read(tp, start, end):  # the bar topic; the partition is revoked after 10 bars
        nonlocal reads
        for m in TOPIC[start:end]:
            reads += 1
            if reads == 10:
                st.owned = False
            yield m

    b.recovery.read = read
    await b.recovery.check(st, 30)
    assert reads == 10
    assert not st.checked
    assert not await b.client.exists(RedisKeys(redis_prefix).partition_marker("bars", 0))
    stored = len(await b.store.window("AAA", refresh=True)) + len(await b.store.window("BBB", refresh=True))
    assert stored == 9  # the bars read before the revocation was seen, none after


async def test_rebuild_all_leaves_a_revoked_partition_to_its_next_owner(owners, redis_prefix):
    c, d = owners("worker-c"), owners("worker-d")
    c_state = PartitionState(TP, floor=0, committed=0)
    await c.recovery.check(c_state, 0)
    await c.handle(c_state, TOPIC[:20])
    d_state = PartitionState(TP, floor=0, committed=20)
    await d.recovery.check(d_state, 20)  # windows there: D goes on from 20
    await d.handle(d_state, TOPIC[20:40])
    c_state.owned = False  # C learnt of the revocation (a flush noticed later must not touch D's windows)
    await c.recovery.rebuild_all([c_state])
    assert list((await d.store.window("AAA", refresh=True)).offsets)[-1] == 38


async def test_a_partition_checked_but_not_yet_handled_is_rebuilt_after_redis_lost_it(owners, redis_prefix):
    """Found by the chaos drill (seed 4): a new owner verified the windows of a partition (its
    marker was there) but had handled none of its bars yet when Redis restarted empty. The
    loss was noticed on another partition; the rebuild skipped this one (nothing handled), and
    it was never checked again: its symbols' windows restarted from nothing, bars were
    "buffered" (not forecast) and committed, later forecasts used short windows."""
    want = {o: r for o, r in (await clean_run(owners, redis_prefix)).items() if r is not None}
    c, d = owners("worker-c"), owners("worker-d")
    c_state = PartitionState(TP, floor=0, committed=0)
    await c.recovery.check(c_state, 0)
    await c.handle(c_state, TOPIC[:30])  # C's windows, up to its commit at 30

    d_state = PartitionState(TP, floor=0, committed=30)
    await d.recovery.check(d_state, 30)  # the marker is there: nothing to rebuild
    assert d.recovery.rebuilds == 0 and d_state.checked
    await wipe(d, redis_prefix)  # Redis restarted before D handled a bar of it
    assert await d.recovery.lost_any([d_state])
    await d.recovery.rebuild_all([d_state])  # what noticing the loss on any partition does
    assert not d_state.checked

    # The fetch loop checks a partition not checked before its next bar: rebuilt up to it.
    await d.recovery.check(d_state, 30)
    assert d.recovery.rebuilds == 1
    got = await d.handle(d_state, TOPIC[30:60])
    assert sorted(o for o in range(30, 60) if o in want and not isinstance(got[o], Ready)) == []
    for o in range(30, 60):
        same_window(got[o], want[o])


async def test_a_rebuild_after_a_loss_revoked_midway_leaves_the_next_owner_a_rebuild(owners, redis_prefix):
    """Found by the chaos drill (seed 1, short): the rebuild after Redis came back empty was cut
    short by a revocation, yet the marker was set; the same worker got the partition back,
    found the marker, rebuilt nothing, and its windows restarted empty (31 bars not forecast)."""
    want = {o: r for o, r in (await clean_run(owners, redis_prefix)).items() if r is not None}
    c = owners("worker-c")
    marker = RedisKeys(redis_prefix).partition_marker("bars", 0)
    st = PartitionState(TP, floor=0, committed=0)
    await c.recovery.check(st, 0)
    await c.handle(st, TOPIC[:30])
    await wipe(c, redis_prefix)
    await c.client.set(marker, "someone")  # e.g. only one symbol's window was evicted

    reads = 0
    plain = c.recovery.read

    async def read(tp, start, end):  # revoked after 5 bars of the rebuild
        nonlocal reads
        async for m in plain(tp, start, end):
            reads += 1
            if reads == 5:
                st.owned = False
            yield m

    c.recovery.read = read
    await c.recovery.rebuild_all([st])
    assert not await c.client.exists(marker)  # the next owner (maybe C again) rebuilds

    again = PartitionState(TP, floor=0, committed=30)
    c.recovery.read = plain
    await c.recovery.check(again, 30)
    got = await c.handle(again, TOPIC[30:60])
    assert sorted(o for o in range(30, 60) if o in want and not isinstance(got[o], Ready)) == []
    for o in range(30, 60):
        same_window(got[o], want[o])

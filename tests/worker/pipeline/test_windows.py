"""worker/pipeline/windows.py against a real Redis: statuses, ordering, trimming, rebalance, loss, round trips."""
import datetime as dt
import math

import numpy as np
import pytest
import redis.asyncio as aioredis

from worker.contracts.events import Bar
from worker.pipeline.windows import MAX_LOOKBACK, WindowStore

T0 = dt.datetime(2024, 6, 18, 9, 35)


def mk(i, symbol="600000.SH", close=10.0, volume=100.0, amount=None):
    t = T0 + dt.timedelta(minutes=5 * i)
    c = close + i
    return Bar(symbol, t.isoformat(sep=" "), t, c, c + 1, c - 1, c, volume, amount)


@pytest.fixture
async def client(redis_url):
    c = aioredis.from_url(redis_url)
    yield c
    await c.aclose()


def count_commands(client):
    """Record every command name the client sends (one entry per round trip here)."""
    sent = []
    original = client.execute_command

    async def counting(*args, **kwargs):
        sent.append(str(args[0]).upper())
        return await original(*args, **kwargs)

    client.execute_command = counting
    return sent


def expected_times(indices):
    return np.array([T0 + dt.timedelta(minutes=5 * i) for i in indices], dtype="datetime64[s]")


async def test_append_builds_window_in_order(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=10)
    for i in range(4):
        r = await store.upsert(mk(i), offset=100 + i)
        assert (r.status, r.length, r.version, r.lost) == ("appended", i + 1, i + 1, False)
    w = await store.window("600000.SH")
    assert len(w) == 4 and w.version == 4
    assert w.times.dtype == np.dtype("datetime64[s]") and (w.times == expected_times(range(4))).all()
    assert w.values.dtype == np.float64 and w.values.shape == (4, 6)
    assert w.values[2, :4].tolist() == [12.0, 13.0, 11.0, 12.0] and w.values[2, 4] == 100.0
    assert np.isnan(w.values[:, 5]).all()  # amount missing
    assert w.offsets.tolist() == [100, 101, 102, 103] and w.offsets.dtype == np.int64
    # Another store reading Redis cold sees the same window.
    cold = await WindowStore(client, redis_prefix, lookback=10).window("600000.SH")
    np.testing.assert_array_equal(cold.values, w.values)
    assert (cold.times == w.times).all() and cold.version == 4


async def test_duplicate_is_idempotent(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=10)
    await store.upsert(mk(0), 1)
    await store.upsert(mk(1), 2)
    r = await store.upsert(mk(1), 7)  # same bar replayed at a later offset
    assert (r.status, r.length, r.version) == ("duplicate", 2, 2)
    w = await store.window("600000.SH", refresh=True)
    assert w.offsets.tolist() == [1, 2] and w.version == 2
    assert not r.redelivered  # a repeated event, not the same message again


async def test_same_message_reread_is_flagged_redelivered(client, redis_prefix):
    """After a worker dies, its successor re-reads messages it had stored: same offset."""
    store = WindowStore(client, redis_prefix, lookback=10)
    for i in range(4):
        await store.upsert(mk(i), 10 + i)
    successor = WindowStore(client, redis_prefix, lookback=10)
    r = await successor.upsert(mk(2), 12)
    assert r.status == "duplicate" and r.redelivered
    w = (await successor.window("600000.SH")).upto(mk(2).time.replace(tzinfo=None))
    assert w.offsets.tolist() == [10, 11, 12]


async def test_correction_replaces_values(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=10)
    for i in range(3):
        await store.upsert(mk(i), i)
    r = await store.upsert(mk(1, close=50.0, volume=None), 9)
    assert (r.status, r.length, r.version) == ("corrected", 3, 4)
    w = await store.window("600000.SH")
    assert w.values[1, 3] == 51.0 and math.isnan(w.values[1, 4])
    assert w.offsets.tolist() == [0, 9, 2] and w.version == 4
    assert (w.times == expected_times(range(3))).all()


async def test_out_of_order_insert_keeps_order(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=10)
    for i in (0, 1, 3, 4):
        await store.upsert(mk(i), i)
    r = await store.upsert(mk(2), 2)
    assert (r.status, r.length, r.version) == ("inserted", 5, 5)
    w = await store.window("600000.SH")
    assert (w.times == expected_times(range(5))).all()
    assert w.offsets.tolist() == [0, 1, 2, 3, 4]
    assert w.values[:, 3].tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]


async def test_too_old_only_when_full(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=3)
    for i in (5, 6):
        await store.upsert(mk(i), i)
    r = await store.upsert(mk(1), 1)  # older than the oldest, but the window has room
    assert (r.status, r.length) == ("inserted", 3)
    r = await store.upsert(mk(0), 0)  # full now: dropped
    assert (r.status, r.length, r.version) == ("too_old", 3, 3)
    r = await store.upsert(mk(3), 3)  # inside a full window: kept, oldest trimmed
    assert (r.status, r.length, r.version) == ("inserted", 3, 4)
    w = await store.window("600000.SH")
    assert (w.times == expected_times([3, 5, 6])).all() and w.offsets.tolist() == [3, 5, 6]


async def test_trimmed_to_lookback_in_redis_and_locally(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=5)
    for i in range(23):  # crosses the local buffer compaction several times
        r = await store.upsert(mk(i), 1000 + i)
        assert r.status == "appended" and r.length == min(i + 1, 5)
        local = await store.window("600000.SH")
        assert (local.times == expected_times(range(max(0, i - 4), i + 1))).all()
    remote = await store.window("600000.SH", refresh=True)
    assert (remote.times == local.times).all() and remote.offsets.tolist() == list(range(1018, 1023))
    np.testing.assert_array_equal(remote.values, local.values)
    bars_key, data_key, ver_key = store.keys("600000.SH")
    assert await client.zcard(bars_key) == 5 and await client.hlen(data_key) == 5
    assert int(await client.get(ver_key)) == 23


async def test_keys_share_a_cluster_hash_tag(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=5)
    keys = store.keys("AAPL")
    assert keys == [f"{redis_prefix}:{{AAPL}}:bars", f"{redis_prefix}:{{AAPL}}:data", f"{redis_prefix}:{{AAPL}}:ver"]
    await store.upsert(mk(0, symbol="AAPL"), 0)
    assert await client.exists(*keys) == 3


async def test_appends_take_one_round_trip_and_no_refetch(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=50)
    await store.upsert(mk(0), 0)
    sent = count_commands(client)
    for i in range(1, 40):
        assert (await store.upsert(mk(i), i)).status == "appended"
    assert sent == ["EVALSHA"] * 39
    sent.clear()
    w = await store.window("600000.SH")
    assert sent == [] and len(w) == 40 and w.version == 40
    # A duplicate or too-old bar needs no re-read either.
    await store.upsert(mk(39), 39)
    assert sent == ["EVALSHA"]


async def test_rebalance_version_gap_refetches(client, redis_prefix):
    a = WindowStore(client, redis_prefix, lookback=8)
    b = WindowStore(client, redis_prefix, lookback=8)
    for i in range(3):
        await a.upsert(mk(i), i)
    # Partition moves to B, which writes two bars A never sees.
    for i in (3, 4):
        r = await b.upsert(mk(i), i)
        assert r.status == "appended"
    assert len(await b.window("600000.SH")) == 5
    # Partition comes back to A: its next append reports a version gap.
    sent = count_commands(client)
    r = await a.upsert(mk(5), 5)
    assert (r.status, r.length, r.version, r.lost) == ("appended", 6, 6, False)
    assert sent == ["EVALSHA", "EVALSHA"]  # upsert, then one consistent re-read
    w = await a.window("600000.SH")
    assert (w.times == expected_times(range(6))).all() and w.offsets.tolist() == list(range(6))
    assert w.version == 6


async def test_forget_then_window_reads_redis(client, redis_prefix):
    a = WindowStore(client, redis_prefix, lookback=8)
    b = WindowStore(client, redis_prefix, lookback=8)
    await a.upsert(mk(0), 0)
    await a.window("600000.SH")
    await b.upsert(mk(1), 1)
    a.forget(["600000.SH"])
    w = await a.window("600000.SH")
    assert len(w) == 2 and w.version == 2


async def test_lost_when_redis_forgets_the_symbol(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=8)
    for i in range(4):
        await store.upsert(mk(i), i)
    await client.delete(*store.keys("600000.SH"))  # as if evicted
    r = await store.upsert(mk(4), 4)
    assert (r.status, r.length, r.version, r.lost) == ("appended", 1, 1, True)
    w = await store.window("600000.SH")
    assert len(w) == 1 and w.offsets.tolist() == [4]
    # Rebuilt from the caller's replay: plain appends again, no longer lost.
    r = await store.upsert(mk(5), 5)
    assert (r.status, r.lost) == ("appended", False)


async def test_lost_after_flushall_on_private_redis(private_redis):
    client = aioredis.from_url(private_redis, decode_responses=True)  # decoded replies work too
    try:
        store = WindowStore(client, "kt", lookback=4)
        for i in range(3):
            await store.upsert(mk(i, symbol="BTC-USD"), i)
        await client.flushall()  # also drops the cached Lua scripts
        r = await store.upsert(mk(3, symbol="BTC-USD"), 3)
        assert r.lost and r.length == 1
        other = await store.upsert(mk(0, symbol="ETH-USD"), 0)
        assert not other.lost  # never seen before: nothing was lost
        w = await store.window("BTC-USD", refresh=True)
        assert len(w) == 1 and w.values[0, 3] == 13.0
    finally:
        await client.aclose()


async def test_delete_and_ping(client, redis_prefix):
    store = WindowStore(client, redis_prefix, lookback=4)
    await store.upsert(mk(0, symbol="A"), 0)
    await store.upsert(mk(0, symbol="B"), 0)
    assert await store.ping()
    await store.delete(["A", "B"])
    assert await client.exists(*store.keys("A"), *store.keys("B")) == 0
    assert len(await store.window("A")) == 0


def test_lookback_bounds(client, redis_prefix):
    with pytest.raises(ValueError):
        WindowStore(client, redis_prefix, lookback=0)
    with pytest.raises(ValueError):
        WindowStore(client, redis_prefix, lookback=MAX_LOOKBACK + 1)


async def test_upsert_ahead_then_apply_equals_one_by_one(client, redis_prefix):
    """A burst of distinct symbols: one pipelined round trip, then apply() in order gives the
    same results and windows as upserting each bar on its own."""
    symbols = [f"S{i:03d}.SH" for i in range(20)]
    one = WindowStore(client, f"{redis_prefix}-one", lookback=8)
    ahead = WindowStore(client, f"{redis_prefix}-ahead", lookback=8)
    for i in range(3):  # some history first, so that both stores hold local copies
        for s in symbols:
            await one.upsert(mk(i, s), i)
            await ahead.upsert(mk(i, s), i)
    burst = [(mk(3, s, close=20.0), 100 + k) for k, s in enumerate(symbols)]
    sent = []
    original = client.pipeline

    def counting_pipeline(*a, **kw):
        pipe = original(*a, **kw)
        sent.append(pipe)
        return pipe

    client.pipeline = counting_pipeline
    replies = await ahead.upsert_ahead(burst)
    client.pipeline = original
    assert len(sent) == 1 and len(replies) == len(symbols)
    for (bar, offset), reply in zip(burst, replies):
        got = await ahead.apply(bar, offset, reply)
        want = await one.upsert(bar, offset)
        assert got == want
        a, b = await ahead.window(bar.symbol), await one.window(bar.symbol)
        assert np.array_equal(a.times, b.times) and np.array_equal(a.values, b.values, equal_nan=True)
        fresh = await ahead.window(bar.symbol, refresh=True)  # the local copy is what Redis holds
        assert np.array_equal(fresh.values, a.values, equal_nan=True)
    assert await ahead.upsert_ahead([]) == []


async def test_upsert_ahead_loads_the_script_when_redis_lost_it(private_redis):
    """The pipelined EVALSHAs carry the script with the pipeline: after SCRIPT FLUSH (a Redis
    restart) the next burst still upserts, with the same replies as one by one."""
    client = aioredis.from_url(private_redis)
    try:
        store = WindowStore(client, "kt", lookback=4)
        burst = [(mk(0, symbol=f"S{k}"), k) for k in range(5)]
        for (bar, offset), reply in zip(burst, await store.upsert_ahead(burst)):
            assert (await store.apply(bar, offset, reply)).status.value == "appended"
        await client.script_flush()
        burst = [(mk(1, symbol=f"S{k}"), 10 + k) for k in range(5)]
        for (bar, offset), reply in zip(burst, await store.upsert_ahead(burst)):
            r = await store.apply(bar, offset, reply)
            assert r.status.value == "appended" and r.length == 2 and not r.lost
    finally:
        await client.aclose()


def test_epoch_seconds_from_the_fields_equals_datetime_arithmetic():
    import random

    from worker.pipeline.windows import epoch_seconds

    rng = random.Random(7)
    epoch = dt.datetime(1970, 1, 1)
    zones = [None, dt.timezone.utc, dt.timezone(dt.timedelta(hours=8)), dt.timezone(dt.timedelta(hours=-5))]
    for _ in range(20000):
        t = dt.datetime(1, 1, 1) + dt.timedelta(seconds=rng.randrange(0, 315537897599),
                                                microseconds=rng.choice([0, rng.randrange(10**6)]))
        t = t.replace(tzinfo=rng.choice(zones))
        # The straightforward form: wall time as if UTC, floored to whole seconds.
        assert epoch_seconds(t) == (t.replace(tzinfo=None) - epoch) // dt.timedelta(seconds=1), t


async def test_upsert_ahead_replies_are_the_per_bar_scripts_for_every_outcome(client, redis_prefix, monkeypatch):
    """The many-bar script (chunks of UPSERT_CHUNK bars per EVALSHA) answers each bar exactly
    as the one-bar script does: appended, inserted, corrected, duplicate (with its offset),
    too old, a symbol Redis never saw, a full window trimmed; across chunk boundaries."""
    import worker.pipeline.windows as windows

    monkeypatch.setattr(windows, "UPSERT_CHUNK", 3)
    one = WindowStore(client, f"{redis_prefix}-one", lookback=4)
    ahead = WindowStore(client, f"{redis_prefix}-ahead", lookback=4)

    async def raw_one(bar, offset):
        return await one._upsert(keys=one.keys(bar.symbol), args=one._upsert_args(bar, offset))

    history = [1, 2, 4, 5]  # bar 3 missing: an insert fits in; bar 0 is too old once full
    for s in ("A", "B", "C", "D", "E", "F", "G"):
        for i in history:
            await raw_one(mk(i, s), i)
            await ahead._upsert(keys=ahead.keys(s), args=ahead._upsert_args(mk(i, s), i))
    burst = [(mk(6, "A"), 60), (mk(3, "B"), 61), (mk(5, "C", close=99.0), 62), (mk(5, "D"), 5),
             (mk(5, "E"), 63), (mk(0, "F"), 64), (mk(0, "NEW"), 65), (mk(7, "G"), 66)]
    got = await ahead.upsert_ahead(burst)
    want = [await raw_one(bar, offset) for bar, offset in burst]
    assert got == want
    statuses = [r[0].decode() for r in got]
    assert statuses == ["appended", "inserted", "corrected", "duplicate", "duplicate", "too_old", "appended",
                        "appended"]
    assert int(got[3][4]) == int(got[4][4]) == 5  # the stored offset: D's redelivery (5) is told from E's (63)
    assert int(got[6][3]) == 1  # Redis had no memory of NEW

"""worker/pipeline/ingest.py against a real Redis, no Kafka: what each message becomes."""
import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from worker.contracts import events
from worker.pipeline.ingest import DeadLetter, Ingest, Ready
from worker.ops.metrics import WorkerMetrics
from worker.pipeline.partition import PartitionState
from worker.calendars.sessions import parse_session_map
from worker.pipeline.windows import WindowStore

T0 = dt.datetime(2024, 6, 18, 9, 35)
TP = TopicPartition("bars", 0)


def msg(i, symbol="AAA", close=None, offset=None):
    t = T0 + dt.timedelta(minutes=5 * i)
    c = 10.0 + i if close is None else close
    doc = {"symbol": symbol, "ts": t.isoformat(), "open": c, "high": c + 1, "low": c - 1, "close": c,
           "volume": 100.0}
    return SimpleNamespace(key=symbol.encode(), value=events.dumps(doc), offset=i if offset is None else offset,
                           timestamp=1_700_000_000_000)


@pytest.fixture
async def ingest(redis_url, redis_prefix):
    client = aioredis.from_url(redis_url)
    lost = []

    async def on_lost():
        lost.append(True)

    ing = Ingest(WindowStore(client, redis_prefix, 16), lookback=8, min_history=3, pred_len=2,
                 interval=dt.timedelta(minutes=5), calendar_for=parse_session_map("continuous"),
                 metrics=WorkerMetrics(), on_lost=on_lost)
    ing.lost = lost
    yield ing
    await client.aclose()


async def handle_all(ingest, state, msgs):
    parsed = await ingest.parse_fetch({TP: msgs})
    return [await ingest.handle(state, m, parsed[(TP, m.offset)]) for m in msgs]


async def test_bars_buffer_until_min_history_then_become_ready(ingest):
    state = PartitionState(TP)
    out = await handle_all(ingest, state, [msg(i) for i in range(5)])
    assert out[:2] == [None, None]  # buffered: fewer than min_history bars
    assert all(isinstance(o, Ready) for o in out[2:])
    last = out[-1]
    assert len(last.values) == 5 and last.values[-1][3] == 14.0
    assert last.horizon == [T0 + dt.timedelta(minutes=5 * k) for k in (5, 6)]
    assert state.processed == 5 and state.oldest == {"AAA": 0}


async def test_window_is_cut_to_the_lookback(ingest):
    state = PartitionState(TP)
    out = await handle_all(ingest, state, [msg(i) for i in range(12)])
    assert len(out[-1].values) == 8 and out[-1].values[0][3] == 14.0


async def test_invalid_message_becomes_a_dead_letter_and_moves_on(ingest):
    state = PartitionState(TP)
    bad = SimpleNamespace(key=b"AAA", value=b"{not json", offset=7, timestamp=1_700_000_000_000)
    parsed = await ingest.parse_fetch({TP: [bad]})
    out = await ingest.handle(state, bad, parsed[(TP, 7)])
    assert isinstance(out, DeadLetter) and out.reason == "bad_json" and out.offset == 7
    assert state.processed == 8


async def test_duplicate_and_too_old_need_nothing_more(ingest):
    state = PartitionState(TP)
    await handle_all(ingest, state, [msg(i) for i in range(20)])
    dup = msg(19, offset=40)        # same bar again from another offset: a repeated event
    too_old = msg(0, offset=41)     # older than the whole stored window
    assert await handle_all(ingest, state, [dup]) == [None]
    assert await handle_all(ingest, state, [too_old]) == [None]
    events_ = ingest.metrics.events
    assert events_.labels(outcome="duplicate")._value.get() == 1
    assert events_.labels(outcome="too_old")._value.get() == 1


async def test_redelivered_message_is_forecast_on_its_own_window(ingest):
    """A re-read of the very message stored (same offset: its worker died before committing)."""
    state = PartitionState(TP)
    first = await handle_all(ingest, state, [msg(i) for i in range(10)])
    again = await handle_all(ingest, state, [msg(6)])
    assert isinstance(again[0], Ready)
    np.testing.assert_array_equal(again[0].values, first[6].values)
    np.testing.assert_array_equal(again[0].times, first[6].times)


async def test_revoked_partition_gets_no_ready_item(ingest):
    state = PartitionState(TP)
    await handle_all(ingest, state, [msg(i) for i in range(4)])
    state.owned = False
    assert await handle_all(ingest, state, [msg(4)]) == [None]


async def test_distinct_symbols_in_one_fetch_are_upserted_in_one_round_trip(ingest):
    state = PartitionState(TP)
    for i in range(3):
        await handle_all(ingest, state, [msg(i, "AAA"), msg(i, "BBB", offset=100 + i)])
    parsed = await ingest.parse_fetch({TP: [msg(3, "AAA"), msg(3, "BBB", offset=103)]})
    assert all(p.reply is not None for p in parsed.values())  # fetched ahead, pipelined
    out = [await ingest.handle(state, m, parsed[(TP, m.offset)]) for m in (msg(3, "AAA"), msg(3, "BBB", offset=103))]
    assert [o.bar.symbol for o in out] == ["AAA", "BBB"]


async def test_a_reply_fetched_before_a_rebuild_is_not_applied(ingest):
    state = PartitionState(TP)
    await handle_all(ingest, state, [msg(i, "AAA") for i in range(3)] + [msg(i, "BBB", offset=100 + i) for i in range(3)])
    batch = [msg(3, "AAA"), msg(3, "BBB", offset=103)]
    parsed = await ingest.parse_fetch({TP: batch})
    await ingest.store.delete(["AAA"])  # what a rebuild does first
    out = await ingest.handle(state, batch[0], parsed[(TP, 3)])
    assert out is None  # upserted again on the emptied window: 1 bar, buffered (not the stale reply)
    assert len(await ingest.store.window("AAA")) == 1


async def test_redis_losing_a_window_asks_for_a_rebuild(ingest, redis_url):
    state = PartitionState(TP)
    await handle_all(ingest, state, [msg(i) for i in range(4)])
    client = aioredis.from_url(redis_url)
    await client.delete(*ingest.store.keys("AAA"))  # a flush, as far as this symbol goes
    await client.aclose()
    await handle_all(ingest, state, [msg(4)])
    assert ingest.lost == [True]


def bar_at(t: dt.datetime, i: int, symbol="600000.SH"):
    doc = {"symbol": symbol, "ts": t.isoformat(), "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.0 + i / 100,
           "volume": 100.0}
    return SimpleNamespace(key=symbol.encode(), value=events.dumps(doc), offset=i, timestamp=1_700_000_000_000)


async def test_bars_in_closed_periods_are_accepted_counted_and_forecast_from_the_next_open(
        redis_url, redis_prefix, caplog):
    """The closed-period policy (docs/CALENDARS.md): a bar stamped in XSHG's lunch break or on
    a holiday is stored and forecast like any other, counted by calendar and period, logged
    once per symbol; its horizon starts at the next open part. Nothing is dead-lettered."""
    client = aioredis.from_url(redis_url)
    metrics = WorkerMetrics()
    ing = Ingest(WindowStore(client, redis_prefix, 16), lookback=8, min_history=3, pred_len=2,
                 interval=dt.timedelta(minutes=5), calendar_for=parse_session_map("*.SH=XSHG"),
                 metrics=metrics, on_lost=None)
    times = [dt.datetime(2024, 2, 8, 11, 25), dt.datetime(2024, 2, 8, 11, 30),
             dt.datetime(2024, 2, 8, 12, 0),     # lunch break
             dt.datetime(2024, 2, 8, 13, 5),
             dt.datetime(2024, 2, 9, 10, 0),     # Spring Festival holiday
             dt.datetime(2024, 2, 8, 16, 0)]     # after the close (out of order, inside the window)
    state = PartitionState(TP)
    with caplog.at_level("WARNING", logger="worker.pipeline.ingest"):
        out = await handle_all(ing, state, [bar_at(t, i) for i, t in enumerate(times)])
    await client.aclose()
    assert not any(isinstance(o, DeadLetter) for o in out)
    assert isinstance(out[2], Ready) and out[2].horizon == [dt.datetime(2024, 2, 8, 13, 5),
                                                           dt.datetime(2024, 2, 8, 13, 10)]
    assert isinstance(out[4], Ready) and out[4].horizon == [dt.datetime(2024, 2, 19, 9, 35),
                                                           dt.datetime(2024, 2, 19, 9, 40)]
    assert len(out[4].values) == 5  # nothing lost from the window
    counted = {p: metrics.closed_period_bars.labels(calendar="XSHG", period=p)._value.get()
               for p in ("break", "closed_day", "outside_hours")}
    assert counted == {"break": 1, "closed_day": 1, "outside_hours": 1}
    assert caplog.text.count("lies in a closed period") == 1


async def test_the_live_path_gives_what_a_window_read_from_redis_gives(ingest, redis_url, redis_prefix):
    """A bar appended to the local copy (the live path: no window read, no search for newer
    bars) becomes the very Ready item, and the same oldest offset, that a worker reading the
    window back from Redis makes of it; once a late bar breaks the offsets' order, the oldest
    offset is searched for."""
    state = PartitionState(TP)
    await handle_all(ingest, state, [msg(i) for i in range(20)])  # past Redis's 16 bars: the front trimmed
    live = (await handle_all(ingest, state, [msg(20)]))[0]
    assert (await ingest.store.upsert(events.parse_bar(msg(21).value), 21)).appended

    client = aioredis.from_url(redis_url)
    try:
        cold = Ingest(WindowStore(client, redis_prefix, 16), lookback=8, min_history=3, pred_len=2,
                      interval=dt.timedelta(minutes=5), calendar_for=parse_session_map("continuous"),
                      metrics=WorkerMetrics(), on_lost=ingest.on_lost)
        other = PartitionState(TP)
        await cold.store.delete(["AAA"])
        await handle_all(cold, other, [msg(i) for i in range(20)])
        cold.store.forget(["AAA"])  # the next bar finds no local copy: the window is read from Redis
        read = (await handle_all(cold, other, [msg(20)]))[0]
    finally:
        await client.aclose()
    assert isinstance(live, Ready) and isinstance(read, Ready)
    assert np.array_equal(live.values, read.values, equal_nan=True) and np.array_equal(live.times, read.times)
    assert live.times.dtype == read.times.dtype and live.values.dtype == read.values.dtype
    assert live.horizon == read.horizon and state.oldest == other.oldest == {"AAA": 5}
    live.values[-1, 3] = -1.0  # the item's arrays are copies: the next bar cannot change them
    assert (await ingest.store.window("AAA")).values[-2, 3] == 30.0

    # Offsets out of order (a bar re-sent under a lower offset): the oldest is searched for.
    store = ingest.store
    await store.delete(["BBB"])
    for i, off in [(0, 50), (1, 51), (2, 40), (3, 52)]:
        await store.upsert(events.parse_bar(msg(i, "BBB").value), off)
    assert store.latest("BBB")[2] == 40

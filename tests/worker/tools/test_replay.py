import asyncio
import uuid

import numpy as np
import pandas as pd
from aiokafka import AIOKafkaConsumer

from worker.contracts.events import parse_bar
from worker.tools import TAPE
from worker.tools.replay import parse_speed, prepare, replay
from worker.tools.tape import interleave, read_tape


def test_read_tape_csv_and_parquet_agree(tmp_path):
    csv = read_tape(TAPE, symbol="X")
    pq = tmp_path / "t.parquet"
    pd.read_csv(TAPE).assign(symbol="X").to_parquet(pq)
    par = read_tape(pq)
    assert len(csv) == 2500
    pd.testing.assert_frame_equal(csv, par)


def test_fanout_makes_distinct_valid_symbols_interleaved_bar_by_bar():
    rows = prepare(TAPE, fanout=3, limit=10)
    assert len(rows) == 30
    assert list(rows["symbol"][:6]) == ["SYM-0001", "SYM-0002", "SYM-0003"] * 2
    assert rows["time"].is_monotonic_increasing
    closes = rows.pivot(index="time", columns="symbol", values="close")
    assert closes.nunique(axis=1).eq(3).all()  # every bar differs between symbols
    assert (rows["high"] >= rows[["open", "close"]].max(axis=1)).all()
    assert (rows["low"] <= rows[["open", "close"]].min(axis=1)).all()
    # deterministic
    again = prepare(TAPE, fanout=3, limit=10)
    pd.testing.assert_frame_equal(rows, again)


def test_fanout_values_do_not_depend_on_skip_or_limit():
    whole = prepare(TAPE, fanout=2, limit=30)
    parts = pd.concat([prepare(TAPE, fanout=2, limit=10), prepare(TAPE, fanout=2, skip=10, limit=20)])
    pd.testing.assert_frame_equal(whole, interleave(parts.reset_index(drop=True)))


def test_skip_and_limit_count_bars_per_symbol():
    rows = prepare(TAPE, symbol="A", skip=100, limit=5)
    full = read_tape(TAPE, symbol="A")
    assert list(rows["time"]) == list(full["time"][100:105])


def test_speed_parsing():
    assert parse_speed("max") is None
    assert parse_speed("60") == 60.0


async def test_replay_publishes_every_bar_keyed_by_symbol(broker):
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    summary = await replay(TAPE, broker, topic, fanout=3, limit=40, partitions=1)
    assert (summary.bars, summary.symbols) == (120, 3)
    assert summary.rate > 0
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    got = []
    try:
        while len(got) < 120:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 10)
            for msgs in batch.values():
                got.extend(msgs)
    finally:
        await consumer.stop()
    bars = [parse_bar(m.value, m.key) for m in got]  # valid bar.v1 with key == symbol
    assert [b.symbol for b in bars[:3]] == ["SYM-0001", "SYM-0002", "SYM-0003"]
    expected = prepare(TAPE, fanout=3, limit=40)
    np.testing.assert_allclose([b.close for b in bars], expected["close"].to_numpy())
    assert [b.time for b in bars] == list(expected["time"].dt.to_pydatetime())


async def test_replay_at_a_multiple_of_real_time_spaces_bars_out(broker):
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    # 4 five-minute bars at 3000x real time: 3 gaps of 0.1 s.
    summary = await replay(TAPE, broker, topic, symbol="A", limit=4, speed=3000, partitions=1)
    assert summary.bars == 4
    assert 0.25 <= summary.seconds < 2.0


async def test_max_gap_shortens_closed_market_pauses(broker):
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    # Rows 2..7 of the tape span the lunch break (11:30 -> 13:05, 95 minutes): at 3000x that
    # pause alone would take 1.9 s; capped at 5 minutes every gap is 0.1 s (5 gaps: 0.5 s).
    summary = await replay(TAPE, broker, topic, symbol="A", skip=2, limit=6, speed=3000, partitions=1, max_gap="5m")
    assert summary.bars == 6
    assert 0.4 <= summary.seconds < 1.5

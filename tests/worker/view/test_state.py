"""The view's store: what it keeps of bars, forecasts and scores, its bounds, bad input."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from worker.view.state import Limits, ViewState

from .messages import bar, epoch, forecast, ts


def test_bars_and_forecast_become_what_the_page_draws():
    state = ViewState()
    for i in range(5):
        assert state.feed("bars", bar("AAA", i, 10.0 + i))
    assert state.feed("forecasts", forecast("AAA", 4, 14.0, pred_len=3, random_weights=True))
    snap = state.snapshot("AAA")
    assert [b[0] for b in snap["bars"]] == [epoch(i) for i in range(5)]
    assert snap["bars"][-1] == [epoch(4), 14.0, 14.0 * 1.01, 14.0 * 0.99, 14.0]
    (fc,) = snap["forecasts"]
    assert fc["as_of"] == epoch(4) and fc["as_of_raw"] == ts(4)
    assert fc["path"] == [[epoch(4 + k), pytest.approx(14.0 + 0.1 * k)] for k in (1, 2, 3)]
    assert fc["raw"] == [[epoch(4 + k), pytest.approx(14.0 + 0.05 * k), pytest.approx(14.0 + 0.15 * k)]
                         for k in (1, 2, 3)]
    assert fc["calibrated"] == [[epoch(4 + k), pytest.approx(14.0 + 0.02 * k), pytest.approx(14.0 + 0.18 * k)]
                                for k in (1, 2, 3)]
    assert fc["levels"] == [0.1, 0.9] and fc["calibration"] == "pool:all"
    assert fc["model"] == "m@1" and fc["random_weights"] is True and fc["latency_ms"] == 12.5
    row = state.summary("AAA")
    assert row["as_of_raw"] == ts(4) and row["next_close"] == pytest.approx(14.1)
    assert row["band"] == [pytest.approx(14.05), pytest.approx(14.15)] and row["bars"] == 5


def test_forecast_without_calibration_or_quantiles():
    state = ViewState()
    state.feed("forecasts", forecast("AAA", 1, 10.0, calibrated=False))
    fc = state.snapshot("AAA")["forecasts"][0]
    assert fc["calibrated"] is None and fc["raw"] is not None
    doc = orjson.loads(forecast("BBB", 1, 10.0, calibrated=False))
    doc["quantile_levels"] = []
    for h in doc["horizon"]:
        del h["quantiles"]
    assert state.feed("forecasts", orjson.dumps(doc))
    fc = state.snapshot("BBB")["forecasts"][0]
    assert fc["raw"] is None and fc["band"] is None and fc["levels"] is None


def test_bounds_keep_the_newest_bars_forecasts_and_symbols():
    state = ViewState(Limits(max_bars=10, max_forecasts=3, max_symbols=2))
    for i in range(25):
        state.feed("bars", bar("AAA", i, 10.0))
    assert [b[0] for b in state.snapshot("AAA")["bars"]] == [epoch(i) for i in range(15, 25)]
    assert not state.feed("bars", bar("AAA", 3, 10.0))  # older than all ten kept: dropped, counted
    assert state.stats["old_bars_dropped"] == 1
    # an arriving bar between kept ones is inserted in time order
    for i in (30, 28, 29):
        state.feed("bars", bar("AAA", i, 11.0))
    assert [b[0] for b in state.snapshot("AAA")["bars"]][-3:] == [epoch(28), epoch(29), epoch(30)]
    for i in (5, 9, 7, 6, 8):
        state.feed("forecasts", forecast("AAA", i, 10.0))
    assert [f["as_of"] for f in state.snapshot("AAA")["forecasts"]] == [epoch(7), epoch(8), epoch(9)]
    state.feed("bars", bar("BBB", 1, 5.0))
    state.feed("bars", bar("AAA", 31, 5.0))  # AAA is now the most recently updated
    state.feed("bars", bar("CCC", 1, 5.0))   # a third symbol: BBB, updated longest ago, goes
    assert sorted(state.symbols) == ["AAA", "CCC"] and state.stats["evicted_symbols"] == 1


def test_a_bar_sent_again_replaces_its_copy_and_forecast_repeats_are_dropped():
    state = ViewState()
    state.feed("bars", bar("AAA", 1, 10.0))
    state.feed("bars", bar("AAA", 1, 12.0))
    assert [b[4] for b in state.snapshot("AAA")["bars"]] == [12.0]
    assert state.feed("forecasts", forecast("AAA", 1, 10.0))
    assert not state.feed("forecasts", forecast("AAA", 1, 10.0))
    assert state.feed("forecasts", forecast("AAA", 1, 10.0, version="2"))  # another model version: kept
    assert state.stats["duplicates"] == 1 and len(state.snapshot("AAA")["forecasts"]) == 2


@pytest.mark.parametrize("kind, value", [
    ("bars", b"not json"), ("bars", b'{"symbol": "A", "ts": "2024-01-02T09:35:00"}'),
    ("bars", None), ("bars", b'{"symbol": "A/B", "ts": "2024-01-02T09:35:00", "open": 1, "high": 1, '
                             b'"low": 1, "close": 1}'),
    ("forecasts", b"[]"), ("forecasts", b'{"schema": "forecast.v1", "symbol": "A"}'),
    ("forecasts", b"\xff\xfe"), ("scores", b'{"schema": "score.v1", "symbol": "A"}'), ("scores", b"1"),
])
def test_malformed_messages_are_skipped_and_counted(kind, value):
    state = ViewState()
    assert not state.feed(kind, value)
    assert state.stats["invalid"][kind] == 1 and not state.symbols


def test_forecast_with_a_symbol_unfit_for_a_url_is_skipped():
    doc = orjson.loads(forecast("AAA", 1, 10.0))
    doc["symbol"] = "<script>"
    state = ViewState()
    assert not state.feed("forecasts", orjson.dumps(doc))
    assert state.stats["invalid"]["forecasts"] == 1


def test_score_is_kept_per_symbol():
    state = ViewState()
    score = {"schema": "score.v1", "symbol": "AAA", "as_of": ts(1), "ts": ts(2), "step": 1, "abs_error": 0.25,
             "persistence_abs_error": 0.5, "direction_hit": True}
    assert state.feed("scores", orjson.dumps(score))
    assert state.summary("AAA")["score"] == {"symbol": "AAA", "as_of": epoch(1), "ts": epoch(2), "step": 1,
                                             "abs_error": 0.25, "persistence_abs_error": 0.5, "direction_hit": True}


async def test_subscribers_get_their_symbol_and_every_summary_and_overflow_is_flagged():
    state = ViewState()
    sub_a, sub_b = state.subscribe("AAA"), state.subscribe("BBB", maxsize=2)
    state.feed("bars", bar("AAA", 1, 10.0))
    state.feed("forecasts", forecast("AAA", 1, 10.0))
    got_a = [sub_a.queue.get_nowait()["type"] for _ in range(sub_a.queue.qsize())]
    assert got_a == ["bar", "summary", "forecast", "summary"]
    got_b = [sub_b.queue.get_nowait()["type"] for _ in range(sub_b.queue.qsize())]
    assert got_b == ["summary", "summary"] and not sub_b.overflowed
    for i in range(2, 6):
        state.feed("bars", bar("CCC", i, 1.0))
        state.feed("forecasts", forecast("CCC", i, 1.0))
    assert sub_b.overflowed and sub_b.queue.qsize() == 2  # bounded: the page will be sent a fresh state
    state.unsubscribe(sub_a)
    state.unsubscribe(sub_b)
    assert not state.subscribers
    await asyncio.sleep(0)

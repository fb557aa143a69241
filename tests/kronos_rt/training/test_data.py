"""Tapes -> windows: leakage-free normalization, time splits, bad input as one-line errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kronos_rt.features import normalize
from kronos_rt.training.data import CLIP, DataError, WindowDataset, default_splits, load_tapes, parse_range

from .conftest import make_tape


def test_normalization_uses_lookback_rows_only(tape):
    tapes = load_tapes([tape])
    splits = default_splits(tapes, "0:0.7", "0.7:0.85", "0.85:1")
    ds = WindowDataset(tapes, splits["train"], lookback=32, horizon=8)
    item = ds[5]
    start = ds.refs[5].start
    bars = tapes.series[0].bars[start:start + 40].copy()
    # Lookback rows come out with mean 0 and std 1 (before clipping: nothing clips here).
    look = item["x"][:32].numpy()
    assert np.abs(look.mean(0)[:4]).max() < 1e-4 and np.abs(look.std(0)[:4] - 1).max() < 1e-3
    # Any change to the horizon rows leaves every lookback value as it was: no future row enters.
    future_changed = bars.copy()
    future_changed[32:] *= 1000.0
    a, mean_a, std_a = normalize(bars, CLIP, stats_rows=32)
    b, mean_b, std_b = normalize(future_changed, CLIP, stats_rows=32)
    np.testing.assert_array_equal(a[:32], b[:32])
    np.testing.assert_array_equal(mean_a, mean_b)
    np.testing.assert_array_equal(std_a, std_b)
    np.testing.assert_array_equal(a, item["x"].numpy())
    # ...and the statistics are those of the lookback rows, computed independently here as
    # docs/MODEL.md describes them: column by column in float32, mean and population std
    # over the 32 lookback rows, (x - mean) / (std + 1e-5) on every row, clipped to +-5.
    expected = np.empty((40, 6), np.float32)
    for j in range(6):
        col = bars[:32, j].astype(np.float32)
        m = col.sum(dtype=np.float32) / np.float32(32)
        sd = np.sqrt(((col - m) ** 2).sum(dtype=np.float32) / np.float32(32))
        expected[:, j] = np.clip((bars[:, j].astype(np.float32) - m) / (sd + np.float32(1e-5)), -5, 5)
    np.testing.assert_allclose(a, expected, rtol=1e-6, atol=1e-6)
    # One normalization: the lookback rows are exactly what inference makes of the lookback alone.
    inf, mean_inf, std_inf = normalize(bars[:32], CLIP)
    np.testing.assert_array_equal(a[:32], inf)
    np.testing.assert_array_equal(mean_a, mean_inf)
    np.testing.assert_array_equal(std_a, std_inf)


def test_windows_stay_inside_their_split(tape):
    tapes = load_tapes([tape])
    splits = default_splits(tapes, None, None, None)
    for name, interval in splits.items():
        ds = WindowDataset(tapes, interval, 16, 4, name)
        times = tapes.series[0].times
        for ref in ds.refs:
            assert interval.mask(times[ref.start:ref.start + 20]).all()
    train = WindowDataset(tapes, splits["train"], 16, 4)
    val = WindowDataset(tapes, splits["val"], 16, 4)
    assert train.time_range()[1] < val.time_range()[0]


def test_stats_rows_must_be_rows_of_the_window():
    bars = np.arange(1.0, 25.0).reshape(4, 6)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="stats_rows must be in 1..4"):
            normalize(bars, CLIP, stats_rows=bad)
    np.testing.assert_array_equal(normalize(bars, CLIP, stats_rows=4)[0], normalize(bars, CLIP)[0])


def test_time_features_once_per_series(tape, monkeypatch):
    import kronos_rt.training.data as data
    from kronos_rt.features import time_features

    calls = []
    monkeypatch.setattr(data, "time_features", lambda t: calls.append(len(t)) or time_features(t))
    tapes = load_tapes([tape])
    splits = default_splits(tapes, None, None, None)
    train = WindowDataset(tapes, splits["train"], 16, 4)
    val = WindowDataset(tapes, splits["val"], 16, 4, "val")
    items = [train[0], train[len(train) - 1], val[0], val[len(val) - 1]]
    assert calls == [len(tapes.series[0])]  # one series: one computation, shared by both splits
    times = tapes.series[0].times
    for ds, item, k in zip((train, train, val, val), items, (0, len(train) - 1, 0, len(val) - 1)):
        st = ds.refs[k].start
        np.testing.assert_array_equal(item["x_stamp"].numpy(), time_features(times[st:st + 20]))


def test_dates_and_symbol_column_and_folders(tmp_path):
    make_tape(tmp_path / "a.csv", np.linspace(10, 11, 100), symbol="AAA")
    make_tape(tmp_path / "b.csv", np.linspace(20, 21, 100), symbol="BBB")
    tapes = load_tapes([tmp_path])
    assert [s.symbol for s in tapes.series] == ["AAA", "BBB"]
    assert len(tapes.files) == 2 and len(tapes.files[0].sha256) == 64
    iv = parse_range("2024-01-02 10:00..2024-01-02 12:00", "--val", tapes.start, tapes.end)
    assert iv.mask(tapes.series[0].times).sum() == 24
    assert parse_range("2024-01-02:", "--test", tapes.start, tapes.end).end is None


def test_missing_columns(tmp_path):
    path = make_tape(tmp_path / "t.csv", np.ones(50), high=None)
    with pytest.raises(DataError, match="missing columns high"):
        load_tapes([path])


def test_too_few_bars_for_one_window(tape):
    tapes = load_tapes([tape])
    splits = default_splits(tapes, None, None, None)
    with pytest.raises(DataError, match=r"too few for one window of 120 consecutive bars"):
        WindowDataset(tapes, splits["val"], 100, 20, "val")


def test_empty_split(tape):
    tapes = load_tapes([tape])
    # A val range before the first bar: valid, disjoint, and empty.
    splits = default_splits(tapes, "0:0.7", "2024-01-02 06:00..2024-01-02 07:00", "0.85:1")
    with pytest.raises(DataError, match="val split .* has 0 bars"):
        WindowDataset(tapes, splits["val"], 16, 4, "val")


def test_overlapping_splits(tape):
    tapes = load_tapes([tape])
    with pytest.raises(DataError, match="splits overlap"):
        default_splits(tapes, "0:0.8", "0.7:0.9", "0.9:1")


def test_nan_run_is_an_error_or_dropped_and_reported(tmp_path):
    close = np.linspace(10, 12, 80)
    close[30:35] = np.nan
    path = make_tape(tmp_path / "t.csv", close)
    with pytest.raises(DataError, match=r"6 bad rows .*first at data rows 30, 31, 32.*--drop-bad-rows"):
        load_tapes([path])  # 6: five NaN closes and the open of row 35 that copies one
    tapes = load_tapes([path], drop_bad_rows=True)
    assert tapes.bad_rows == 6 and len(tapes.series[0]) == 74
    assert tapes.bad_examples[0].startswith("t.csv row 30 (2024-01-02 12:00:00)")
    assert tapes.files[0].bad_rows == 6


def test_non_monotonic_timestamps(tmp_path):
    path = make_tape(tmp_path / "t.csv", np.linspace(10, 12, 40))
    df = pd.read_csv(path)
    df.loc[[10, 11], "timestamps"] = df.loc[[11, 10], "timestamps"].to_numpy()
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="not strictly increasing at 2024-01-02 10:20:00"):
        load_tapes([path])


def test_bad_range_text(tape):
    tapes = load_tapes([tape])
    with pytest.raises(DataError, match="neither a fraction"):
        parse_range("soon:later", "--test", tapes.start, tapes.end)
    with pytest.raises(DataError, match="outside"):
        parse_range("0.5:1.5", "--test", tapes.start, tapes.end)

"""Inputs as the reference predictor prepares them, in numpy
(docs/MODEL.md, 'Normalization' and 'Time features')."""
from __future__ import annotations

import numpy as np

COLUMNS = ("open", "high", "low", "close", "volume", "amount")
PRICE_COLUMNS = COLUMNS[:4]
EPS = 1e-5


def fill_missing(bars: np.ndarray) -> np.ndarray:
    """bars [L, 6] float with NaN marking missing volume/amount, row by row.

    Missing volume -> volume = amount = 0; missing amount -> volume x mean of the four
    prices (the reference's rule for a missing column, applied to single bars).
    """
    out = np.array(bars, dtype=np.float64, copy=True)
    if out.ndim != 2 or out.shape[1] != 6:
        raise ValueError(f"bars must have shape [L, 6], got {out.shape}")
    no_vol = np.isnan(out[:, 4])
    out[no_vol, 4] = 0.0
    out[no_vol, 5] = 0.0
    no_amt = np.isnan(out[:, 5])
    out[no_amt, 5] = out[no_amt, 4] * out[no_amt, :4].mean(axis=1)
    return out


def normalize(x: np.ndarray, clip: float, stats_rows: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column z-score over the window in float32 (population std), clipped.

    Column-major, as a pandas DataFrame's .values is in the reference: float32 column sums
    then run in the same order, so a last-bit difference cannot flip a greedy token.

    stats_rows: take the mean and std from the first `stats_rows` rows only and apply them
    to every row (training: a lookback + horizon window with its lookback's statistics, the
    same numbers inference gets from the lookback alone). None: all rows (inference)."""
    x = np.asfortranarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("input contains NaN or infinite values")
    if stats_rows is None:
        head = x
    elif 1 <= stats_rows <= len(x):
        head = x[:stats_rows]  # a row slice of a column-major array: columns stay contiguous
    else:
        raise ValueError(f"stats_rows must be in 1..{len(x)}, got {stats_rows}")
    mean, std = np.mean(head, axis=0), np.std(head, axis=0)
    return np.clip((x - mean) / (std + EPS), -clip, clip), mean, std


def denormalize(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return y * (std + EPS) + mean


def time_features(times) -> np.ndarray:
    """datetime64 array [L] (wall clock, no zone) -> int64 [L, 5]: minute, hour, weekday (Mon=0), day, month."""
    t = np.asarray(times, dtype="datetime64[m]")
    minutes = t.astype(np.int64)
    days = t.astype("datetime64[D]")
    months = t.astype("datetime64[M]")
    out = np.empty(t.shape + (5,), dtype=np.int64)
    out[..., 0] = minutes % 60
    out[..., 1] = (minutes // 60) % 24
    out[..., 2] = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    out[..., 3] = (days - months).astype(np.int64) + 1
    out[..., 4] = months.astype(np.int64) % 12 + 1
    return out


def prepare_uniform(bars: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fill_missing and normalize of B windows of one length at once: bars [B, L, 6] float
    (NaN = missing volume/amount) -> (x [B, L, 6] float32, mean [B, 6], std [B, 6]).

    The same bits as the two functions window by window (tests/kronos_rt/test_features.py):
    the fill is row by row either way, and each window's columns are laid out contiguous
    ([B, 6, L]) so that its float32 column sums run in the order a column-major [L, 6]
    window's do. A thousand small windows then cost a few array calls instead of a few
    thousand (on an inference thread that shares the GIL with the worker's event loop).
    Raises the ValueError the window-by-window path raises first."""
    b = np.asarray(bars)
    if b.ndim != 3 or b.shape[2] != 6:
        raise ValueError(f"bars must have shape [B, L, 6], got {b.shape}")
    B, L = b.shape[:2]
    filled = fill_missing(b.reshape(B * L, 6)).reshape(B, L, 6)
    cols = np.ascontiguousarray(filled.transpose(0, 2, 1), dtype=np.float32)  # [B, 6, L]
    nan = np.isnan(filled).any(axis=(1, 2))
    bad = nan | ~np.isfinite(cols).all(axis=(1, 2))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"series {i}: NaN in price columns" if nan[i] else "input contains NaN or infinite values")
    mean, std = np.mean(cols, axis=2), np.std(cols, axis=2)
    x = np.clip((cols - mean[:, :, None]) / (std[:, :, None] + EPS), -clip, clip)
    return x.transpose(0, 2, 1), mean, std

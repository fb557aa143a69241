"""Scoring one forecast step against the realized close: pure math, no Redis or Kafka.

A forecast is kept (worker/quality/live.py) as a `ForecastRecord`: what the model said for
every horizon step plus what the baselines need (the close at as_of and the drift per
bar). When the bar at step h arrives, `score_step` turns the record and the realized
close into the figures a score.v1 event carries and the metrics sum up:

- absolute and squared error of the mean path's close, and of two baselines:
  persistence (close at as_of) and drift (close at as_of + h * mean bar-to-bar change);
- direction hit: sign of the forecast move vs the realized move, both from the as_of
  close (None when either did not move: a flat bar says nothing about direction);
- per quantile level (raw and calibrated bands): close <= quantile, and the pinball loss;
  per band (symmetric level pairs, e.g. 0.1/0.9 = the 80 % band): close inside;
- CRPS of the close from the sample paths, when the forecast kept them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def pinball(level: float, pred: float, y: float) -> float:
    """Quantile (pinball) loss of predicting `pred` as the `level` quantile when y happened."""
    d = y - pred
    return level * d if d >= 0 else (level - 1.0) * d


def crps_samples(samples, y: float) -> float:
    """CRPS of the empirical distribution of `samples` at y: E|X - y| - E|X - X'| / 2.

    E|X - X'| over all n^2 ordered pairs of sorted samples x_1..x_n is
    2 / n^2 * sum_i (2i - n - 1) x_i, so this is O(n log n)."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("CRPS needs at least one sample")
    i = np.arange(1, n + 1)
    spread = 2.0 * float(np.dot(2 * i - n - 1, x)) / (n * n)
    return float(np.mean(np.abs(x - y))) - 0.5 * spread


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def band_pairs(levels) -> list[tuple[int, int]]:
    """Index pairs (lo, hi) of levels symmetric about 0.5 (0.1 & 0.9 -> the 80 % band)."""
    levels = [float(q) for q in levels]
    pairs = []
    for i, lo in enumerate(levels):
        for j, hi in enumerate(levels):
            if lo < 0.5 < hi and math.isclose(lo + hi, 1.0, abs_tol=1e-9):
                pairs.append((i, j))
    return pairs


def band_name(lo: float, hi: float) -> str:
    """'0.8' for the 0.1/0.9 band: its nominal coverage, as a metric label."""
    return f"{hi - lo:.2f}".rstrip("0").rstrip(".")


@dataclass
class ForecastRecord:
    """What a stored forecast needs to be scored later (JSON in Redis; see to_dict)."""
    symbol: str
    as_of: str                    # as received
    model_name: str
    model_version: str
    last_close: float             # close at as_of (persistence baseline, direction origin)
    drift: float                  # mean close change per bar over the window (drift baseline)
    scale: float                  # price scale of calibration residuals (close * recent volatility)
    horizon_ts: list[str]         # step h -> its bar's ts (h = 1..P)
    mean_close: list[float]       # [P]
    levels: list[float] = field(default_factory=list)
    raw_q: list[list[float]] | None = None   # [P][Q] close quantiles of the sample paths
    cal_q: list[list[float]] | None = None   # [P][Q] calibrated close quantiles, when published
    cal_n: int = 0                # scores behind the calibration when it was published
    cal_group: str = ""           # which calibration state it came from (and is updated)
    paths: list[list[float]] | None = None   # [P][S] sampled closes (CRPS), when kept
    shadow: bool = False          # a shadow model's forecast (worker/lifecycle/shadow.py): scored, never calibrates

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "ForecastRecord":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def score_step(rec: ForecastRecord, step: int, realized: float) -> dict:
    """The figures of one step (1-based) of a forecast against the realized close.
    Non-finite inputs give None figures, never NaN (JSON and the metrics stay clean)."""
    h = step - 1
    pred = float(rec.mean_close[h])
    last = float(rec.last_close)
    drift = last + step * float(rec.drift)
    y = float(realized)
    ok = all(math.isfinite(v) for v in (pred, last, drift, y))
    out: dict = {
        "step": step,
        "realized_close": y,
        "forecast_close": pred if math.isfinite(pred) else None,
        "abs_error": abs(pred - y) if ok else None,
        "sq_error": (pred - y) ** 2 if ok else None,
        "persistence_abs_error": abs(last - y) if ok else None,
        "persistence_sq_error": (last - y) ** 2 if ok else None,
        "drift_abs_error": abs(drift - y) if ok else None,
        "drift_sq_error": (drift - y) ** 2 if ok else None,
        "direction_hit": None,
    }
    if ok and _sign(pred - last) != 0 and _sign(y - last) != 0:
        out["direction_hit"] = _sign(pred - last) == _sign(y - last)
    for name, table in (("raw", rec.raw_q), ("calibrated", rec.cal_q)):
        if table is None or not rec.levels:
            continue
        # A step whose band was not published yet (fewer scores than --calibration-min-scores
        # at that step) is stored as nulls: no band for that step, not an error.
        row = table[h] if h < len(table) else None
        qs = [math.nan if v is None else float(v) for v in row or ()]
        if len(qs) != len(rec.levels) or not all(math.isfinite(v) for v in qs) or not math.isfinite(y):
            continue
        out[name] = {
            "below": [y <= q for q in qs],
            "pinball": [pinball(lv, q, y) for lv, q in zip(rec.levels, qs)],
            "bands": {band_name(rec.levels[i], rec.levels[j]): qs[i] <= y <= qs[j]
                      for i, j in band_pairs(rec.levels)},
        }
    if rec.paths is not None and math.isfinite(y):
        samples = np.asarray(rec.paths[h], dtype=np.float64)
        samples = samples[np.isfinite(samples)]
        if len(samples):
            out["crps"] = crps_samples(samples, y)
    return out

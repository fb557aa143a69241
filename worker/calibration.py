"""Calibrated quantile bands: online conformal calibration with adaptive levels (pure math).

For every horizon step h and quantile level q the calibrator keeps a rolling window of
recent normalized residuals r = (y - base_q) / scale, where base_q is the model's own q
quantile of the close (conformalized quantile regression) or, with one sample path, its
mean close (a band around the mean path from recent residuals), and scale is the price
times recent volatility (so symbols of any price and regime pool together). The calibrated
quantile is

    base_q + scale * Quantile(window of r, a_q)

where a_q starts at q and follows adaptive conformal inference (Gibbs & Candes 2021):
after each realized close, a_q += gamma * (q - 1{y <= served calibrated quantile}), so
the long-run share of closes below the served quantile is driven to q whatever the
model or the market does; the 0.1/0.9 pair then covers 80 %. Windows are per step (a
step-12 forecast is wider than a step-1 one) and per calibration group (a pool of
symbols, or one symbol with enough history; worker/quality.py decides which).

Nothing non-finite enters the state: updates with NaN/inf residuals are refused.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_WINDOW = 256
DEFAULT_GAMMA = 0.01
DEFAULT_MIN_SCORES = 20  # a step's band is published once this many residuals back it


def residual_scale(closes: np.ndarray, span: int = 64, floor: float = 1e-5) -> float:
    """Price scale of residuals: last close * std of the last `span` bar-to-bar returns
    (floored, so a flat window does not divide by zero). NaN when the close is not usable."""
    c = np.asarray(closes, dtype=np.float64)[-(span + 1):]
    c = c[np.isfinite(c)]
    if len(c) == 0 or c[-1] <= 0:
        return math.nan
    if len(c) < 3 or np.any(c[:-1] <= 0):
        return float(c[-1]) * floor
    sigma = float(np.std(np.diff(c) / c[:-1]))
    return float(c[-1]) * max(sigma, floor)


class Calibrator:
    """Rolling residual windows and adaptive levels for P steps x Q levels."""

    def __init__(self, pred_len: int, levels, window: int = DEFAULT_WINDOW, gamma: float = DEFAULT_GAMMA):
        self.levels = np.asarray([float(q) for q in levels], dtype=np.float64)
        if len(self.levels) == 0 or not np.all((self.levels > 0) & (self.levels < 1)):
            raise ValueError(f"calibration needs levels in (0, 1), got {list(levels)}")
        if window < 2 or pred_len < 1:
            raise ValueError("need window >= 2 and pred_len >= 1")
        self.pred_len, self.window, self.gamma = pred_len, window, gamma
        q = len(self.levels)
        self.buf = np.zeros((pred_len, window, q))   # ring of residuals per step
        self.count = np.zeros(pred_len, dtype=np.int64)  # filled slots (<= window)
        self.pos = np.zeros(pred_len, dtype=np.int64)    # next slot to write
        self.alpha = np.tile(self.levels, (pred_len, 1))  # adaptive level per (step, level)
        self.dirty: set[int] = set()                      # steps changed since the last save

    def update(self, step: int, residuals, below=None) -> bool:
        """Add one step's residuals (one per level); `below` (one bool per level: the close
        was at or below the served calibrated quantile) moves the adaptive levels. Returns
        False, changing nothing, when a residual is not finite."""
        h = step - 1
        r = np.asarray(residuals, dtype=np.float64)
        if not 0 <= h < self.pred_len or r.shape != self.levels.shape or not np.all(np.isfinite(r)):
            return False
        self.buf[h, self.pos[h]] = r
        self.pos[h] = (self.pos[h] + 1) % self.window
        self.count[h] = min(self.count[h] + 1, self.window)
        if below is not None:
            b = np.asarray(below, dtype=np.float64)
            self.alpha[h] = np.clip(self.alpha[h] + self.gamma * (self.levels - b), 0.0, 1.0)
        self.dirty.add(h)
        return True

    def offsets(self, min_scores: int = DEFAULT_MIN_SCORES) -> np.ndarray:
        """[P, Q] residual quantiles at the adaptive levels; NaN for steps with fewer than
        min_scores residuals."""
        out = np.full((self.pred_len, len(self.levels)), np.nan)
        for h in range(self.pred_len):
            n = int(self.count[h])
            if n < max(1, min_scores):
                continue
            win = np.sort(self.buf[h, :n], axis=0)  # [n, Q]
            # Conformal rank: the ceil(a (n + 1))-th smallest, clamped to the window.
            k = np.clip(np.ceil(self.alpha[h] * (n + 1)).astype(np.int64) - 1, 0, n - 1)
            out[h] = win[k, np.arange(len(self.levels))]
        return out

    def bands(self, base: np.ndarray, scale: float, min_scores: int = DEFAULT_MIN_SCORES) -> np.ndarray | None:
        """[P, Q] calibrated quantiles of the close around base ([P, Q] or [P]); None when
        no step has enough residuals or the scale is unusable. Levels stay ordered."""
        if not (math.isfinite(scale) and scale > 0):
            return None
        off = self.offsets(min_scores)
        if np.all(np.isnan(off)):
            return None
        base = np.asarray(base, dtype=np.float64)
        if base.ndim == 1:
            base = base[:, None]
        out = base + scale * off
        return np.maximum.accumulate(out, axis=1)  # quantiles never cross

    def scores(self) -> int:
        """Residuals behind the thinnest step's window (what a forecast reports)."""
        return int(self.count.min())

    # --------------------------------------------------------------- persistence
    def step_state(self, h: int) -> bytes:
        """One step's window (oldest first) and adaptive levels, as bytes for Redis."""
        n = int(self.count[h])
        order = (np.arange(n) + (self.pos[h] - n)) % self.window
        return np.concatenate([[float(n)], self.alpha[h], self.buf[h, order].ravel()]).astype("<f8").tobytes()

    def load_step(self, h: int, raw: bytes) -> None:
        """Inverse of step_state; rows with non-finite values (or a malformed blob) are dropped."""
        q = len(self.levels)
        arr = np.frombuffer(raw, dtype="<f8")
        if len(arr) < 1 + q or (len(arr) - 1 - q) % q:
            return
        alpha = arr[1:1 + q]
        rows = arr[1 + q:].reshape(-1, q)
        rows = rows[np.all(np.isfinite(rows), axis=1)][-self.window:]
        n = len(rows)
        self.buf[h, :n] = rows
        self.count[h] = n
        self.pos[h] = n % self.window
        if np.all(np.isfinite(alpha)):
            self.alpha[h] = np.clip(alpha, 0.0, 1.0)

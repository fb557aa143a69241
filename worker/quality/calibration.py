"""Calibrated quantile bands: online conformal calibration with a coverage integrator (pure math).

For every horizon step h and quantile level q the calibrator keeps a rolling window of
recent normalized residuals r = (y - base_q) / scale, where base_q is the model's own q
quantile of the close (conformalized quantile regression) or, with one sample path, its
mean close (a band around the mean path from recent residuals), and scale is the price
times recent volatility (so symbols of any price and regime pool together). The calibrated
quantile is

    base_q + scale * (Quantile(window of r, q) + adj_q)

Quantile(window, q) is split conformal over the recent window; adj_q is an integrator in
residual units (quantile tracking, the "I" of conformal PID control, Angelopoulos, Candes &
Tibshirani 2023): after each realized close,

    adj_q += gamma / sqrt(h) * spread_h * (q - 1{y <= served calibrated quantile})

with spread_h the window's 10-90 % inter-quantile range at step h (so gamma is unit-free).
Summed over time the adjustments telescope: the share of closes below the served quantile
is driven to q whatever the model or the market does, with an error of order
range(adj) / (gamma T), and the 0.1/0.9 pair covers 80 %.

Why not adaptive conformal inference (a_q += gamma (q - miss), serving Quantile(window, a_q))
as the first version did: a_q must be clipped to [0, 1] (the window has no quantile beyond
its min and max), and every clipped update throws away exactly the coverage debt the
guarantee rests on. On the bundled tape a step-h residual arrives h bars late and the
model's error drifts, so the levels sat at the clip 4-12 % of the time and the calibrated
80 % band covered only 72 % at step 12 (larger gammas clipped more and covered less). The
integrator is unbounded in residual units, so no debt is lost (it is clipped only at
+-ADJ_LIMIT spreads, against wind-up on nonsense input).

Why gamma / sqrt(h): step h's feedback is h bars late, so h updates are always in flight;
an integrator with delay h overshoots (bands that breathe, wider on average) when its gain
times h is large, and adapts too slowly when the gain is small. A gain falling like
1/sqrt(h) kept every step of the tape within 1 point of nominal with the narrowest bands
of the variants tried (constant gain: step-1 bands 50 % wider; 1/h: steps 6-12 at 77-78 %);
worker/tools/coverage.py compares variants on cached forecasts in seconds.

Windows are per step (a step-12 forecast is wider than a step-1 one) and per calibration
group (a pool of symbols, or one symbol with enough history; worker/quality/live.py decides).

Nothing non-finite enters the state: updates with NaN/inf residuals are refused.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_WINDOW = 256
DEFAULT_GAMMA = 0.3
ADJ_LIMIT = 8.0            # |adj| at most this many window spreads (anti wind-up)
_STATE_V2 = -2.0           # first float of a v2 step blob (a v1 blob starts with its count, >= 0)
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
    """Rolling residual windows and coverage integrators for P steps x Q levels."""

    def __init__(self, pred_len: int, levels, window: int = DEFAULT_WINDOW, gamma: float = DEFAULT_GAMMA):
        self.levels = np.asarray([float(q) for q in levels], dtype=np.float64)
        if len(self.levels) == 0 or not np.all((self.levels > 0) & (self.levels < 1)):
            raise ValueError(f"calibration needs levels in (0, 1), got {list(levels)}")
        if window < 2 or pred_len < 1:
            raise ValueError("need window >= 2 and pred_len >= 1")
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"calibration gamma must be finite and >= 0, got {gamma}")
        self.pred_len, self.window, self.gamma = pred_len, window, gamma
        q = len(self.levels)
        self.buf = np.zeros((pred_len, window, q))   # ring of residuals per step
        self.count = np.zeros(pred_len, dtype=np.int64)  # filled slots (<= window)
        self.pos = np.zeros(pred_len, dtype=np.int64)    # next slot to write
        self.adj = np.zeros((pred_len, q))                # integrator per (step, level), residual units
        self.gain = gamma / np.sqrt(np.arange(1, pred_len + 1))  # per step: its feedback is h bars late
        self.dirty: set[int] = set()                      # steps changed since the last save
        # offsets() per min_scores, until the state changes: every forecast of a batch asks for
        # the same bands, and each costs a sort of every step's window.
        self._offsets: dict[int, np.ndarray] = {}

    def spread(self, h: int) -> np.ndarray:
        """[Q] 10-90 % inter-quantile range of step h's residuals per level (the integrator's unit)."""
        n = int(self.count[h])
        if n < 2:
            return np.zeros(len(self.levels))
        lo, hi = np.quantile(self.buf[h, :n], [0.1, 0.9], axis=0)
        return hi - lo

    def update(self, step: int, residuals, below=None) -> bool:
        """Add one step's residuals (one per level); `below` (one bool per level: the close
        was at or below the served calibrated quantile) moves the integrators. Returns
        False, changing nothing, when a residual is not finite."""
        h = step - 1
        r = np.asarray(residuals, dtype=np.float64)
        if not 0 <= h < self.pred_len or r.shape != self.levels.shape or not np.all(np.isfinite(r)):
            return False
        self._offsets.clear()
        self.buf[h, self.pos[h]] = r
        self.pos[h] = (self.pos[h] + 1) % self.window
        self.count[h] = min(self.count[h] + 1, self.window)
        if below is not None:
            b = np.asarray(below, dtype=np.float64)
            unit = self.spread(h)
            adj = self.adj[h] + self.gain[h] * unit * (self.levels - b)
            self.adj[h] = np.clip(adj, -ADJ_LIMIT * unit, ADJ_LIMIT * unit)
        self.dirty.add(h)
        return True

    def offsets(self, min_scores: int = DEFAULT_MIN_SCORES) -> np.ndarray:
        """[P, Q] residual quantiles plus integrators; NaN for steps with fewer than
        min_scores residuals. Read-only: cached until update() or load_step()."""
        cached = self._offsets.get(min_scores)
        if cached is not None:
            return cached
        out = np.full((self.pred_len, len(self.levels)), np.nan)
        for h in range(self.pred_len):
            n = int(self.count[h])
            if n < max(1, min_scores):
                continue
            win = np.sort(self.buf[h, :n], axis=0)  # [n, Q]
            # Conformal rank: the ceil(q (n + 1))-th smallest, clamped to the window.
            k = np.clip(np.ceil(self.levels * (n + 1)).astype(np.int64) - 1, 0, n - 1)
            out[h] = win[k, np.arange(len(self.levels))] + self.adj[h]
        out.flags.writeable = False
        self._offsets[min_scores] = out
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
        """One step's window (oldest first) and integrators, as bytes for Redis:
        [-2 (format v2), n, adj x Q, residual rows]."""
        n = int(self.count[h])
        order = (np.arange(n) + (self.pos[h] - n)) % self.window
        return np.concatenate([[_STATE_V2, float(n)], self.adj[h], self.buf[h, order].ravel()]).astype("<f8").tobytes()

    def load_step(self, h: int, raw: bytes) -> None:
        """Inverse of step_state; rows with non-finite values (or a malformed blob) are dropped.
        A v1 blob ([n, ACI levels, rows], the first version) keeps its residuals; its levels
        mean nothing to the integrator, which starts at 0."""
        q = len(self.levels)
        if len(raw) % 8:
            return
        arr = np.frombuffer(raw, dtype="<f8")
        if len(arr) >= 2 + q and arr[0] == _STATE_V2:
            adj, rows = arr[2:2 + q], arr[2 + q:]
        elif len(arr) >= 1 + q and arr[0] >= 0:
            adj, rows = np.zeros(q), arr[1 + q:]
        else:
            return
        if len(rows) % q:
            return
        rows = rows.reshape(-1, q)
        rows = rows[np.all(np.isfinite(rows), axis=1)][-self.window:]
        self._offsets.clear()
        n = len(rows)
        self.buf[h, :n] = rows
        self.count[h] = n
        self.pos[h] = n % self.window
        if np.all(np.isfinite(adj)):
            unit = self.spread(h)
            self.adj[h] = np.clip(adj, -ADJ_LIMIT * unit, ADJ_LIMIT * unit)

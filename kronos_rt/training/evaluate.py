"""Walk-forward evaluation on held-out time, through the batched Engine.

A window's forecast origin walks through the test range with a stride: the model sees
the `lookback` bars before the origin (history may start before the test range: it is
the past, not leakage) and forecasts the next `pred_len` bars, all of which lie inside
the test range. Every model, and the persistence and drift baselines, is scored on the
same windows, on the close:

- per horizon step: MAE, RMSE, MASE (error scaled by the mean absolute one-bar change of
  the close over the window's own lookback, Hyndman's in-sample naive scale), direction
  hit rate (sign of the forecast move from the last close against the realized one, over
  windows whose close moved);
- from sample paths: CRPS (empirical: E|X - y| - E|X - X'|/2), weighted quantile loss
  over the 0.1..0.9 quantiles (2 * sum pinball / sum |y|) and the coverage of the 10-90 %
  band. A point forecast is a one-point distribution: its CRPS is its MAE; it has no band.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..registry import DEFAULT_MAX_CONTEXT
from .data import DataError, Interval, TapeSet, _iso, window_starts

CLOSE = 3
QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BAND = (0.1, 0.9)
# metric -> True when higher is better (for promote --if-better-than).
METRICS = {"mase": False, "mae": False, "rmse": False, "crps": False, "wql": False, "hit_rate": True}


@dataclass
class EvalConfig:
    lookback: int = 90
    pred_len: int = 10
    stride: int = 1
    sample_count: int = 8
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    max_windows: int | None = None


@dataclass
class Windows:
    series: np.ndarray  # [N] series index
    origin: np.ndarray  # [N] row of the first forecast bar


def walk_forward(tapes: TapeSet, test: Interval, lookback: int, pred_len: int, stride: int = 1,
                 max_windows: int | None = None) -> Windows:
    if lookback < 2 or pred_len < 1 or stride < 1:
        raise DataError(f"need lookback >= 2, pred_len >= 1, stride >= 1 (got {lookback}, {pred_len}, {stride})")
    ser, org = [], []
    for i, s in enumerate(tapes.series):
        # Origins t: rows t .. t+pred_len-1 all in the test range (a window of pred_len rows
        # inside it starts at t), and lookback rows before it exist.
        t = window_starts(s, test, pred_len)
        t = t[t >= lookback][::stride]
        ser.append(np.full(len(t), i))
        org.append(t)
    series = np.concatenate(ser) if ser else np.zeros(0, np.int64)
    origin = np.concatenate(org) if org else np.zeros(0, np.int64)
    if len(origin) == 0:
        rows = sum(int(test.mask(s.times).sum()) for s in tapes.series)
        raise DataError(f"test range {test.describe()} has {rows} bars: no window of {lookback} history bars "
                        f"and {pred_len} future bars fits; widen --test or shorten --lookback/--pred-len")
    if max_windows is not None and len(origin) > max_windows:
        keep = np.linspace(0, len(origin) - 1, max_windows).round().astype(int)
        series, origin = series[keep], origin[keep]
    return Windows(series, origin)


def _gather(tapes: TapeSet, w: Windows, lookback: int, pred_len: int):
    """history bars [N, L, 6], history times [N, L], future times [N, P], realized bars [N, P, 6]."""
    hist, htimes, ftimes, real = [], [], [], []
    for i, t in zip(w.series.tolist(), w.origin.tolist()):
        s = tapes.series[i]
        hist.append(s.bars[t - lookback:t])
        htimes.append(s.times[t - lookback:t])
        ftimes.append(s.times[t:t + pred_len])
        real.append(s.bars[t:t + pred_len])
    return np.stack(hist), np.stack(htimes), np.stack(ftimes), np.stack(real)


# -- metrics -----------------------------------------------------------------------------

def _crps(paths: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Empirical CRPS per window and step: paths [N, S, P], y [N, P] -> [N, P]."""
    term1 = np.abs(paths - y[:, None]).mean(1)
    # E|X - X'| from sorted samples: sum_i (2i - S + 1) x_(i) * 2 / S^2, O(S log S).
    xs = np.sort(paths, axis=1)
    S = xs.shape[1]
    weights = (2 * np.arange(S) - S + 1)[None, :, None]
    term2 = (weights * xs).sum(1) * 2 / (S * S)
    return term1 - 0.5 * term2


def _mean(a: np.ndarray, axis=0) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(a, axis=axis) if a.size else np.full(a.shape[1:], np.nan)


def score(point: np.ndarray, y: np.ndarray, last: np.ndarray, scale: np.ndarray,
          paths: np.ndarray | None = None) -> dict[str, list]:
    """Per-step metrics of close forecasts. point, y [N, P]; last, scale [N]; paths [N, S, P]."""
    err = point - y
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(scale[:, None] > 0, np.abs(err) / scale[:, None], np.nan)
        moved = np.sign(y - last[:, None])
        hit = np.where(moved != 0, (np.sign(point - last[:, None]) == moved).astype(float), np.nan)
    dist = paths if paths is not None else point[:, None]
    quant = np.quantile(dist, QUANTILES, axis=1)  # [Q, N, P]
    q = np.asarray(QUANTILES)[:, None, None]
    pinball = np.maximum(q * (y - quant), (q - 1) * (y - quant))
    wql = (2 * pinball.sum(1) / np.abs(y).sum(0)).mean(0)
    out = {
        "mae": np.abs(err).mean(0), "rmse": np.sqrt((err ** 2).mean(0)), "mase": _mean(scaled),
        "hit_rate": _mean(hit), "crps": _crps(dist, y).mean(0), "wql": wql,
    }
    if paths is not None:
        lo, hi = np.quantile(paths, BAND, axis=1)
        out["coverage"] = ((y >= lo) & (y <= hi)).mean(0)
    return {k: [_clean(v) for v in np.asarray(a, float)] for k, a in out.items()}


def _clean(v: float):
    return None if v is None or not math.isfinite(v) else float(v)


def summarize(per_step: dict[str, list]) -> dict[str, float | None]:
    out = {}
    for k, vals in per_step.items():
        good = [v for v in vals if v is not None]
        out[k] = float(np.mean(good)) if good else None
    return out


# -- the evaluation ----------------------------------------------------------------------

@dataclass
class Candidate:
    label: str  # name@version
    model_dir: Path
    tokenizer_dir: Path
    max_context: int = DEFAULT_MAX_CONTEXT  # a registry version's: ModelVersion.max_context
    random_weights: bool = False


def evaluate(candidates: list[Candidate], tapes: TapeSet, test: Interval, config: EvalConfig,
             log=lambda msg: None) -> dict:
    """Score every candidate and the baselines on the same walk-forward windows -> report dict."""
    from ..loading import load_engine
    from ..sampling import SamplingParams

    c = config
    w = walk_forward(tapes, test, c.lookback, c.pred_len, c.stride, c.max_windows)
    hist, htimes, ftimes, real = _gather(tapes, w, c.lookback, c.pred_len)
    y = real[:, :, CLOSE]
    close_hist = hist[:, :, CLOSE]
    last = close_hist[:, -1]
    scale = np.abs(np.diff(close_hist, axis=1)).mean(1)
    steps = np.arange(1, c.pred_len + 1)
    N = len(w.origin)
    log(f"{N} walk-forward windows in {test.describe()} (lookback {c.lookback}, pred_len {c.pred_len}, "
        f"stride {c.stride})")

    results: dict[str, dict] = {}
    examples_idx = np.linspace(0, N - 1, min(4, N)).round().astype(int).tolist()
    examples = {"windows": [{"series": tapes.series[w.series[k]].symbol,
                             "origin": _iso(ftimes[k, 0]),
                             "history_close": close_hist[k, -min(c.lookback, 48):].tolist(),
                             "realized_close": y[k].tolist()} for k in examples_idx], "forecasts": {}}

    baselines = {
        "persistence": np.repeat(last[:, None], c.pred_len, 1),
        "drift": last[:, None] + steps[None, :] * ((last - close_hist[:, 0]) / (c.lookback - 1))[:, None],
    }
    for name, point in baselines.items():
        per_step = score(point, y, last, scale)
        results[name] = {"kind": "baseline", "random_weights": False, "per_step": per_step,
                         "summary": summarize(per_step)}
        examples["forecasts"][name] = {"mean": point[examples_idx].tolist()}

    sampling = SamplingParams(temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                              sample_count=c.sample_count, seed=c.seed)
    for cand in candidates:
        if c.lookback + c.pred_len > cand.max_context:
            log(f"{cand.label}: lookback + pred_len > max_context {cand.max_context}: windows slide (exact, slower)")
        engine = load_engine(cand.model_dir, cand.tokenizer_dir, device=c.device, max_context=cand.max_context)
        point = np.empty((N, c.pred_len))
        paths = np.empty((N, c.sample_count, c.pred_len)) if c.sample_count > 1 else None
        t0 = time.perf_counter()
        for a in range(0, N, c.batch_size):
            b = min(N, a + c.batch_size)
            fcs = engine.forecast(list(hist[a:b]), list(htimes[a:b]), list(ftimes[a:b]), c.pred_len, sampling,
                                  return_paths=paths is not None)
            for k, f in enumerate(fcs):
                point[a + k] = f.mean[:, CLOSE]
                if paths is not None:
                    paths[a + k] = f.paths[:, :, CLOSE]
        seconds = time.perf_counter() - t0
        per_step = score(point, y, last, scale, paths)
        results[cand.label] = {"kind": "model", "random_weights": cand.random_weights, "per_step": per_step,
                               "summary": summarize(per_step), "seconds": round(seconds, 3),
                               "windows_per_s": round(N / seconds, 2) if seconds > 0 else None,
                               "device": str(engine.device), "max_context": cand.max_context}
        ex = {"mean": point[examples_idx].tolist()}
        if paths is not None:
            lo, hi = np.quantile(paths[examples_idx], BAND, axis=1)
            ex.update(lo=lo.tolist(), hi=hi.tolist())
        examples["forecasts"][cand.label] = ex
        log(f"{cand.label}: {N} windows in {seconds:.2f} s ({N / max(seconds, 1e-9):.1f} windows/s) on {engine.device}")
        del engine

    return {
        "format": 1,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "config": asdict(c),
        "data": {"files": [f.as_dict() for f in tapes.files], "test": test.describe(),
                 "series": sorted({tapes.series[i].symbol for i in w.series.tolist()}),
                 "first_origin": _iso(ftimes[:, 0].min()), "last_target": _iso(ftimes[:, -1].max())},
        "windows": N,
        "target": "close",
        "quantiles": list(QUANTILES),
        "band": list(BAND),
        "results": results,
        "examples": examples,
    }


# -- promotion on evidence ----------------------------------------------------------------

def compare(report: dict, candidate: str, current: str, metric: str = "mase",
            margin: float = 0.0) -> tuple[bool, str]:
    """Does `candidate` (name@version) beat `current` on `metric` by at least `margin`
    (relative: 0.02 = 2 % better)? -> (better, reason in one line)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    res = report.get("results")
    if not isinstance(res, dict):
        raise ValueError("not a `kronos-rt eval` report (no results)")
    for spec in (candidate, current):
        if spec not in res:
            raise ValueError(f"{spec} is not in the evaluation (it has {', '.join(res)}); evaluate both "
                             "versions in one `kronos-rt eval` run")
    a, b = res[candidate]["summary"].get(metric), res[current]["summary"].get(metric)
    if a is None or b is None:
        return False, f"{metric} is not available for {candidate if a is None else current}"
    higher = METRICS[metric]
    if higher:
        better, need = a > b * (1 + margin), b * (1 + margin)
    else:
        better, need = a < b * (1 - margin), b * (1 - margin)
    word = "above" if higher else "below"
    verdict = "beats" if better else "does not beat"
    return better, (f"{candidate} {verdict} {current} on {metric}: {a:.6g} vs {b:.6g} "
                    f"(needs {word} {need:.6g} with margin {margin:g}) over {report.get('windows')} windows")


# -- recording in the registry ------------------------------------------------------------

def walk_forward_record(report: dict, label: str) -> dict:
    """What `kronos-rt eval --record` keeps in a version's metadata.json (metrics.walk_forward):
    its summary beside the baselines' and the other models' of the same run, on what data
    and windows. The model card (kronos_rt/model_card.py) prints it as a table."""
    res = report["results"]
    cfg = report.get("config") or {}
    return {
        "created_at": report.get("created_at"),
        "target": report.get("target", "close"),
        "test": (report.get("data") or {}).get("test"),
        "windows": report.get("windows"),
        "config": {k: cfg.get(k) for k in ("lookback", "pred_len", "stride", "sample_count", "temperature",
                                           "top_k", "top_p", "seed", "max_windows")},
        "data": {"files": [{k: f.get(k) for k in ("path", "sha256", "start", "end")}
                           for f in (report.get("data") or {}).get("files", [])]},
        "summary": res[label]["summary"],
        "baselines": {k: v["summary"] for k, v in res.items() if v.get("kind") == "baseline"},
        "compared_with": {k: v["summary"] for k, v in res.items() if v.get("kind") == "model" and k != label},
    }

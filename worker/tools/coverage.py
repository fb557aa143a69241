"""Calibrated-band coverage on a tape, walked forward bar by bar with the worker's own code.

Every bar from --min-history on gets a forecast (any model: the parity fixture, the random
demo model, a real one; sampled so raw bands exist), then the bars arrive in order: each
realized step is scored and fed to the calibration exactly as the worker does
(worker/calibration.Calibrator, residuals scaled by worker/calibration.residual_scale),
and every forecast is served the calibrated band known at its as_of. Printed per horizon
step after the warm-up: coverage and mean width of the raw sample band, the calibrated
band and a naive band (empirical quantiles of the past h-step moves, same window length).

    python -m worker.tools.coverage --model tests/fixtures/parity/model --tokenizer tests/fixtures/parity/tokenizer
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from worker.quality.calibration import DEFAULT_GAMMA, DEFAULT_WINDOW, Calibrator, residual_scale
from worker.tools import TAPE
from worker.tools.tables import format_table


def forecasts(tape, model, tokenizer, *, lookback, min_history, pred_len, sample_count, levels, batch=64, seed=0,
              sessions="XSHG"):
    """mean close [N, P] and close quantiles [N, P, Q] for every bar t >= min_history - 1, plus closes.
    Each forecast's future bar times are its calendar's (`sessions`, as the worker's --sessions
    NAME), as the worker stamps them: the model reads their time features."""
    import datetime as _dt

    import torch

    from worker.calendars.sessions import calendar

    from kronos_rt import SamplingParams, load_engine
    from worker.tools.replay import prepare

    rows = prepare(tape, "TAPE", limit=None)
    closes = rows["close"].to_numpy(np.float64)
    vals = rows[["open", "high", "low", "close", "volume", "amount"]].to_numpy(np.float64)
    times = rows["time"].to_numpy("datetime64[s]")
    eng = load_engine(model, tokenizer, device="cpu", dtype="float32", max_context=max(lookback, 128))
    sp = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, sample_count=sample_count, seed=seed)
    cal, step = calendar(sessions), _dt.timedelta(minutes=5)

    def future(t):
        return np.array(cal.next_times(times[t].astype(object), step, pred_len), dtype="datetime64[s]")
    idx = list(range(min_history - 1, len(rows) - 1))
    means, quants = [], []
    torch.manual_seed(seed)
    for s in range(0, len(idx), batch):
        part = idx[s:s + batch]
        fcs = eng.forecast([vals[max(0, t + 1 - lookback):t + 1] for t in part],
                           [times[max(0, t + 1 - lookback):t + 1] for t in part],
                           [future(t) for t in part], pred_len, sp,
                           quantiles=levels)
        for fc in fcs:
            means.append(fc.mean[:, 3])
            quants.append(np.stack([fc.quantiles[q][:, 3] for q in levels], axis=1))
    return np.array(idx), np.array(means), np.array(quants), closes


def _fingerprint(path) -> dict:
    """What identifies a file or a folder of files for the cache: names, sizes, mtimes."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return {str(f): [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()}


def cached_forecasts(tape, model, tokenizer, *, cache_dir="/tmp", **kw):
    """forecasts(), kept in CACHE_DIR/kronos_rt_coverage_<key>.npz keyed by the tape, model,
    tokenizer (paths, sizes, mtimes) and every setting, so calibration variants compare in
    seconds instead of re-running the model (minutes). cache_dir None: no cache."""
    if not cache_dir:
        return forecasts(tape, model, tokenizer, **kw)
    key = json.dumps({"tape": _fingerprint(tape), "model": _fingerprint(model), "tokenizer": _fingerprint(tokenizer),
                      **{k: v for k, v in sorted(kw.items())}}, sort_keys=True, default=str)
    path = Path(cache_dir) / f"kronos_rt_coverage_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        try:
            z = np.load(path)
            print(f"forecasts from the cache {path}", file=sys.stderr)
            return z["idx"], z["means"], z["quants"], z["closes"]
        except Exception as e:  # a torn or foreign file: recompute and overwrite it
            print(f"ignoring unreadable cache {path}: {e}", file=sys.stderr)
    idx, means, quants, closes = forecasts(tape, model, tokenizer, **kw)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, idx=idx, means=means, quants=quants, closes=closes)
    os.replace(tmp, path)  # whole or absent, never half-written
    return idx, means, quants, closes


def walk(idx, means, quants, closes, levels, *, window=DEFAULT_WINDOW, gamma=DEFAULT_GAMMA, min_scores=20, warmup=300, mode="cqr"):
    """Online calibration in bar order; returns per-step dicts of coverage and widths."""
    P, Q = means.shape[1], len(levels)
    lo, hi = 0, Q - 1
    cal = Calibrator(P, levels, window=window, gamma=gamma)
    served: dict[int, np.ndarray] = {}     # forecast index -> calibrated [P, Q] (or None)
    scales = np.array([residual_scale(closes[: t + 1]) for t in idx])
    out = {h: {"raw": [], "cal": [], "naive": [], "raw_w": [], "cal_w": [], "naive_w": []} for h in range(1, P + 1)}
    pos = {t: i for i, t in enumerate(idx)}
    for i, t in enumerate(idx):
        # Bar t has arrived: score every earlier forecast whose step lands on t (in the worker, the claim).
        for h in range(1, P + 1):
            j = pos.get(t - h)
            if j is None:
                continue
            y = closes[t]
            base = quants[j, h - 1] if mode == "cqr" else np.repeat(means[j, h - 1], Q)
            band = served.get(j)
            below = None if band is None or np.isnan(band[h - 1]).any() else y <= band[h - 1]
            cal.update(h, (y - base) / scales[j], below)
        # Forecast at t is served the calibration known now.
        base = quants[i] if mode == "cqr" else means[i]
        served[i] = cal.bands(base, scales[i], min_scores)
    for i, t in enumerate(idx):
        if i < warmup:
            continue
        for h in range(1, P + 1):
            if t + h >= len(closes) or served[i] is None or np.isnan(served[i][h - 1]).any():
                continue
            y, last = closes[t + h], closes[t]
            r, c = quants[i, h - 1], served[i][h - 1]
            past = (closes[max(h, t - window + 1):t + 1] / closes[max(0, t - window + 1 - h):t + 1 - h]) - 1
            nlo, nhi = last * (1 + np.quantile(past, levels[lo])), last * (1 + np.quantile(past, levels[hi]))
            d = out[h]
            d["raw"].append(r[lo] <= y <= r[hi])
            d["cal"].append(c[lo] <= y <= c[hi])
            d["naive"].append(nlo <= y <= nhi)
            d["raw_w"].append((r[hi] - r[lo]) / last)
            d["cal_w"].append((c[hi] - c[lo]) / last)
            d["naive_w"].append((nhi - nlo) / last)
    return out


def table(out, levels) -> str:
    nominal = levels[-1] - levels[0]
    rows = []
    for h, d in out.items():
        rows.append([h, len(d["cal"]), f"{nominal:.0%}", f"{np.mean(d['raw']):.1%}", f"{np.mean(d['cal']):.1%}",
                     f"{np.mean(d['naive']):.1%}", f"{1e4 * np.mean(d['raw_w']):.1f}",
                     f"{1e4 * np.mean(d['cal_w']):.1f}", f"{1e4 * np.mean(d['naive_w']):.1f}"])
    return format_table(["step", "n", "nominal", "raw cov", "calibrated cov", "naive cov",
                         "raw width (bp)", "calibrated width (bp)", "naive width (bp)"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tape", default=str(TAPE))
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--lookback", type=int, default=64)
    ap.add_argument("--min-history", type=int, default=32)
    ap.add_argument("--pred-len", type=int, default=12)
    ap.add_argument("--sample-count", type=int, default=8)
    ap.add_argument("--levels", default="0.1,0.5,0.9")
    ap.add_argument("--sessions", default="XSHG",
                    help="the tape's calendar (a --sessions NAME) for the forecasts' future bar times")
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    ap.add_argument("--gamma", type=float, default=DEFAULT_GAMMA)
    ap.add_argument("--warmup", type=int, default=300, help="forecasts left out of the figures")
    ap.add_argument("--mode", choices=("cqr", "mean", "both"), default="both",
                    help="cqr: around the sample quantiles; mean: around the mean path (as with --sample-count 1)")
    ap.add_argument("--cache-dir", default=os.environ.get("TMPDIR", "/tmp"),
                    help="where the model's forecasts for the tape are cached (keyed by model, tape and settings)")
    ap.add_argument("--no-cache", action="store_true", help="always run the model")
    a = ap.parse_args(argv)
    levels = [float(x) for x in a.levels.split(",")]
    idx, means, quants, closes = cached_forecasts(
        a.tape, a.model, a.tokenizer, cache_dir=None if a.no_cache else a.cache_dir, lookback=a.lookback,
        min_history=a.min_history, pred_len=a.pred_len, sample_count=a.sample_count, levels=levels,
        sessions=a.sessions)
    for mode in (("cqr", "mean") if a.mode == "both" else (a.mode,)):
        out = walk(idx, means, quants, closes, levels, window=a.window, gamma=a.gamma, warmup=a.warmup, mode=mode)
        print(f"\n{len(closes)} bars, {len(idx)} forecasts, warm-up {a.warmup}; calibration around "
              f"{'the sample quantiles' if mode == 'cqr' else 'the mean path'}:\n")
        print(table(out, levels))
    return 0


if __name__ == "__main__":
    sys.exit(main())

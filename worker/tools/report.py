"""`kronos-rt report`: a Markdown report (with PNG plots) of a replay.

Reads the forecast.v1 messages and the bar.v1 events of a replay from their topics,
from the beginning up to the high-watermark seen when reading starts, with a consumer
outside any group (no offsets are committed, no worker's assignment is disturbed), and
writes <out>/report.md with:

- latency: p50/p90/p99/max of every latency_ms field, histogram of the total;
- throughput: forecasts per second by produced_at;
- batch sizes, when the forecasts carry a `batch_size` field (forecast.v1 does not
  require one; the section says so when it is absent);
- accuracy of the mean path's close against the realized bars, per horizon step:
  MAE, RMSE, direction hit rate, next to two naive baselines (last close, and drift:
  the mean bar-to-bar change over the last `lookback` bars, extrapolated linearly);
- coverage of the quantile bands [lowest level, highest level] when present, per horizon step:
  raw (`quantiles`) vs calibrated (`calibrated_quantiles`) vs nominal, as a table and a plot;
- forecast charts: for a few symbols and times, the realized closes with the mean path and the
  bands of the forecast made then, so the accuracy table has pictures behind it.

A horizon step is matched to the realized bar with the same symbol and ts. Forecasts
whose as_of bar is not among the bars are left out of the accuracy numbers (the
baselines need the last close), and steps with no realized bar yet are counted as
unmatched. Redelivered duplicates (same symbol, as_of, model name and version) are
counted once. `build_report()` does the work on plain dicts, without Kafka.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from worker.adapters import security
from worker.errors import StartupError
from worker.contracts.events import InvalidEvent, identity_of, parse_time
from worker.tools.tables import format_table

LATENCY_ORDER = ("broker_to_received", "queue_wait", "inference", "total")
PERCENTILES = (50, 90, 99)


@dataclass
class StepAccuracy:
    step: int            # 1-based horizon step; 0 = all steps pooled
    n: int               # matched (forecast, realized bar) pairs
    mae: float
    rmse: float
    hit_rate: float | None   # share of correctly signed moves among bars that moved (None if none moved)
    n_moves: int
    last_mae: float
    last_rmse: float
    drift_mae: float
    drift_rmse: float
    drift_hit_rate: float | None


@dataclass
class Coverage:
    lo: float
    hi: float
    n: int
    covered: int
    per_step: dict[int, tuple[int, int]] = field(default_factory=dict)  # step -> (n, covered)
    kind: str = "raw"    # raw: the model's sample quantiles; calibrated: calibrated_quantiles

    @property
    def nominal(self) -> float:
        return self.hi - self.lo

    @property
    def rate(self) -> float | None:
        return self.covered / self.n if self.n else None


@dataclass
class ReportSummary:
    out_dir: Path
    n_forecasts: int                 # distinct forecasts
    n_duplicates: int
    n_invalid: int
    n_bars: int
    symbols: list[str]
    models: list[str]
    latency: dict[str, dict[str, float]]   # field -> {"count", "p50", "p90", "p99", "max"} in ms
    throughput: dict[str, float]           # span_s, mean_per_s, peak_per_s, bucket_s
    batch_sizes: dict[str, float] | None   # None when the forecasts carry no batch_size
    accuracy: list[StepAccuracy]           # per step
    overall: StepAccuracy | None
    coverage: list[Coverage]
    matched_steps: int
    unmatched_steps: int
    no_as_of_bar: int                      # forecasts left out of accuracy: as_of bar unknown
    files: list[Path] = field(default_factory=list)
    random_weights: bool = False           # some forecast came from a random-weight model
    implied: int = 0                       # forecasts the bars imply (from each symbol's first forecast on)
    expected: int | None = None            # what the caller knows to expect (the demo does), if anything

    @property
    def label(self) -> str:
        """Model name@version(s), with the RANDOM WEIGHTS mark every title and header carries."""
        return (", ".join(self.models) or "no model") + (" [RANDOM WEIGHTS]" if self.random_weights else "")

    @property
    def shortfall(self) -> int:
        return max(self.expected if self.expected is not None else self.implied, self.implied) - self.n_forecasts

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.md"


# -- computation --------------------------------------------------------------------------------

def _parse_produced(s: str) -> _dt.datetime:
    t = _dt.datetime.fromisoformat(s)
    return t.replace(tzinfo=_dt.timezone.utc) if t.tzinfo is None else t.astimezone(_dt.timezone.utc)


def _valid_forecast(fc) -> bool:
    try:
        return (isinstance(fc, dict) and isinstance(fc["symbol"], str) and isinstance(fc["horizon"], list)
                and isinstance(fc["latency_ms"], dict) and isinstance(fc["model"], dict)
                and bool(parse_time(fc["as_of"])) and bool(_parse_produced(fc["produced_at"])))
    except (KeyError, TypeError, ValueError, InvalidEvent):
        return False


def _dedup(forecasts: list[dict]) -> tuple[list[dict], int, int]:
    seen, out, dup, bad = set(), [], 0, 0
    for fc in forecasts:
        if not _valid_forecast(fc):
            bad += 1
            continue
        key = identity_of(fc)
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        out.append(fc)
    return out, dup, bad


def _latency(forecasts: list[dict]) -> dict[str, dict[str, float]]:
    values: dict[str, list[float]] = defaultdict(list)
    for fc in forecasts:
        for k, v in fc["latency_ms"].items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                values[k].append(float(v))
    names = [k for k in LATENCY_ORDER if k in values] + sorted(k for k in values if k not in LATENCY_ORDER)
    out = {}
    for k in names:
        a = np.asarray(values[k])
        out[k] = {"count": int(a.size), **{f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES},
                  "max": float(a.max())}
    return out


def _throughput(forecasts: list[dict]) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Summary, bucket start offsets (s from the first forecast), forecasts/s per bucket."""
    if not forecasts:
        return {"span_s": 0.0, "mean_per_s": 0.0, "peak_per_s": 0.0, "bucket_s": 1.0}, np.array([]), np.array([])
    t = np.sort(np.array([_parse_produced(fc["produced_at"]).timestamp() for fc in forecasts]))
    t0 = math.floor(t[0])
    span = float(t[-1] - t[0])
    # One-second buckets, widened for long replays so the plot keeps at most ~600 bars.
    bucket = max(1, math.ceil((t[-1] - t0 + 1e-9) / 600))
    idx = ((t - t0) // bucket).astype(int)
    counts = np.bincount(idx)
    rates = counts / bucket
    # A burst that fits inside one second counts as lasting one second, not as an infinite rate.
    seconds = max(span, 1.0)
    summary = {"span_s": span, "mean_per_s": len(t) / seconds, "peak_per_s": float(rates.max()),
               "bucket_s": float(bucket)}
    return summary, np.arange(len(counts)) * bucket, rates


def _batch_sizes(forecasts: list[dict]) -> tuple[dict[str, float] | None, list[int]]:
    sizes = [int(fc["batch_size"]) for fc in forecasts if isinstance(fc.get("batch_size"), int)]
    if not sizes:
        return None, []
    a = np.asarray(sizes)
    return {"count": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "max": float(a.max())}, sizes


def _bar_index(bars: list[dict]) -> tuple[dict[str, np.ndarray], dict[tuple[str, _dt.datetime], tuple[str, int]], int]:
    """symbol -> closes in time order, (symbol, time) -> (symbol, position), bars used."""
    by_symbol: dict[str, dict[_dt.datetime, float]] = defaultdict(dict)
    for b in bars:
        try:
            t, c = parse_time(b["ts"]), float(b["close"])
        except (KeyError, TypeError, ValueError, InvalidEvent):
            continue
        if math.isfinite(c):
            by_symbol[str(b["symbol"])].setdefault(t, c)  # a replayed duplicate bar: keep the first
    closes, index, n = {}, {}, 0
    for sym, d in by_symbol.items():
        times = sorted(d)
        closes[sym] = np.array([d[t] for t in times])
        for i, t in enumerate(times):
            index[(sym, t)] = (sym, i)
        n += len(times)
    return closes, index, n


def _implied(forecasts: list[dict], bars: list[dict]) -> int:
    """Forecasts the bars call for: every bar of a symbol from its first forecast's as_of on
    gets one (a worker forecasts each bar once the symbol has its minimum history)."""
    first: dict[str, _dt.datetime] = {}
    for fc in forecasts:
        t = parse_time(fc["as_of"])
        if fc["symbol"] not in first or t < first[fc["symbol"]]:
            first[fc["symbol"]] = t
    seen = set()
    for b in bars:
        try:
            sym, t = str(b["symbol"]), parse_time(b["ts"])
        except (KeyError, TypeError, ValueError, InvalidEvent):
            continue
        if sym in first and t >= first[sym]:
            seen.add((sym, t))
    return len(seen)


def _step_accuracy(step: int, rows: list[tuple[float, float, float, float]]) -> StepAccuracy:
    """rows: (actual close, close at as_of, model's close, drift baseline's close) per matched pair."""
    a = np.array(rows, dtype=np.float64)
    actual, last, model, drift = a[:, 0], a[:, 1], a[:, 2], a[:, 3]

    def mae(pred):
        return float(np.mean(np.abs(pred - actual)))

    def rmse(pred):
        return float(np.sqrt(np.mean((pred - actual) ** 2)))

    moved = actual != last  # a flat realized bar has no direction to hit

    def hits(pred):
        if not moved.any():
            return None
        return float(np.mean(np.sign(pred[moved] - last[moved]) == np.sign(actual[moved] - last[moved])))

    return StepAccuracy(step, len(rows), mae(model), rmse(model), hits(model), int(moved.sum()),
                        mae(last), rmse(last), mae(drift), rmse(drift), hits(drift))


def _accuracy(forecasts: list[dict], bars: list[dict], lookback: int):
    closes, index, n_bars = _bar_index(bars)
    per_step: dict[int, list[tuple]] = defaultdict(list)
    bands: dict[tuple[float, float], Coverage] = {}
    matched = unmatched = no_as_of = 0
    for fc in forecasts:
        sym = fc["symbol"]
        pos = index.get((sym, parse_time(fc["as_of"])))
        if pos is None:
            no_as_of += 1
            continue
        series, i = closes[sym], pos[1]
        last = float(series[i])
        window = series[max(0, i - lookback + 1): i + 1]
        drift = float(window[-1] - window[0]) / (len(window) - 1) if len(window) > 1 else 0.0
        levels = [float(q) for q in fc.get("quantile_levels") or []]
        lo_i = hi_i = None
        if len(levels) >= 2:
            lo_i, hi_i = int(np.argmin(levels)), int(np.argmax(levels))
        for k, entry in enumerate(fc["horizon"], start=1):
            try:
                target = index.get((sym, parse_time(entry["ts"])))
                pred = float(entry["close"])
            except (KeyError, TypeError, ValueError, InvalidEvent):
                target = None
            if target is None:
                unmatched += 1
                continue
            matched += 1
            actual = float(series[target[1]])
            per_step[k].append((actual, last, pred, last + k * drift))
            for kind, field_name in (("raw", "quantiles"), ("calibrated", "calibrated_quantiles")):
                q = (entry.get(field_name) or {}).get("close")
                if lo_i is None or q is None or len(q) != len(levels):
                    continue
                key = (levels[lo_i], levels[hi_i], kind)
                cov = bands.setdefault(key, Coverage(key[0], key[1], 0, 0, kind=kind))
                inside = int(q[lo_i] <= actual <= q[hi_i])
                cov.n += 1
                cov.covered += inside
                n_k, c_k = cov.per_step.get(k, (0, 0))
                cov.per_step[k] = (n_k + 1, c_k + inside)
    steps = [_step_accuracy(k, per_step[k]) for k in sorted(per_step)]
    pooled = [r for k in sorted(per_step) for r in per_step[k]]
    overall = _step_accuracy(0, pooled) if pooled else None
    coverage = sorted(bands.values(), key=lambda c: (c.lo, c.hi, c.kind != "raw"))
    return steps, overall, coverage, matched, unmatched, no_as_of, n_bars


# -- plots --------------------------------------------------------------------------------------

def _figure():
    # Figure without pyplot: no global state, no GUI backend; savefig renders with Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _plot_title(what: str, label: str) -> str:
    return f"{what}\n{label}" if label else what


def _plot_latency(forecasts: list[dict], path: Path, label: str = "") -> None:
    total = [float(fc["latency_ms"]["total"]) for fc in forecasts
             if isinstance(fc["latency_ms"].get("total"), (int, float))]
    fig, ax = _figure()
    ax.hist(total, bins=min(50, max(5, len(total) // 5)), color="#4477aa")
    for p, style in zip(PERCENTILES, ("--", "-.", ":")):
        ax.axvline(np.percentile(total, p), color="k", linestyle=style, label=f"p{p}")
    ax.set_xlabel("total latency (ms): broker append -> forecast published")
    ax.set_ylabel("forecasts")
    ax.set_title(_plot_title("End-to-end latency", label))
    ax.legend()
    fig.savefig(path)


def _plot_throughput(offsets: np.ndarray, rates: np.ndarray, bucket: float, path: Path, label: str = "") -> None:
    fig, ax = _figure()
    ax.set_title(_plot_title("Forecast throughput", label))
    ax.step(offsets, rates, where="post", color="#228833")
    ax.set_xlabel(f"seconds since the first forecast ({bucket:g} s buckets)")
    ax.set_ylabel("forecasts / s")
    fig.savefig(path)


def _plot_batches(sizes: list[int], path: Path, label: str = "") -> None:
    fig, ax = _figure()
    ax.set_title(_plot_title("Inference batch sizes", label))
    counts = Counter(sizes)
    ax.bar(list(counts), list(counts.values()), color="#aa3377")
    ax.set_xlabel("batch size")
    ax.set_ylabel("forecasts")
    fig.savefig(path)


def _plot_accuracy(steps: list[StepAccuracy], path: Path, label: str = "") -> None:
    fig, ax = _figure()
    ax.set_title(_plot_title("Close MAE per horizon step vs naive baselines", label))
    x = [s.step for s in steps]
    ax.plot(x, [s.mae for s in steps], "o-", label="model (mean path)")
    ax.plot(x, [s.last_mae for s in steps], "s--", label="last close")
    ax.plot(x, [s.drift_mae for s in steps], "^:", label="drift")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("horizon step")
    ax.set_ylabel("MAE of close")
    ax.legend()
    fig.savefig(path)


def _band_pairs(coverage: list[Coverage]) -> list[tuple[Coverage | None, Coverage | None]]:
    """(raw, calibrated) per band [lo, hi], either None when the forecasts lack it."""
    pairs: dict[tuple[float, float], list] = {}
    for c in coverage:
        pairs.setdefault((c.lo, c.hi), [None, None])[c.kind == "calibrated"] = c
    return [tuple(p) for p in pairs.values()]


def _plot_coverage(coverage: list[Coverage], path: Path, label: str = "") -> None:
    fig, ax = _figure()
    ax.set_title(_plot_title("Band coverage per horizon step: raw vs calibrated vs nominal", label))
    for raw, cal in _band_pairs(coverage):
        c0 = raw or cal
        name = f"[q{c0.lo:g}, q{c0.hi:g}]"
        for c, style in ((raw, "s--"), (cal, "o-")):
            if c is not None:
                steps = sorted(c.per_step)
                ax.plot(steps, [c.per_step[k][1] / c.per_step[k][0] for k in steps], style,
                        label=f"{name} {c.kind}")
        ax.axhline(c0.nominal, color="gray", linestyle=":", label=f"{name} nominal {c0.nominal:.0%}")
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("horizon step")
    ax.set_ylabel("realized closes inside the band")
    ax.legend()
    fig.savefig(path)


# Forecast charts: how many symbols (rows) and forecast times per symbol (columns).
CHART_SYMBOLS = 3
CHART_TIMES = 3


def _chart_picks(forecasts: list[dict], bars: list[dict]) -> list[tuple[str, list[dict]]]:
    """(symbol, forecasts) to chart: the symbols with the most fully realized forecasts (whole
    horizon among the bars; then by name), and for each a few of those, spread over the replay."""
    _, index, _ = _bar_index(bars)
    ready: dict[str, list[tuple[_dt.datetime, dict]]] = defaultdict(list)
    for fc in forecasts:
        sym = fc["symbol"]
        try:
            as_of = parse_time(fc["as_of"])
            steps = [parse_time(h["ts"]) for h in fc["horizon"]] + [as_of]
            float(fc["horizon"][0]["close"])
        except (KeyError, TypeError, ValueError, IndexError, InvalidEvent):
            continue
        if all((sym, t) in index for t in steps):
            ready[sym].append((as_of, fc))
    picks = []
    for sym in sorted(ready, key=lambda s: (-len(ready[s]), s))[:CHART_SYMBOLS]:
        fcs = [fc for _, fc in sorted(ready[sym], key=lambda p: p[0])]
        # Evenly spread, away from the very first forecast (its history is the shortest).
        at = np.linspace(0, len(fcs) - 1, CHART_TIMES + 1)[1:].round().astype(int)
        picks.append((sym, [fcs[i] for i in dict.fromkeys(at.tolist())]))
    return picks


def _band_rows(fc: dict, field_name: str) -> tuple[list[float], list[float]] | None:
    """Lowest and highest close quantile per step of `field_name`, None when a step lacks them."""
    levels = fc.get("quantile_levels") or []
    if len(levels) < 2:
        return None
    lo_i, hi_i = int(np.argmin(levels)), int(np.argmax(levels))
    lo, hi = [], []
    for h in fc["horizon"]:
        q = (h.get(field_name) or {}).get("close")
        if not isinstance(q, list) or len(q) != len(levels):
            return None
        lo.append(float(q[lo_i]))
        hi.append(float(q[hi_i]))
    return lo, hi


def _plot_forecasts(picks: list[tuple[str, list[dict]]], bars: list[dict], path: Path, label: str = "") -> None:
    """One panel per (symbol, forecast): realized closes around as_of, the mean path from the
    close at as_of, the raw band filled and the calibrated band dashed."""
    from matplotlib.figure import Figure

    closes, index, _ = _bar_index(bars)
    rows, cols = len(picks), max(len(fcs) for _, fcs in picks)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (sym, fcs) in enumerate(picks):
        series = closes[sym]
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(fcs):
                ax.set_visible(False)
                continue
            fc = fcs[c]
            i = index[(sym, parse_time(fc["as_of"]))][1]
            steps = [index[(sym, parse_time(h["ts"]))][1] - i for h in fc["horizon"]]
            before = max(0, i - 3 * len(steps))
            x = np.arange(before, min(len(series), i + steps[-1] + 1)) - i
            ax.plot(x, series[x + i], color="black", lw=1.2, label="realized close", zorder=3)
            last = float(series[i])
            ax.plot([0, *steps], [last, *(float(h["close"]) for h in fc["horizon"])], color="#1f4fd1", lw=1.8,
                    marker="o", ms=2.5, label="mean path")
            raw = _band_rows(fc, "quantiles")
            if raw is not None:
                ax.fill_between([0, *steps], [last, *raw[0]], [last, *raw[1]], color="#1f4fd1", alpha=0.18, lw=0,
                                label="raw band")
            cal = _band_rows(fc, "calibrated_quantiles")
            if cal is not None:
                for k, edge in enumerate(cal):
                    ax.plot([0, *steps], [last, *edge], color="#e67e22", ls="--", lw=1.1,
                            label="calibrated band" if k == 0 else None)
            ax.axvline(0, color="gray", lw=0.6, ls=":")
            ax.set_title(f"{sym} @ {fc['as_of']}", fontsize=9)
            ax.tick_params(labelsize=7)
            if r == rows - 1:
                ax.set_xlabel("bars from as_of", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(_plot_title("Forecasts against the realized closes", label), fontsize=10)
    fig.savefig(path)


# -- Markdown -----------------------------------------------------------------------------------

def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"
    return str(x)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return format_table(header, rows).split("\n")


def _markdown(s: ReportSummary, lookback: int, title: str, context: dict[str, str] | None,
              forecasts: list[dict]) -> str:
    L = [f"# {title}: {', '.join(s.models) or 'no forecasts'}", ""]
    if s.random_weights:
        L += ["> **RANDOM WEIGHTS**: the model has random weights (`kronos-rt models init` / the demo). "
              "The pipeline, latency and throughput figures are real; the forecasts and every accuracy "
              "figure below are meaningless.", ""]
    if s.shortfall > 0:
        basis = (f"{s.expected} expected" if s.expected is not None and s.expected >= s.implied else
                 f"{s.implied} that the bars imply (every bar of a symbol from its first forecast on)")
        L += [f"> **Incomplete**: {s.n_forecasts} forecasts of {basis}; {s.shortfall} missing (a worker "
              "still catching up, or stopped). The figures below cover only the forecasts that are there.", ""]
    if context:
        L += [f"- {k}: {v}" for k, v in context.items()]
    as_ofs = sorted(parse_time(fc["as_of"]) for fc in forecasts)
    L += [f"- forecasts: {s.n_forecasts} distinct ({s.n_duplicates} redelivered duplicates dropped, "
          f"{s.n_invalid} invalid skipped)",
          f"- bars: {s.n_bars}; symbols: {len(s.symbols)}; models: {', '.join(s.models) or 'none'}"]
    if as_ofs:
        L.append(f"- as_of range: {as_ofs[0]} .. {as_ofs[-1]}")
    L.append("")

    L += ["## Latency (ms)", ""]
    if s.latency:
        L += _table(["field", "count", "p50", "p90", "p99", "max"],
                    [[k, v["count"], *(f"{v[c]:.1f}" for c in ("p50", "p90", "p99", "max"))]
                     for k, v in s.latency.items()])
        if "latency_hist.png" in {f.name for f in s.files}:
            L += ["", "![total latency histogram](latency_hist.png)"]
    else:
        L.append("No forecasts.")
    L.append("")

    L += ["## Throughput", ""]
    t = s.throughput
    L.append(f"{s.n_forecasts} forecasts produced over {t['span_s']:.1f} s: mean {t['mean_per_s']:.1f}/s, "
             f"peak {t['peak_per_s']:.1f}/s (in {t['bucket_s']:g} s buckets, by produced_at).")
    if "throughput.png" in {f.name for f in s.files}:
        L += ["", "![forecasts per second](throughput.png)"]
    L.append("")

    L += ["## Batch sizes", ""]
    if s.batch_sizes is None:
        L.append("Skipped: these forecasts carry no `batch_size` field (forecast.v1 does not require one). "
                 "The worker's `kronos_rt_batch_size` Prometheus histogram has the distribution.")
    else:
        b = s.batch_sizes
        L.append(f"{b['count']} forecasts: mean batch size {b['mean']:.2f}, median {b['p50']:g}, max {b['max']:g}.")
        L += ["", "![batch sizes](batch_sizes.png)"]
    L.append("")

    L += ["## Accuracy of the mean path (close)", "",
          f"Each horizon step is matched to the realized bar with the same symbol and ts "
          f"({s.matched_steps} matched, {s.unmatched_steps} without a realized bar; "
          f"{s.no_as_of_bar} forecasts left out because their as_of bar is not in the bars topic). "
          "Baselines: *last* repeats the close at as_of; *drift* extrapolates the mean bar-to-bar change "
          f"of the last {lookback} bars. Hit rate: share of bars that moved whose direction (vs the close "
          "at as_of) the forecast got right; bars that did not move are left out of it. Errors are in "
          "price units, pooled over symbols.", ""]
    if s.accuracy:
        rows = [[st.step if st.step else "all", st.n, _fmt(st.mae), _fmt(st.rmse), _pct(st.hit_rate),
                 _fmt(st.last_mae), _fmt(st.last_rmse), _fmt(st.drift_mae), _fmt(st.drift_rmse),
                 _pct(st.drift_hit_rate)] for st in [*s.accuracy, s.overall]]
        L += _table(["step", "n", "MAE", "RMSE", "hit rate", "last MAE", "last RMSE", "drift MAE",
                     "drift RMSE", "drift hit rate"], rows)
        L += ["", "![MAE per horizon step](accuracy.png)"]
    else:
        L.append("No forecast step could be matched to a realized bar.")
    L.append("")

    L += ["## Forecasts against realized closes", ""]
    if "forecasts.png" in {f.name for f in s.files}:
        L += ["For a few symbols (those with the most forecasts whose whole horizon is realized) and times "
              "spread over the replay: the realized closes (black), the mean path of the forecast made at that "
              "as_of (blue, from the close at as_of), its raw band between the lowest and highest quantile level "
              "(blue fill) and its calibrated band (orange dashes) where the forecast carries one.", "",
              "![forecasts against realized closes](forecasts.png)"]
    else:
        L.append("Skipped: no forecast has its whole horizon among the bars yet.")
    L.append("")

    L += ["## Quantile band coverage (close)", ""]
    if s.coverage:
        for raw, cal in _band_pairs(s.coverage):
            c0 = raw or cal
            if raw is not None:
                L.append(f"Band [q{c0.lo:g}, q{c0.hi:g}], nominal {_pct(c0.nominal)}: {_pct(raw.rate)} of "
                         f"{raw.n} realized closes inside.")
            if cal is not None:
                L.append(f"Calibrated band [q{c0.lo:g}, q{c0.hi:g}] (`calibrated_quantiles`), nominal "
                         f"{_pct(c0.nominal)}: {_pct(cal.rate)} of {cal.n} realized closes inside.")
            L.append("")
            if cal is None:
                L += _table(["step", "n", "coverage"],
                            [[k, n, _pct(cv / n if n else None)] for k, (n, cv) in sorted(raw.per_step.items())])
            else:
                def cell(c, k):
                    n, cv = c.per_step.get(k, (0, 0)) if c is not None else (0, 0)
                    return [n, _pct(cv / n if n else None)]
                steps = sorted(set(cal.per_step) | set(raw.per_step if raw is not None else ()))
                L += _table(["step", "n raw", "raw coverage", "n calibrated", "calibrated coverage", "nominal"],
                            [[k, *cell(raw, k), *cell(cal, k), _pct(c0.nominal)] for k in steps])
            L.append("")
        if any(p.name == "coverage.png" for p in s.files):
            L += ["![Band coverage per horizon step](coverage.png)", ""]
    else:
        L += ["Skipped: no matched forecast carries close quantiles (sample_count 1 or no levels).", ""]
    return "\n".join(L)


def build_report(forecasts: list[dict], bars: list[dict], out_dir, *, lookback: int = 20,
                 title: str = "kronos-rt replay report", context: dict[str, str] | None = None,
                 expected: int | None = None) -> ReportSummary:
    """Compute the report from forecast.v1 and bar.v1 dicts and write out_dir/report.md and plots."""
    if lookback < 2:
        raise ValueError("lookback must be >= 2 bars (the drift baseline needs one change)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    distinct, n_dup, n_bad = _dedup(forecasts)
    latency = _latency(distinct)
    throughput, offsets, rates = _throughput(distinct)
    batch_summary, sizes = _batch_sizes(distinct)
    steps, overall, coverage, matched, unmatched, no_as_of, n_bars = _accuracy(distinct, bars, lookback)
    summary = ReportSummary(
        out_dir=out_dir, n_forecasts=len(distinct), n_duplicates=n_dup, n_invalid=n_bad, n_bars=n_bars,
        symbols=sorted({fc["symbol"] for fc in distinct}),
        models=sorted({f"{fc['model'].get('name')}@{fc['model'].get('version')}" for fc in distinct}),
        latency=latency, throughput=throughput, batch_sizes=batch_summary, accuracy=steps, overall=overall,
        coverage=coverage, matched_steps=matched, unmatched_steps=unmatched, no_as_of_bar=no_as_of,
        random_weights=any(fc.get("random_weights") is True for fc in distinct),
        implied=_implied(distinct, bars), expected=expected,
    )
    label = summary.label
    if "total" in latency:
        _plot_latency(distinct, out_dir / "latency_hist.png", label)
        summary.files.append(out_dir / "latency_hist.png")
    if len(rates):
        _plot_throughput(offsets, rates, throughput["bucket_s"], out_dir / "throughput.png", label)
        summary.files.append(out_dir / "throughput.png")
    if sizes:
        _plot_batches(sizes, out_dir / "batch_sizes.png", label)
        summary.files.append(out_dir / "batch_sizes.png")
    if steps:
        _plot_accuracy(steps, out_dir / "accuracy.png", label)
        summary.files.append(out_dir / "accuracy.png")
    picks = _chart_picks(distinct, bars)
    if picks:
        _plot_forecasts(picks, bars, out_dir / "forecasts.png", label)
        summary.files.append(out_dir / "forecasts.png")
    if any(c.kind == "calibrated" for c in coverage):  # the raw-only report keeps its table alone
        _plot_coverage(coverage, out_dir / "coverage.png", label)
        summary.files.append(out_dir / "coverage.png")
    summary.report_path.write_text(_markdown(summary, lookback, title, context, distinct))
    summary.files.insert(0, summary.report_path)
    return summary


# -- Kafka --------------------------------------------------------------------------------------

async def read_topic(brokers: str, topic: str, timeout_s: float = 60.0, security=None) -> tuple[list[dict], int]:
    """(JSON values, undecodable count) of every message in `topic` below the high-watermark
    seen at the first fetch of each partition. Group-less: nothing is committed.

    The end comes from the fetch high-watermark rather than ListOffsets, which the
    embedded broker does not answer reliably (see worker/adapters/kafka.py)."""
    from worker.adapters.kafka import read_topic as messages_of

    values, bad = [], 0
    async for m in messages_of(brokers, topic, timeout_s=timeout_s, client_id="kronos-rt-report", security=security):
        try:
            values.append(orjson.loads(m.value))
        except (orjson.JSONDecodeError, TypeError):
            bad += 1
    return values, bad


async def fetch_replay(brokers: str, forecasts_topic: str, bars_topic: str,
                       timeout_s: float = 60.0, security=None) -> tuple[list[dict], list[dict], int]:
    (forecasts, bad_f), (bars, bad_b) = await asyncio.gather(
        read_topic(brokers, forecasts_topic, timeout_s, security), read_topic(brokers, bars_topic, timeout_s, security))
    return forecasts, bars, bad_f + bad_b


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brokers", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--forecasts-topic", default="forecasts.5m", help="topic of forecast.v1 messages")
    parser.add_argument("--bars-topic", default="bars.5m", help="topic of bar.v1 events (the realized bars)")
    parser.add_argument("--out", default="report", metavar="DIR", help="output directory (report.md + PNGs)")
    parser.add_argument("--lookback", type=int, default=20, help="bars used by the drift baseline")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed to read each topic")
    security.add_args(parser)


def main(args: argparse.Namespace) -> int:
    try:
        forecasts, bars, undecodable = asyncio.run(
            fetch_replay(args.brokers, args.forecasts_topic, args.bars_topic, args.timeout,
                         security.from_args(args)))
    except (RuntimeError, TimeoutError) as exc:  # a missing topic, a read that did not finish
        if type(exc).__module__.startswith("aiokafka"):
            raise  # an unreachable broker: `kronos-rt`'s error printer says what to do
        raise StartupError(str(exc)) from exc  # printed by worker/cli/errors.py, exit 1
    # (an unreachable broker reaches `kronos-rt`'s error printer: one line and what to do)
    context = {"brokers": args.brokers, "forecasts topic": args.forecasts_topic, "bars topic": args.bars_topic,
               "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if undecodable:
        context["undecodable messages"] = str(undecodable)
    summary = build_report(forecasts, bars, args.out, lookback=args.lookback, context=context)
    o = summary.overall
    print(f"wrote {summary.report_path} ({len(summary.files) - 1} plots): {summary.n_forecasts} forecasts, "
          f"{summary.n_bars} bars" + (f", close MAE {o.mae:.4g} (last {o.last_mae:.4g}, drift {o.drift_mae:.4g})"
                                      if o else ""))
    if summary.random_weights:
        print(f"note: {summary.label}: random weights, the accuracy figures are meaningless")
    if summary.shortfall > 0:
        print(f"note: {summary.n_forecasts} forecasts of {summary.n_forecasts + summary.shortfall} the bars imply: "
              "the worker may still be catching up; rerun the report later for complete figures")
    if summary.n_forecasts == 0:
        print(f"kronos-rt report: no forecasts in {args.forecasts_topic}", file=sys.stderr)
        return 1
    return 0

"""`kronos-rt bench`: the cached engine against full recompute and against the floor.

For each model shape (seeded random weights, `shapes.random_pair`) and each grid point
(batch, lookback, pred_len) three things run in one process on the same weights and the
same inputs (real windows of the bundled 5-minute A-share tape):

- engine: `Engine.forecast_arrays`, greedy (top_k = 1);
- naive: `naive_forecast_arrays`, the reference's full recompute per generated token;
- floor: one pass of what any exact answer must at least compute: tokenizer
  encode over the lookback, the model's transformer and dependency keys/values over
  lookback + pred_len tokens, the two heads at the pred_len forecast positions, and
  tokenizer decode over lookback + pred_len (each capped at max_context).

Engine and floor are warmed up once and then timed alternately (so background load hits
both alike), `--repeats` times; the median is reported. Naive is 10-50x slower and each of
its runs is already pred_len full passes, so it is warmed up with a pred_len = 1 call at
the same batch and lookback and timed `--naive-repeats` times (default 1).

Peak memory: on CUDA, torch.cuda.max_memory_allocated above what was allocated before the
call. On CPU, the peak increase of the process's resident set size during the call,
sampled every millisecond from /proc/self/statm by a thread, after malloc_trim(0) has
handed memory freed by earlier calls back to the OS (otherwise reused heap pages would
not show). The sampler runs only during untimed calls (the engine's warm-up call, which
is full size) and the naive timed call (big operations; a 1 ms sampler does not move
it), so it cannot slow the engine's timed, Python-heavy decode loop. Allocations that
live less than a millisecond can be missed; RSS also counts memory the allocator keeps.

Greedy outputs are compared with np.array_equal on the still-normalized means the two
paths return: bit-identical, not merely close.
"""
from __future__ import annotations

import ctypes
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import shapes
from .engine import Engine, resolve_device
from .features import normalize, time_features
from .naive import naive_forecast_arrays
from .sampling import SamplingParams

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "worker" / "tools" / "data" / "a_share_5min.csv"
GREEDY = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, sample_count=1)

# The acceptance targets, checked on the CPU rows at this grid point.
TARGET_POINT = dict(batch=8, lookback=256, pred_len=24)
TARGET_SPEEDUP = 8.0  # engine at least this many times naive's forecasts/s
TARGET_FLOOR_RATIO = 1.3  # engine time at most this many times the floor's


# -- inputs -------------------------------------------------------------------------------
def load_tape(path: str | os.PathLike = DEFAULT_DATA) -> tuple[np.ndarray, np.ndarray]:
    """(bars [N, 6] float64 open..amount, timestamps datetime64[m] [N]) of a CSV tape."""
    import pandas as pd  # only the bench reads CSV; keep `import kronos_rt.bench` light otherwise

    df = pd.read_csv(path)
    bars = df[["open", "high", "low", "close", "volume", "amount"]].to_numpy(np.float64)
    times = pd.to_datetime(df["timestamps"]).to_numpy().astype("datetime64[m]")
    return bars, times


def make_windows(bars: np.ndarray, times: np.ndarray, batch: int, lookback: int, pred_len: int,
                 clip: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`batch` windows spread evenly over the tape (they may overlap), prepared as the
    predictor prepares them: x [B, L, 6] normalized and clipped, x_stamp [B, L, 5],
    y_stamp [B, P, 5] (the timestamps of the bars that follow each window)."""
    n = len(bars)
    span = lookback + pred_len
    if span > n:
        raise ValueError(f"lookback + pred_len = {span} exceeds the tape's {n} bars")
    starts = np.linspace(0, n - span, batch).astype(np.int64)
    x = np.stack([normalize(bars[s:s + lookback], clip)[0] for s in starts]).astype(np.float32)
    x_stamp = np.stack([time_features(times[s:s + lookback]) for s in starts])
    y_stamp = np.stack([time_features(times[s + lookback:s + span]) for s in starts])
    return x, x_stamp, y_stamp


# -- measurement --------------------------------------------------------------------------
def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS peaks are then lower bounds
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory a block adds: CUDA allocator peak, or sampled RSS on CPU (see module doc)."""

    def __init__(self, device: torch.device, interval_s: float = 0.001):
        self.device, self.interval_s = device, interval_s
        self.peak_bytes = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        self._base = self._peak = _rss_bytes()
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, _rss_bytes())
                time.sleep(self.interval_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
            return False
        self._peak = max(self._peak, _rss_bytes())
        self._stop.set()
        self._thread.join()
        self.peak_bytes = self._peak - self._base
        return False


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@torch.inference_mode()
def floor_pass(engine: Engine, x: np.ndarray, x_stamp: np.ndarray, y_stamp: np.ndarray, pred_len: int) -> np.ndarray:
    """One pass of what any exact answer must compute at least: encode the lookback; the
    transformer and the dependency keys/values over lookback + pred_len tokens; the s1 and
    s2 heads at the pred_len forecast positions only (each s2 query sees the keys up to its
    own position, as in generation); decode lookback + pred_len tokens (windows capped at
    max_context). The ids of the future positions are copies of encoded ones: the cost
    does not depend on them."""
    C, model = engine.max_context, engine.model
    xb = engine._to_device(np.ascontiguousarray(x))
    stamps = engine._to_device(np.ascontiguousarray(np.concatenate([x_stamp, y_stamp], axis=1)))
    s1, s2 = engine.tokenizer.encode(xb.to(engine.tokenizer_dtype))
    W = min(x.shape[1] + pred_len, C)
    s1 = torch.cat([s1, s1[:, -pred_len:]], 1)[:, -W:]
    s2 = torch.cat([s2, s2[:, -pred_len:]], 1)[:, -W:]
    h = model.forward_hidden(s1, s2, stamps[:, -W:])
    dep_k, dep_v = model.dep_kv(h)
    h_p = h[:, -pred_len:]
    model.s1_logits(h_p)
    pos = torch.arange(W, device=h.device)
    model.s2_logits(s1[:, -pred_len:], h_p, dep_k, dep_v, pos[None, :] <= pos[-pred_len:, None])
    z = engine.tokenizer.decode(s1, s2)[:, -pred_len:].float()
    return z.cpu().numpy()


@dataclass
class Row:
    shape: str
    device: str
    dtype: str
    batch: int
    lookback: int
    pred_len: int
    engine_s: float
    naive_s: float
    floor_s: float
    engine_peak_mib: float
    naive_peak_mib: float
    identical: bool

    @property
    def engine_fps(self) -> float:
        return self.batch / self.engine_s

    @property
    def naive_fps(self) -> float:
        return self.batch / self.naive_s

    @property
    def speedup(self) -> float:
        return self.naive_s / self.engine_s

    @property
    def engine_floor(self) -> float:
        return self.engine_s / self.floor_s


@dataclass
class SampleRow:
    shape: str
    batch: int
    lookback: int
    pred_len: int
    sample_count: int
    s1_s: float  # engine, sample_count 1
    sn_s: float  # engine, sample_count S

    @property
    def ratio(self) -> float:
        return self.sn_s / self.s1_s


def bench_point(engine: Engine, shape: str, x, x_stamp, y_stamp, pred_len: int, repeats: int,
                naive_repeats: int) -> Row:
    B, L = x.shape[:2]
    run_engine = lambda: engine.forecast_arrays(x, x_stamp, y_stamp, pred_len, GREEDY)[0]  # noqa: E731
    run_floor = lambda: floor_pass(engine, x, x_stamp, y_stamp, pred_len)  # noqa: E731

    with PeakMemory(engine.device) as mem_engine:  # the warm-up call, full size
        run_engine()
    run_floor()
    engine_t, floor_t = [], []
    for _ in range(repeats):  # alternate, so load from elsewhere hits both alike
        t, engine_out = _timed(run_engine)
        engine_t.append(t)
        floor_t.append(_timed(run_floor)[0])

    run_naive = lambda: naive_forecast_arrays(engine, x, x_stamp, y_stamp, pred_len, GREEDY)[0]  # noqa: E731
    naive_forecast_arrays(engine, x, x_stamp, y_stamp[:, :1], 1, GREEDY)  # warm-up: same kernels, one step
    with PeakMemory(engine.device) as mem_naive:  # the first timed run: big operators, the sampler costs nothing
        t, naive_out = _timed(run_naive)
    naive_t = [t] + [_timed(run_naive)[0] for _ in range(naive_repeats - 1)]

    return Row(shape=shape, device=str(engine.device), dtype=str(engine.dtype).replace("torch.", ""),
               batch=B, lookback=L, pred_len=pred_len, engine_s=statistics.median(engine_t),
               naive_s=statistics.median(naive_t), floor_s=statistics.median(floor_t),
               engine_peak_mib=mem_engine.peak_bytes / 2**20, naive_peak_mib=mem_naive.peak_bytes / 2**20,
               identical=bool(np.array_equal(engine_out, naive_out)))


def bench_samples(engine: Engine, shape: str, x, x_stamp, y_stamp, pred_len: int, sample_count: int,
                  repeats: int) -> SampleRow:
    """Engine time with sample_count paths against one path (top-p sampling, as the
    reference's defaults): the lookback is encoded and prefilled once per series either way."""
    one = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, sample_count=1, seed=0)
    many = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, sample_count=sample_count, seed=0)
    engine.forecast_arrays(x, x_stamp, y_stamp, pred_len, many)  # warm-up
    t1, tn = [], []
    for _ in range(repeats):
        t1.append(_timed(lambda: engine.forecast_arrays(x, x_stamp, y_stamp, pred_len, one))[0])
        tn.append(_timed(lambda: engine.forecast_arrays(x, x_stamp, y_stamp, pred_len, many))[0])
    return SampleRow(shape=shape, batch=x.shape[0], lookback=x.shape[1], pred_len=pred_len,
                     sample_count=sample_count, s1_s=statistics.median(t1), sn_s=statistics.median(tn))


def run(shape_names=("mini", "small"), batches=(1, 8), lookbacks=(64, 256), pred_lens=(12, 24), device="cpu",
        dtype=None, repeats=5, naive_repeats=1, sample_count=8, data=DEFAULT_DATA, seed=0,
        progress=None, pack_weights=True) -> tuple[list[Row], list[SampleRow]]:
    """The whole grid; `progress(str)` is called after each measurement."""
    bars, times = load_tape(data)
    rows, sample_rows = [], []
    for shape in shape_names:
        model, tokenizer, max_context = shapes.random_pair(shape, seed=seed)
        engine = Engine(model, tokenizer, device=device, dtype=dtype, max_context=max_context,
                        pack_weights=pack_weights)
        for B in batches:
            for L in lookbacks:
                for P in pred_lens:
                    x, xs, ys = make_windows(bars, times, B, L, P)
                    row = bench_point(engine, shape, x, xs, ys, P, repeats, naive_repeats)
                    rows.append(row)
                    if progress:
                        progress(f"{shape} B={B} L={L} P={P}: engine {row.engine_s * 1e3:.0f} ms, "
                                 f"naive {row.naive_s * 1e3:.0f} ms, floor {row.floor_s * 1e3:.0f} ms, "
                                 f"identical {row.identical}")
        if sample_count > 1:
            B, L, P = max(batches), max(lookbacks), max(pred_lens)
            x, xs, ys = make_windows(bars, times, B, L, P)
            srow = bench_samples(engine, shape, x, xs, ys, P, sample_count, repeats)
            sample_rows.append(srow)
            if progress:
                progress(f"{shape} B={B} L={L} P={P}: S=1 {srow.s1_s * 1e3:.0f} ms, "
                         f"S={sample_count} {srow.sn_s * 1e3:.0f} ms")
        del engine, model, tokenizer
    return rows, sample_rows


# -- reporting ----------------------------------------------------------------------------
COLUMNS = ["shape", "batch", "lookback", "pred_len", "engine fc/s", "naive fc/s", "speedup", "engine/floor",
           "engine ms", "naive ms", "floor ms", "engine peak MiB", "naive peak MiB", "greedy identical"]


def _cells(r: Row) -> list[str]:
    return [r.shape, str(r.batch), str(r.lookback), str(r.pred_len), f"{r.engine_fps:.1f}", f"{r.naive_fps:.2f}",
            f"{r.speedup:.1f}x", f"{r.engine_floor:.2f}", f"{r.engine_s * 1e3:.0f}", f"{r.naive_s * 1e3:.0f}",
            f"{r.floor_s * 1e3:.0f}", f"{r.engine_peak_mib:.0f}", f"{r.naive_peak_mib:.0f}",
            "yes" if r.identical else "NO"]


SAMPLE_COLUMNS = ["shape", "batch", "lookback", "pred_len", "engine ms, S=1", "engine ms, S=N", "N",
                  "time ratio", "paths/s, S=N"]


def _sample_cells(r: SampleRow) -> list[str]:
    return [r.shape, str(r.batch), str(r.lookback), str(r.pred_len), f"{r.s1_s * 1e3:.0f}", f"{r.sn_s * 1e3:.0f}",
            str(r.sample_count), f"{r.ratio:.2f}", f"{r.batch * r.sample_count / r.sn_s:.1f}"]


def format_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def evaluate_targets(rows: list[Row], threads: int) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL/not measured) for each shape at the target point on CPU."""
    out = []
    shape_names = list(dict.fromkeys(r.shape for r in rows))
    for shape in shape_names:
        at = [r for r in rows if r.shape == shape and r.device == "cpu" and r.batch == TARGET_POINT["batch"]
              and r.lookback == TARGET_POINT["lookback"] and r.pred_len == TARGET_POINT["pred_len"]]
        where = f"{shape}, batch 8, lookback 256, pred_len 24, CPU, {threads} threads"
        t1 = f"{where}: engine >= {TARGET_SPEEDUP:g}x naive, identical greedy output"
        t2 = f"{where}: engine <= {TARGET_FLOOR_RATIO:g}x floor"
        if not at:
            out += [(t1, "-", "not measured"), (t2, "-", "not measured")]
            continue
        r = at[0]
        ok1 = r.speedup >= TARGET_SPEEDUP and r.identical
        out.append((t1, f"{r.speedup:.1f}x, identical: {'yes' if r.identical else 'NO'}", "PASS" if ok1 else "FAIL"))
        out.append((t2, f"{r.engine_floor:.2f}x", "PASS" if r.engine_floor <= TARGET_FLOOR_RATIO else "FAIL"))
    return out


def report(rows: list[Row], sample_rows: list[SampleRow], threads: int, markdown: bool) -> str:
    parts = [format_table(COLUMNS, [_cells(r) for r in rows], markdown)]
    if sample_rows:
        parts.append("Sample paths share the prefix (engine, top-p 0.9 sampling; naive would cost N times S=1):")
        parts.append(format_table(SAMPLE_COLUMNS, [_sample_cells(r) for r in sample_rows], markdown))
    targets = evaluate_targets(rows, threads)
    parts.append("Targets:")
    parts.append(format_table(["target", "measured", "result"], [list(t) for t in targets], markdown))
    return "\n\n".join(parts)


# -- CLI ----------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(",", " ").split()]


def configure(parser) -> None:
    parser.add_argument("--shapes", default="mini,small",
                        help="comma-separated model shapes (mini, small, base); default mini,small")
    parser.add_argument("--batch", type=_ints, default=[1, 8], help="batch sizes, e.g. 1,8")
    parser.add_argument("--lookback", type=_ints, default=[64, 256], help="lookbacks, e.g. 64,256")
    parser.add_argument("--pred-len", type=_ints, default=[12, 24], help="forecast lengths, e.g. 12,24")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--dtype", default="auto", help="model dtype: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of engine and floor, alternating (median)")
    parser.add_argument("--naive-repeats", type=int, default=1, help="timed runs of naive (median)")
    parser.add_argument("--sample-count", type=int, default=8,
                        help="also time the engine with this many sample paths vs 1 (0 or 1: skip)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CSV tape the input windows are cut from")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--no-pack", action="store_true",
                        help="plain MKL products on CPU instead of prepacked oneDNN weights (kronos_rt/packing.py)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")


def main(args) -> int:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for name in names:
        if name not in shapes.PAIRS:
            print(f"unknown shape {name!r}; choose from {sorted(shapes.PAIRS)}", file=sys.stderr)
            return 2
    if args.repeats < 1 or args.naive_repeats < 1:
        print("--repeats and --naive-repeats must be >= 1", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    rows, sample_rows = run(names, args.batch, args.lookback, args.pred_len, device=device, dtype=args.dtype,
                            repeats=args.repeats, naive_repeats=args.naive_repeats,
                            sample_count=args.sample_count, data=args.data, seed=args.seed,
                            progress=lambda m: print(m, file=sys.stderr, flush=True), pack_weights=not args.no_pack)
    threads = torch.get_num_threads()
    load = os.getloadavg()[0]  # other processes on the machine slow every column; say how busy it was
    print(f"kronos-rt bench: torch {torch.__version__}, device {device}, {threads} threads, "
          f"random weights (seed {args.seed}), greedy, median of {args.repeats} (naive: {args.naive_repeats}), "
          f"{'plain' if args.no_pack or device.type != 'cpu' else 'prepacked'} weights; "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {load_before:.1f} before, {load:.1f} after")
    print()
    print(report(rows, sample_rows, threads, args.markdown))
    return 0

"""Engine benchmarks: the cached engine against full recompute, the floor, and the drop-in
predictor. The measurements only; the `kronos-rt bench` command (worker/cli/bench.py)
chooses the grid, prints the tables and checks the targets.

For each model shape (seeded random weights, `shapes.random_pair`) and each grid point
(batch, lookback, pred_len) three things run in one process on the same weights and the
same inputs (real windows of a bar tape, e.g. the bundled 5-minute A-share tape):

- engine: `Engine.forecast_arrays`, greedy (top_k = 1);
- naive: `naive_forecast_arrays`, the reference's full recompute per generated token;
- floor: one pass of what any exact answer must at least compute: tokenizer
  encode over the lookback, the model's transformer and dependency keys/values over
  lookback + pred_len tokens, the two heads at the pred_len forecast positions, and
  tokenizer decode over lookback + pred_len (each capped at max_context).

Engine and floor are warmed up once and then timed alternately (so background load hits
both alike), `repeats` times; the median is reported. Naive is 10-50x slower and each of
its runs is already pred_len full passes, so it is warmed up with a pred_len = 1 call at
the same batch and lookback and timed `naive_repeats` times (default 1).

`compare_predictor` times `KronosPredictor.predict_batch` (pandas frames in, frames out:
input checks, normalization, time features, de-normalization) against
`Engine.forecast_arrays` on the same windows prepared the same way, alternately, and
checks that the predictor's frames are the engine's output de-normalized, bit for bit
(`predictor_rows`: one such row per shape, each on a predictor of its own).

Peak memory: on CUDA, torch.cuda.max_memory_allocated above what was allocated before the
call. On CPU, the peak increase of the process's resident set size during the call,
sampled every millisecond from /proc/self/statm by a thread, after malloc_trim(0) has
handed memory freed by earlier calls back to the OS (otherwise reused heap pages would
not show). The sampler runs only during untimed calls (the engine's warm-up call, which
is full size) and the naive timed call (big operations; a 1 ms sampler does not move
it), so it cannot slow the engine's timed, Python-heavy decode loop. Allocations that
live less than a millisecond can be missed; RSS also counts memory the allocator keeps.
The engine keeps its key/value caches between calls (`Engine.workspaces`); they are
released before the warm-up call, so its peak counts them.

Greedy outputs are compared with np.array_equal on the still-normalized means the two
paths return: bit-identical, not merely close.
"""
from __future__ import annotations

import ctypes
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import shapes
from .engine import Engine
from .features import COLUMNS, denormalize, normalize, time_features
from .naive import naive_forecast_arrays
from .predictor import KronosPredictor
from .sampling import SamplingParams

GREEDY = SamplingParams(temperature=1.0, top_k=1, top_p=1.0, sample_count=1)

# The acceptance targets, checked on the CPU rows at this grid point.
TARGET_POINT = dict(batch=8, lookback=256, pred_len=24)
TARGET_SPEEDUP = 8.0  # engine at least this many times naive's forecasts/s
TARGET_FLOOR_RATIO = 1.3  # engine time at most this many times the floor's
TARGET_PREDICTOR_RATIO = 1.15  # KronosPredictor.predict_batch at most this many times the engine's time


# -- inputs -------------------------------------------------------------------------------
def load_tape(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(bars [N, 6] float64 open..amount, timestamps datetime64[m] [N]) of a CSV tape."""
    import pandas as pd  # only the bench reads CSV; keep `import kronos_rt.bench` light otherwise

    df = pd.read_csv(path)
    bars = df[list(COLUMNS)].to_numpy(np.float64)
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
def processor(device: torch.device | str = "cpu") -> str:
    """What ran the numbers, for the tables' header: the GPU's name, or the CPU's model and the
    widest vector instruction set torch's kernels use there. Ratios such as engine/floor
    depend on it (a compute-bound full pass gains more from AVX-512 than memory-bound
    decode steps do), so figures from different machines are not comparable."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:  # not Linux
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


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


def _alternate(run_a, run_b, repeats: int):
    """Median seconds of run_a and of run_b, timed alternately so load from elsewhere hits
    both alike, and the outputs of their last runs."""
    ta, tb, out_a, out_b = [], [], None, None
    for _ in range(repeats):
        t, out_a = _timed(run_a)
        ta.append(t)
        t, out_b = _timed(run_b)
        tb.append(t)
    return statistics.median(ta), statistics.median(tb), out_a, out_b


@torch.inference_mode()
def floor_pass(engine: Engine, x: np.ndarray, x_stamp: np.ndarray, y_stamp: np.ndarray, pred_len: int) -> np.ndarray:
    """One pass of what any exact answer must compute at least: encode the lookback; the
    transformer and the dependency keys/values over lookback + pred_len tokens; the s1 and
    s2 heads at the pred_len forecast positions only (each s2 query sees the keys up to its
    own position, as in generation); decode lookback + pred_len tokens (windows capped at
    max_context). The ids of the future positions are copies of encoded ones: the cost
    does not depend on them. Full passes run as the engine runs its own (Engine.encode,
    forward_hidden, decode: in groups of series on CPU)."""
    C, model = engine.max_context, engine.model
    xb = engine._to_device(np.ascontiguousarray(x))
    stamps = engine._to_device(np.ascontiguousarray(np.concatenate([x_stamp, y_stamp], axis=1)))
    s1, s2 = engine.encode(xb.to(engine.tokenizer_dtype))
    W = min(x.shape[1] + pred_len, C)
    s1 = torch.cat([s1, s1[:, -pred_len:]], 1)[:, -W:]
    s2 = torch.cat([s2, s2[:, -pred_len:]], 1)[:, -W:]
    h = engine.forward_hidden(s1, s2, stamps[:, -W:])
    dep_k, dep_v = model.dep_kv(h)
    h_p = h[:, -pred_len:]
    model.s1_logits(h_p)
    pos = torch.arange(W, device=h.device)
    model.s2_logits(s1[:, -pred_len:], h_p, dep_k, dep_v, pos[None, :] <= pos[-pred_len:, None])
    z = engine.decode(s1, s2)[:, -pred_len:].float()
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

    engine.release_workspaces()  # so that the warm-up call's peak counts the caches it keeps
    with PeakMemory(engine.device) as mem_engine:  # the warm-up call, full size
        run_engine()
    run_floor()
    engine_s, floor_s, engine_out, _ = _alternate(run_engine, run_floor, repeats)

    run_naive = lambda: naive_forecast_arrays(engine, x, x_stamp, y_stamp, pred_len, GREEDY)[0]  # noqa: E731
    naive_forecast_arrays(engine, x, x_stamp, y_stamp[:, :1], 1, GREEDY)  # warm-up: same kernels, one step
    with PeakMemory(engine.device) as mem_naive:  # the first timed run: big operators, the sampler costs nothing
        t, naive_out = _timed(run_naive)
    naive_t = [t] + [_timed(run_naive)[0] for _ in range(naive_repeats - 1)]

    return Row(shape=shape, device=str(engine.device), dtype=str(engine.dtype).replace("torch.", ""),
               batch=B, lookback=L, pred_len=pred_len, engine_s=engine_s,
               naive_s=statistics.median(naive_t), floor_s=floor_s,
               engine_peak_mib=mem_engine.peak_bytes / 2**20, naive_peak_mib=mem_naive.peak_bytes / 2**20,
               identical=bool(np.array_equal(engine_out, naive_out)))


def bench_samples(engine: Engine, shape: str, x, x_stamp, y_stamp, pred_len: int, sample_count: int,
                  repeats: int) -> SampleRow:
    """Engine time with sample_count paths against one path (top-p sampling, as the
    reference's defaults): the lookback is encoded and prefilled once per series either way."""
    one = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, sample_count=1, seed=0)
    many = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, sample_count=sample_count, seed=0)
    engine.forecast_arrays(x, x_stamp, y_stamp, pred_len, many)  # warm-up
    s1_s, sn_s, _, _ = _alternate(lambda: engine.forecast_arrays(x, x_stamp, y_stamp, pred_len, one),
                                  lambda: engine.forecast_arrays(x, x_stamp, y_stamp, pred_len, many), repeats)
    return SampleRow(shape=shape, batch=x.shape[0], lookback=x.shape[1], pred_len=pred_len,
                     sample_count=sample_count, s1_s=s1_s, sn_s=sn_s)


@dataclass
class PredictorRow:
    shape: str
    batch: int
    lookback: int
    pred_len: int
    predictor_s: float  # KronosPredictor.predict_batch, frames in and out
    engine_s: float  # Engine.forecast_arrays on the same windows, prepared arrays in and out
    identical: bool  # the predictor's frames = the engine's output de-normalized, bit for bit

    @property
    def ratio(self) -> float:
        return self.predictor_s / self.engine_s


def make_frames(bars: np.ndarray, times: np.ndarray, batch: int, lookback: int, pred_len: int):
    """The windows of `make_windows` as the predictor takes them: frames of the six columns,
    their timestamps, and the timestamps of the bars that follow each."""
    import pandas as pd

    starts = np.linspace(0, len(bars) - lookback - pred_len, batch).astype(np.int64)
    frames = [pd.DataFrame(bars[s:s + lookback], columns=list(COLUMNS)) for s in starts]
    x_ts = [pd.Series(times[s:s + lookback]) for s in starts]
    y_ts = [pd.Series(times[s + lookback:s + lookback + pred_len]) for s in starts]
    return frames, x_ts, y_ts


def compare_predictor(predictor: KronosPredictor, shape: str, frames, x_ts, y_ts, pred_len: int,
                      repeats: int) -> PredictorRow:
    """predict_batch against its own engine's forecast_arrays on the same windows, greedy,
    timed alternately after one warm-up each; medians. The engine's inputs are prepared
    as the predictor prepares them (float32 columns, normalized, time features), outside
    the timed call."""
    engine = predictor.engine
    xs, stats, xst, yst = [], [], [], []
    for f, xt, yt in zip(frames, x_ts, y_ts):
        x, mean, std = normalize(f[list(COLUMNS)].to_numpy(np.float32), engine.clip)
        xs.append(x)
        stats.append((mean, std))
        xst.append(time_features(xt.to_numpy()))
        yst.append(time_features(yt.to_numpy()))
    run_predictor = lambda: predictor.predict_batch(frames, x_ts, y_ts, pred_len, T=1.0, top_k=1,  # noqa: E731
                                                    top_p=1.0, sample_count=1)
    run_engine = lambda: engine.forecast_arrays(xs, xst, yst, pred_len, GREEDY)[0]  # noqa: E731
    run_predictor()
    run_engine()
    predictor_s, engine_s, frames_out, engine_out = _alternate(run_predictor, run_engine, repeats)
    identical = all(np.array_equal(out.to_numpy(), denormalize(engine_out[i], *stats[i]))
                    for i, out in enumerate(frames_out))
    return PredictorRow(shape=shape, batch=len(frames), lookback=len(frames[0]), pred_len=pred_len,
                        predictor_s=predictor_s, engine_s=engine_s,
                        identical=identical)


def run(data, shape_names=("mini", "small"), batches=(1, 8), lookbacks=(64, 256), pred_lens=(12, 24), device="cpu",
        dtype=None, repeats=5, naive_repeats=1, sample_count=8, seed=0, progress=None,
        pack_weights=True) -> tuple[list[Row], list[SampleRow]]:
    """The grid over windows of the tape at `data` (a CSV path, see load_tape); then, per
    shape, sample paths (sample_count > 1) at the grid's largest point. `progress(str)` is
    called after each measurement."""
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


def predictor_rows(data, shape_names=("mini", "small"), batch=8, lookback=256, pred_len=24, device="cpu",
                   dtype=None, repeats=5, seed=0, progress=None, pack_weights=True) -> list[PredictorRow]:
    """compare_predictor for each shape at one point, each on a predictor of its own (random
    weights, `seed`). Measures whatever heap settings the calling process has: a notebook's
    are glibc's defaults, which is what the drop-in predictor is compared in."""
    bars, times = load_tape(data)
    out = []
    for shape in shape_names:
        model, tokenizer, max_context = shapes.random_pair(shape, seed=seed)
        pred = KronosPredictor(model, tokenizer, device=device, dtype=dtype, max_context=max_context,
                               pack_weights=pack_weights)
        row = compare_predictor(pred, shape, *make_frames(bars, times, batch, lookback, pred_len), pred_len, repeats)
        out.append(row)
        if progress:
            progress(f"{shape} B={batch} L={lookback} P={pred_len}: predictor {row.predictor_s * 1e3:.0f} ms, "
                     f"engine {row.engine_s * 1e3:.0f} ms, identical {row.identical}")
        del pred, model, tokenizer
    return out

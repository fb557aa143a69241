"""`kronos-rt bench`: the engine against full recompute, the floor and the drop-in predictor.

The measurements are kronos_rt.bench's (its docstring says how each is taken); this
command chooses the grid and the tape, prints the tables and checks the targets.

The predictor comparison runs in a child process of its own, a plain Python interpreter
with no `MALLOC_*` variables: `kronos-rt` raises glibc's heap thresholds at start-up
(worker/ops/allocator.py), which a notebook calling `KronosPredictor` does not, and the
predictor must be fast without them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import torch

from kronos_rt import bench, shapes
from kronos_rt.engine import resolve_device
from worker.errors import ConfigError
from worker.tools import TAPE
from worker.tools.tables import format_table

class PredictorProcessFailed(RuntimeError):
    """The predictor comparison's child process failed; it printed its own error."""


FAILURE_ERRORS = (PredictorProcessFailed,)


COLUMNS = ["shape", "batch", "lookback", "pred_len", "engine fc/s", "naive fc/s", "speedup", "engine/floor",
           "engine ms", "naive ms", "floor ms", "engine peak MiB", "naive peak MiB", "greedy identical"]
SAMPLE_COLUMNS = ["shape", "batch", "lookback", "pred_len", "engine ms, S=1", "engine ms, S=N", "N",
                  "time ratio", "paths/s, S=N"]
PREDICTOR_COLUMNS = ["shape", "batch", "lookback", "pred_len", "predictor ms", "engine ms", "predictor/engine",
                     "identical"]


def _cells(r: bench.Row) -> list[str]:
    return [r.shape, str(r.batch), str(r.lookback), str(r.pred_len), f"{r.engine_fps:.1f}", f"{r.naive_fps:.2f}",
            f"{r.speedup:.1f}x", f"{r.engine_floor:.2f}", f"{r.engine_s * 1e3:.0f}", f"{r.naive_s * 1e3:.0f}",
            f"{r.floor_s * 1e3:.0f}", f"{r.engine_peak_mib:.0f}", f"{r.naive_peak_mib:.0f}",
            "yes" if r.identical else "NO"]


def _sample_cells(r: bench.SampleRow) -> list[str]:
    return [r.shape, str(r.batch), str(r.lookback), str(r.pred_len), f"{r.s1_s * 1e3:.0f}", f"{r.sn_s * 1e3:.0f}",
            str(r.sample_count), f"{r.ratio:.2f}", f"{r.batch * r.sample_count / r.sn_s:.1f}"]


def _predictor_cells(r: bench.PredictorRow) -> list[str]:
    return [r.shape, str(r.batch), str(r.lookback), str(r.pred_len), f"{r.predictor_s * 1e3:.0f}",
            f"{r.engine_s * 1e3:.0f}", f"{r.ratio:.3f}", "yes" if r.identical else "NO"]


def _at_target(r) -> bool:
    point = bench.TARGET_POINT
    return (r.batch, r.lookback, r.pred_len) == (point["batch"], point["lookback"], point["pred_len"])


def evaluate_targets(rows: list[bench.Row], predictor_rows: list[bench.PredictorRow],
                     threads: int) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL/not measured) for each shape at the target point on CPU."""
    out = []
    shape_names = list(dict.fromkeys([r.shape for r in rows] + [r.shape for r in predictor_rows]))
    for shape in shape_names:
        at = [r for r in rows if r.shape == shape and r.device == "cpu" and _at_target(r)]
        where = f"{shape}, batch 8, lookback 256, pred_len 24, CPU, {threads} threads"
        t1 = f"{where}: engine >= {bench.TARGET_SPEEDUP:g}x naive, identical greedy output"
        t2 = f"{where}: engine <= {bench.TARGET_FLOOR_RATIO:g}x floor"
        if at:
            r = at[0]
            ok1 = r.speedup >= bench.TARGET_SPEEDUP and r.identical
            out.append((t1, f"{r.speedup:.1f}x, identical: {'yes' if r.identical else 'NO'}",
                        "PASS" if ok1 else "FAIL"))
            out.append((t2, f"{r.engine_floor:.2f}x", "PASS" if r.engine_floor <= bench.TARGET_FLOOR_RATIO else "FAIL"))
        elif rows:
            out += [(t1, "-", "not measured"), (t2, "-", "not measured")]
        t3 = f"{where}: predictor <= {bench.TARGET_PREDICTOR_RATIO:g}x engine, identical output"
        at = [r for r in predictor_rows if r.shape == shape and _at_target(r)]
        if at:
            r = at[0]
            ok = r.ratio <= bench.TARGET_PREDICTOR_RATIO and r.identical
            out.append((t3, f"{r.ratio:.3f}x, identical: {'yes' if r.identical else 'NO'}", "PASS" if ok else "FAIL"))
        elif predictor_rows:
            out.append((t3, "-", "not measured"))
    return out


def report(rows, sample_rows, predictor_rows, threads: int) -> str:
    parts = []
    if rows:
        parts.append(format_table(COLUMNS, [_cells(r) for r in rows]))
    if sample_rows:
        parts.append("Sample paths share the prefix (engine, top-p 0.9 sampling; naive would cost N times S=1):")
        parts.append(format_table(SAMPLE_COLUMNS, [_sample_cells(r) for r in sample_rows]))
    if predictor_rows:
        parts.append("Drop-in predictor (pandas frames in and out) against the engine on the same windows, greedy, "
                     "in a plain Python process of its own (glibc's default heap settings, as in a notebook):")
        parts.append(format_table(PREDICTOR_COLUMNS, [_predictor_cells(r) for r in predictor_rows]))
    parts.append("Targets:")
    parts.append(format_table(["target", "measured", "result"],
                              [list(t) for t in evaluate_targets(rows, predictor_rows, threads)]))
    return "\n\n".join(parts)


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
    parser.add_argument("--no-predictor", action="store_true",
                        help="skip KronosPredictor.predict_batch vs Engine.forecast_arrays at the largest point")
    parser.add_argument("--predictor-only", action="store_true",
                        help="only the predictor comparison, at the largest batch, lookback and pred_len")
    parser.add_argument("--data", default=str(TAPE), help="CSV tape the input windows are cut from")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--no-pack", action="store_true",
                        help="plain MKL products on CPU instead of prepacked oneDNN weights (kronos_rt/packing.py)")


def main(args) -> int:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for name in names:
        if name not in shapes.PAIRS:
            raise ConfigError(f"unknown shape {name!r}; choose from {sorted(shapes.PAIRS)}")
    if args.repeats < 1 or args.naive_repeats < 1:
        raise ConfigError("--repeats and --naive-repeats must be >= 1")
    if args.predictor_only and args.no_predictor:
        raise ConfigError("--predictor-only and --no-predictor exclude each other")
    bench.load_tape(args.data)  # a bad tape is this command's error, not its child's
    load_before = os.getloadavg()[0]
    rows, sample_rows, predictor_rows = [], [], []
    if not args.predictor_only:
        rows, sample_rows = bench.run(
            args.data, names, args.batch, args.lookback, args.pred_len, device=device, dtype=args.dtype,
            repeats=args.repeats, naive_repeats=args.naive_repeats, sample_count=args.sample_count,
            seed=args.seed, progress=_progress, pack_weights=not args.no_pack)
    if not args.no_predictor:
        predictor_rows = predictor_rows_in_plain_process(dict(
            data=str(args.data), shape_names=names, batch=max(args.batch), lookback=max(args.lookback),
            pred_len=max(args.pred_len), device=str(device), dtype=args.dtype, repeats=args.repeats,
            seed=args.seed, pack_weights=not args.no_pack), threads=args.threads)
    threads = torch.get_num_threads()
    load = os.getloadavg()[0]  # other processes on the machine slow every column; say how busy it was
    print(f"kronos-rt bench: {bench.processor(device)}; torch {torch.__version__}, device {device}, {threads} threads, "
          f"random weights (seed {args.seed}), greedy, median of {args.repeats} (naive: {args.naive_repeats}), "
          f"{'plain' if args.no_pack or device.type != 'cpu' else 'prepacked'} weights; "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {load_before:.1f} before, {load:.1f} after")
    print()
    print(report(rows, sample_rows, predictor_rows, threads))
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plain_env() -> dict[str, str]:
    """This process's environment without glibc's MALLOC_* tunables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


def predictor_rows_in_plain_process(spec: dict, threads: int) -> list[bench.PredictorRow]:
    """bench.predictor_rows(**spec) in a fresh interpreter (see the module docstring); its
    progress lines go to this command's stderr."""
    proc = subprocess.run([sys.executable, "-m", "worker.cli.bench", json.dumps(dict(spec, threads=threads))],
                          env=plain_env(), stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise PredictorProcessFailed(f"the predictor comparison's process failed (exit {proc.returncode}); "
                                     "its error is above")
    return [bench.PredictorRow(**row) for row in json.loads(proc.stdout.strip().splitlines()[-1])]


def _predictor_child(spec: dict) -> None:
    torch.set_num_threads(spec.pop("threads"))
    rows = bench.predictor_rows(**spec, progress=_progress)
    print(json.dumps([dataclasses.asdict(r) for r in rows]))


if __name__ == "__main__":  # the child of predictor_rows_in_plain_process
    _predictor_child(json.loads(sys.argv[1]))

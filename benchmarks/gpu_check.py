"""One prepared GPU check for an H200 (or any CUDA) session; `--smoke` runs a tiny version on CPU.

    python benchmarks/gpu_check.py            # CUDA; about a minute on an H200
    python benchmarks/gpu_check.py --smoke    # CPU, tiny sizes: exercises every code path

(a) Half precision against float32, greedy decoding:
    - the parity fixture (tests/fixtures/parity): per case, the generated (s1, s2) ids of the
      fp16 engine against the fp32 engine, and both engines' forecasts against the expected
      values (the tolerance the fixture states: rtol 1e-4, atol 1e-2);
    - a Kronos-small-shaped model with seeded random weights on a batch of real windows of
      worker/tools/data/a_share_5min.csv: share of identical s1 / s2 ids, fp16 against fp32.
(b) Engine throughput, Kronos-small shape, fp16: batch 64 / 256 / 1024, lookback 500,
    pred_len 12 (lookback + pred_len = the 512 context, so every step is cached):
    forecasts/s, peak GPU memory, engine/floor; full recompute (naive) at batch 64 for the ratio.
(c) The same engine in a child process (`--inference process`): identical forecasts, the
    child's compute and the call's time per batch (the difference is the hand-over).

Prints Markdown tables and writes them to $OUT/gpu_check.md when OUT is set.

`Engine.forecast_arrays` returns forecasts, not ids. The ids here are the engine's own:
`record_ids` wraps the `sample` function the engine module calls (s1 then s2 at every
step) for the duration of one call; the engine code itself is unchanged.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a bare checkout, without installing the package
    sys.path.insert(0, str(ROOT))

from kronos_rt import engine as engine_module  # noqa: E402
from kronos_rt import shapes  # noqa: E402
from kronos_rt.bench import GREEDY, PeakMemory, floor_pass, load_tape, make_windows, processor  # noqa: E402
from kronos_rt.engine import Engine  # noqa: E402
from kronos_rt.features import COLUMNS, fill_missing, normalize  # noqa: E402
from kronos_rt.model import Kronos  # noqa: E402
from kronos_rt.naive import naive_forecast_arrays  # noqa: E402
from kronos_rt.tokenizer import KronosTokenizer  # noqa: E402
from worker.tools import TAPE  # noqa: E402  (= shared/data/a_share_5min.csv, which cases.json names)
from worker.tools.tables import format_table  # noqa: E402

PARITY = ROOT / "tests" / "fixtures" / "parity"

FULL = dict(agree_batch=64, agree_lookback=500, agree_pred_len=12, batches=(64, 256, 1024), lookback=500,
            pred_len=12, naive_batch=64, repeats=3)
SMOKE = dict(agree_batch=4, agree_lookback=32, agree_pred_len=4, batches=(2, 4), lookback=32, pred_len=4,
             naive_batch=2, repeats=1)


@contextmanager
def record_ids():
    """Collect the ids the engine samples during the block: a list alternating s1, s2 per step."""
    calls = []
    original = engine_module.sample

    def recording(logits, params, generator=None):
        ids = original(logits, params, generator)
        calls.append(ids.detach().cpu())
        return ids

    engine_module.sample = recording
    try:
        yield calls
    finally:
        engine_module.sample = original


def generated_ids(calls) -> tuple[np.ndarray, np.ndarray]:
    """-> s1, s2 each [rows, pred_len]."""
    return torch.stack(calls[0::2], 1).numpy(), torch.stack(calls[1::2], 1).numpy()


def first_divergence(s1a, s2a, s1b, s2b) -> np.ndarray:
    """Per row, the first step where s1 or s2 ids differ, or pred_len when they never do."""
    diff = (s1a != s1b) | (s2a != s2b)
    return np.where(diff.any(1), diff.argmax(1), diff.shape[1])


def tolerance_ratio(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-4, atol: float = 1e-2) -> float:
    """max |got - expected| / (atol + rtol |expected|): at most 1 means within the fixture's tolerance."""
    return float((np.abs(got - expected) / (atol + rtol * np.abs(expected))).max())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- (a) fp16 against fp32 ------------------------------------------------------------------
def _parity_inputs(case: dict, bars: np.ndarray, times: np.ndarray):
    firsts = case.get("first_rows", [case.get("first_row")])
    L, P = case["lookback"], case["pred_len"]
    missing = [i for i, c in enumerate(COLUMNS) if c not in case["columns"]]
    xb, xt, yt = [], [], []
    for f in firsts:
        b = bars[f:f + L].copy()
        b[:, missing] = np.nan  # the engine's fill_missing applies the reference's rules
        xb.append(b)
        xt.append(times[f:f + L])
        yt.append(times[f + L:f + L + P])
    expected = np.asarray(case["expected"], np.float64).reshape(len(firsts), P, 6)
    return xb, xt, yt, expected


def parity_check(device, half, bars, times) -> tuple[str, list[dict]]:
    cases = json.loads((PARITY / "cases.json").read_text())
    model = Kronos.from_pretrained(PARITY / "model")
    tokenizer = KronosTokenizer.from_pretrained(PARITY / "tokenizer")
    rows, results = [], []
    for case in cases["cases"]:
        xb, xt, yt, expected = _parity_inputs(case, bars, times)
        P, C = case["pred_len"], case["max_context"]
        out = {}
        for name, dtype in (("fp32", torch.float32), ("half", half)):
            # Engine moves its modules in place: give each engine its own copy.
            eng = Engine(copy.deepcopy(model), copy.deepcopy(tokenizer), device=device, dtype=dtype, max_context=C)
            with record_ids() as calls:
                fc = eng.forecast(xb, xt, yt, P, GREEDY)
            out[name] = (np.stack([f.mean for f in fc]), *generated_ids(calls))
        (f32, a1, a2), (f16, b1, b2) = out["fp32"], out["half"]
        first = int(first_divergence(a1, a2, b1, b2).min())
        res = dict(case=case["name"], s1_agree=float((a1 == b1).mean()), s2_agree=float((a2 == b2).mean()),
                   first_diff=first if first < P else None,
                   fp32_tol=tolerance_ratio(f32, expected), half_tol=tolerance_ratio(f16, expected))
        results.append(res)
        rows.append([res["case"], f"{len(xb)}x{case['lookback']}+{P}", f"{res['s1_agree']:.3f}",
                     f"{res['s2_agree']:.3f}", "none" if first >= P else str(first),
                     f"{res['fp32_tol']:.3g}", "yes" if res["fp32_tol"] <= 1 else "NO",
                     f"{res['half_tol']:.3g}", "yes" if res["half_tol"] <= 1 else "NO"])

    # err/tol: max |forecast - expected| / (atol + rtol |expected|); <= 1 is within tolerance.
    header = ["case", "series x lookback+pred", "s1 ids half = fp32", "s2 ids half = fp32", "first differing step",
              "fp32 err/tol", "fp32 ok", "half err/tol", "half ok"]
    tables = [format_table(header, rows)]

    # The tokenizer's input ids for the fixture's token case, in fp32 and in half (the
    # engine keeps its tokenizer in fp32 by default; this says whether half would do).
    case0 = next(c for c in cases["cases"] if c["name"] == cases["tokens"]["case"])
    xb, _, _, _ = _parity_inputs(case0, bars, times)
    x = torch.as_tensor(normalize(fill_missing(xb[0]), 5.0)[0])[None].to(device)
    want1, want2 = np.asarray(cases["tokens"]["s1"]), np.asarray(cases["tokens"]["s2"])
    tok_rows = []
    for name, dtype in (("fp32", torch.float32), ("half", half)):
        tok = copy.deepcopy(tokenizer).to(device, dtype)
        s1, s2 = (t[0].cpu().numpy() for t in tok.encode(x.to(dtype)))
        tok_rows.append([f"{case0['name']} ({case0['lookback']} bars)", name, f"{(s1 == want1).mean():.3f}",
                         f"{(s2 == want2).mean():.3f}"])
    tables.append(format_table(["input", "tokenizer dtype", "s1 ids = fixture", "s2 ids = fixture"], tok_rows))
    return "\n\n".join(tables), results


def random_agreement(device, half, bars, times, cfg) -> tuple[str, dict]:
    B, L, P = cfg["agree_batch"], cfg["agree_lookback"], cfg["agree_pred_len"]
    x, xs, ys = make_windows(bars, times, B, L, P)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("half", half)):
        model, tokenizer, C = shapes.random_pair("small", seed=0)
        eng = Engine(model, tokenizer, device=device, dtype=dtype, max_context=C)
        with record_ids() as calls:
            mean, _ = eng.forecast_arrays(x, xs, ys, P, GREEDY)
        out[name] = (mean, *generated_ids(calls))
        del eng, model, tokenizer
    (m32, a1, a2), (m16, b1, b2) = out["fp32"], out["half"]
    first = first_divergence(a1, a2, b1, b2)
    res = dict(s1_agree=float((a1 == b1).mean()), s2_agree=float((a2 == b2).mean()),
               step0_s1=float((a1[:, 0] == b1[:, 0]).mean()), step0_s2=float((a2[:, 0] == b2[:, 0]).mean()),
               rows_identical=float((first == P).mean()), mean_first_step=float(first.mean()),
               max_abs=float(np.abs(m32 - m16).max()))
    header = ["windows", "s1 ids = fp32", "s2 ids = fp32", "step 0 s1 / s2", "rows all identical",
              "mean first differing step", "max abs forecast diff (normalized)"]
    row = [f"{B} x {L}+{P}", f"{res['s1_agree']:.3f}", f"{res['s2_agree']:.3f}",
           f"{res['step0_s1']:.3f} / {res['step0_s2']:.3f}", f"{res['rows_identical']:.3f}",
           f"{res['mean_first_step']:.1f} of {P}", f"{res['max_abs']:.3g}"]
    return format_table(header, [row]), res


# -- (b) throughput ---------------------------------------------------------------------------
def _median_time(fn, repeats: int, device) -> float:
    times_ = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times_.append(time.perf_counter() - t0)
    return statistics.median(times_)


def throughput(device, half, bars, times, cfg) -> tuple[str, list[dict]]:
    model, tokenizer, C = shapes.random_pair("small", seed=0)
    eng = Engine(model, tokenizer, device=device, dtype=half, max_context=C)
    L, P, reps = cfg["lookback"], cfg["pred_len"], cfg["repeats"]
    rows, results = [], []
    for B in cfg["batches"]:
        x, xs, ys = make_windows(bars, times, B, L, P)
        run = lambda: eng.forecast_arrays(x, xs, ys, P, GREEDY)[0]  # noqa: E731
        with PeakMemory(eng.device) as mem:  # warm-up, full size
            run()
        t_engine = _median_time(run, reps, eng.device)
        floor_pass(eng, x, xs, ys, P)
        t_floor = _median_time(lambda: floor_pass(eng, x, xs, ys, P), reps, eng.device)
        res = dict(batch=B, engine_s=t_engine, floor_s=t_floor, peak_mib=mem.peak_bytes / 2**20)
        if B == cfg["naive_batch"]:
            naive_forecast_arrays(eng, x, xs, ys[:, :1], 1, GREEDY)  # warm-up
            engine_out = run()
            t0 = time.perf_counter()
            naive_out = naive_forecast_arrays(eng, x, xs, ys, P, GREEDY)[0]
            res["naive_s"] = time.perf_counter() - t0
            res["identical"] = bool(np.array_equal(engine_out, naive_out))
        results.append(res)
        naive = (f"{B / res['naive_s']:.1f}", f"{res['naive_s'] / t_engine:.1f}x",
                 "yes" if res["identical"] else "no") if "naive_s" in res else ("", "", "")
        rows.append([str(B), f"{L}+{P}", f"{B / t_engine:.0f}", f"{t_engine * 1e3:.1f}", f"{t_engine / t_floor:.2f}",
                     f"{res['peak_mib']:.0f}", *naive])
    header = ["batch", "lookback+pred", "engine fc/s", "engine ms", "engine/floor", "engine peak MiB",
              "naive fc/s", "engine speedup", "greedy engine = naive"]
    return format_table(header, rows), results


def engine_process_check(device, half, bars, times, cfg) -> tuple[str, list[dict]]:
    """(c) `--inference process`: the Kronos-small-shaped engine in a child process of its own
    (kronos_rt/engine_process.py) against the same engine in this process, on raw windows of
    the tape: identical forecasts, and what a call costs beyond the child's own compute."""
    import tempfile

    from kronos_rt.engine_process import EngineProcess, EngineSpec

    model, tokenizer, C = shapes.random_pair("small", seed=0)
    L, P, reps = cfg["lookback"], cfg["pred_len"], cfg["repeats"]
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        model.save_pretrained(Path(folder) / "model")
        tokenizer.save_pretrained(Path(folder) / "tokenizer")
        local = Engine(model, tokenizer, device=device, dtype=half, max_context=C)
        spec = EngineSpec(str(Path(folder) / "model"), str(Path(folder) / "tokenizer"), device=str(device),
                          dtype=str(half).replace("torch.", ""), max_context=C, threads=torch.get_num_threads())
        with EngineProcess(spec) as child:
            for B in cfg["batches"]:
                starts = (np.arange(B) * 7) % (len(bars) - L - P)
                windows = ([bars[i:i + L] for i in starts], [times[i:i + L] for i in starts],
                           [times[i + L:i + L + P] for i in starts])
                want = local.forecast(*windows, P, GREEDY)  # also the warm-ups
                got = child.forecast(*windows, P, GREEDY)
                same = all(np.array_equal(a.mean, b.mean) for a, b in zip(want, got, strict=True))
                t_local = _median_time(lambda: local.forecast(*windows, P, GREEDY), reps, device)
                calls, computes = [], []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    child.forecast(*windows, P, GREEDY)
                    calls.append(time.perf_counter() - t0)
                    computes.append(child.last_compute_s)
                t_call, t_child = statistics.median(calls), statistics.median(computes)
                results.append(dict(batch=B, local_s=t_local, call_s=t_call, child_s=t_child, identical=same))
                rows.append([str(B), f"{L}+{P}", f"{t_local * 1e3:.1f}", f"{t_child * 1e3:.1f}", f"{t_call * 1e3:.1f}",
                             f"{(t_call - t_child) * 1e3:.1f}", "yes" if same else "no"])
    header = ["batch", "lookback+pred", "in-process ms", "child's compute ms", "call ms", "hand-over ms",
              "forecasts identical"]
    return format_table(header, rows), results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (exercises the code paths)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--dtype", default="fp16", help="the half dtype to check (fp16 or bf16)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; use --smoke to run on CPU", file=sys.stderr)
        return 2
    cfg = SMOKE if args.smoke else FULL
    half = engine_module.resolve_dtype(args.dtype, device)
    bars, times = load_tape(TAPE)
    started = time.perf_counter()

    where = processor(device) if device.type == "cuda" else f"CPU ({processor(device)})"
    parts = [f"# kronos-rt GPU check{' (smoke, CPU)' if args.smoke else ''}",
             f"{where}; torch {torch.__version__}"
             + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else f", {torch.get_num_threads()} threads")
             + f"; half dtype {str(half).replace('torch.', '')}; greedy decoding; {time.strftime('%Y-%m-%d')}"]

    table, _ = parity_check(device, half, bars, times)
    parts += ["## (a) Parity fixture: half vs fp32 engine, both vs expected (rtol 1e-4, atol 1e-2)", table]
    print("\n\n".join(parts[-2:]), flush=True)

    table, _ = random_agreement(device, half, bars, times, cfg)
    parts += ["## (a) Kronos-small shape, random weights (seed 0), real windows: half vs fp32 ids", table]
    print("\n\n" + "\n\n".join(parts[-2:]), flush=True)

    table, _ = throughput(device, half, bars, times, cfg)
    parts += ["## (b) Engine throughput, Kronos-small shape, half, median of "
              f"{cfg['repeats']} after a warm-up; naive run once", table]
    print("\n\n" + "\n\n".join(parts[-2:]), flush=True)

    table, _ = engine_process_check(device, half, bars, times, cfg)
    parts += ["## (c) The engine in a process of its own (--inference process) against in-process, half, "
              f"raw windows, median of {cfg['repeats']}", table]
    print("\n\n" + "\n\n".join(parts[-2:]), flush=True)

    parts.append(f"Total time {time.perf_counter() - started:.0f} s.")
    print("\n" + parts[-1])
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / "gpu_check.md"
        path.write_text("\n\n".join(parts) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""kronos_rt.bench on tiny sizes, and benchmarks/gpu_check.py --smoke. Structure only: no timing asserts.
(The `kronos-rt bench` command: tests/worker/cli/test_bench.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kronos_rt import KronosPredictor, bench, shapes
from kronos_rt.engine import Engine
from worker.tools import TAPE
from tests.markdown import markdown_tables

ROOT = Path(__file__).resolve().parents[2]


def test_bench_rows():
    rows, sample_rows = bench.run(TAPE, ["mini"], batches=[2], lookbacks=[20], pred_lens=[4], repeats=2,
                                  sample_count=0)
    assert sample_rows == []
    (row,) = rows
    assert row.identical
    assert (row.batch, row.lookback, row.pred_len, row.device, row.dtype) == (2, 20, 4, "cpu", "float32")
    assert row.engine_s > 0 and row.naive_s > 0 and row.floor_s > 0
    assert row.engine_peak_mib >= 0 and row.naive_peak_mib >= 0
    assert row.speedup == pytest.approx(row.naive_s / row.engine_s)


def test_predictor_against_engine():
    """The predictor's frames are its engine's output de-normalized, bit for bit, on the
    windows make_windows cuts (the same starts)."""
    (prow,) = bench.predictor_rows(TAPE, ["mini"], batch=3, lookback=24, pred_len=5, repeats=1)
    assert prow.identical and (prow.shape, prow.batch, prow.lookback, prow.pred_len) == ("mini", 3, 24, 5)
    assert prow.predictor_s > 0 and prow.ratio == pytest.approx(prow.predictor_s / prow.engine_s)

    model, tokenizer, ctx = shapes.random_pair("mini")
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=ctx)
    bars, times = bench.load_tape(TAPE)
    frames, x_ts, y_ts = bench.make_frames(bars, times, 2, 30, 4)
    x, _, _ = bench.make_windows(bars, times, 2, 30, 4)
    assert [len(f) for f in frames] == [30, 30] and [len(y) for y in y_ts] == [4, 4]
    np.testing.assert_allclose(frames[1].to_numpy()[0], bars[len(bars) - 34])  # same starts as make_windows
    assert x.shape == (2, 30, 6)
    assert bench.compare_predictor(predictor, "mini", frames, x_ts, y_ts, 4, repeats=1).identical


def test_windows_come_from_the_tape():
    bars, times = bench.load_tape(TAPE)
    x, xs, ys = bench.make_windows(bars, times, 3, 50, 5)
    assert x.shape == (3, 50, 6) and xs.shape == (3, 50, 5) and ys.shape == (3, 5, 5)
    assert x.dtype == np.float32 and np.abs(x).max() <= 5.0
    assert not np.array_equal(x[0], x[1])  # different windows
    with pytest.raises(ValueError, match="exceeds the tape"):
        bench.make_windows(bars, times, 1, len(bars), 1)


def test_floor_pass_shape():
    model, tokenizer, ctx = shapes.random_pair("mini")
    engine = Engine(model, tokenizer, device="cpu", max_context=ctx)
    bars, times = bench.load_tape(TAPE)
    x, xs, ys = bench.make_windows(bars, times, 2, 30, 6)
    assert bench.floor_pass(engine, x, xs, ys, 6).shape == (2, 6, 6)


def test_processor_names_the_cpu_and_its_instruction_set():
    import torch

    text = bench.processor("cpu")
    name, _, capability = text.rpartition(", ")
    assert name and capability == torch.backends.cpu.get_cpu_capability()


def test_gpu_check_smoke(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert f"CPU ({bench.processor('cpu')})" in report
    tables = markdown_tables(report)
    assert len(tables) == 5  # parity, tokenizer ids, random-weight agreement, throughput, engine process
    parity = tables[0]
    assert [r[0] for r in parity[1:]] == ["case0", "case1", "case2", "case3", "case4", "batch"]
    assert all(r[parity[0].index("fp32 ok")] == "yes" for r in parity[1:])
    assert tables[1][1][1:] == ["fp32", "1.000", "1.000"]  # the fp32 tokenizer reproduces the fixture's ids
    assert len(tables[3]) == 1 + 2  # two smoke batch sizes
    process = tables[4]  # the engine in its own process: the in-process engine's forecasts
    assert len(process) == 1 + 2 and all(r[process[0].index("forecasts identical")] == "yes" for r in process[1:])

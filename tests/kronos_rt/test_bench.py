"""`kronos-rt bench` on a tiny grid, and benchmarks/gpu_check.py --smoke. Structure only: no timing asserts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kronos_rt import bench, shapes
from kronos_rt.engine import Engine
from worker import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_threads():
    # `kronos-rt bench` sets the torch thread count; leave other tests as they were.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in text, as rows of cells (header first, separator dropped)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_bench_cli_markdown_tiny_grid(capsys):
    rc = cli.main(["bench", "--shapes", "mini", "--batch", "1,2", "--lookback", "16", "--pred-len", "3",
                   "--repeats", "1", "--sample-count", "2", "--threads", "1", "--markdown"])
    assert rc == 0
    out = capsys.readouterr().out
    tables = _markdown_tables(out)
    assert len(tables) == 3  # results, sample paths, targets
    results, samples, targets = tables
    assert results[0] == bench.COLUMNS
    assert len(results) == 1 + 2
    for cells in results[1:]:
        row = dict(zip(results[0], cells))
        assert (row["shape"], row["lookback"], row["pred_len"]) == ("mini", "16", "3")
        assert row["greedy identical"] == "yes"
        assert float(row["engine fc/s"]) > 0 and float(row["naive fc/s"]) > 0
        assert row["speedup"].endswith("x")
    assert samples[0] == bench.SAMPLE_COLUMNS and samples[1][6] == "2"
    # The target point is not in this grid: reported, not invented.
    assert targets[0] == ["target", "measured", "result"]
    assert [r[2] for r in targets[1:]] == ["not measured", "not measured"]


def test_bench_rows_and_targets():
    rows, sample_rows = bench.run(["mini"], batches=[2], lookbacks=[20], pred_lens=[4], repeats=2, sample_count=0)
    assert sample_rows == []
    (row,) = rows
    assert row.identical
    assert (row.batch, row.lookback, row.pred_len, row.device, row.dtype) == (2, 20, 4, "cpu", "float32")
    assert row.engine_s > 0 and row.naive_s > 0 and row.floor_s > 0
    assert row.engine_peak_mib >= 0 and row.naive_peak_mib >= 0
    assert row.speedup == pytest.approx(row.naive_s / row.engine_s)

    # Targets are computed, not asserted: fabricate rows at the target point to see both verdicts.
    good = bench.Row("mini", "cpu", "float32", 8, 256, 24, engine_s=1.0, naive_s=9.0, floor_s=0.9,
                     engine_peak_mib=1, naive_peak_mib=1, identical=True)
    bad = bench.Row("small", "cpu", "float32", 8, 256, 24, engine_s=1.0, naive_s=9.0, floor_s=0.5,
                    engine_peak_mib=1, naive_peak_mib=1, identical=False)
    verdicts = [t[2] for t in bench.evaluate_targets([good, bad], threads=2)]
    assert verdicts == ["PASS", "PASS", "FAIL", "FAIL"]


def test_windows_come_from_the_tape():
    bars, times = bench.load_tape()
    x, xs, ys = bench.make_windows(bars, times, 3, 50, 5)
    assert x.shape == (3, 50, 6) and xs.shape == (3, 50, 5) and ys.shape == (3, 5, 5)
    assert x.dtype == np.float32 and np.abs(x).max() <= 5.0
    assert not np.array_equal(x[0], x[1])  # different windows
    with pytest.raises(ValueError, match="exceeds the tape"):
        bench.make_windows(bars, times, 1, len(bars), 1)


def test_floor_pass_shape():
    model, tokenizer, ctx = shapes.random_pair("mini")
    engine = Engine(model, tokenizer, device="cpu", max_context=ctx)
    bars, times = bench.load_tape()
    x, xs, ys = bench.make_windows(bars, times, 2, 30, 6)
    assert bench.floor_pass(engine, x, xs, ys, 6).shape == (2, 6, 6)


def test_gpu_check_smoke(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = (tmp_path / "gpu_check.md").read_text()
    tables = _markdown_tables(report)
    assert len(tables) == 4  # parity, tokenizer ids, random-weight agreement, throughput
    parity = tables[0]
    assert [r[0] for r in parity[1:]] == ["case0", "case1", "case2", "case3", "case4", "batch"]
    assert all(r[parity[0].index("fp32 ok")] == "yes" for r in parity[1:])
    assert tables[1][1][1:] == ["fp32", "1.000", "1.000"]  # the fp32 tokenizer reproduces the fixture's ids
    assert len(tables[3]) == 1 + 2  # two smoke batch sizes


def test_bench_cli_no_pack(capsys):
    """--no-pack runs the plain-MKL engine (the side-by-side comparison for packing) and says so."""
    rc = cli.main(["bench", "--shapes", "mini", "--batch", "2", "--lookback", "16", "--pred-len", "2",
                   "--repeats", "1", "--sample-count", "0", "--threads", "1", "--no-pack", "--markdown"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "plain weights" in out
    results = _markdown_tables(out)[0]
    assert dict(zip(results[0], results[1]))["greedy identical"] == "yes"

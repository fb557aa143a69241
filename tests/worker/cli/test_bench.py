"""`kronos-rt bench` (worker/cli/bench.py) on a tiny grid. Structure only: no timing asserts."""
from __future__ import annotations

import pytest
import torch

from kronos_rt import bench
from tests.markdown import markdown_tables
from worker import cli
from worker.cli import bench as bench_cli
from worker.tools.tables import format_table


@pytest.fixture(autouse=True)
def _restore_threads():
    # `kronos-rt bench` sets the torch thread count; leave other tests as they were.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_cli_tiny_grid(capsys):
    rc = cli.main(["bench", "--shapes", "mini", "--batch", "1,2", "--lookback", "16", "--pred-len", "3",
                   "--repeats", "1", "--sample-count", "2", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    # Ratios depend on the machine: the header names the processor they were measured on.
    assert out.startswith(f"kronos-rt bench: {bench.processor('cpu')}; torch {torch.__version__}, device cpu")
    tables = markdown_tables(out)
    assert len(tables) == 4  # results, sample paths, predictor, targets
    results, samples, predictor, targets = tables
    assert results[0] == bench_cli.COLUMNS
    assert len(results) == 1 + 2
    for cells in results[1:]:
        row = dict(zip(results[0], cells))
        assert (row["shape"], row["lookback"], row["pred_len"]) == ("mini", "16", "3")
        assert row["greedy identical"] == "yes"
        assert float(row["engine fc/s"]) > 0 and float(row["naive fc/s"]) > 0
        assert row["speedup"].endswith("x")
    assert samples[0] == bench_cli.SAMPLE_COLUMNS and samples[1][6] == "2"
    assert predictor[0] == bench_cli.PREDICTOR_COLUMNS
    row = dict(zip(predictor[0], predictor[1]))
    assert (row["batch"], row["lookback"], row["pred_len"], row["identical"]) == ("2", "16", "3", "yes")
    # The target point is not in this grid: reported, not invented.
    assert targets[0] == ["target", "measured", "result"]
    assert [r[2] for r in targets[1:]] == ["not measured"] * 3


def test_targets_are_computed_not_asserted():
    # Fabricate rows at the target point to see both verdicts.
    good = bench.Row("mini", "cpu", "float32", 8, 256, 24, engine_s=1.0, naive_s=9.0, floor_s=0.9,
                     engine_peak_mib=1, naive_peak_mib=1, identical=True)
    bad = bench.Row("small", "cpu", "float32", 8, 256, 24, engine_s=1.0, naive_s=9.0, floor_s=0.5,
                    engine_peak_mib=1, naive_peak_mib=1, identical=False)
    fast = bench.PredictorRow("mini", 8, 256, 24, predictor_s=1.1, engine_s=1.0, identical=True)
    slow = bench.PredictorRow("small", 8, 256, 24, predictor_s=1.2, engine_s=1.0, identical=True)
    verdicts = [t[2] for t in bench_cli.evaluate_targets([good, bad], [fast, slow], threads=2)]
    assert verdicts == ["PASS", "PASS", "PASS", "FAIL", "FAIL", "FAIL"]


def test_bench_cli_no_pack_predictor_only(capsys):
    """--no-pack runs the plain-MKL engine (the side-by-side comparison for packing) and says
    so; --predictor-only runs just the predictor comparison."""
    rc = cli.main(["bench", "--shapes", "mini", "--batch", "2", "--lookback", "16", "--pred-len", "2",
                   "--repeats", "1", "--threads", "1", "--no-pack", "--predictor-only"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "plain weights" in out
    predictor, targets = markdown_tables(out)
    assert dict(zip(predictor[0], predictor[1]))["identical"] == "yes"
    assert len(targets) == 1 + 1


def test_the_predictor_child_gets_no_heap_tunables(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1073741824")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("KRONOS_RT_SEED", "3")
    env = bench_cli.plain_env()
    assert not [k for k in env if k.startswith("MALLOC_")] and env["KRONOS_RT_SEED"] == "3"


def test_a_bad_tape_is_the_commands_own_error(capsys, tmp_path):
    rc = cli.main(["bench", "--shapes", "mini", "--predictor-only", "--data", str(tmp_path / "missing.csv")])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and "missing.csv" in err
    assert "predictor comparison" not in err  # refused before a child process was started


def test_format_table():
    assert format_table(["a", "b"], [["1", "2"], ["3", "4"]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |"

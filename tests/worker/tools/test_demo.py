"""`kronos-rt demo` end to end, as a user runs it (small symbol count)."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path):
    env = dict(os.environ, KRONOS_RT_REGISTRY=str(tmp_path / "registry"), OMP_NUM_THREADS="1")
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, "-m", "worker.cli", "demo", "--symbols", "2", "--bars", "90",
                          "--quiet", "--out", str(out), "--speed", "max"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout
    assert "creating 'demo-random'" in text and "RANDOM WEIGHTS" in text
    assert "forecasts        86 of 86 expected" in text  # 2 symbols x (90 - 48 + 1)
    assert "p50" in text and "p99" in text
    assert "demo: live forecast page at http://127.0.0.1:" in text  # kronos-rt view on the demo's topics
    report = (out / "report.md").read_text()
    assert "## Latency" in report and "## Accuracy" in report and "demo-random@0.1.0" in report
    assert (out / "latency_hist.png").stat().st_size > 0
    # the registry now holds the labelled random model, and a second run reuses it
    meta = (tmp_path / "registry" / "demo-random" / "0.1.0" / "metadata.json").read_text()
    assert '"random_weights": true' in meta

"""Walk-forward evaluation on series with known answers; metrics by hand; promotion rule."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kronos_rt.training.data import DataError, load_tapes, parse_range
from kronos_rt.training.evaluate import Candidate, EvalConfig, compare, evaluate, score, walk_forward
from worker.tools.eval_report import markdown, write_report

from .conftest import make_tape

PARITY = Path(__file__).resolve().parents[2] / "fixtures" / "parity"


def test_random_walk_persistence_is_best_and_model_mase_at_least_one(tmp_path):
    rng = np.random.default_rng(1)
    path = make_tape(tmp_path / "walk.csv", 100 * np.exp(np.cumsum(rng.normal(0, 0.003, 700))))
    tapes = load_tapes([path])
    test = parse_range("0.5:1", "--test", tapes.start, tapes.end)
    cand = Candidate("parity@0.1.0", PARITY / "model", PARITY / "tokenizer", 512, random_weights=True)
    cfg = EvalConfig(lookback=32, pred_len=4, stride=3, sample_count=2, max_windows=60, device="cpu")
    report = evaluate([cand], tapes, test, cfg)
    res = report["results"]
    assert report["windows"] == 60
    mae = {k: e["summary"]["mae"] for k, e in res.items()}
    assert mae["persistence"] == min(mae.values())
    assert res["parity@0.1.0"]["summary"]["mase"] >= 1.0
    assert res["parity@0.1.0"]["windows_per_s"] > 0
    assert len(res["parity@0.1.0"]["per_step"]["coverage"]) == 4
    md = markdown(report)
    assert "parity@0.1.0 (RANDOM WEIGHTS)" in md and "| persistence |" in md
    paths = write_report(report, tmp_path / "out")
    assert {"json", "markdown", "error_by_step", "coverage_by_step", "examples"} <= paths.keys()
    assert all(p.stat().st_size > 0 for p in paths.values())
    # eval.md shows the forecasts of a few windows against the realized closes, and the other plots
    written = paths["markdown"].read_text()
    assert "## Forecasts against realized closes" in written and "![forecasts against realized closes](examples.png)" in written
    assert "(error_by_step.png)" in written and "(coverage_by_step.png)" in written
    assert written.count(" @ ") >= 4  # the windows charted: series @ origin
    assert "## Forecasts against" not in markdown(report)  # without plots, no image is named


def test_linear_trend_drift_is_exact(tmp_path):
    path = make_tape(tmp_path / "trend.csv", 50 + 0.01 * np.arange(300))
    tapes = load_tapes([path])
    test = parse_range("0.6:1", "--test", tapes.start, tapes.end)
    report = evaluate([], tapes, test, EvalConfig(lookback=20, pred_len=5))
    drift, persistence = report["results"]["drift"], report["results"]["persistence"]
    assert max(drift["per_step"]["mae"]) < 1e-9
    assert drift["summary"]["hit_rate"] == 1.0
    # Persistence misses by h steps of the trend, and the MASE scale is one step: MASE_h = h.
    np.testing.assert_allclose(persistence["per_step"]["mase"], [1, 2, 3, 4, 5], rtol=1e-6)


def test_walk_forward_origins_by_hand(tmp_path):
    make_tape(tmp_path / "a.csv", np.linspace(10, 11, 120), symbol="AAA")
    make_tape(tmp_path / "b.csv", np.linspace(20, 21, 40), start="2024-01-02 15:00", symbol="BBB")  # starts later
    tapes = load_tapes([tmp_path])
    test = parse_range("0.4:0.9", "--test", tapes.start, tapes.end)
    lookback, pred_len, stride = 20, 5, 3
    w = walk_forward(tapes, test, lookback, pred_len, stride)
    expected = []
    for i, s in enumerate(tapes.series):
        inside = test.mask(s.times)
        # t needs lookback rows before it and rows t .. t + pred_len - 1 inside the test range.
        ok = [t for t in range(lookback, len(s) - pred_len + 1) if inside[t:t + pred_len].all()]
        expected += [(i, t) for t in ok[::stride]]
    assert {i for i, _ in expected} == {0, 1}
    assert list(zip(w.series.tolist(), w.origin.tolist())) == expected


def test_score_by_hand():
    y = np.array([[10.0, 12.0]])
    last = np.array([11.0])
    scale = np.array([2.0])
    point = np.array([[11.0, 11.0]])
    paths = np.array([[[9.0, 13.0], [13.0, 14.0]]])  # 2 samples x 2 steps
    s = score(point, y, last, scale, paths)
    assert s["mae"] == [1.0, 1.0] and s["mase"] == [0.5, 0.5]
    assert s["hit_rate"] == [0.0, 0.0]  # point forecasts no move; the close moved both times
    # CRPS of two samples {a, b}: (|a-y| + |b-y|)/2 - |a-b|/4
    assert s["crps"] == pytest.approx([(1 + 3) / 2 - 4 / 4, (1 + 2) / 2 - 1 / 4])
    # 10-90 % band of {9, 13} is [9.4, 12.6] (linear interpolation): 10 is inside; of {13, 14}, 12 is not.
    assert s["coverage"] == [1.0, 0.0]


def test_no_window_fits_the_test_range(tape):
    tapes = load_tapes([tape])
    test = parse_range("0.99:1", "--test", tapes.start, tapes.end)
    with pytest.raises(DataError, match="no window of 32 history bars and 8 future bars fits"):
        evaluate([], tapes, test, EvalConfig(lookback=32, pred_len=8))


def _report(a: float, b: float) -> dict:
    return {"windows": 100, "results": {"m@1.1.0": {"summary": {"mase": a, "hit_rate": 0.5}},
                                        "m@1.0.0": {"summary": {"mase": b, "hit_rate": 0.6}}}}


def test_compare_rule():
    ok, why = compare(_report(0.9, 1.0), "m@1.1.0", "m@1.0.0")
    assert ok and "beats" in why
    ok, why = compare(_report(0.99, 1.0), "m@1.1.0", "m@1.0.0", margin=0.02)
    assert not ok and "does not beat" in why and "margin 0.02" in why
    ok, _ = compare(_report(1.0, 1.0), "m@1.1.0", "m@1.0.0")
    assert not ok  # a tie is not evidence
    ok, _ = compare(_report(0.9, 1.0), "m@1.1.0", "m@1.0.0", metric="hit_rate")
    assert not ok  # higher is better for the hit rate
    with pytest.raises(ValueError, match="m@2.0.0 is not in the evaluation"):
        compare(_report(0.9, 1.0), "m@2.0.0", "m@1.0.0")
    with pytest.raises(ValueError, match="unknown metric"):
        compare(_report(0.9, 1.0), "m@1.1.0", "m@1.0.0", metric="r2")

"""worker/quality/scoring.py against hand-worked figures."""
from __future__ import annotations

import math

import numpy as np
import pytest

from worker.quality.scoring import ForecastRecord, band_pairs, crps_samples, pinball, score_step


def record(**over) -> ForecastRecord:
    base = dict(symbol="X", as_of="2024-01-02T09:35:00", model_name="m", model_version="1",
                last_close=10.0, drift=0.1, scale=0.01, horizon_ts=["t1", "t2"], mean_close=[10.5, 9.0],
                levels=[0.1, 0.5, 0.9], raw_q=[[10.0, 10.5, 11.0], [8.0, 9.0, 10.0]])
    base.update(over)
    return ForecastRecord(**base)


def test_errors_baselines_and_direction_by_hand():
    s = score_step(record(), 1, 10.2)
    assert s["abs_error"] == pytest.approx(0.3) and s["sq_error"] == pytest.approx(0.09)
    assert s["persistence_abs_error"] == pytest.approx(0.2)          # |10.0 - 10.2|
    assert s["drift_abs_error"] == pytest.approx(0.1)                # |10.0 + 1 * 0.1 - 10.2|
    assert s["direction_hit"] is True                                # up vs up
    s2 = score_step(record(), 2, 10.4)
    assert s2["drift_sq_error"] == pytest.approx((10.2 - 10.4) ** 2)  # 10 + 2 * 0.1
    assert s2["direction_hit"] is False                               # down vs up
    assert score_step(record(), 1, 10.0)["direction_hit"] is None     # no realized move


def test_bands_pinball_and_crps_by_hand():
    s = score_step(record(paths=[[10.0, 11.0], [9.0, 9.0]]), 1, 10.2)
    raw = s["raw"]
    assert raw["below"] == [False, True, True]
    assert raw["pinball"] == pytest.approx([0.1 * 0.2, 0.5 * 0.3, 0.1 * 0.8])
    assert raw["bands"] == {"0.8": True}
    # samples {10, 11}, y = 10.2: E|X - y| = (0.2 + 0.8) / 2 = 0.5, E|X - X'| = 0.5 -> 0.5 - 0.25
    assert s["crps"] == pytest.approx(0.25)
    assert "calibrated" not in s


def test_crps_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=17), 0.3
    brute = np.mean(np.abs(x - y)) - 0.5 * np.mean(np.abs(x[:, None] - x[None, :]))
    assert crps_samples(x, y) == pytest.approx(brute)
    assert crps_samples([2.0], 5.0) == pytest.approx(3.0)  # one sample: absolute error


def test_pinball_and_band_pairs():
    assert pinball(0.9, 10.0, 12.0) == pytest.approx(1.8)
    assert pinball(0.9, 10.0, 8.0) == pytest.approx(0.2)
    assert band_pairs([0.05, 0.1, 0.5, 0.9, 0.95]) == [(0, 4), (1, 3)]


def test_non_finite_inputs_give_none_not_nan():
    s = score_step(record(mean_close=[math.nan, 9.0]), 1, 10.2)
    assert s["abs_error"] is None and s["direction_hit"] is None
    assert all(v is None or not (isinstance(v, float) and math.isnan(v)) for v in s.values())


def test_a_step_without_a_published_calibrated_band_is_skipped_not_an_error():
    # Steps fill their windows at different times: step 1 calibrated, step 2 not yet (its
    # NaN row is stored as JSON nulls). Seen in bench-stream --scoring: it sent bars to the DLQ.
    from worker.contracts import events

    rec = record(cal_q=[[9.5, 10.2, 10.9], [math.nan, math.nan, math.nan]])
    stored = ForecastRecord.from_dict(events.loads(events.dumps(rec.to_dict())))
    s1 = score_step(stored, 1, 10.2)
    assert s1["calibrated"]["bands"] == {"0.8": True}
    s2 = score_step(stored, 2, 9.5)
    assert "calibrated" not in s2 and s2["raw"]["bands"] == {"0.8": True}

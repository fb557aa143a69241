"""worker/quality/calibration.py: coverage converges to nominal on series whose noise is known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from worker.quality.calibration import Calibrator, residual_scale
from worker.tools.coverage import walk

LEVELS = [0.1, 0.5, 0.9]


def run(noise, base_bias: float, model_q, warmup: int = 300, gamma: float = 0.3):
    """Serve calibrated quantiles around a (biased, mis-scaled) model; return the 80 % band's
    coverage after warm-up and the mean calibrated width."""
    cal = Calibrator(1, LEVELS, window=256, gamma=gamma)
    covered, widths = [], []
    for t, e in enumerate(noise):
        base = np.array([[base_bias + q for q in model_q]])      # the model's (wrong) quantiles
        band = cal.bands(base, 1.0)
        y = e
        below = None
        if band is not None:
            below = [y <= b for b in band[0]]
            if t >= warmup:
                covered.append(band[0, 0] <= y <= band[0, 2])
                widths.append(band[0, 2] - band[0, 0])
        cal.update(1, [y - b for b in base[0]], below)
    return float(np.mean(covered)), float(np.mean(widths))


@pytest.mark.parametrize("model_q", [(-0.1, 0.0, 0.1), (-5.0, 0.0, 5.0)])  # far too narrow / too wide
def test_gaussian_noise_reaches_nominal_coverage(model_q):
    noise = np.random.default_rng(1).normal(0.0, 1.0, 4000)
    cov, width = run(noise, 0.3, model_q)
    assert abs(cov - 0.8) < 0.03
    # The true 80 % band of N(0, 1) is 2.563 wide: the calibrated one learns it. The
    # integrator's default gain (0.3, tuned for delayed, drifting errors) makes the band
    # breathe, about 11 % wider on i.i.d. noise; a small gain gets within 3 %.
    assert width == pytest.approx(2 * 1.2816, rel=0.15)
    assert run(noise, 0.3, model_q, gamma=0.05)[1] == pytest.approx(2 * 1.2816, rel=0.03)


def test_heavy_tails_and_a_volatility_shift_still_cover():
    rng = np.random.default_rng(2)
    noise = np.concatenate([rng.standard_t(3, 2000), 3.0 * rng.standard_t(3, 2000)])  # regime change
    cov, _ = run(noise, 0.0, (0.0, 0.0, 0.0))  # sample_count 1: the band grows around the mean
    assert abs(cov - 0.8) < 0.03


def test_nan_never_enters_the_state():
    cal = Calibrator(2, LEVELS, window=8)
    assert not cal.update(1, [math.nan, 0.0, 0.1])
    assert not cal.update(1, [math.inf, 0.0, 0.1])
    assert not cal.update(3, [0.0, 0.0, 0.0])  # no such step
    assert cal.count.tolist() == [0, 0]
    for i in range(10):
        assert cal.update(1, [i, i, i], [True, False, True])
    assert np.all(np.isfinite(cal.buf)) and np.all(np.isfinite(cal.adj))
    blob = bytearray(cal.step_state(0))
    blob[-8:] = np.array([math.nan]).tobytes()  # a corrupted residual in Redis
    other = Calibrator(2, LEVELS, window=8)
    other.load_step(0, bytes(blob))
    assert other.count[0] == 7 and np.all(np.isfinite(other.buf))
    assert cal.bands(np.zeros((2, 3)), math.nan) is None


def test_state_round_trips_through_bytes():
    cal = Calibrator(2, LEVELS, window=5)
    for i in range(7):  # wraps the ring
        cal.update(2, [i, i + 1, i + 2], [False, True, True])
    other = Calibrator(2, LEVELS, window=5)
    other.load_step(1, cal.step_state(1))
    np.testing.assert_array_equal(other.offsets(1), cal.offsets(1))
    np.testing.assert_array_equal(other.adj, cal.adj)
    assert np.any(cal.adj != 0)


def test_a_first_version_blob_keeps_its_residuals():
    # v1 blobs ([n, ACI levels, rows]) may still be in Redis after an upgrade.
    rows = np.arange(12.0).reshape(4, 3)
    v1 = np.concatenate([[4.0], [0.2, 0.5, 0.8], rows.ravel()]).astype("<f8").tobytes()
    cal = Calibrator(1, LEVELS, window=8)
    cal.load_step(0, v1)
    assert cal.count[0] == 4 and np.all(cal.adj == 0)
    np.testing.assert_array_equal(cal.buf[0, :4], rows)
    cal.load_step(0, b"\x00" * 7)  # not whole floats: ignored
    assert cal.count[0] == 4


def garch_tape(n: int, seed: int):
    """Closes whose true noise is known: log-returns r_t = m_t s_t z_t, z ~ N(0, 1), with a
    GARCH(1, 1) variance s_t^2 = 1e-7 + 0.1 r_{t-1}^2 + 0.88 s_{t-1}^2 (volatility clusters,
    unconditional bar vol ~ 0.2 %) and m_t = 1, then 3 from halfway (a regime switch)."""
    rng = np.random.default_rng(seed)
    e, s2 = np.zeros(n), 5e-6
    for t in range(1, n):
        s2 = 1e-7 + 0.1 * e[t - 1] ** 2 + 0.88 * s2
        e[t] = np.sqrt(s2) * rng.standard_normal()
    r = e * np.where(np.arange(n) < n // 2, 1.0, 3.0)
    return 20.0 * np.exp(np.cumsum(r))


@pytest.mark.parametrize("mode", ["cqr", "mean"])
def test_heteroscedastic_multi_step_converges_at_every_step(mode):
    """12 steps, each realized h bars after its forecast (as in the worker); the model is
    persistence with a far too narrow, biased band. The calibrated 80 % band covers 80 % +- 3
    points at every step after a warm-up (around the quantiles, and around the mean path as
    with --sample-count 1)."""
    closes = garch_tape(3000, seed=3)
    P, idx = 12, np.arange(31, 2999)
    last = closes[idx]
    means = np.repeat((last * 1.001)[:, None], P, axis=1)           # biased mean path
    quants = means[:, :, None] * (1 + np.array([-1e-4, 0.0, 1e-4]))  # 2 bp wide "80 %" band
    out = walk(idx, means, quants, closes, LEVELS, warmup=300, mode=mode)
    for h, d in out.items():
        assert len(d["cal"]) > 2000
        assert abs(np.mean(d["cal"]) - 0.8) < 0.03, (h, np.mean(d["cal"]))
        assert np.mean(d["raw"]) < 0.2  # the model's own band was useless: calibration did the work
    # Widths grow with the horizon like the noise does (sqrt(h)), not flat.
    assert np.mean(out[12]["cal_w"]) > 2 * np.mean(out[1]["cal_w"])


def test_residual_scale():
    closes = 10.0 * np.cumprod(1 + np.tile([0.01, -0.01], 40))
    assert residual_scale(closes) == pytest.approx(closes[-1] * 0.01, rel=0.01)
    assert residual_scale(np.full(50, 5.0)) == pytest.approx(5.0 * 1e-5)
    assert math.isnan(residual_scale(np.array([math.nan])))


def test_offsets_are_reused_until_the_state_changes():
    cal = Calibrator(3, (0.1, 0.9), window=16)
    rng = np.random.default_rng(0)
    for _ in range(10):
        for step in (1, 2, 3):
            cal.update(step, rng.normal(size=2))
    first = cal.offsets(4)
    assert cal.offsets(4) is first and not first.flags.writeable  # one computation for a batch
    cal.update(2, [5.0, 5.0])
    fresh = cal.offsets(4)
    assert fresh is not first and not np.array_equal(fresh[1], first[1])
    other = Calibrator(3, (0.1, 0.9), window=16)
    for h in range(3):
        other.load_step(h, cal.step_state(h))
    np.testing.assert_array_equal(other.offsets(4), fresh)  # loaded state: computed anew, same numbers


def test_calibrated_bands_are_on_by_default_wherever_sample_paths_make_bands(redis_url):
    """Raw sampled bands of Kronos cover far less than their nominal level (BENCHMARKS.md), so
    --sample-count > 1 turns the calibration on unless --calibration-window 0 says otherwise."""
    import argparse

    from worker import config
    from worker.quality.calibration import DEFAULT_WINDOW
    from worker.quality.live import make_live_scoring

    assert config.Settings(sample_count=8).calibration_window == DEFAULT_WINDOW
    assert config.Settings(sample_count=1).calibration_window == 0
    assert config.Settings(sample_count=8, calibration_window=0).calibration_window == 0
    assert config.Settings(sample_count=1, calibration_window=64).calibration_window == 64
    parser = argparse.ArgumentParser()
    config.add_flags(parser)
    flags = parser.parse_args(["--sample-count", "8"])
    assert config.from_args(flags).calibration_window == DEFAULT_WINDOW
    assert config.from_args(parser.parse_args(["--sample-count", "8", "--calibration-window", "0"])).calibration_window == 0
    assert "(default: 256 when --sample-count > 1, else 0)" in " ".join(parser.format_help().split())

    import redis.asyncio as aioredis

    from worker.adapters.keys import RedisKeys
    from worker.ops.metrics import WorkerMetrics

    r = aioredis.Redis.from_url(redis_url)  # scripts are registered, nothing is sent
    keys, metrics = RedisKeys("krt-test-default-calibration"), WorkerMetrics()
    live = make_live_scoring(config.Settings(sample_count=8), r, keys, None, metrics, lambda: None)
    assert live is not None and live.quality.min_scores == config.Settings().calibration_min_scores
    assert make_live_scoring(config.Settings(sample_count=1), r, keys, None, metrics, lambda: None) is None

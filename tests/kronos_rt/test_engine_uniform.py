"""Engine.forecast on windows of one length: prepared and de-normalized as one array
(features.prepare_uniform, Engine._forecast_uniform), bit for bit what the window-by-window
path gives on the same inputs."""
import numpy as np
import pytest

from kronos_rt import Engine, SamplingParams
from kronos_rt import engine as engine_module
from kronos_rt.features import COLUMNS, fill_missing, normalize, prepare_uniform


def _windows(rng, B, L, missing=True):
    """Random OHLCVA windows of very different scales, some volumes/amounts missing."""
    out = []
    for b in range(B):
        scale = 10.0 ** rng.uniform(-3, 5)
        close = scale * np.exp(np.cumsum(rng.normal(0, 0.01, L)))
        high = close * (1 + rng.uniform(0, 0.02, L))
        low = close * (1 - rng.uniform(0, 0.02, L))
        vol = rng.uniform(0, 10.0 ** rng.uniform(2, 9), L)
        w = np.stack([close, high, low, close, vol, vol * close], axis=1)
        if missing and b % 3 == 1:
            w[rng.random(L) < 0.2, 5] = np.nan
        if missing and b % 5 == 2:
            w[rng.random(L) < 0.2, 4] = np.nan
        out.append(w)
    return out


@pytest.mark.parametrize("L", [1, 2, 7, 8, 9, 16, 31, 32, 33, 128, 129, 400, 512])
def test_prepare_uniform_equals_fill_and_normalize_window_by_window(L):
    rng = np.random.default_rng(L)
    bars = _windows(rng, 37, L)
    x, mean, std = prepare_uniform(np.stack(bars), 5.0)
    assert x.shape == (37, L, 6) and x.dtype == np.float32
    for i, b in enumerate(bars):
        xi, mi, si = normalize(fill_missing(b), 5.0)
        np.testing.assert_array_equal(x[i], xi)
        np.testing.assert_array_equal(mean[i], mi)
        np.testing.assert_array_equal(std[i], si)


def test_prepare_uniform_raises_what_the_window_by_window_path_raises_first():
    rng = np.random.default_rng(0)
    bars = np.stack(_windows(rng, 5, 10, missing=False))
    nan_price = bars.copy()
    nan_price[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="^series 3: NaN in price columns$"):
        prepare_uniform(nan_price, 5.0)
    inf_first = nan_price.copy()
    inf_first[1, 0, 2] = np.inf
    with pytest.raises(ValueError, match="^input contains NaN or infinite values$"):
        prepare_uniform(inf_first, 5.0)
    with pytest.raises(ValueError, match="shape"):
        prepare_uniform(bars[:, :, :5], 5.0)


@pytest.fixture(scope="module")
def engine(parity_pair):
    model, tokenizer = parity_pair
    return Engine(model, tokenizer, device="cpu", max_context=64)


def _window_by_window(monkeypatch):
    monkeypatch.setattr(engine_module, "_uniform", lambda *a: False)


@pytest.mark.parametrize("L,pred_len,sampling,quantiles", [
    (32, 1, SamplingParams(top_k=1), ()),
    (40, 4, SamplingParams(top_k=1), ()),
    (60, 8, SamplingParams(top_p=0.9, sample_count=4, seed=3), (0.1, 0.5, 0.9)),
])
def test_uniform_batch_equals_window_by_window(engine, tape, monkeypatch, L, pred_len, sampling, quantiles):
    rng = np.random.default_rng(L)
    starts = [100 + 37 * k for k in range(12)]
    bars, xt, yt = [], [], []
    for k, s in enumerate(starts):
        ctx = tape.iloc[s:s + L]
        b = ctx[list(COLUMNS)].to_numpy().astype(np.float64) * (1 + k)
        if k % 4 == 1:
            b[rng.random(L) < 0.3, 5] = np.nan  # missing amounts, filled the same way
        bars.append(b)
        xt.append(ctx["timestamps"].to_numpy())
        yt.append(tape["timestamps"].iloc[s + L:s + L + pred_len].to_numpy())
    together = engine.forecast(bars, xt, yt, pred_len, sampling, quantiles=quantiles, return_paths=True)
    _window_by_window(monkeypatch)
    straightforward = engine.forecast(bars, xt, yt, pred_len, sampling, quantiles=quantiles, return_paths=True)
    assert len(together) == len(straightforward) == len(bars)
    for a, b in zip(together, straightforward):
        assert a.mean.dtype == b.mean.dtype == np.float64
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.paths, b.paths)
        assert set(a.quantiles) == set(b.quantiles)
        for q in a.quantiles:
            np.testing.assert_array_equal(a.quantiles[q], b.quantiles[q])


def test_uniform_batch_equals_each_window_alone(engine, tape):
    """What a re-forecast after a failover relies on: a window forecast alone (window-by-window
    path) gives the bits it got inside a batch (the one-array path)."""
    L, pred_len = 45, 3
    bars, xt, yt = [], [], []
    for s in (50, 150, 250, 350):
        ctx = tape.iloc[s:s + L]
        bars.append(ctx[list(COLUMNS)].to_numpy().astype(np.float64))
        xt.append(ctx["timestamps"].to_numpy())
        yt.append(tape["timestamps"].iloc[s + L:s + L + pred_len].to_numpy())
    together = engine.forecast(bars, xt, yt, pred_len, SamplingParams(top_k=1))
    for i in range(len(bars)):
        (alone,) = engine.forecast([bars[i]], [xt[i]], [yt[i]], pred_len, SamplingParams(top_k=1))
        np.testing.assert_array_equal(together[i].mean, alone.mean)


def test_windows_of_other_lengths_or_bad_ones_go_window_by_window(engine, tape):
    ctx = tape.iloc[0:30]
    b = ctx[list(COLUMNS)].to_numpy().astype(np.float64)
    t = ctx["timestamps"].to_numpy()
    y = tape["timestamps"].iloc[30:32].to_numpy()
    assert engine_module._uniform([b, b], [t, t], [y, y])
    assert not engine_module._uniform([b, b[1:]], [t, t[1:]], [y, y])
    assert not engine_module._uniform([b, b], [t, t[1:]], [y, y])
    with pytest.raises(ValueError, match="series 1: 30 bars but 29 timestamps"):
        engine.forecast([b, b], [t, t[1:]], [y, y], 2, SamplingParams(top_k=1))
    bad = b.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="series 1: NaN in price columns"):
        engine.forecast([b, bad], [t, t], [y, y], 2, SamplingParams(top_k=1))

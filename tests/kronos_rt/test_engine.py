"""The cached engine against the full-recompute path, ragged batches, sample paths."""
import numpy as np
import pytest
import torch

from kronos_rt import Engine, SamplingParams
from kronos_rt.features import COLUMNS
from kronos_rt.naive import naive_forecast_arrays

from .conftest import window_inputs

GREEDY = SamplingParams(top_k=1)




@pytest.fixture(scope="module")
def engine(parity_pair):
    model, tokenizer = parity_pair
    return Engine(model, tokenizer, device="cpu", max_context=64)


@pytest.mark.parametrize("lookback,pred_len", [(20, 8), (40, 24), (64, 1), (57, 8)])
def test_cached_equals_full_recompute(engine, tape, lookback, pred_len):
    xs, xst, yst = window_inputs(tape, [0, 300, 900, 1500], lookback, pred_len)
    got, _ = engine.forecast_arrays(xs, xst, yst, pred_len, GREEDY)
    want, _ = naive_forecast_arrays(engine, np.stack(xs), np.stack(xst), np.stack(yst), pred_len, GREEDY)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("lookback,pred_len", [(60, 12), (64, 5), (100, 6), (200, 3)])
def test_sliding_window_equals_full_recompute(engine, tape, lookback, pred_len):
    """lookback + pred_len > max_context: positions shift, the engine must stay exact."""
    xs, xst, yst = window_inputs(tape, [10, 700], lookback, pred_len)
    got, _ = engine.forecast_arrays(xs, xst, yst, pred_len, GREEDY)
    want, _ = naive_forecast_arrays(engine, np.stack(xs), np.stack(xst), np.stack(yst), pred_len, GREEDY)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("lengths", [(12, 40, 64), (70, 30, 61), (5, 90)])
def test_ragged_batch_equals_each_alone(engine, tape, lengths):
    pred_len = 6
    xs, xst, yst = [], [], []
    for i, n in enumerate(lengths):
        a, b, c = window_inputs(tape, [100 + 250 * i], n, pred_len)
        xs += a
        xst += b
        yst += c
    together, _ = engine.forecast_arrays(xs, xst, yst, pred_len, GREEDY)
    for i in range(len(lengths)):
        alone, _ = engine.forecast_arrays([xs[i]], [xst[i]], [yst[i]], pred_len, GREEDY)
        np.testing.assert_allclose(together[i], alone[0], rtol=1e-5, atol=1e-5)


def test_unwritten_cache_memory_is_never_read(engine, tape, monkeypatch):
    """Caches are uninitialized (workspaces kept between calls, allocated with torch.empty):
    fill every new buffer with NaN, and a ragged batch with sample paths must still equal
    the same forecast made with zeroed buffers (a NaN that is read, even masked, spreads)."""
    lengths, pred_len = (12, 40, 52, 33), 6  # cached: longest + pred_len <= max_context (64)
    xs, xst, yst = [], [], []
    for i, n in enumerate(lengths):
        a, b, c = window_inputs(tape, [100 + 250 * i], n, pred_len)
        xs, xst, yst = xs + a, xst + b, yst + c
    greedy3 = SamplingParams(top_k=1, sample_count=3)
    real_empty, real_new_empty = torch.empty, torch.Tensor.new_empty

    def filled(value):
        engine.release_workspaces()  # so that this call allocates them anew, filled
        monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(value))
        monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: real_new_empty(self, *a, **k).fill_(value))
        return engine.forecast_arrays(xs, xst, yst, pred_len, greedy3, return_paths=True)

    nan_mean, nan_paths = filled(float("nan"))
    zero_mean, zero_paths = filled(0.0)
    assert np.isfinite(nan_paths).all()
    np.testing.assert_array_equal(nan_paths, zero_paths)
    np.testing.assert_array_equal(nan_mean, zero_mean)
    np.testing.assert_array_equal(nan_paths[:, 0], nan_paths[:, 2])  # greedy: paths agree


def test_sample_paths_share_prefix_and_average(engine, tape):
    xs, xst, yst = window_inputs(tape, [0, 500], 40, 10)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=0.95, sample_count=6, seed=3)
    mean, paths = engine.forecast_arrays(xs, xst, yst, 10, params, return_paths=True)
    assert paths.shape == (2, 6, 10, 6)
    np.testing.assert_allclose(mean, paths.mean(axis=1), rtol=1e-6)
    assert np.abs(paths[:, 0] - paths[:, 1]).max() > 0  # paths really differ
    again, paths2 = engine.forecast_arrays(xs, xst, yst, 10, params, return_paths=True)
    np.testing.assert_array_equal(paths, paths2)  # seeded -> reproducible


def test_greedy_paths_identical_across_samples(engine, tape):
    xs, xst, yst = window_inputs(tape, [0], 30, 5)
    mean, paths = engine.forecast_arrays(xs, xst, yst, 5, SamplingParams(top_k=1, sample_count=3), return_paths=True)
    np.testing.assert_array_equal(paths[0, 0], paths[0, 2])
    single, _ = engine.forecast_arrays(xs, xst, yst, 5, GREEDY)
    np.testing.assert_allclose(mean, single, rtol=1e-6, atol=1e-6)


def test_sampled_paths_follow_naive_distribution(engine, tape):
    """Same seed does not give the same draws (different op order), but both paths sample
    the same distribution: compare the spread of their means over many paths."""
    xs, xst, yst = window_inputs(tape, [800], 48, 4)
    params = SamplingParams(temperature=1.0, top_p=0.9, sample_count=64, seed=11)
    _, p_engine = engine.forecast_arrays(xs, xst, yst, 4, params, return_paths=True)
    _, p_naive = naive_forecast_arrays(engine, np.stack(xs), np.stack(xst), np.stack(yst), 4, params, return_paths=True)
    m_e, m_n = p_engine[0, :, :, 3].mean(), p_naive[0, :, :, 3].mean()
    s = max(p_engine[0, :, :, 3].std(), p_naive[0, :, :, 3].std())
    assert abs(m_e - m_n) < 4 * s / np.sqrt(64) + 1e-6


def test_forecast_raw_bars_and_quantiles(engine, tape):
    ctx = tape.iloc[200:260]
    fut = tape.iloc[260:268]
    bars = ctx[list(COLUMNS)].values.astype(np.float64)
    bars_missing_amount = bars.copy()
    bars_missing_amount[:, 5] = np.nan
    params = SamplingParams(top_p=0.9, sample_count=8, seed=0)
    out = engine.forecast([bars, bars_missing_amount], [ctx["timestamps"].values] * 2, [fut["timestamps"].values] * 2,
                          8, params, quantiles=(0.1, 0.5, 0.9), return_paths=True)
    f = out[0]
    assert f.mean.shape == (8, 6) and f.paths.shape == (8, 8, 6)
    assert set(f.quantiles) == {0.1, 0.5, 0.9}
    assert (f.quantiles[0.1] <= f.quantiles[0.5] + 1e-9).all() and (f.quantiles[0.5] <= f.quantiles[0.9] + 1e-9).all()
    np.testing.assert_allclose(f.mean, f.paths.mean(axis=0), rtol=1e-5, atol=1e-4)
    # prices are in the tape's range, not normalized units
    assert 5 < f.mean[:, 3].mean() < 20


def test_engine_errors(engine, tape):
    xs, xst, yst = window_inputs(tape, [0], 30, 5)
    with pytest.raises(ValueError, match="pred_len"):
        engine.forecast_arrays(xs, xst, yst, 0, GREEDY)
    with pytest.raises(ValueError, match="future time stamps"):
        engine.forecast_arrays(xs, xst, yst, 4, GREEDY)
    with pytest.raises(ValueError, match="time stamps"):
        engine.forecast_arrays(xs, [xst[0][:-1]], yst, 5, GREEDY)
    with pytest.raises(ValueError, match="at least one bar"):
        engine.forecast_arrays([xs[0][:0]], [xst[0][:0]], yst, 5, GREEDY)
    mean, paths = engine.forecast_arrays([], [], [], 5, GREEDY)
    assert mean.shape == (0, 5, 6)


def test_device_and_dtype_resolution(parity_pair):
    from kronos_rt.engine import resolve_device, resolve_dtype

    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda", 0)) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_bfloat16_on_cpu_close_to_float32(parity_pair, tape):
    import copy

    model, tokenizer = parity_pair
    e32 = Engine(copy.deepcopy(model), copy.deepcopy(tokenizer), device="cpu", max_context=64)
    e16 = Engine(copy.deepcopy(model), copy.deepcopy(tokenizer), device="cpu", dtype="bfloat16", max_context=64)
    xs, xst, yst = window_inputs(tape, [0, 400], 40, 4)
    a, _ = e32.forecast_arrays(xs, xst, yst, 4, GREEDY)
    b, _ = e16.forecast_arrays(xs, xst, yst, 4, GREEDY)
    assert b.dtype == np.float32 and np.isfinite(b).all()
    # reduced precision may flip a token; most outputs still agree closely
    assert np.mean(np.abs(a - b) < 0.5) > 0.5


def test_equal_length_batch_is_bit_identical_to_each_alone(engine, tape):
    """What the worker relies on to make re-forecasts identical: windows of one length give the
    same bits whatever else (of that length) is in the call and however many there are."""
    pred_len, n = 4, 45
    xs, xst, yst = window_inputs(tape, [100 + 53 * k for k in range(9)], n, pred_len)
    together, _ = engine.forecast_arrays(xs, xst, yst, pred_len, GREEDY)
    for i in (0, 4, 8):
        alone, _ = engine.forecast_arrays([xs[i]], [xst[i]], [yst[i]], pred_len, GREEDY)
        np.testing.assert_array_equal(together[i], alone[0])


def test_workspaces_are_kept_reused_and_released(parity_pair, tape):
    """The engine keeps its key/value caches between calls (no allocation, no page faults
    for a call of the same or a smaller size), hands them back on request, and none of
    that changes a forecast."""
    import copy

    model, tokenizer = parity_pair
    engine = Engine(copy.deepcopy(model), copy.deepcopy(tokenizer), device="cpu", max_context=64)
    big = window_inputs(tape, [0, 300, 900, 1500], 40, 8)
    small = window_inputs(tape, [200, 700], 30, 5)
    ragged = [a + b for a, b in zip(window_inputs(tape, [0], 40, 5), window_inputs(tape, [700], 30, 5))]

    first, _ = engine.forecast_arrays(*big, 8, GREEDY)
    buffers = {name: (buf.data_ptr(), buf.numel()) for name, buf in engine.workspaces._buffers.items()}
    assert {"kv", "dep"} <= set(buffers) and engine.workspaces.nbytes > 0
    again, _ = engine.forecast_arrays(*big, 8, GREEDY)
    smaller, _ = engine.forecast_arrays(*small, 5, GREEDY)
    mixed, _ = engine.forecast_arrays(*ragged, 5, GREEDY)
    assert {name: (buf.data_ptr(), buf.numel()) for name, buf in engine.workspaces._buffers.items()} == buffers
    np.testing.assert_array_equal(first, again)

    engine.release_workspaces()
    assert engine.workspaces.nbytes == 0
    np.testing.assert_array_equal(engine.forecast_arrays(*small, 5, GREEDY)[0], smaller)  # fresh buffers
    np.testing.assert_array_equal(engine.forecast_arrays(*ragged, 5, GREEDY)[0], mixed)
    fresh = Engine(copy.deepcopy(model), copy.deepcopy(tokenizer), device="cpu", max_context=64)
    np.testing.assert_array_equal(fresh.forecast_arrays(*big, 8, GREEDY)[0], first)

    grown = window_inputs(tape, [0, 300, 900, 1500, 1700], 50, 8)  # more rows and positions: the buffers grow
    engine.forecast_arrays(*grown, 8, GREEDY)
    assert engine.workspaces._buffers["kv"].numel() > buffers["kv"][1]


@pytest.mark.parametrize("lengths,pred_len", [((40, 40, 40), 8), ((12, 40, 52), 6), ((70, 30, 61), 6)])
def test_passes_in_groups_of_series_equal_one_pass(parity_pair, tape, lengths, pred_len):
    """On CPU full passes run over groups of series (Engine.PASS_ROWS): the same bits as one
    pass over the batch, with the caches' sample-path rows, ragged and sliding windows."""
    import copy

    model, tokenizer = parity_pair
    grouped = Engine(copy.deepcopy(model), copy.deepcopy(tokenizer), device="cpu", max_context=64)
    grouped.PASS_ROWS = 1  # one series per pass
    whole = Engine(copy.deepcopy(model), copy.deepcopy(tokenizer), device="cpu", max_context=64)
    whole.PASS_ROWS = 10_000
    xs, xst, yst = [], [], []
    for i, n in enumerate(lengths):
        a, b, c = window_inputs(tape, [100 + 250 * i], n, pred_len)
        xs, xst, yst = xs + a, xst + b, yst + c
    params = SamplingParams(top_k=1, sample_count=2)
    got = grouped.forecast_arrays(xs, xst, yst, pred_len, params, return_paths=True)
    want = whole.forecast_arrays(xs, xst, yst, pred_len, params, return_paths=True)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_decode_keep_is_the_last_rows_of_a_full_decode(engine):
    """Engine.decode(keep=k): the last decoder block computes the other positions' keys and
    values only; the kept rows are the full decode's, bit for bit."""
    g = torch.Generator().manual_seed(0)
    n1, n2 = 2 ** engine.tokenizer.s1_bits, 2 ** engine.tokenizer.s2_bits
    s1, s2 = torch.randint(0, n1, (3, 37), generator=g), torch.randint(0, n2, (3, 37), generator=g)
    with torch.inference_mode():
        full = engine.decode(s1, s2)
        for keep in (1, 5, 36, 37, 50):
            got = engine.decode(s1, s2, keep=keep)
            assert got.shape == (3, min(keep, 37), full.shape[-1])
            assert torch.equal(got, full[:, -keep:])


@pytest.mark.parametrize("lengths,pred_len", [((40, 40), 8), ((12, 40, 52), 6), ((70, 30, 61), 6)])
def test_detokenize_with_trimmed_decode_equals_full_decode(engine, tape, monkeypatch, lengths, pred_len):
    """The forecasts (uniform, ragged and sliding windows) are those of a full tokenizer decode."""
    xs, xst, yst = [], [], []
    for i, n in enumerate(lengths):
        a, b, c = window_inputs(tape, [100 + 250 * i], n, pred_len)
        xs, xst, yst = xs + a, xst + b, yst + c
    got = engine.forecast_arrays(xs, xst, yst, pred_len, GREEDY)[0]

    def full_then_cut(self, s1, s2, keep):
        z = self.tokenizer.decode(s1, s2)
        return z if keep is None else z[:, z.shape[1] - keep:]
    monkeypatch.setattr(Engine, "_decode_part", full_then_cut)
    np.testing.assert_array_equal(got, engine.forecast_arrays(xs, xst, yst, pred_len, GREEDY)[0])

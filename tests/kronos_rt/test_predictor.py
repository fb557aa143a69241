"""The drop-in predictor: reference errors, clearer errors where it is silent, paths and bands."""
import numpy as np
import pandas as pd
import pytest

from kronos_rt import KronosPredictor


@pytest.fixture(scope="module")
def predictor(parity_pair):
    model, tokenizer = parity_pair
    return KronosPredictor(model, tokenizer, device="cpu", max_context=64)


@pytest.fixture
def window(tape):
    ctx, fut = tape.iloc[100:150].reset_index(drop=True), tape.iloc[150:155].reset_index(drop=True)
    return ctx, ctx["timestamps"], fut["timestamps"]


def test_reference_errors(predictor, window):
    ctx, xt, yt = window
    with pytest.raises(ValueError, match="Input must be a pandas DataFrame."):
        predictor.predict(ctx.values, xt, yt, 5)
    with pytest.raises(ValueError, match=r"Price columns \['open', 'high', 'low', 'close'\] not found in DataFrame."):
        predictor.predict(ctx.drop(columns=["low"]), xt, yt, 5)
    bad = ctx.copy()
    bad.loc[3, "close"] = np.nan
    with pytest.raises(ValueError, match="Input DataFrame contains NaN values in price or volume columns."):
        predictor.predict(bad, xt, yt, 5)
    with pytest.raises(ValueError, match="does not match the length of x_timestamp"):
        predictor.predict(ctx, xt[:-1], yt, 5)
    with pytest.raises(ValueError, match="Length of y_timestamp does not match pred_len"):
        predictor.predict(ctx, xt, yt, 4)


def test_clear_errors_where_reference_is_silent(predictor, window):
    ctx, xt, yt = window
    with pytest.raises(ValueError, match="pred_len must be a positive integer"):
        predictor.predict(ctx, xt, yt[:0], 0)
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(ctx.iloc[:0], xt[:0], yt, 5)
    with pytest.raises(ValueError, match="x_timestamp must be sorted"):
        predictor.predict(ctx, xt[::-1].reset_index(drop=True), yt, 5)
    with pytest.raises(ValueError, match="y_timestamp must start after the last x_timestamp"):
        predictor.predict(ctx, xt, xt[-5:].reset_index(drop=True), 5)
    inf = ctx.copy()
    inf.loc[2, "volume"] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        predictor.predict(inf, xt, yt, 5)


def test_batch_errors(predictor, window):
    ctx, xt, yt = window
    with pytest.raises(ValueError, match="must be list or tuple types"):
        predictor.predict_batch(ctx, xt, yt, 5)
    with pytest.raises(ValueError, match="consistent lengths"):
        predictor.predict_batch([ctx, ctx], [xt], [yt, yt], 5)
    with pytest.raises(ValueError, match="Input at index 1 is not a pandas DataFrame."):
        predictor.predict_batch([ctx, ctx.values], [xt, xt], [yt, yt], 5)
    with pytest.raises(ValueError, match=r"DataFrame at index 1 is missing price columns"):
        predictor.predict_batch([ctx, ctx[["open"]]], [xt, xt], [yt, yt], 5)
    bad = ctx.copy()
    bad.loc[0, "open"] = np.nan
    with pytest.raises(ValueError, match="DataFrame at index 0 contains NaN values"):
        predictor.predict_batch([bad, ctx], [xt, xt], [yt, yt], 5)
    with pytest.raises(ValueError, match="same historical length"):
        predictor.predict_batch([ctx, ctx.iloc[1:]], [xt, xt[1:]], [yt, yt], 5)
    with pytest.raises(ValueError, match="Length of y_timestamp at index 0 does not match pred_len"):
        predictor.predict_batch([ctx], [xt], [yt[:3]], 5)


def test_missing_volume_and_amount_columns(predictor, window):
    ctx, xt, yt = window
    no_vol = predictor.predict(ctx[["open", "high", "low", "close"]], xt, yt, 5, top_k=1)
    zeros = ctx.assign(volume=0.0, amount=0.0)
    np.testing.assert_allclose(no_vol.values, predictor.predict(zeros, xt, yt, 5, top_k=1).values)
    no_amt = predictor.predict(ctx.drop(columns=["amount"]), xt, yt, 5, top_k=1)
    filled = ctx.assign(amount=ctx["volume"] * ctx[["open", "high", "low", "close"]].mean(axis=1))
    np.testing.assert_allclose(no_amt.values, predictor.predict(filled, xt, yt, 5, top_k=1).values)


def test_batch_equals_single(predictor, tape):
    frames = [tape.iloc[s:s + 40].reset_index(drop=True) for s in (0, 600, 1200)]
    futs = [tape.iloc[s + 40:s + 46]["timestamps"].reset_index(drop=True) for s in (0, 600, 1200)]
    outs = predictor.predict_batch(frames, [f["timestamps"] for f in frames], futs, 6, top_k=1)
    for f, y, o in zip(frames, futs, outs):
        single = predictor.predict(f, f["timestamps"], y, 6, top_k=1)
        np.testing.assert_allclose(o.values, single.values, rtol=1e-5)
        assert (o.index == y).all()


def test_predict_paths_bands(predictor, window):
    ctx, xt, yt = window
    res = predictor.predict_paths(ctx, xt, yt, 5, top_p=0.95, sample_count=16, quantiles=(0.1, 0.5, 0.9), seed=2)
    assert res.paths.shape == (16, 5, 6)
    lo, mid, hi = (res.quantiles[q] for q in (0.1, 0.5, 0.9))
    assert (lo.values <= mid.values + 1e-9).all() and (mid.values <= hi.values + 1e-9).all()
    np.testing.assert_allclose(res.mean.values, res.paths.mean(axis=0), rtol=1e-4)
    assert list(lo.index) == list(yt)


def test_long_lookback_beyond_context(predictor, tape):
    """lookback > max_context: the whole lookback is normalized and encoded, the window slides."""
    ctx, fut = tape.iloc[0:150], tape.iloc[150:154]
    out = predictor.predict(ctx, ctx["timestamps"], fut["timestamps"], 4, top_k=1)
    assert out.shape == (4, 6) and np.isfinite(out.values).all()
    assert isinstance(out, pd.DataFrame)


def test_from_registry_takes_the_versions_max_context(tmp_path):
    from pathlib import Path

    from kronos_rt.registry import Registry

    parity = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
    reg = Registry(tmp_path / "reg")
    reg.import_dirs("p", parity / "model", parity / "tokenizer", extra={"max_context": 64})
    reg.import_dirs("q", parity / "model", parity / "tokenizer")  # records none: the default
    p = KronosPredictor.from_registry("p", device="cpu", root=reg.root)
    assert p.max_context == 64 and p.version.spec == "p@0.1.0"
    assert KronosPredictor.from_registry("p@0.1.0", device="cpu", root=reg.root, max_context=32).max_context == 32
    assert KronosPredictor.from_registry("q", device="cpu", root=reg.root).max_context == 512

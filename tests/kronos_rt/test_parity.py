"""Every case of the shared parity fixture: forecasts within its tolerance, token ids exactly."""
import json

import numpy as np
import pytest
import torch

from kronos_rt import KronosPredictor
from kronos_rt.features import normalize

from .conftest import PARITY

CASES = json.loads((PARITY / "cases.json").read_text())
GREEDY = dict(T=1.0, top_k=1, top_p=1.0, sample_count=1)


def _window(tape, first, case):
    ctx = tape.iloc[first:first + case["lookback"]]
    fut = tape.iloc[first + case["lookback"]:first + case["lookback"] + case["pred_len"]]
    return ctx, fut


@pytest.mark.parametrize("case", [c for c in CASES["cases"] if "first_row" in c], ids=lambda c: c["name"])
def test_single_series_cases(parity_pair, tape, case):
    model, tokenizer = parity_pair
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=case["max_context"])
    ctx, fut = _window(tape, case["first_row"], case)
    out = predictor.predict(ctx[case["columns"]], ctx["timestamps"], fut["timestamps"], case["pred_len"], **GREEDY)
    assert list(out.columns) == ["open", "high", "low", "close", "volume", "amount"]
    assert list(out.index) == list(fut["timestamps"])
    np.testing.assert_allclose(out.values, np.array(case["expected"]), rtol=1e-4, atol=1e-2)


def test_batch_case(parity_pair, tape):
    case = next(c for c in CASES["cases"] if c["name"] == "batch")
    model, tokenizer = parity_pair
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=case["max_context"])
    windows = [_window(tape, first, case) for first in case["first_rows"]]
    outs = predictor.predict_batch([c[case["columns"]] for c, _ in windows], [c["timestamps"] for c, _ in windows],
                                   [f["timestamps"] for _, f in windows], case["pred_len"], **GREEDY)
    got = np.concatenate([o.values for o in outs])
    np.testing.assert_allclose(got, np.array(case["expected"]).reshape(got.shape), rtol=1e-4, atol=1e-2)


def test_tokens_exact(parity_pair, tape):
    _, tokenizer = parity_pair
    case = next(c for c in CASES["cases"] if c["name"] == CASES["tokens"]["case"])
    ctx = tape.iloc[case["first_row"]:case["first_row"] + case["lookback"]]
    x, _, _ = normalize(ctx[["open", "high", "low", "close", "volume", "amount"]].values, 5.0)
    s1, s2 = tokenizer.encode(torch.from_numpy(x)[None])
    assert s1[0].tolist() == CASES["tokens"]["s1"]
    assert s2[0].tolist() == CASES["tokens"]["s2"]


def test_decode_inverts_encode_ids(parity_pair):
    """Decoding then re-encoding is not the identity for random weights, but the bit
    layout must round-trip: ids -> bits -> ids."""
    _, tokenizer = parity_pair
    s1 = torch.tensor([[0, 1, 1023, 517]])
    s2 = torch.tensor([[1023, 0, 5, 900]])
    bits = tokenizer.ids_to_bits(s1, s2, torch.float32) > 0
    weights = 2 ** torch.arange(10)
    assert ((bits[..., :10].long() * weights).sum(-1) == s1).all()
    assert ((bits[..., 10:].long() * weights).sum(-1) == s2).all()

"""Fused projections and prepacked CPU weights (kronos_rt/packing.py)."""
import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from kronos_rt import Engine, Kronos, KronosTokenizer, SamplingParams
from kronos_rt.naive import naive_forecast_arrays
from kronos_rt.packing import CHUNK_ROWS, FusedLinear, PackedLinear, packing_available, prepare, row_bucket
from kronos_rt.shapes import random_pair

from .conftest import PARITY, window_inputs


needs_packing = pytest.mark.skipif(not packing_available(torch.float32), reason="no oneDNN in this torch build")
GREEDY = SamplingParams(top_k=1)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("pack", [True, False])
def test_prepare_keeps_the_checkpoint_state(pack):
    model, tokenizer, _ = random_pair("mini")
    before_m, before_t = _state(model), _state(tokenizer)
    assert prepare(model, pack) > 0 and prepare(tokenizer, pack) > 0
    for before, after in ((before_m, model.state_dict()), (before_t, tokenizer.state_dict())):
        assert list(before) == list(after)
        for k in before:
            assert torch.equal(before[k], after[k]), k
    assert model.transformer[0].self_attn.qkv is not None and model.transformer[0].ffn.w13 is not None
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert bool(packed) == (pack and packing_available(torch.float32))


@needs_packing
def test_prepared_model_saves_and_loads(tmp_path):
    model, _, _ = random_pair("mini")
    prepare(model)
    model.save_pretrained(tmp_path)
    again = Kronos.from_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


@needs_packing
def test_fused_product_equals_its_parts_and_rows_do_not_interact():
    torch.manual_seed(0)
    layers = [nn.Linear(64, 48), nn.Linear(64, 32), nn.Linear(64, 48)]
    packed = [PackedLinear(lin) for lin in layers]
    fused = FusedLinear(packed, pack=True)
    x = torch.randn(2 * CHUNK_ROWS + 70, 64)  # crosses chunk boundaries and buckets
    with torch.inference_mode():
        parts = fused(x)
        for part, lin, p in zip(parts, layers, packed):
            assert torch.equal(part, p(x))  # fused == separate, bit for bit
            torch.testing.assert_close(part, lin(x), rtol=1e-5, atol=1e-5)  # == MKL up to rounding
        whole = fused.product(x)
        for m in (1, 3, 8, 9, 64, 65, 200, CHUNK_ROWS, CHUNK_ROWS + 1):
            assert torch.equal(fused.product(x[:m]), whole[:m]), m
            assert torch.equal(fused.product(x[7:7 + m]), whole[7:7 + m]), m
        x3 = x[:60].view(4, 15, 64)  # any leading shape
        assert torch.equal(fused.product(x3), whole[:60].view(4, 15, -1))


def test_row_buckets_are_few():
    buckets = {row_bucket(m) for m in range(1, CHUNK_ROWS + 1)}
    assert all(row_bucket(m) >= m for m in range(1, CHUNK_ROWS + 1))
    assert max(buckets) == CHUNK_ROWS and len(buckets) <= 15


@needs_packing
def test_changed_weights_are_not_served_stale():
    torch.manual_seed(1)
    lin = nn.Linear(16, 8)
    packed = PackedLinear(lin)
    fused = FusedLinear([packed], pack=True)
    x = torch.randn(5, 16)
    with torch.no_grad():
        lin.weight.mul_(2.0)  # in place: the packed copy is now stale
    want = x @ lin.weight.T + lin.bias
    torch.testing.assert_close(packed(x), want)
    torch.testing.assert_close(fused(x), want)
    packed.to(torch.float64)  # cast: computes the plain way in the new dtype
    torch.testing.assert_close(packed(x.double()), x.double() @ lin.weight.double().T + lin.bias.double())


@needs_packing
def test_prepared_model_can_be_copied_and_pickled():
    model, _, _ = random_pair("mini")
    prepare(model)
    s1 = torch.randint(0, 1024, (2, 10))
    stamp = torch.zeros(2, 10, 5, dtype=torch.long)
    with torch.inference_mode():
        want = model.forward_hidden(s1, s1, stamp)
        clone = copy.deepcopy(model)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        for other in (clone, loaded):
            torch.testing.assert_close(other.forward_hidden(s1, s1, stamp), want, rtol=1e-5, atol=1e-5)
            prepare(other)  # and can be prepared again
            assert torch.equal(other.forward_hidden(s1, s1, stamp), want)


def test_unpacked_engine_is_exact_too(tape):
    """pack_weights=False (MKL, fused projections only): the engine still equals full recompute,
    and agrees with the packed engine up to rounding."""
    fresh = lambda: (Kronos.from_pretrained(PARITY / "model"), KronosTokenizer.from_pretrained(PARITY / "tokenizer"))  # noqa: E731
    plain = Engine(*fresh(), device="cpu", max_context=64, pack_weights=False)
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    xs, xst, yst = window_inputs(tape, [0, 500, 1200], 40, 12)
    got, _ = plain.forecast_arrays(xs, xst, yst, 12, GREEDY)
    want, _ = naive_forecast_arrays(plain, np.stack(xs), np.stack(xst), np.stack(yst), 12, GREEDY)
    np.testing.assert_array_equal(got, want)
    packed = Engine(*fresh(), device="cpu", max_context=64)
    other, _ = packed.forecast_arrays(xs, xst, yst, 12, GREEDY)
    np.testing.assert_allclose(other, got, rtol=1e-4, atol=1e-4)

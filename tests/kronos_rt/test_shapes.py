"""The public shapes: parameter counts against the model cards, seeded random pairs, round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kronos_rt import Engine, Kronos, KronosTokenizer, SamplingParams, shapes


@pytest.mark.parametrize("shape", ["mini", "small", "base"])
def test_param_counts_match_published(shape):
    # The model cards round to 0.1M, so the exact count is within 0.05M of the figure.
    assert shapes.shape_param_count(shape) == pytest.approx(shapes.PUBLISHED_PARAMS[shape], abs=0.05e6)


def test_configs_carry_every_public_key():
    for cfg in shapes.MODEL_SHAPES.values():
        assert cfg["learn_te"] is True
        assert all(cfg[k] == 0.0 for k in ("ffn_dropout_p", "attn_dropout_p", "resid_dropout_p", "token_dropout_p"))
    for cfg in shapes.TOKENIZER_SHAPES.values():
        assert (cfg["beta"], cfg["gamma0"], cfg["gamma"], cfg["zeta"]) == (0.05, 1.0, 1.1, 0.05)
    assert shapes.TOKENIZER_SHAPES["base"]["group_size"] == 4
    assert shapes.TOKENIZER_SHAPES["2k"]["group_size"] == 5
    assert shapes.PAIRS == {"mini": ("mini", "2k", 2048), "small": ("small", "base", 512),
                            "base": ("base", "base", 512)}


def test_random_pair_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    m1, t1, ctx = shapes.random_pair("mini", seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    m2, _, _ = shapes.random_pair("mini", seed=7)
    m3, _, _ = shapes.random_pair("mini", seed=8)
    assert ctx == 2048
    assert torch.equal(m1.head.proj_s1.weight, m2.head.proj_s1.weight)
    assert not torch.equal(m1.head.proj_s1.weight, m3.head.proj_s1.weight)
    assert t1.config["group_size"] == 5


def test_random_pair_rejects_unknown_shape():
    with pytest.raises(ValueError, match="unknown shape"):
        shapes.random_pair("large")


def test_random_weights_give_varied_ids_and_spread_logits():
    model, tokenizer, _ = shapes.random_pair("mini", seed=0)
    x = torch.randn(2, 32, 6)
    s1, s2 = tokenizer.encode(x)
    assert len(torch.unique(s1)) > 4 and len(torch.unique(s2)) > 4
    stamp = torch.zeros(2, 32, 5, dtype=torch.long)
    with torch.no_grad():
        logits = model.s1_logits(model.forward_hidden(s1, s2, stamp)[:, -1])
    assert torch.isfinite(logits).all()
    assert 0.2 < logits.std().item() < 5.0


def test_save_pretrained_round_trip(tmp_path):
    model, tokenizer, ctx = shapes.random_pair("mini", seed=3)
    m_dir = model.save_pretrained(tmp_path / "model")
    t_dir = tokenizer.save_pretrained(tmp_path / "tokenizer")
    model2 = Kronos.from_pretrained(m_dir)
    tokenizer2 = KronosTokenizer.from_pretrained(t_dir)
    assert model2.config == shapes.MODEL_SHAPES["mini"]
    assert tokenizer2.config == shapes.TOKENIZER_SHAPES["2k"]
    for a, b in [(model, model2), (tokenizer, tokenizer2)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # And the reloaded pair forecasts exactly as the original.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 24, 6)).astype(np.float32)
    xs = np.zeros((2, 24, 5), np.int64)
    ys = np.zeros((2, 4, 5), np.int64)
    greedy = SamplingParams(top_k=1)
    a, _ = Engine(model, tokenizer, device="cpu", max_context=ctx).forecast_arrays(x, xs, ys, 4, greedy)
    b, _ = Engine(model2, tokenizer2, device="cpu", max_context=ctx).forecast_arrays(x, xs, ys, 4, greedy)
    np.testing.assert_array_equal(a, b)

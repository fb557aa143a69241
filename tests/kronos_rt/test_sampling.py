"""Sampling filters on known logits."""
import math

import pytest
import torch

from kronos_rt.sampling import SamplingParams, filter_logits, sample

NEG = float("-inf")


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = filter_logits(logits.clone(), top_k=2)
    assert out.tolist() == [[NEG, 5.0, NEG, 4.0, NEG]]


def test_top_k_keeps_ties_at_kth():
    out = filter_logits(torch.tensor([[3.0, 3.0, 1.0]]), top_k=1)
    assert out.tolist() == [[3.0, 3.0, NEG]]


def test_top_k_wins_over_top_p():
    logits = torch.tensor([[0.0, 10.0, 9.0]])
    assert filter_logits(logits, top_k=2, top_p=0.01).tolist() == [[NEG, 10.0, 9.0]]


def test_top_p_keeps_up_to_first_token_exceeding():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    # cumulative 0.5, 0.8, 0.95, 1.0: with top_p 0.7 keep 0.5 and 0.3 (0.8 is the first to exceed)
    out = filter_logits(logits, top_p=0.7)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    # exactly at the boundary is not "exceeding": 0.8 -> keep the third too
    out = filter_logits(logits, top_p=0.8)
    kept = torch.isfinite(out)[0].tolist()
    assert kept[:2] == [True, True] and kept[3] is False


def test_top_p_always_keeps_best():
    logits = torch.tensor([[0.0, 8.0, 1.0]])
    out = filter_logits(logits, top_p=0.01)
    assert torch.isfinite(out).tolist() == [[False, True, False]]


def test_top_p_respects_order_not_index():
    probs = torch.tensor([[0.05, 0.15, 0.3, 0.5], [0.5, 0.05, 0.3, 0.15]])
    out = filter_logits(probs.log(), top_p=0.7)
    assert torch.isfinite(out).tolist() == [[False, False, True, True], [True, False, True, False]]


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 1.0]])
    assert sample(logits, SamplingParams(top_k=1)).tolist() == [1, 0]


def test_sampling_matches_filtered_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[math.log(0.6), math.log(0.3), math.log(0.1)]]).repeat(20000, 1)
    ids = sample(logits, SamplingParams(top_k=0, top_p=0.85, temperature=1.0))
    # top_p 0.85 keeps 0.6 and 0.3 -> renormalised 2/3, 1/3
    frac = torch.bincount(ids, minlength=3).float() / len(ids)
    assert frac[2] == 0
    assert abs(frac[0] - 2 / 3) < 0.02


def test_temperature_sharpens():
    torch.manual_seed(1)
    logits = torch.tensor([[1.0, 0.0]]).repeat(20000, 1)
    cold = sample(logits, SamplingParams(top_p=1.0, temperature=0.25)).float().mean()
    warm = sample(logits, SamplingParams(top_p=1.0, temperature=4.0)).float().mean()
    assert cold < warm  # share of the worse token grows with temperature


def test_seeded_generator_is_reproducible():
    logits = torch.randn(64, 100)
    p = SamplingParams(top_p=0.95)
    a = sample(logits, p, torch.Generator().manual_seed(7))
    b = sample(logits, p, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5),
                                    dict(sample_count=0)])
def test_bad_params(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)

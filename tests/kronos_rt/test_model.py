"""Kronos model pieces that the engine and the bench's floor rely on."""
import torch

from kronos_rt.shapes import random_pair


def test_s2_logits_over_several_positions_equals_one_at_a_time():
    model, _, _ = random_pair("mini")
    model.eval()
    torch.manual_seed(0)
    B, T, P = 3, 20, 5
    s1 = torch.randint(0, 1024, (B, T))
    with torch.inference_mode():
        h = model.forward_hidden(s1, s1, torch.zeros(B, T, 5, dtype=torch.long))
        dep_k, dep_v = model.dep_kv(h)
        pos = torch.arange(T)
        many = model.s2_logits(s1[:, -P:], h[:, -P:], dep_k, dep_v, pos[None, :] <= pos[-P:, None])
        assert many.shape == (B, P, 1024)
        for j in range(P):
            t = T - P + j  # the query at position t sees keys 0..t
            one = model.s2_logits(s1[:, t], h[:, t], dep_k[:, :, :t + 1], dep_v[:, :, :t + 1])
            torch.testing.assert_close(many[:, j], one, rtol=1e-5, atol=1e-5)

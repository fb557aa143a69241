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


def _reference_rms_norm(x, weight, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def test_rms_norm_equals_the_reference_formula_bit_for_bit():
    from kronos_rt.modules import RMSNorm

    torch.manual_seed(1)
    norm = RMSNorm(512)
    norm.weight.data = torch.rand(512) + 0.5
    for shape in [(8, 1, 512), (3, 257, 512), (5, 512)]:
        x = torch.randn(shape) * 3
        assert torch.equal(norm(x), _reference_rms_norm(x, norm.weight, norm.eps))
    half = norm.to(torch.bfloat16)  # other dtypes take the reference formula itself
    x = torch.randn(4, 7, 512, dtype=torch.bfloat16)
    assert torch.equal(half(x), _reference_rms_norm(x, half.weight, half.eps))


def test_rope_equals_rotate_half_formula_bit_for_bit():
    from kronos_rt.modules import Rotary, apply_rope

    def rotate_half(x):  # the reference's
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    rotary = Rotary(64)
    pos = torch.arange(300)
    freqs = pos.float()[:, None] * rotary.inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    for dtype in (torch.float32, torch.bfloat16):
        cos_ref, sin_ref = emb.cos().to(dtype), emb.sin().to(dtype)
        cos, sin_rot = rotary.cos_sin(pos, dtype)
        assert torch.equal(cos, cos_ref)
        x = torch.randn(2, 4, 300, 64).to(dtype)
        assert torch.equal(apply_rope(x, cos, sin_rot), x * cos_ref + rotate_half(x) * sin_ref)


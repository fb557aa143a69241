"""tokenizer_loss / predictor_loss against docs/MODEL.md, "Training", worked out independently."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kronos_rt.model import Kronos
from kronos_rt.tokenizer import KronosTokenizer
from kronos_rt.training.losses import bsq_loss, predictor_loss, tokenizer_loss

PARITY = Path(__file__).resolve().parents[2] / "fixtures" / "parity"


def tiny_tokenizer(seed=0, **kw) -> KronosTokenizer:
    torch.manual_seed(seed)
    # n_enc_layers = n_dec_layers = 1: no blocks (the reference builds one fewer), so the
    # whole forward is a few affine maps we can write out below.
    cfg = dict(d_in=6, d_model=4, n_heads=1, ff_dim=8, n_enc_layers=1, n_dec_layers=1, s1_bits=2, s2_bits=2,
               beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05)
    cfg.update(kw)
    return KronosTokenizer(**cfg)


def test_bsq_numbers_by_hand():
    # One position, z = e1 (already unit length), K = 4: zq = sign(z)/2 = [.5, -.5, -.5, -.5].
    z = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    zq = torch.tensor([[0.5, -0.5, -0.5, -0.5]])
    out = bsq_loss(z, zq, beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05)
    # commit = beta * ((0.5-1)^2 + 3 * 0.25) = 0.05
    assert out["commit"].item() == pytest.approx(0.05, abs=1e-7)
    # p = sigmoid(-4 z / 2): sigmoid(-2) = 0.119203 for the 1, 0.5 for the zeros.
    # h(0.119203) = 0.365334 (by hand: 0.1192*2.12693 + 0.8808*0.12693), h(0.5) = ln 2 = 0.693147
    h_sample = 0.365334 + 3 * 0.693147
    assert out["entropy_sample"].item() == pytest.approx(h_sample, abs=1e-5)
    assert out["entropy_code"].item() == pytest.approx(h_sample, abs=1e-5)  # one position: p-bar = p
    assert out["bsq"].item() == pytest.approx(0.05 + 0.05 * (1.0 - 1.1) * h_sample, abs=1e-6)  # 0.037776


def test_tokenizer_loss_matches_affine_formulas():
    tok = tiny_tokenizer().train()
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1))
    total, parts = tokenizer_loss(tok, x)

    lin = lambda m, v: v @ m.weight.T + m.bias  # noqa: E731
    z = lin(tok.quant_embed, lin(tok.embed, x))
    z = z / z.norm(dim=-1, keepdim=True)
    zq = torch.where(z > 0, 1.0, -1.0) / 2.0  # 1/sqrt(K), K = 4
    x_coarse = lin(tok.head, lin(tok.post_quant_embed_pre, zq[..., :2]))
    x_full = lin(tok.head, lin(tok.post_quant_embed, zq))
    commit = 0.05 * ((zq - z) ** 2).sum(-1).mean()
    p = 1 / (1 + torch.exp(4 * z / 2))
    h = lambda q: -q * torch.log(q + 1e-8) - (1 - q) * torch.log(1 - q + 1e-8)  # noqa: E731
    h_sample = h(p).sum(-1).mean()
    h_code = h(p.reshape(-1, 4).mean(0)).sum()
    bsq = commit + 0.05 * (1.0 * h_sample - 1.1 * h_code)
    rc, rf = ((x_coarse - x) ** 2).mean(), ((x_full - x) ** 2).mean()
    expected = (rc + rf + bsq) / 2

    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["recon_coarse"].item() == pytest.approx(rc.item(), rel=1e-5)
    assert parts["recon_full"].item() == pytest.approx(rf.item(), rel=1e-5)
    assert parts["commit"].item() == pytest.approx(commit.item(), rel=1e-5)
    # Straight-through: the encoder gets a gradient through the sign.
    total.backward()
    assert tok.embed.weight.grad is not None and tok.embed.weight.grad.abs().sum() > 0
    assert tok.post_quant_embed_pre.weight.grad.abs().sum() > 0


def test_tokenizer_full_reconstruction_is_the_inference_decode():
    tok = KronosTokenizer.from_pretrained(PARITY / "tokenizer")  # with encoder/decoder blocks
    x = torch.randn(3, 20, 6, generator=torch.Generator().manual_seed(2)).clamp(-5, 5)
    _, parts = tokenizer_loss(tok, x)
    recon = tok.decode(*tok.encode(x))
    assert parts["recon_full"].item() == pytest.approx(F.mse_loss(recon, x).item(), rel=1e-5)


def tiny_model(seed=0, **kw) -> Kronos:
    torch.manual_seed(seed)
    cfg = dict(s1_bits=2, s2_bits=2, n_layers=1, d_model=8, n_heads=2, ff_dim=16, learn_te=True)
    cfg.update(kw)
    return Kronos(**cfg)


def _rmsnorm(v, w):
    return v / torch.sqrt((v ** 2).mean(-1, keepdim=True) + 1e-5) * w


def test_predictor_loss_by_hand():
    tok = tiny_tokenizer(seed=3)
    model = tiny_model(seed=4).train()  # dropouts are 0: training mode changes nothing
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 6, generator=g)
    stamp = torch.stack([torch.randint(0, n, (2, 5), generator=g) for n in (60, 24, 7, 32, 13)], -1)
    total, parts = predictor_loss(model, tok, x, stamp)

    s1, s2 = tok.encode(x)
    s1_tgt, s2_tgt = s1[:, 1:], s2[:, 1:]
    with torch.no_grad():
        # The transformer through the inference path (no dropout there), heads by hand.
        h = model.forward_hidden(s1[:, :-1], s2[:, :-1], stamp[:, :-1])
        logits1 = h @ model.head.proj_s1.weight.T + model.head.proj_s1.bias
        ce1 = -torch.log_softmax(logits1, -1).gather(-1, s1_tgt[..., None]).mean()
        att = model.dep_layer.cross_attn
        B, T, d = h.shape
        ce2_terms = []
        for b in range(B):
            q = model.embedding.emb_s1.weight[s1_tgt[b]] @ att.q_proj.weight.T + att.q_proj.bias  # [T, d]
            k = h[b] @ att.k_proj.weight.T + att.k_proj.bias
            v = h[b] @ att.v_proj.weight.T + att.v_proj.bias
            for t in range(T):
                heads = []
                for hd in range(4):  # 4 heads of dim 2; RoPE with inv_freq [1]: rotate pairs by angle = position
                    sl = slice(2 * hd, 2 * hd + 2)

                    def rot(vec, pos):
                        c, s = math.cos(pos), math.sin(pos)
                        return torch.stack([vec[0] * c - vec[1] * s, vec[1] * c + vec[0] * s])

                    qt = rot(q[t, sl], t)
                    scores = torch.stack([rot(k[j, sl], j) @ qt for j in range(t + 1)]) / math.sqrt(2)
                    w = torch.softmax(scores, 0)
                    heads.append(sum(w[j] * v[j, sl] for j in range(t + 1)))
                a = torch.cat(heads) @ att.out_proj.weight.T + att.out_proj.bias
                y = _rmsnorm(h[b, t] + a, model.dep_layer.norm.weight)
                logits2 = y @ model.head.proj_s2.weight.T + model.head.proj_s2.bias
                ce2_terms.append(-torch.log_softmax(logits2, -1)[s2_tgt[b, t]])
        ce2 = torch.stack(ce2_terms).mean()
    assert parts["s1_ce"].item() == pytest.approx(ce1.item(), rel=1e-5)
    assert parts["s2_ce"].item() == pytest.approx(ce2.item(), rel=1e-5)
    assert total.item() == pytest.approx((ce1 + ce2).item() / 2, rel=1e-5)


def _parity_model(dropouts: bool) -> Kronos:
    base = Kronos.from_pretrained(PARITY / "model")
    cfg = dict(base.config)
    if not dropouts:
        cfg.update(ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, token_dropout_p=0.0)
    model = Kronos(**cfg)
    model.load_state_dict(base.state_dict())
    return model


def test_training_mode_dropout_zero_is_deterministic_and_dropout_is_on_otherwise():
    tok = KronosTokenizer.from_pretrained(PARITY / "tokenizer")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 16, 6, generator=g)
    stamp = torch.zeros(2, 16, 5, dtype=torch.long)

    model = _parity_model(dropouts=False).train()
    a, _ = predictor_loss(model, tok, x, stamp)
    b, _ = predictor_loss(model, tok, x, stamp)
    assert torch.equal(a, b)
    tok.train()
    assert torch.equal(tokenizer_loss(tok, x)[0], tokenizer_loss(tok, x)[0])  # fixture tokenizer: dropouts 0

    model = _parity_model(dropouts=True).train()  # the fixture's own rates (0.1-0.2)
    torch.manual_seed(0)
    c, _ = predictor_loss(model, tok, x, stamp)
    d, _ = predictor_loss(model, tok, x, stamp)
    assert not torch.equal(c, d)
    model.eval()
    assert torch.equal(predictor_loss(model, tok, x, stamp)[0], predictor_loss(model, tok, x, stamp)[0])


def test_sampled_s2_query_is_reproducible_with_a_generator():
    tok = tiny_tokenizer(seed=3)
    model = tiny_model(seed=4)
    x = torch.randn(2, 6, 6, generator=torch.Generator().manual_seed(7))
    stamp = torch.zeros(2, 6, 5, dtype=torch.long)
    a, pa = predictor_loss(model, tok, x, stamp, teacher_forcing=False, generator=torch.Generator().manual_seed(1))
    b, pb = predictor_loss(model, tok, x, stamp, teacher_forcing=False, generator=torch.Generator().manual_seed(1))
    _, ptf = predictor_loss(model, tok, x, stamp, teacher_forcing=True)
    assert torch.equal(a, b)
    assert pa["s1_ce"] == ptf["s1_ce"]  # the s1 head does not depend on the query


def test_bad_shapes_are_one_line_errors():
    tok, model = tiny_tokenizer(), tiny_model()
    with pytest.raises(ValueError, match=r"x must be \[B, T, 6\]"):
        tokenizer_loss(tok, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="must match"):
        predictor_loss(model, tok, torch.zeros(2, 1, 6), torch.zeros(2, 1, 5, dtype=torch.long))

"""The flat decode step against the model's full pass.

Products agree bit for bit when prepacked (oneDNN computes each row alike whatever the row count);
attention over one query rounds slightly differently from the same row of a causal pass
(~1e-7), so hidden states agree to float rounding and logits' argmax exactly.
"""
import pytest
import torch

from kronos_rt.decode import DecodePlan
from kronos_rt.packing import prepare
from kronos_rt.shapes import random_pair


@pytest.mark.parametrize("pack", [True, False])
def test_one_step_equals_the_full_pass_at_that_position(pack):
    model, _, _ = random_pair("mini")
    prepare(model, pack)
    torch.manual_seed(0)
    B, T = 4, 21
    s1, s2 = torch.randint(0, 1024, (B, T + 1)), torch.randint(0, 1024, (B, T + 1))
    stamp = torch.randint(0, 5, (B, T + 1, 5))
    with torch.inference_mode():
        full = model.forward_hidden(s1, s2, stamp)
        dep_k_full, dep_v_full = model.dep_kv(full)
        want_s1 = model.s1_logits(full[:, T])
        want_s2 = model.s2_logits(s1[:, T], full[:, T], dep_k_full, dep_v_full)

        cache = model.new_cache(B, T + 1, "cpu", torch.float32)
        prefix = model.forward_hidden(s1[:, :T], s2[:, :T], stamp[:, :T], cache=cache)
        dep_k, dep_v = (torch.cat([t, torch.zeros_like(t[:, :, :1])], 2) for t in model.dep_kv(prefix))
        plan = DecodePlan(model)
        cos, sin = (t[T] for t in model.rope_table(T + 1, "cpu"))
        h = plan.hidden(s1[:, T], s2[:, T], model.time_emb(stamp[:, T]), cache, T, T + 1, cos, sin, None)
        plan.write_dep(h, dep_k, dep_v, T)
        close = dict(rtol=0, atol=2e-6)
        torch.testing.assert_close(h, full[:, T], **close)
        assert torch.equal(dep_k[:, :, :T], dep_k_full[:, :, :T])  # the prefix: same full pass
        torch.testing.assert_close(dep_k, dep_k_full, **close)
        torch.testing.assert_close(dep_v, dep_v_full, **close)
        got_s1, got_s2 = plan.s1_logits(h), plan.s2_logits(s1[:, T], h, dep_k, dep_v, None)
        torch.testing.assert_close(got_s1, want_s1, **close)
        torch.testing.assert_close(got_s2, want_s2, **close)
        assert torch.equal(got_s1.argmax(-1), want_s1.argmax(-1))
        assert torch.equal(got_s2.argmax(-1), want_s2.argmax(-1))


def test_plan_needs_a_prepared_model():
    model, _, _ = random_pair("mini")
    with pytest.raises(ValueError, match="prepare"):
        DecodePlan(model)

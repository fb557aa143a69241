"""Strict loading in the public layout, and its failure modes."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from kronos_rt import CheckpointError, Kronos, KronosTokenizer

from .conftest import PARITY


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    shutil.copytree(PARITY / "model", d)
    return d


def _edit_weights(directory, fn):
    state = load_file(str(directory / "model.safetensors"))
    fn(state)
    save_file(state, str(directory / "model.safetensors"))


def test_round_trip_is_identical(parity_pair, tmp_path):
    model, tokenizer = parity_pair
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "t")
    assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) == set(load_file(str(PARITY / "model" / "model.safetensors")))
    assert set(load_file(str(tmp_path / "t" / "model.safetensors"))) == set(load_file(str(PARITY / "tokenizer" / "model.safetensors")))
    m2 = Kronos.from_pretrained(tmp_path / "m")
    for (k, a), (_, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert json.loads((tmp_path / "m" / "config.json").read_text())["n_layers"] == 2


def test_missing_key_is_named(model_dir):
    _edit_weights(model_dir, lambda s: s.pop("transformer.1.ffn.w2.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys \['transformer\.1\.ffn\.w2\.weight'\]"):
        Kronos.from_pretrained(model_dir)


def test_unexpected_key_is_named(model_dir):
    _edit_weights(model_dir, lambda s: s.__setitem__("transformer.9.extra", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['transformer\.9\.extra'\]"):
        Kronos.from_pretrained(model_dir)


def test_shape_mismatch_is_named(model_dir):
    _edit_weights(model_dir, lambda s: s.__setitem__("norm.weight", torch.ones(65)))
    with pytest.raises(CheckpointError, match=r"norm\.weight: file \(65,\) vs model \(64,\)"):
        Kronos.from_pretrained(model_dir)


def test_config_of_wrong_kind(tmp_path):
    shutil.copytree(PARITY / "tokenizer", tmp_path / "t")
    with pytest.raises(CheckpointError, match="does not describe a Kronos"):
        Kronos.from_pretrained(tmp_path / "t")


def test_derivable_buffers_are_optional(model_dir, parity_pair):
    _edit_weights(model_dir, lambda s: [s.pop(k) for k in [k for k in s if k.endswith("inv_freq")]])
    m = Kronos.from_pretrained(model_dir)
    assert torch.equal(m.norm.weight, parity_pair[0].norm.weight.cpu())


def test_tokenizer_buffers_accepted(tmp_path):
    shutil.copytree(PARITY / "tokenizer", tmp_path / "t")
    _edit_weights(tmp_path / "t", lambda s: (s.pop("tokenizer.bsq.basis"), s.pop("tokenizer.bsq.group_basis")))
    KronosTokenizer.from_pretrained(tmp_path / "t")


def test_pickled_weights_refused_unless_opted_in(model_dir, parity_pair):
    state = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled checkpoint; refusing"):
        Kronos.from_pretrained(model_dir)
    m = Kronos.from_pretrained(model_dir, allow_pickle=True)
    assert torch.equal(m.head.proj_s1.weight, parity_pair[0].head.proj_s1.weight.cpu())


def test_pickle_opt_in_still_refuses_code(model_dir):
    (model_dir / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, model_dir / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        Kronos.from_pretrained(model_dir, allow_pickle=True)


def test_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        Kronos.from_pretrained(tmp_path / "empty")
    (tmp_path / "cfg").mkdir()
    shutil.copy(PARITY / "model" / "config.json", tmp_path / "cfg")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Kronos.from_pretrained(tmp_path / "cfg")
    with pytest.raises(FileNotFoundError, match="not found"):
        Kronos.from_pretrained(tmp_path / "does" / "not" / "exist")


def test_hub_id_offline_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="cannot get NeoQuasar/Kronos-small from the Hugging Face Hub: "
                                                "HF_HUB_OFFLINE is set"):
        Kronos.from_pretrained("NeoQuasar/Kronos-small")


def test_hub_id_loads_from_local_cache(monkeypatch, tmp_path):
    """A Hub id resolves offline from the cache laid out as huggingface_hub lays it out."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    snap = cache / "models--NeoQuasar--Kronos-parity" / "snapshots" / ("a" * 40)
    shutil.copytree(PARITY / "model", snap)
    (cache / "models--NeoQuasar--Kronos-parity" / "refs").mkdir()
    (cache / "models--NeoQuasar--Kronos-parity" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    from kronos_rt.checkpoint import resolve_checkpoint

    path = resolve_checkpoint("NeoQuasar/Kronos-parity")
    assert (path / "model.safetensors").is_file()
    m = Kronos.from_pretrained("NeoQuasar/Kronos-parity")
    assert m.config["d_model"] == 64


def test_load_engine_reproduces_the_parity_fixture(tape):
    """load_engine = both from_pretrained calls + Engine: a parity case comes out as expected."""
    import numpy as np

    from kronos_rt import SamplingParams, load_engine
    from kronos_rt.features import COLUMNS

    cases = json.loads((PARITY / "cases.json").read_text())
    case = next(c for c in cases["cases"] if c["name"] == "case0")
    engine = load_engine(PARITY / "model", PARITY / "tokenizer", device="cpu", max_context=case["max_context"])
    assert (engine.device.type, engine.dtype, engine.max_context) == ("cpu", torch.float32, case["max_context"])
    rows = tape.iloc[case["first_row"]:case["first_row"] + case["lookback"] + case["pred_len"]]
    ctx, fut = rows.iloc[:case["lookback"]], rows.iloc[case["lookback"]:]
    (fc,) = engine.forecast([ctx[list(COLUMNS)].to_numpy(np.float64)], [ctx["timestamps"].to_numpy()],
                            [fut["timestamps"].to_numpy()], case["pred_len"], SamplingParams(top_k=1, top_p=1.0))
    np.testing.assert_allclose(fc.mean, np.array(case["expected"]), rtol=1e-4, atol=1e-2)

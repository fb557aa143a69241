"""Model registry: layout, semver, latest/promote/rollback, metadata, verify."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kronos_rt import KronosTokenizer
from kronos_rt.registry import (DEFAULT_MAX_CONTEXT, ModelVersion, Registry, RegistryError, default_root,
                                next_patch, pair_issues, parse_semver, semver_key)

PARITY = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity"
MODEL, TOKENIZER = PARITY / "model", PARITY / "tokenizer"


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


def test_semver_order_and_validation():
    versions = ["1.0.0", "0.9.10", "1.0.0-rc.1", "0.10.0", "1.0.0-alpha", "1.0.0-alpha.2", "1.0.0-alpha.10", "0.9.2"]
    assert sorted(versions, key=semver_key) == [
        "0.9.2", "0.9.10", "0.10.0", "1.0.0-alpha", "1.0.0-alpha.2", "1.0.0-alpha.10", "1.0.0-rc.1", "1.0.0"]
    for bad in ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "latest", "1.0.0.0", ""]:
        with pytest.raises(RegistryError, match="semantic version"):
            parse_semver(bad)
    assert next_patch("1.2.3") == "1.2.4"
    assert next_patch("1.2.0-rc.1") == "1.2.0"


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KRONOS_RT_REGISTRY", str(tmp_path / "r"))
    assert default_root() == tmp_path / "r"
    assert Registry().root == tmp_path / "r"
    monkeypatch.delenv("KRONOS_RT_REGISTRY")
    assert default_root() == Path.home() / ".kronos-rt" / "registry"


def test_import_list_resolve(reg):
    mv = reg.import_dirs("parity", MODEL, TOKENIZER)
    assert (mv.name, mv.version) == ("parity", "0.1.0")
    assert mv.path == reg.root / "parity" / "0.1.0"
    assert (mv.model_dir / "model.safetensors").is_file() and (mv.tokenizer_dir / "config.json").is_file()

    meta = json.loads((mv.path / "metadata.json").read_text())
    assert meta["source"] == {"type": "directory", "model_dir": str(MODEL.resolve()),
                              "tokenizer_dir": str(TOKENIZER.resolve())}
    assert meta["random_weights"] is False
    assert set(meta["files"]) == {"model/config.json", "model/model.safetensors",
                                  "tokenizer/config.json", "tokenizer/model.safetensors"}
    assert all(len(h) == 64 for h in meta["files"].values())
    assert meta["model_config"] == json.loads((MODEL / "config.json").read_text())
    assert meta["tokenizer_config"]["d_in"] == 6
    assert meta["created_at"].endswith("Z") and meta["metrics"] == {}

    second = reg.import_dirs("parity", MODEL, TOKENIZER)  # next patch, and the newest becomes latest
    assert second.version == "0.1.1"
    reg.import_dirs("parity", MODEL, TOKENIZER, version="0.10.0")
    assert [(m.name, m.version) for m in reg.list()] == [("parity", "0.1.0"), ("parity", "0.1.1"), ("parity", "0.10.0")]
    assert reg.latest("parity") == "0.10.0"
    assert reg.resolve("parity").version == "0.10.0"
    assert reg.resolve("parity@latest").version == "0.10.0"
    assert reg.resolve("parity@0.1.0").path == mv.path
    # The latest link is relative, so a moved registry still works.
    assert os.readlink(reg.root / "parity" / "latest") == "0.10.0"


def test_backfilled_older_version_does_not_become_latest(reg):
    reg.import_dirs("m", MODEL, TOKENIZER, version="2.0.0")
    reg.import_dirs("m", MODEL, TOKENIZER, version="1.5.0")
    assert reg.latest("m") == "2.0.0"
    reg.import_dirs("m", MODEL, TOKENIZER, version="3.0.0", promote=False)
    assert reg.latest("m") == "2.0.0"


def test_resolve_errors_name_what_exists(reg):
    reg.import_dirs("parity", MODEL, TOKENIZER)
    with pytest.raises(RegistryError, match=r"no model named 'other'.*known: parity"):
        reg.resolve("other")
    with pytest.raises(RegistryError, match=r"no version 9.9.9 \(versions: 0.1.0\)"):
        reg.resolve("parity@9.9.9")
    with pytest.raises(RegistryError, match="semantic version"):
        reg.resolve("parity@v1")


def test_promote_and_rollback_move_latest(reg):
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        reg.import_dirs("m", MODEL, TOKENIZER, version=v)
    assert reg.latest("m") == "2.0.0"
    reg.promote("m", "1.0.0")
    assert reg.resolve("m").version == "1.0.0"
    reg.promote("m", "2.0.0")
    assert reg.rollback("m").version == "1.1.0"
    assert reg.rollback("m").version == "1.0.0"
    with pytest.raises(RegistryError, match="oldest version"):
        reg.rollback("m")
    assert reg.latest("m") == "1.0.0"
    with pytest.raises(RegistryError, match="no version 3.0.0"):
        reg.promote("m", "3.0.0")
    # No temp links left behind by the atomic replace.
    assert sorted(p.name for p in (reg.root / "m").iterdir()) == ["1.0.0", "1.1.0", "2.0.0", "latest"]


def test_bad_versions_and_names_rejected(reg):
    with pytest.raises(RegistryError, match="semantic version"):
        reg.import_dirs("m", MODEL, TOKENIZER, version="1.0")
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.import_dirs("a/b", MODEL, TOKENIZER)
    with pytest.raises(RegistryError, match="invalid model name"):
        reg.import_dirs("latest", MODEL, TOKENIZER)
    reg.import_dirs("m", MODEL, TOKENIZER, version="1.0.0")
    with pytest.raises(RegistryError, match="already exists"):
        reg.import_dirs("m", MODEL, TOKENIZER, version="1.0.0")
    assert reg.versions("m") == ["1.0.0"]


def test_missing_tokenizer_dir_is_a_clear_error(reg, tmp_path):
    with pytest.raises(RegistryError, match=r"tokenizer directory .*nope does not exist"):
        reg.import_dirs("m", MODEL, tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError, match=r"tokenizer directory .*empty lacks config.json, model.safetensors"):
        reg.import_dirs("m", MODEL, empty)
    assert reg.list() == []
    assert not (reg.root / "m").exists()  # checked before anything is written


def test_verify_ok_reports_timing_and_memory(reg):
    reg.import_dirs("parity", MODEL, TOKENIZER)
    report = reg.verify("parity", device="cpu")
    assert report.ok, report.failures
    assert [c.name for c in report.checks] == ["checksums", "compatibility", "load", "canary"]
    assert report.canary_ms is not None and report.canary_ms > 0
    assert report.param_bytes > 1_000_000  # the parity pair is ~1.7 MB of float32 tensors
    assert report.peak_rss_bytes > report.param_bytes
    assert report.peak_gpu_bytes is None and report.device == "cpu"


def test_verify_loads_through_load_engine(reg, monkeypatch):
    import kronos_rt.loading

    calls = []
    real = kronos_rt.loading.load_engine

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(kronos_rt.loading, "load_engine", recording)
    mv = reg.import_dirs("parity", MODEL, TOKENIZER)
    assert reg.verify("parity", device="cpu").ok
    assert calls == [((mv.model_dir, mv.tokenizer_dir), dict(device="cpu", max_context=512))]


def test_verify_fails_on_corrupt_file_naming_it(reg):
    mv = reg.import_dirs("parity", MODEL, TOKENIZER)
    weights = mv.tokenizer_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor: loads fine, checksum does not
    weights.write_bytes(bytes(data))
    report = reg.verify("parity@0.1.0", device="cpu")
    assert not report.ok
    (failure,) = report.failures
    assert failure.name == "checksums"
    assert "tokenizer/model.safetensors: sha256 mismatch" in failure.detail


def test_verify_fails_on_missing_and_extra_files(reg):
    mv = reg.import_dirs("parity", MODEL, TOKENIZER)
    (mv.model_dir / "config.json").unlink()
    (mv.tokenizer_dir / "notes.txt").write_text("x")
    report = reg.verify("parity", device="cpu")
    failed = {c.name: c.detail for c in report.failures}
    assert "model/config.json: missing" in failed["checksums"]
    assert "tokenizer/notes.txt: not in metadata.json" in failed["checksums"]
    assert "load" in failed


def test_verify_fails_on_incompatible_pair(reg, tmp_path):
    cfg = json.loads((TOKENIZER / "config.json").read_text())
    cfg["s1_bits"] = 8
    other = KronosTokenizer(**cfg)
    other.save_pretrained(tmp_path / "tok8")
    reg.import_dirs("mixed", MODEL, tmp_path / "tok8")
    report = reg.verify("mixed", device="cpu")
    assert not report.ok
    failed = {c.name: c.detail for c in report.failures}
    assert set(failed) == {"compatibility"}  # checksums and loads are fine; no canary is attempted
    assert "s1_bits: model 10 vs tokenizer 8" in failed["compatibility"]
    assert "canary" not in [c.name for c in report.checks]


def test_pair_issues_is_the_one_compatibility_check():
    mcfg = json.loads((MODEL / "config.json").read_text())
    tcfg = json.loads((TOKENIZER / "config.json").read_text())
    assert pair_issues(mcfg, tcfg) == []
    assert pair_issues(mcfg, {**tcfg, "s2_bits": 9, "d_in": 5}) == [
        "s2_bits: model 10 vs tokenizer 9",
        "tokenizer d_in is 5, expected 6 (open, high, low, close, volume, amount)"]


def test_max_context_from_metadata(reg):
    assert DEFAULT_MAX_CONTEXT == 512
    assert reg.import_dirs("plain", MODEL, TOKENIZER).max_context == 512  # an import records none
    assert reg.import_dirs("long", MODEL, TOKENIZER, extra={"max_context": 1024}).max_context == 1024

    def mv(meta):
        return ModelVersion("x", "1.0.0", Path("."), meta, Path("."), Path("."))

    assert mv({"max_context": None}).max_context == 512 and mv({"max_context": "256"}).max_context == 256


def test_record_metrics_merges(reg):
    reg.import_dirs("m", MODEL, TOKENIZER)
    reg.record_metrics("m", "0.1.0", {"mae_close": 0.12})
    mv = reg.record_metrics("m", "0.1.0", {"hit_rate": 0.55})
    assert mv.metadata["metrics"] == {"mae_close": 0.12, "hit_rate": 0.55}
    assert reg.verify("m", device="cpu").ok  # metadata.json is not a checksummed file


def test_init_marks_random_weights(reg):
    mv = reg.init("rnd", "mini", seed=3)
    assert mv.metadata["random_weights"] is True
    assert mv.metadata["source"] == {"type": "random-init", "shape": "mini", "seed": 3}
    assert mv.metadata["max_context"] == 2048 and mv.max_context == 2048
    assert mv.metadata["model_config"]["d_model"] == 256
    assert reg.latest("rnd") == "0.1.0"
    again = reg.init("rnd", "mini", seed=3)
    # Same seed, same weights: identical checksums.
    assert again.metadata["files"] == mv.metadata["files"]
    with pytest.raises(RegistryError, match="unknown shape"):
        reg.init("rnd", "huge")


def test_pull_offline_uses_the_hub_cache(reg, tmp_path, monkeypatch):
    # A Hub cache as huggingface_hub lays it out: refs/main names the snapshot folder.
    cache = tmp_path / "hub"
    for repo, src in (("org/Kronos-test", MODEL), ("org/Kronos-Tokenizer-test", TOKENIZER)):
        d = cache / f"models--{repo.replace('/', '--')}"
        commit = "a" * 40 if "Tokenizer" not in repo else "b" * 40
        (d / "refs").mkdir(parents=True)
        (d / "refs" / "main").write_text(commit)
        snap = d / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in ("config.json", "model.safetensors"):
            (snap / f).write_bytes((src / f).read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mv = reg.pull("org/Kronos-test", "org/Kronos-Tokenizer-test", cache_dir=cache)
    assert mv.name == "kronos-test"
    assert mv.metadata["source"]["model"] == {"hub_id": "org/Kronos-test", "revision": "main", "commit": "a" * 40}
    assert mv.metadata["source"]["tokenizer"]["commit"] == "b" * 40
    assert reg.verify("kronos-test", device="cpu").ok

    with pytest.raises(RegistryError, match="HF_HUB_OFFLINE is set and it is not in the local Hub cache"):
        reg.pull("org/not-cached", "org/Kronos-Tokenizer-test", cache_dir=cache)

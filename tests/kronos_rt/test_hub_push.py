"""kronos_rt.hub_push against tests/fake_hub.py, a local HTTP stand-in for the Hub (the real
Hub is not reachable from the test machines): what huggingface_hub sends is recorded and
served back to `pull`, so a push followed by a pull is checked end to end over HTTP."""
import json
import shutil

import pytest
from huggingface_hub import constants as hf_constants

from kronos_rt.hub import HubError
from kronos_rt.hub_push import plan_push, push, read_token_file, version_tag
from kronos_rt.registry import Registry, RegistryError
from tests.fake_hub import FakeHub

from .conftest import PARITY

TOKEN = "hf_testTOKEN0123456789abcdef"
LAYOUT = {".gitattributes", "config.json", "model.safetensors", "tokenizer/config.json", "tokenizer/model.safetensors",
          "metadata.json", "README.md"}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub that wants TOKEN; HF_ENDPOINT and HF_TOKEN point pulls at it, the Hub cache is private."""
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # plain HTTP transfers
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FakeHub(token=TOKEN) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield h


@pytest.fixture
def reg(tmp_path):
    return Registry(tmp_path / "reg")


def _version(reg, version="1.0.0", **kwargs):
    return reg.import_dirs("parity", PARITY / "model", PARITY / "tokenizer", version=version, **kwargs)


def _tree(hub, repo, revision):
    return hub.repos[repo].resolve(revision).files


def test_plan_lists_the_public_layout_with_sha256_and_sends_nothing(reg):
    mv = _version(reg)
    plan = plan_push(mv, "org/parity")
    recorded = mv.metadata["files"]
    by_path = {f.path: f for f in plan.files}
    assert set(by_path) == LAYOUT - {".gitattributes"}
    # Model at the root, tokenizer in tokenizer/, each with the sha256 metadata.json records.
    assert by_path["model.safetensors"].sha256 == recorded["model/model.safetensors"]
    assert by_path["tokenizer/config.json"].sha256 == recorded["tokenizer/config.json"]
    assert by_path["metadata.json"].content == (mv.path / "metadata.json").read_bytes()
    assert by_path["README.md"].content == plan.card.encode()
    assert plan.tag == "v1.0.0" == version_tag("1.0.0")
    assert plan.commit_message == "kronos-rt models push parity@1.0.0" and plan.revision == "main"


def test_push_then_pull_gives_the_same_version(hub, reg, tmp_path):
    mv = _version(reg, random_weights=True, extra={"max_context": 256, "notes": {"by": "test"}})
    result = push(plan_push(mv, "org/parity"))  # token from HF_TOKEN
    repo = hub.repos["org/parity"]
    # One commit on top of the repo's first, its message naming the version, tagged vVERSION.
    assert [c.message for c in hub.commits_of("org/parity")] == ["initial commit", "kronos-rt models push parity@1.0.0"]
    assert repo.tags == {"v1.0.0": result.commit} and repo.branches["main"] == result.commit
    files = _tree(hub, "org/parity", "v1.0.0")
    assert set(files) == LAYOUT
    assert files["model.safetensors"] == (mv.model_dir / "model.safetensors").read_bytes()
    assert "RANDOM WEIGHTS" in files["README.md"].decode()
    # The weights went through the LFS batch API, the rest inline in the commit.
    assert any(r.method == "PUT" and r.path.startswith("/lfs-upload/") for r in hub.requests)

    back = Registry(tmp_path / "elsewhere").pull("org/parity", revision="v1.0.0")
    assert back.spec == "parity@1.0.0"
    assert back.metadata["files"] == mv.metadata["files"]  # every checksum equal
    assert back.metadata["model_config"] == mv.metadata["model_config"]
    assert back.random_weights and back.max_context == 256 and back.metadata["notes"] == {"by": "test"}
    assert back.metadata["origin"]["source"] == mv.metadata["source"]
    src = back.metadata["source"]
    assert src["type"] == "hub" and src["model"]["commit"] == result.commit and src["tokenizer"]["subfolder"] == "tokenizer"
    report = Registry(tmp_path / "elsewhere").verify("parity", "1.0.0", device="cpu")
    assert report.ok, report.failures
    # Pushed on again, its card says where it came from and where it began.
    card = plan_push(back, "org/parity-copy").card
    assert "Pulled from the Hub: model `org/parity` at `v1.0.0`" in card
    assert "It was pushed as `parity@1.0.0`" in card and "Imported from local checkpoint directories" in card
    assert "base_model: org/parity" in card and "RANDOM WEIGHTS" in card


def test_versions_are_tags_and_a_tag_holds_only_its_version(hub, reg, tmp_path):
    extra_dir = tmp_path / "with-notes"
    shutil.copytree(PARITY / "model", extra_dir)
    (extra_dir / "NOTES.txt").write_text("a file only 1.0.0 has\n")
    v1 = reg.import_dirs("parity", extra_dir, PARITY / "tokenizer", version="1.0.0")
    v2 = _version(reg, "1.1.0")
    push(plan_push(v1, "org/parity"))
    result = push(plan_push(v2, "org/parity"))
    assert result.deleted == ["NOTES.txt"]
    assert "NOTES.txt" in _tree(hub, "org/parity", "v1.0.0") and "NOTES.txt" not in _tree(hub, "org/parity", "v1.1.0")
    assert len(hub.commits_of("org/parity")) == 3

    other = Registry(tmp_path / "other")
    old = other.pull("org/parity", revision="v1.0.0")
    new = other.pull("org/parity", revision="v1.1.0")
    assert old.metadata["files"] == v1.metadata["files"] and "model/NOTES.txt" in old.metadata["files"]
    assert new.metadata["files"] == v2.metadata["files"]
    assert other.latest("parity") == "1.1.0"


def test_an_existing_tag_is_refused_before_anything_is_uploaded(hub, reg):
    mv = _version(reg)
    push(plan_push(mv, "org/parity"))
    before = len(hub.commits_of("org/parity"))
    with pytest.raises(RegistryError, match=r"org/parity already has tag v1.0.0 .*versions are immutable"):
        push(plan_push(mv, "org/parity"))
    assert len(hub.commits_of("org/parity")) == before
    assert not any(r.path.startswith("/api/models/org/parity/preupload") for r in hub.requests[-3:])


def test_a_push_whose_tag_failed_is_finished_by_running_it_again(hub, reg):
    mv = _version(reg)
    hub.fail_next_tag = True
    with pytest.raises(HubError, match=r"failed to tag commit [0-9a-f]{40} as v1.0.0"):
        push(plan_push(mv, "org/parity"))
    assert hub.repos["org/parity"].tags == {} and len(hub.commits_of("org/parity")) == 2
    result = push(plan_push(mv, "org/parity"))  # nothing changed: no second commit, just the tag
    assert len(hub.commits_of("org/parity")) == 2
    assert hub.repos["org/parity"].tags == {"v1.0.0": result.commit} == {"v1.0.0": hub.repos["org/parity"].branches["main"]}


def test_offline_pull_from_the_hub_cache(hub, reg, tmp_path, monkeypatch):
    push(plan_push(_version(reg), "org/parity"))
    Registry(tmp_path / "first").pull("org/parity", revision="v1.0.0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = len(hub.requests)
    again = Registry(tmp_path / "second").pull("org/parity", revision="v1.0.0")
    assert len(hub.requests) == seen  # nothing asked of the Hub
    assert again.metadata["files"] == reg.get("parity", "1.0.0").metadata["files"]
    with pytest.raises(RegistryError, match="HF_HUB_OFFLINE is set and it is not in the local Hub cache"):
        Registry(tmp_path / "third").pull("org/parity", revision="v9.9.9")


def test_branch_and_private(hub, reg):
    mv = _version(reg)
    result = push(plan_push(mv, "org/private-one", revision="experiments"), private=True)
    repo = hub.repos["org/private-one"]
    assert repo.private is True
    assert repo.branches["experiments"] == result.commit == repo.tags["v1.0.0"]
    assert set(repo.commits[repo.branches["main"]].files) == {".gitattributes"}  # main untouched

    push(plan_push(_version(reg, "1.0.1"), "org/public-one"))
    with pytest.raises(RegistryError, match="org/public-one exists and is public"):
        push(plan_push(_version(reg, "1.0.2"), "org/public-one"), private=True)


def test_a_changed_local_file_stops_the_push(reg):
    mv = _version(reg)
    weights = mv.model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(RegistryError, match=r"cannot push parity@1.0.0: model/model.safetensors: sha256 differs"):
        plan_push(mv, "org/parity")


@pytest.mark.parametrize("repo_id", ["parity", "a/b/c", "org/", "org/bad name"])
def test_repo_id_must_be_org_slash_name(reg, repo_id):
    with pytest.raises(RegistryError, match="invalid Hub repo"):
        plan_push(_version(reg), repo_id)


def test_a_tampered_hub_file_fails_the_pull(hub, reg, tmp_path):
    push(plan_push(_version(reg), "org/parity"))
    repo = hub.repos["org/parity"]
    files = dict(repo.commits[repo.branches["main"]].files)
    files["tokenizer/model.safetensors"] = files["tokenizer/model.safetensors"][:-1] + b"\1"
    hub.commit(repo, "main", "someone else's edit", files, repo.branches["main"])
    with pytest.raises(RegistryError, match=r"does not match its metadata.json: tokenizer/model.safetensors: sha256"):
        Registry(tmp_path / "other").pull("org/parity")  # main: the tampered commit
    assert Registry(tmp_path / "other").versions("parity") == []
    # The tag still gives the pushed version.
    assert Registry(tmp_path / "other").pull("org/parity", revision="v1.0.0").metadata["files"] == \
        reg.get("parity", "1.0.0").metadata["files"]


def test_a_repo_not_pushed_by_kronos_rt_needs_its_tokenizer_named(hub, reg, tmp_path):
    hub.create_repo("org/plain", private=False)
    with pytest.raises(RegistryError, match="has no metadata.json.*--tokenizer HUB_ID"):
        Registry(tmp_path / "other").pull("org/plain")


def test_a_refused_token_is_a_hub_error_that_does_not_show_it(hub, reg, monkeypatch):
    wrong = "hf_wrongTOKENabcdefghijklmnop"
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(HubError, match="cannot push parity@1.0.0 to org/parity@main .*check the token") as info:
        push(plan_push(_version(reg), "org/parity"))
    assert wrong not in str(info.value)
    assert any(r.headers.get("authorization") == f"Bearer {wrong}" for r in hub.requests)  # sent, as a header only
    assert not any(wrong in r.path for r in hub.requests)


def test_token_file(tmp_path):
    f = tmp_path / "token"
    f.write_text(f"  {TOKEN}\n")
    assert read_token_file(f) == TOKEN
    f.write_text("two words\n")
    with pytest.raises(RegistryError, match="does not hold one token") as info:
        read_token_file(f)
    assert "two" not in str(info.value)
    with pytest.raises(RegistryError, match="cannot read the token file"):
        read_token_file(tmp_path / "missing")


def test_card_is_written_from_the_metadata(reg):
    extra = {"max_context": 128, "metrics": {"walk_forward": {
        "created_at": "2026-01-01T00:00:00Z", "test": "[2024-03-01, +inf)", "windows": 24,
        "config": {"lookback": 32, "pred_len": 4, "stride": 8, "sample_count": 2},
        "data": {"files": [{"path": "/some/where/tape.csv", "sha256": "ab" * 32}]},
        "summary": {"mase": 1.234567, "hit_rate": 0.5}, "baselines": {"persistence": {"mase": 1.0, "hit_rate": None}},
        "compared_with": {}}}}
    mv = _version(reg, extra=extra)
    card = plan_push(mv, "org/parity").card
    assert json.loads((mv.path / "metadata.json").read_text())["max_context"] == 128
    assert "| max_context | 128 |" in card
    assert "| parity@1.0.0 | 1.23457 | 0.5 |" in card and "| persistence | 1 | n/a |" in card
    assert "tape.csv (sha256 `" + "ab" * 32 + "`)" in card and "/some/where" not in card
    assert "RANDOM WEIGHTS" not in card
    assert "Not recorded: this version was not fine-tuned by kronos-rt." in card
    assert "kronos-rt models pull org/parity --revision v1.0.0" in card

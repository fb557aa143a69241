"""kronos_rt.hub: one notion of offline, local_files_only passed, one error; both callers use it.

huggingface_hub.snapshot_download is replaced by a recorder: no network here."""
import huggingface_hub
import pytest
from huggingface_hub.utils import HFValidationError

from kronos_rt import Kronos
from kronos_rt.hub import HubError, hub_offline, snapshot
from kronos_rt.registry import Registry, RegistryError

from .conftest import PARITY


@pytest.fixture
def calls(monkeypatch):
    """Record snapshot_download's arguments; serve the parity pair's folders."""
    seen = []

    def fake(repo_id, **kwargs):
        seen.append(dict(repo_id=repo_id, **kwargs))
        return str(PARITY / ("tokenizer" if "Tokenizer" in repo_id else "model"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return seen


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return monkeypatch


@pytest.mark.parametrize("value, offline", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" 1 ", True),
    ("0", False), ("", False), ("false", False), ("no", False), ("off", False), ("2", False),
])
def test_offline_values_are_huggingface_hubs(env, value, offline):
    env.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline


def test_transformers_offline_counts_too(env):
    assert hub_offline() is False
    env.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub_offline() is True


@pytest.mark.parametrize("value, local_only", [("1", True), ("0", False)])
def test_snapshot_passes_local_files_only(env, calls, value, local_only):
    env.setenv("HF_HUB_OFFLINE", value)
    path = snapshot("org/repo", "v1", ["config.json"])
    assert path == PARITY / "model"
    assert calls == [dict(repo_id="org/repo", revision="v1", allow_patterns=["config.json"], cache_dir=None,
                          local_files_only=local_only, endpoint=None)]


def test_snapshot_passes_hf_endpoint_read_now(env, calls):
    """HF_ENDPOINT set after huggingface_hub was imported still counts (a mirror, a test server)."""
    env.setenv("HF_ENDPOINT", "http://127.0.0.1:9/ ")
    snapshot("org/repo")
    assert calls[-1]["endpoint"] == "http://127.0.0.1:9"


def _failing(exc):
    def fake(repo_id, **kwargs):
        raise exc
    return fake


def test_offline_miss_says_what_to_do(env):
    env.setenv("HF_HUB_OFFLINE", "1")
    env.setattr(huggingface_hub, "snapshot_download", _failing(OSError("not in cache")))
    with pytest.raises(HubError, match=r"cannot get org/repo@v1 from the Hugging Face Hub: HF_HUB_OFFLINE is set "
                                       r"and it is not in the local Hub cache; fetch it once .*OSError: not in cache"):
        snapshot("org/repo", "v1")


def test_online_failure_says_what_to_check(env):
    env.setattr(huggingface_hub, "snapshot_download", _failing(ConnectionError("down")))
    with pytest.raises(HubError, match="check the repo id, the revision and the network"):
        snapshot("org/repo")


def test_invalid_repo_id(env):
    env.setattr(huggingface_hub, "snapshot_download", _failing(HFValidationError("bad chars")))
    with pytest.raises(HubError, match="not a valid Hugging Face Hub repo id"):
        snapshot("org/b@d")


def test_hub_error_is_a_file_not_found_error():
    # What from_pretrained raised for a missing Hub checkpoint before HubError existed.
    assert issubclass(HubError, FileNotFoundError)


def test_from_pretrained_goes_through_snapshot(env, calls):
    env.setenv("HF_HUB_OFFLINE", "yes")
    Kronos.from_pretrained("org/Kronos-x", revision="abc")
    assert calls == [dict(repo_id="org/Kronos-x", revision="abc", allow_patterns=["config.json", "model.safetensors"],
                          cache_dir=None, local_files_only=True, endpoint=None)]


def test_registry_pull_goes_through_snapshot(env, calls, tmp_path):
    env.setenv("HF_HUB_OFFLINE", "on")
    Registry(tmp_path / "reg").pull("org/Kronos-x", "org/Kronos-Tokenizer-x", cache_dir=tmp_path / "hub")
    assert [(c["repo_id"], c["local_files_only"], c["cache_dir"]) for c in calls] == [
        ("org/Kronos-x", True, tmp_path / "hub"), ("org/Kronos-Tokenizer-x", True, tmp_path / "hub")]


def test_registry_pull_failure_is_a_registry_error(env, tmp_path):
    env.setenv("HF_HUB_OFFLINE", "1")
    env.setattr(huggingface_hub, "snapshot_download", _failing(OSError("not in cache")))
    with pytest.raises(RegistryError, match="HF_HUB_OFFLINE is set and it is not in the local Hub cache"):
        Registry(tmp_path / "reg").pull("org/Kronos-x", "org/Kronos-Tokenizer-x")

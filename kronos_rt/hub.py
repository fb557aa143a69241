"""The one way kronos_rt fetches checkpoints from the Hugging Face Hub.

Checkpoint loading (`from_pretrained` with a Hub id) and the model registry (`pull`) both
come through `snapshot`, so they agree on what "offline" means and fail with the same
message. Uploads (kronos_rt/hub_push.py) use the same endpoint (`hub_endpoint`).
"""
from __future__ import annotations

import os
from pathlib import Path

# What huggingface_hub itself counts as true (huggingface_hub.constants.ENV_VARS_TRUE_VALUES).
_TRUE = ("1", "ON", "YES", "TRUE")


class HubError(FileNotFoundError):
    """A Hub checkpoint that cannot be had; the message says why and what to do."""


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) is set, read now.

    huggingface_hub reads these once, at import; reading them at call time lets a process
    (or a test) turn offline mode on later, and `snapshot` then says so to huggingface_hub
    with local_files_only."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def hub_endpoint() -> str | None:
    """HF_ENDPOINT (a mirror, a private Hub, a test server), read now; None = huggingface_hub's
    default. huggingface_hub reads it once, at import, and builds download URLs from that."""
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


def snapshot(repo_id: str, revision: str | None = None, allow_patterns: list[str] | None = None,
             cache_dir=None) -> Path:
    """Local folder of a Hub repo's files (those matching allow_patterns): downloaded, or
    taken from the local Hub cache when offline. Raises HubError naming what to do."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import HFValidationError  # (also there in older releases)
    except ImportError as exc:
        raise HubError("huggingface_hub is not installed (pip install huggingface_hub); "
                       "or pass a local checkpoint directory") from exc
    where = f"{repo_id}{'@' + revision if revision else ''}"
    offline = hub_offline()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns,
                                      cache_dir=cache_dir, local_files_only=offline, endpoint=hub_endpoint()))
    except HFValidationError as exc:
        raise HubError(f"{repo_id!r} is not a valid Hugging Face Hub repo id (expected org/name): {exc}") from exc
    except Exception as exc:  # offline and not cached, unknown repo, bad revision, network down
        hint = ("HF_HUB_OFFLINE is set and it is not in the local Hub cache; fetch it once with network "
                "access (HF_HUB_OFFLINE unset), or use a local checkpoint directory" if offline else
                "check the repo id, the revision and the network, or use a local checkpoint directory")
        raise HubError(f"cannot get {where} from the Hugging Face Hub: {hint}. "
                       f"Cause: {type(exc).__name__}: {exc}") from exc

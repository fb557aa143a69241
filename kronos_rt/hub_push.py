"""Share a registry version through a Hugging Face Hub repo, and get exactly it back.

`push` uploads one version, in one commit, to ORG/NAME (its main branch or another one) in
the public layout, so that `kronos-rt models pull ORG/NAME` and the reference code load it:

    config.json, model.safetensors                       the model, at the root (as NeoQuasar/Kronos-*)
    tokenizer/config.json, tokenizer/model.safetensors   the tokenizer
    metadata.json                                        the version's, as the registry holds it
    README.md                                            the model card (kronos_rt/model_card.py)

The commit's message names NAME@VERSION and the tag vVERSION points at it; files of an
earlier push that this version lacks are deleted in the same commit, so the tag holds this
version and nothing else. `pull_pushed` (what `Registry.pull` does for a repo without a
separate tokenizer repo) downloads a tag, checks every file against the sha256 in its
metadata.json and imports it under the same name and version, with its training record.

Every Hub call goes through huggingface_hub (HfApi); the endpoint is HF_ENDPOINT read now
(kronos_rt.hub.hub_endpoint) unless given. The token is a string handed to HfApi: from a
token file, HF_TOKEN or huggingface_hub's stored login; it is never printed or put in a
message. Library code: no Kafka, Redis or CLI here (`kronos-rt models push` is
worker/cli/models.py).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME
from .hub import HubError, hub_endpoint, snapshot
from .model_card import model_card
from .registry import METADATA_NAME, ModelVersion, Registry, RegistryError, file_sha256, validate_name

CARD_NAME = "README.md"
TOKENIZER_DIR = "tokenizer"
TAG_PREFIX = "v"
# Repo files a push never writes from the checkpoints and never deletes.
_RESERVED = {CARD_NAME, METADATA_NAME, ".gitattributes"}
# Metadata fields the registry writes itself on import; a pull carries every other one over.
_REGISTRY_OWNED = {"format", "name", "version", "created_at", "source", "random_weights", "files",
                   "model_config", "tokenizer_config"}


def version_tag(version: str) -> str:
    """The repo tag of a version: what `models pull --revision` takes (1.2.0 -> v1.2.0)."""
    return TAG_PREFIX + version


def repo_path(registry_path: str) -> str:
    """Where a registry file (model/X, tokenizer/X) lives in the repo (X, tokenizer/X)."""
    sub, _, rest = registry_path.partition("/")
    if not rest or sub not in ("model", TOKENIZER_DIR):
        raise RegistryError(f"metadata.json lists {registry_path!r}, which is neither under model/ nor tokenizer/")
    return rest if sub == "model" else f"{TOKENIZER_DIR}/{rest}"


def validate_repo_id(repo_id: str) -> str:
    """ORG/NAME, as the Hub spells repo ids; a clear error otherwise."""
    try:
        from huggingface_hub.utils import validate_repo_id as hf_validate
        hf_validate(repo_id)
        ok = repo_id.count("/") == 1 and all(repo_id.split("/"))
    except Exception:  # HFValidationError: a ValueError naming the rule broken
        ok = False
    if not ok:
        raise RegistryError(f"invalid Hub repo {repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.')")
    return repo_id


def read_token_file(path) -> str:
    """The token in a file (one line; surrounding whitespace ignored). Errors name the file,
    never its contents."""
    p = Path(path).expanduser()
    try:
        token = p.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read the token file {p}: {getattr(exc, 'strerror', None) or type(exc).__name__}") \
            from None
    if not token or any(c.isspace() for c in token):
        raise RegistryError(f"the token file {p} does not hold one token on one line")
    return token


def resolve_token(token: str | None) -> str:
    """The given token, else HF_TOKEN, else huggingface_hub's stored login (`hf auth login`)."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise RegistryError("no Hugging Face token: give --token-file FILE, set HF_TOKEN, or log in with "
                            "`hf auth login`")
    return found


def pushed_with() -> dict[str, str | None]:
    import importlib.metadata as md

    out = {}
    for dist in ("kronos-rt", "huggingface_hub"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


@dataclass(frozen=True)
class PushFile:
    path: str  # in the repo
    size: int
    sha256: str
    source: Path | None = None  # a file of the registry version, or
    content: bytes | None = None  # generated here (metadata.json as read, the card)


@dataclass
class PushPlan:
    """Everything a push will send, computed without touching the network (--dry-run prints it)."""
    spec: str
    repo_id: str
    revision: str
    tag: str
    commit_message: str
    files: list[PushFile]
    card: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class PushResult:
    repo_url: str
    commit: str
    commit_url: str
    tag: str
    deleted: list[str]


def _blob(path: str, content: bytes) -> PushFile:
    return PushFile(path, len(content), hashlib.sha256(content).hexdigest(), content=content)


def plan_push(mv: ModelVersion, repo_id: str, revision: str | None = None) -> PushPlan:
    """The files (checked against metadata.json: a changed or missing file stops the push),
    the card and the commit of pushing `mv` to repo_id's branch `revision` (default main)."""
    validate_repo_id(repo_id)
    revision = revision or "main"
    meta_bytes = (mv.path / METADATA_NAME).read_bytes()
    metadata = json.loads(meta_bytes)
    recorded: dict = metadata.get("files") or {}
    if not recorded:
        raise RegistryError(f"cannot push {mv.spec}: its metadata.json lists no files")
    files, problems = [], []
    for rel, digest in sorted(recorded.items()):
        path, local = repo_path(rel), mv.path / rel
        if path in _RESERVED or (rel.startswith("model/") and path.split("/")[0] == TOKENIZER_DIR):
            problems.append(f"{rel} would be {path} in the repo, which the push writes itself")
        elif not local.is_file():
            problems.append(f"{rel}: missing")
        elif file_sha256(local) != digest:
            problems.append(f"{rel}: sha256 differs from metadata.json")
        else:
            files.append(PushFile(path, local.stat().st_size, digest, source=local))
    if problems:
        raise RegistryError(f"cannot push {mv.spec}: {'; '.join(problems)} (`kronos-rt models verify {mv.spec}` "
                            "checks a version)")
    for name in (CONFIG_NAME, WEIGHTS_NAME):  # the public layout needs both, for both halves
        for path in (name, f"{TOKENIZER_DIR}/{name}"):
            if path not in {f.path for f in files}:
                raise RegistryError(f"cannot push {mv.spec}: it has no {path} in the public layout")
    files.append(_blob(METADATA_NAME, meta_bytes))
    tag = version_tag(mv.version)
    card = model_card(metadata, repo_id, tag, [(f.path, f.size, f.sha256) for f in files], pushed_with())
    files.append(_blob(CARD_NAME, card.encode()))
    return PushPlan(mv.spec, repo_id, revision, tag, f"kronos-rt models push {mv.spec}", files, card)


def _redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def push(plan: PushPlan, token: str | None = None, private: bool = False, endpoint: str | None = None,
         log=lambda msg: None) -> PushResult:
    """Create the repo if needed (private if asked), the branch if needed, commit the plan's
    files on top of the branch's head (deleting files of an earlier push that it lacks) and
    tag the commit. Refuses, before uploading anything, a tag that exists (versions are
    immutable) and --private on an existing public repo. Hub failures raise HubError."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.hf_api import RepoFile

    token = resolve_token(token)
    api = HfApi(endpoint=endpoint or hub_endpoint(), token=token, library_name="kronos-rt",
                library_version=pushed_with()["kronos-rt"])
    repo, step = plan.repo_id, "create the repo"
    try:
        # private=None on creation leaves the namespace's default (an organisation may default to private).
        url = api.create_repo(repo, private=True if private else None, exist_ok=True)
        step = "read the repo"
        if private and api.repo_info(repo).private is False:
            raise RegistryError(f"{repo} exists and is public: --private cannot change that; make it private on "
                                "the Hub first, or push without --private")
        refs = api.list_repo_refs(repo)
        tags = {t.name: t.target_commit for t in refs.tags}
        if plan.tag in tags:
            raise RegistryError(f"{repo} already has tag {plan.tag} (commit {tags[plan.tag]}): versions are "
                                "immutable; push another version")
        branches = {b.name: b.target_commit for b in refs.branches}
        if plan.revision not in branches:
            step = f"create branch {plan.revision}"
            log(f"creating branch {plan.revision} of {repo}")
            api.create_branch(repo, branch=plan.revision)
            branches = {b.name: b.target_commit for b in api.list_repo_refs(repo).branches}
        parent = branches[plan.revision]
        step = "list the branch's files"
        ours = {f.path for f in plan.files}
        stale = sorted(f.path for f in api.list_repo_tree(repo, revision=parent, recursive=True)
                       if isinstance(f, RepoFile) and f.path not in ours and f.path not in _RESERVED)
        ops = [CommitOperationAdd(f.path, f.content if f.content is not None else str(f.source)) for f in plan.files]
        ops += [CommitOperationDelete(p) for p in stale]
        step = "commit"
        log(f"uploading {len(plan.files)} files ({plan.total_bytes} bytes) to {repo}@{plan.revision}"
            + (f", deleting {len(stale)} of an earlier push" if stale else ""))
        # parent_commit: the commit fails rather than overwrite a push that landed meanwhile.
        info = api.create_commit(repo, ops, commit_message=plan.commit_message, revision=plan.revision,
                                 commit_description=f"{plan.spec} pushed by kronos-rt; tag {plan.tag}.",
                                 parent_commit=parent)
        step = f"tag commit {info.oid} as {plan.tag}"
        api.create_tag(repo, tag=plan.tag, revision=info.oid, tag_message=plan.commit_message)
    except RegistryError:
        raise
    except Exception as exc:  # HTTP errors (401, 403, 404, 409, 412), network down, a bad answer
        hint = ("check the token's write access to it" if "401" in str(exc) or "403" in str(exc) else
                "check the repo id, the token, HF_ENDPOINT and the network")
        raise HubError(f"cannot push {plan.spec} to {repo}@{plan.revision} on the Hugging Face Hub "
                       f"(failed to {step}): {hint}. Cause: {type(exc).__name__}: "
                       f"{_redact(str(exc), token).splitlines()[0] if str(exc) else ''}") from None
    return PushResult(str(url), info.oid, info.commit_url, plan.tag, stale)


# -- back: a pushed version into a registry --------------------------------------------------

def pull_pushed(registry: Registry, repo_id: str, revision: str | None = None, name: str | None = None,
                version: str | None = None, promote: bool | None = None, cache_dir=None) -> ModelVersion:
    """Import a version pushed by `push` (metadata.json at the root, the tokenizer in
    tokenizer/): every file checked against the sha256 in its metadata.json, the same name
    and version unless given, and its metadata (training record, metrics) carried over."""
    where = f"{repo_id}@{revision or 'main'}"
    try:
        meta_dir = snapshot(repo_id, revision, [METADATA_NAME], cache_dir)
    except HubError as exc:
        raise RegistryError(str(exc)) from exc
    if not (meta_dir / METADATA_NAME).is_file():
        raise RegistryError(f"{where} has no {METADATA_NAME}, so it was not pushed by `kronos-rt models push`: "
                            "name its tokenizer repo with --tokenizer HUB_ID")
    meta = json.loads((meta_dir / METADATA_NAME).read_text())
    recorded: dict = meta.get("files") or {}
    if not recorded:
        raise RegistryError(f"{where}: its {METADATA_NAME} lists no files")
    paths = {repo_path(rel): rel for rel in recorded}
    commit = meta_dir.name  # the snapshot folder is the commit: fetch the files from that very commit
    try:
        snap = snapshot(repo_id, commit, sorted(paths), cache_dir)
    except HubError as exc:
        raise RegistryError(str(exc)) from exc
    bad = [f"{p}: {'missing' if not (snap / p).is_file() else 'sha256 differs from metadata.json'}"
           for p, rel in sorted(paths.items())
           if not (snap / p).is_file() or file_sha256(snap / p) != recorded[rel]]
    if bad:
        raise RegistryError(f"{where} (commit {commit}) does not match its {METADATA_NAME}: {'; '.join(bad)}")
    name = validate_name(name or meta.get("name") or repo_id.split("/")[-1].lower())
    source = {"type": "hub",
              "model": {"hub_id": repo_id, "revision": revision or "main", "commit": commit},
              "tokenizer": {"hub_id": repo_id, "subfolder": TOKENIZER_DIR, "revision": revision or "main",
                            "commit": commit}}
    extra = {k: v for k, v in meta.items() if k not in _REGISTRY_OWNED}
    extra["origin"] = {k: meta.get(k) for k in ("name", "version", "created_at", "source")}
    with tempfile.TemporaryDirectory(prefix="kronos-rt-pull-") as staging:
        # Links into the Hub cache: import_dirs copies the files they point at.
        for p, rel in paths.items():
            link = Path(staging) / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((snap / p).resolve())
        return registry.import_dirs(name, Path(staging) / "model", Path(staging) / TOKENIZER_DIR,
                                    version=version or meta.get("version"), source=source, promote=promote,
                                    random_weights=bool(meta.get("random_weights")), extra=extra)

"""A local registry of Kronos model + tokenizer pairs, versioned and checksummed.

Layout (one directory per version, never modified after it is written, except for
the metrics in metadata.json):

    <root>/<name>/<version>/model/          config.json, model.safetensors
    <root>/<name>/<version>/tokenizer/      config.json, model.safetensors
    <root>/<name>/<version>/metadata.json   source, sha256 of every file, configs, metrics
    <root>/<name>/latest -> <version>       symlink, replaced atomically

Versions are semantic versions (1.2.3, 1.2.3-rc.1) and sort as such. The root is
$KRONOS_RT_REGISTRY, else ~/.kronos-rt/registry. `verify()` is the health check a
deployment runs before serving a version: checksums, model/tokenizer compatibility,
strict load, a canary forecast with its timing, and memory.

Library code: no Kafka or Redis here; `kronos-rt models` (worker/cli/models.py) is the CLI.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME
from .features import COLUMNS
from .hub import HubError, snapshot

METADATA_NAME = "metadata.json"
LATEST = "latest"
FORMAT_VERSION = 1
# The context length of a version whose metadata records none (imports and pulls record
# none; `init` and fine-tunes do): the published Kronos models' 512.
DEFAULT_MAX_CONTEXT = 512

# semver.org 2.0.0 grammar.
_SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
# Names become directory names and appear in NAME@VERSION specs and in forecast.v1 messages.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why and what to do."""


def default_root() -> Path:
    env = os.environ.get("KRONOS_RT_REGISTRY")
    return Path(env).expanduser() if env else Path.home() / ".kronos-rt" / "registry"


# -- semantic versions -------------------------------------------------------------------------

def parse_semver(version: str) -> tuple[int, int, int, tuple[str, ...], str]:
    m = _SEMVER_RE.fullmatch(version) if isinstance(version, str) else None
    if m is None:
        raise RegistryError(f"invalid version {version!r}: expected a semantic version MAJOR.MINOR.PATCH "
                            "(e.g. 1.0.0 or 1.1.0-rc.1)")
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, m.group(5) or ""


def semver_key(version: str):
    """Sort key with semver precedence: 1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta < 1.0.0 < 1.0.1.
    Build metadata has no precedence; it only breaks ties so the order is total."""
    major, minor, patch, pre, build = parse_semver(version)
    # A release sorts after all its pre-releases; numeric identifiers sort before alphanumeric ones.
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre)
    return (major, minor, patch, 0 if pre else 1, pre_key, build)


def next_patch(version: str) -> str:
    major, minor, patch, pre, _ = parse_semver(version)
    # The release of a pre-release comes after it: 1.2.0-rc.1 -> 1.2.0.
    return f"{major}.{minor}.{patch}" if pre else f"{major}.{minor}.{patch + 1}"


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name == LATEST:
        raise RegistryError(f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")
    return name


# -- data classes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    metadata: dict
    model_dir: Path
    tokenizer_dir: Path

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def random_weights(self) -> bool:
        return bool(self.metadata.get("random_weights"))

    @property
    def max_context(self) -> int:
        """The context length to serve this version with (DEFAULT_MAX_CONTEXT if unrecorded)."""
        return metadata_max_context(self.metadata)


def metadata_max_context(metadata: dict) -> int:
    """max_context from a version's metadata.json contents; DEFAULT_MAX_CONTEXT (512) when
    it records none (or null/0)."""
    return int(metadata.get("max_context") or DEFAULT_MAX_CONTEXT)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    name: str
    version: str
    checks: list[Check] = field(default_factory=list)
    canary_ms: float | None = None
    param_bytes: int | None = None
    peak_rss_bytes: int | None = None
    peak_gpu_bytes: int | None = None
    device: str = "cpu"

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok


# -- helpers -----------------------------------------------------------------------------------

def pair_issues(model_config: dict, tokenizer_config: dict) -> list[str]:
    """Why a tokenizer does not fit a model (empty when it does): its codes must be the
    model's vocabulary (same s1_bits and s2_bits) and its input the six COLUMNS."""
    issues = [f"{k}: model {model_config.get(k)} vs tokenizer {tokenizer_config.get(k)}"
              for k in ("s1_bits", "s2_bits") if model_config.get(k) != tokenizer_config.get(k)]
    if tokenizer_config.get("d_in") != len(COLUMNS):
        issues.append(f"tokenizer d_in is {tokenizer_config.get('d_in')}, expected {len(COLUMNS)} "
                      f"({', '.join(COLUMNS)})")
    return issues


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints, training tapes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() or p.is_symlink())


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _check_checkpoint_dir(directory, what: str) -> Path:
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise RegistryError(f"{what} directory {directory} does not exist")
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
    if missing:
        raise RegistryError(f"{what} directory {directory} lacks {', '.join(missing)} "
                            f"(expected the {CONFIG_NAME} + {WEIGHTS_NAME} layout of save_pretrained)")
    try:
        with open(directory / CONFIG_NAME) as f:
            json.load(f)
    except ValueError as exc:
        raise RegistryError(f"{directory / CONFIG_NAME} is not valid JSON: {exc}") from exc
    return directory


def _copy_checkpoint(src: Path, dst: Path) -> None:
    # Hidden files (a Hub .cache folder, editor droppings) are not part of the checkpoint.
    # copytree follows symlinks, so Hub snapshots (links into the blob store) become real files.
    shutil.copytree(src, dst, ignore=lambda _d, names: [n for n in names if n.startswith(".")])


def _snapshot(repo_id: str, revision: str | None, cache_dir) -> Path:
    """Local snapshot of a Hub checkpoint (config.json + model.safetensors)."""
    try:
        return snapshot(repo_id, revision, [CONFIG_NAME, WEIGHTS_NAME], cache_dir)
    except HubError as exc:
        raise RegistryError(str(exc)) from exc


# -- the registry ------------------------------------------------------------------------------

class Registry:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and _NAME_RE.fullmatch(p.name))

    def versions(self, name: str) -> list[str]:
        """Versions of `name`, oldest first (semver order). Unfinished imports are not listed."""
        d = self.root / validate_name(name)
        if not d.is_dir():
            return []
        found = []
        for p in d.iterdir():
            if p.name == LATEST or p.is_symlink() or not p.is_dir() or not (p / METADATA_NAME).is_file():
                continue
            try:
                parse_semver(p.name)
            except RegistryError:
                continue  # not ours (a stray folder); list() should not fail on it
            found.append(p.name)
        return sorted(found, key=semver_key)

    def latest(self, name: str) -> str | None:
        link = self.root / validate_name(name) / LATEST
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        return Path(target).name

    def get(self, name: str, version: str) -> ModelVersion:
        validate_name(name)
        parse_semver(version)
        path = self.root / name / version
        meta_path = path / METADATA_NAME
        if not meta_path.is_file():
            known = self.versions(name)
            if not known:
                raise RegistryError(f"no model named {name!r} in registry {self.root} "
                                    f"(known: {', '.join(self.names()) or 'none'})")
            raise RegistryError(f"{name} has no version {version} (versions: {', '.join(known)})")
        with open(meta_path) as f:
            metadata = json.load(f)
        return ModelVersion(name, version, path, metadata, path / "model", path / "tokenizer")

    def list(self) -> list[ModelVersion]:
        return [self.get(n, v) for n in self.names() for v in self.versions(n)]

    def resolve(self, spec: str) -> ModelVersion:
        """NAME@VERSION, NAME@latest or NAME (= NAME@latest)."""
        name, _, version = str(spec).partition("@")
        validate_name(name)
        if not version or version == LATEST:
            current = self.latest(name)
            if current is None:
                if not self.versions(name):
                    raise RegistryError(f"no model named {name!r} in registry {self.root} "
                                        f"(known: {', '.join(self.names()) or 'none'})")
                raise RegistryError(f"{name} has no latest version; promote one with "
                                    f"`kronos-rt models promote {name} VERSION`")
            version = current
        return self.get(name, version)

    # -- writing ---------------------------------------------------------------------------
    def _next_version(self, name: str) -> str:
        known = self.versions(name)
        return next_patch(known[-1]) if known else "0.1.0"

    def _add(self, name: str, version: str | None, fill, source: dict, random_weights: bool,
             promote: bool | None, extra: dict | None = None) -> ModelVersion:
        """Write a version into a temp directory beside its final place, then rename it in,
        so a crash never leaves a half-written version that list() or resolve() would see."""
        validate_name(name)
        version = version or self._next_version(name)
        parse_semver(version)
        final = self.root / name / version
        if final.exists():
            raise RegistryError(f"{name}@{version} already exists in {self.root}; versions are immutable, "
                                "pick another --version")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            fill(tmp / "model", tmp / "tokenizer")
            files = {p.relative_to(tmp).as_posix(): file_sha256(p)
                     for sub in ("model", "tokenizer") for p in _files_under(tmp / sub)}
            with open(tmp / "model" / CONFIG_NAME) as f:
                model_config = json.load(f)
            with open(tmp / "tokenizer" / CONFIG_NAME) as f:
                tokenizer_config = json.load(f)
            metadata = {
                "format": FORMAT_VERSION,
                "name": name,
                "version": version,
                "created_at": _utc_now(),
                "source": source,
                "random_weights": bool(random_weights),
                "files": files,
                "model_config": model_config,
                "tokenizer_config": tokenizer_config,
                "metrics": {},
                **(extra or {}),
            }
            _write_json_atomic(tmp / METADATA_NAME, metadata)
            try:
                os.rename(tmp, final)
            except OSError as exc:  # another process wrote the same version meanwhile
                raise RegistryError(f"{name}@{version} already exists in {self.root}") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if promote is None:
            # New versions go live when they are the newest; an older version imported
            # later (a backfill) waits for an explicit promote.
            promote = self.versions(name)[-1] == version
        if promote:
            self.promote(name, version)
        return self.get(name, version)

    def import_dirs(self, name: str, model_dir, tokenizer_dir, version: str | None = None,
                    source: dict | None = None, promote: bool | None = None, *,
                    random_weights: bool = False, extra: dict | None = None) -> ModelVersion:
        """Copy a model and a tokenizer checkpoint (save_pretrained layout) in as a new version.
        version=None takes the next patch after the newest (0.1.0 for a new name).
        promote=None moves `latest` to it if it is the newest version. `extra` adds metadata
        fields (e.g. a fine-tune's data and loss curve); random_weights marks a pair whose
        weights mean nothing (a fine-tune of random weights is still random)."""
        model_dir = _check_checkpoint_dir(model_dir, "model")
        tokenizer_dir = _check_checkpoint_dir(tokenizer_dir, "tokenizer")
        if source is None:
            source = {"type": "directory", "model_dir": str(model_dir.resolve()),
                      "tokenizer_dir": str(tokenizer_dir.resolve())}

        def fill(model_dst: Path, tokenizer_dst: Path) -> None:
            _copy_checkpoint(model_dir, model_dst)
            _copy_checkpoint(tokenizer_dir, tokenizer_dst)

        return self._add(name, version, fill, source, random_weights=random_weights, promote=promote, extra=extra)

    def pull(self, hub_id: str, tokenizer_hub_id: str | None = None, name: str | None = None,
             revision: str | None = None, tokenizer_revision: str | None = None, version: str | None = None,
             promote: bool | None = None, cache_dir=None) -> ModelVersion:
        """Download (or, with HF_HUB_OFFLINE=1, take from the Hub cache) a model and its tokenizer
        and import them. The name defaults to the model repo's name, lower-cased.
        Without tokenizer_hub_id the repo is one `kronos-rt models push` wrote (model and
        tokenizer/ in one repo, with metadata.json): kronos_rt.hub_push.pull_pushed."""
        if tokenizer_hub_id is None:
            from .hub_push import pull_pushed  # (it imports this module)

            return pull_pushed(self, hub_id, revision=revision, name=name, version=version, promote=promote,
                               cache_dir=cache_dir)
        name = name or hub_id.rstrip("/").split("/")[-1].lower()
        validate_name(name)
        model_dir = _snapshot(hub_id, revision, cache_dir)
        tokenizer_dir = _snapshot(tokenizer_hub_id, tokenizer_revision, cache_dir)
        # A snapshot folder is named after the commit it holds: record it so "main" today
        # can be told apart from "main" next month.
        source = {"type": "hub",
                  "model": {"hub_id": hub_id, "revision": revision or "main", "commit": model_dir.name},
                  "tokenizer": {"hub_id": tokenizer_hub_id, "revision": tokenizer_revision or "main",
                                "commit": tokenizer_dir.name}}
        return self.import_dirs(name, model_dir, tokenizer_dir, version=version, source=source, promote=promote)

    def init(self, name: str, shape: str, seed: int = 0, version: str | None = None,
             promote: bool | None = None) -> ModelVersion:
        """A pair with random weights in one of the published shapes (kronos_rt.shapes), for
        load tests and demos without the real checkpoints. Marked random_weights: true."""
        from .shapes import random_pair  # torch model construction: only when asked

        try:
            model, tokenizer, max_context = random_pair(shape, seed)
        except ValueError as exc:  # unknown shape
            raise RegistryError(str(exc)) from exc

        def fill(model_dst: Path, tokenizer_dst: Path) -> None:
            model.save_pretrained(model_dst)
            tokenizer.save_pretrained(tokenizer_dst)

        source = {"type": "random-init", "shape": shape, "seed": int(seed)}
        return self._add(name, version, fill, source, random_weights=True, promote=promote,
                         extra={"max_context": int(max_context)})

    def promote(self, name: str, version: str) -> ModelVersion:
        """Point `latest` at `version` (atomically: a new link renamed over the old one)."""
        mv = self.get(name, version)
        link = self.root / name / LATEST
        tmp = link.with_name(f".{LATEST}.tmp-{uuid.uuid4().hex[:8]}")
        os.symlink(version, tmp)  # relative, so the registry can be moved or mounted elsewhere
        try:
            os.replace(tmp, link)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return mv

    def rollback(self, name: str) -> ModelVersion:
        """Move `latest` to the highest version below the current one."""
        current = self.latest(name)
        if current is None:
            raise RegistryError(f"{name} has no latest version to roll back from")
        below = [v for v in self.versions(name) if semver_key(v) < semver_key(current)]
        if not below:
            raise RegistryError(f"cannot roll back {name}: {current} is its oldest version")
        return self.promote(name, below[-1])

    def record_metrics(self, name: str, version: str, metrics: dict) -> ModelVersion:
        """Merge evaluation metrics (JSON-serializable) into the version's metadata."""
        mv = self.get(name, version)
        meta = dict(mv.metadata)
        meta["metrics"] = {**meta.get("metrics", {}), **metrics}
        json.dumps(meta)  # fail before touching the file if a value is not serializable
        _write_json_atomic(mv.path / METADATA_NAME, meta)
        return self.get(name, version)

    # -- health check ----------------------------------------------------------------------
    def verify(self, name: str, version: str | None = None, device=None, pred_len: int = 4,
               window: int = 64) -> VerifyReport:
        mv = self.resolve(name if version is None else f"{name}@{version}")
        return verify_version(mv, device=device, pred_len=pred_len, window=window)


def verify_version(mv: ModelVersion, device=None, pred_len: int = 4, window: int = 64) -> VerifyReport:
    """Checksums, model/tokenizer compatibility, strict load, canary forecast, memory."""
    report = VerifyReport(mv.name, mv.version)

    # 1. Every recorded file present and unchanged; nothing added.
    recorded: dict = mv.metadata.get("files", {})
    problems = []
    for rel, digest in sorted(recorded.items()):
        p = mv.path / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif file_sha256(p) != digest:
            problems.append(f"{rel}: sha256 mismatch (file changed or corrupt)")
    present = {p.relative_to(mv.path).as_posix()
               for sub in ("model", "tokenizer") if (mv.path / sub).is_dir() for p in _files_under(mv.path / sub)}
    problems += [f"{rel}: not in metadata.json" for rel in sorted(present - recorded.keys())]
    if not recorded:
        problems.append("metadata.json lists no files")
    report.add("checksums", not problems, "; ".join(problems) or f"{len(recorded)} files match")

    # 2. The tokenizer's codes must be the model's vocabulary, and its input the six COLUMNS.
    compatible = False
    try:
        mcfg = json.loads((mv.model_dir / CONFIG_NAME).read_text())
        tcfg = json.loads((mv.tokenizer_dir / CONFIG_NAME).read_text())
        issues = pair_issues(mcfg, tcfg)
        compatible = not issues
        report.add("compatibility", compatible, "; ".join(issues) or
                   f"s1_bits={mcfg['s1_bits']} s2_bits={mcfg['s2_bits']} d_in={len(COLUMNS)}")
    except (OSError, ValueError, KeyError) as exc:
        report.add("compatibility", False, f"cannot read configs: {exc}")

    # 3. Strict load (every tensor used, every parameter filled) into the Engine that serves it.
    from .loading import load_engine

    engine = None
    try:
        engine = load_engine(mv.model_dir, mv.tokenizer_dir, device=device, max_context=mv.max_context)
        report.device = str(engine.device)
        report.add("load", True, f"model and tokenizer load strictly, on {report.device}")
    except Exception as exc:  # CheckpointError, missing files, bad safetensors, unusable device
        report.add("load", False, f"{type(exc).__name__}: {exc}")
    if engine is not None:
        # The weights as the engine holds them (its dtype); the state_dicts stay as loaded.
        report.param_bytes = sum(t.numel() * t.element_size()
                                 for m in (engine.model, engine.tokenizer) for t in m.state_dict().values())

    # 4. Canary forecast on a synthetic window: finite numbers of the right shape.
    if engine is not None and compatible:
        _canary(report, engine, pred_len, window)

    # Peak RSS of this process (ru_maxrss is KiB on Linux), which includes everything it did before.
    try:
        import resource

        report.peak_rss_bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        pass
    return report


def synthetic_window(n: int, seed: int = 0):
    """n 5-minute bars of a seeded random walk: (bars [n, 6] float64 in COLUMNS order,
    times datetime64[s] [n])."""
    import numpy as np

    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = np.abs(rng.normal(0, 0.001, n)) * close
    high = np.maximum(open_, close) + spread
    low = np.minimum(open_, close) - spread
    volume = rng.integers(100, 1000, n).astype(np.float64)
    amount = volume * (open_ + close) / 2
    times = np.datetime64("2024-01-02T09:30:00", "s") + np.arange(n) * np.timedelta64(300, "s")
    return np.stack([open_, high, low, close, volume, amount], axis=1), times


def _canary(report: VerifyReport, engine, pred_len: int, window: int) -> None:
    import numpy as np
    import torch

    from .sampling import SamplingParams

    try:
        n = max(2, min(window, engine.max_context))
        bars, times = synthetic_window(n)
        y_times = times[-1] + np.arange(1, pred_len + 1) * np.timedelta64(300, "s")
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)
        t0 = time.perf_counter()
        (fc,) = engine.forecast([bars], [times], [y_times], pred_len, SamplingParams(seed=0))
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        report.canary_ms = (time.perf_counter() - t0) * 1000
        if engine.device.type == "cuda":
            report.peak_gpu_bytes = int(torch.cuda.max_memory_allocated(engine.device))
        if fc.mean.shape != (pred_len, 6):
            report.add("canary", False, f"forecast shape {fc.mean.shape}, expected {(pred_len, 6)}")
        elif not np.isfinite(fc.mean).all():
            report.add("canary", False, "forecast contains NaN or infinite values")
        else:
            report.add("canary", True, f"{pred_len} steps from {n} bars in {report.canary_ms:.1f} ms "
                                       f"on {report.device}")
    except Exception as exc:
        report.add("canary", False, f"{type(exc).__name__}: {exc}")

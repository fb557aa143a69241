"""A small local stand-in for the Hugging Face Hub, for tests: the real Hub is not reachable here.

It implements only the HTTP endpoints huggingface_hub (2.x) calls to create a repo, branch
and tag, upload a commit (preupload, the LFS batch API with "basic" transfers, the NDJSON
commit) and to download a snapshot (repo info, tree listing, file resolve with ETag and
X-Repo-Commit). It never advertises Xet storage, so transfers are plain HTTP (tests also set
HF_HUB_DISABLE_XET). Every request is recorded (method, path, headers, body) so tests can
check what the client sent, e.g. that the token travelled only in the Authorization header.

Repos hold commits as {path: bytes}; *.safetensors files are LFS (as the Hub does), others
regular git files. With `token` set, every request must carry "Bearer <token>".
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(oid)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class FakeHub:
    def __init__(self, token: str | None = None):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[Request] = []
        self.fail_next_tag = False  # a test sets it: the next create_tag answers 500
        self._lock = threading.Lock()
        self._counter = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- state -------------------------------------------------------------------------------
    def is_lfs(self, path: str) -> bool:
        return path.endswith(".safetensors")

    def commit(self, repo: Repo, branch: str, message: str, files: dict[str, bytes], parent: str | None) -> Commit:
        self._counter += 1
        oid = hashlib.sha1(f"{repo.repo_id}:{self._counter}:{message}".encode()).hexdigest()
        c = Commit(oid, parent, message, files)
        repo.commits[oid] = c
        repo.branches[branch] = oid
        return c

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        repo = self.repos[repo_id] = Repo(repo_id, private)
        # The Hub starts every repo with a commit holding .gitattributes.
        self.commit(repo, "main", "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                    None)
        return repo

    def entry(self, path: str, data: bytes) -> dict:
        e = {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
        if self.is_lfs(path):
            e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return e

    def commits_of(self, repo_id: str) -> list[Commit]:
        """The repo's commits, oldest first (all branches)."""
        return list(self.repos[repo_id].commits.values())


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        # -- plumbing --------------------------------------------------------------------------
        def _reply(self, status: int, body=b"", headers: dict | None = None, error_code: str | None = None) -> None:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if error_code:
                self.send_header("X-Error-Code", error_code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, message: str, error_code: str | None = None) -> None:
            self._reply(status, {"error": message}, {"X-Error-Message": message}, error_code)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            path, query = url.path, parse_qs(url.query)
            with hub._lock:
                hub.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if hub.token is not None and not path.startswith("/lfs-upload/") \
                    and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(401, "Invalid credentials in Authorization header")
            with hub._lock:
                for method, pattern, fn in _ROUTES:
                    if method == self.command or (method == "GET" and self.command == "HEAD"):
                        m = re.fullmatch(pattern, path)
                        if m:
                            groups = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                            return fn(self, hub, body, query, **groups)
            self._error(404, f"fake hub: no route for {self.command} {path}")

        do_GET = do_HEAD = do_POST = do_PUT = _handle

    return Handler


def _repo(h, hub: FakeHub, repo: str) -> Repo | None:
    r = hub.repos.get(repo)
    if r is None:
        h._error(404, f"Repository {repo} not found", "RepoNotFound")
    return r


def _commit(h, r: Repo, revision: str) -> Commit | None:
    c = r.resolve(revision)
    if c is None:
        h._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    return c


def create_repo(h, hub, body, query):
    d = json.loads(body)
    repo_id = f"{d['organization']}/{d['name']}" if d.get("organization") else f"user/{d['name']}"
    if repo_id in hub.repos:
        # The Hub's 409 carries the url too: create_repo(exist_ok=True) reads it.
        return h._reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
    hub.create_repo(repo_id, d.get("visibility") == "private" or bool(d.get("private")))
    h._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})


def repo_info(h, hub, body, query, repo, revision="main"):
    r = _repo(h, hub, repo)
    c = r and _commit(h, r, revision)
    if c:
        h._reply(200, {"id": repo, "sha": c.oid, "private": r.private,
                       "siblings": [{"rfilename": p} for p in sorted(c.files)]})


def refs(h, hub, body, query, repo):
    r = _repo(h, hub, repo)
    if r:
        h._reply(200, {"branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in r.branches.items()],
                       "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in r.tags.items()],
                       "converts": []})


def create_branch(h, hub, body, query, repo, branch):
    r = _repo(h, hub, repo)
    if not r:
        return
    if branch in r.branches:
        return h._error(409, f"Branch {branch} already exists")
    start = _commit(h, r, (json.loads(body or b"{}")).get("startingPoint") or "main")
    if start:
        r.branches[branch] = start.oid
        h._reply(200, {})


def create_tag(h, hub, body, query, repo, revision):
    r = _repo(h, hub, repo)
    c = r and _commit(h, r, revision)
    if not c:
        return
    if hub.fail_next_tag:
        hub.fail_next_tag = False
        return h._error(500, "fake hub: tag creation failed")
    tag = json.loads(body)["tag"]
    if tag in r.tags:
        return h._error(409, f"Tag {tag} already exists")
    r.tags[tag] = c.oid
    h._reply(200, {})


def preupload(h, hub, body, query, repo, revision):
    r = _repo(h, hub, repo)
    if not r:
        return
    current = r.resolve(revision)
    files = []
    for f in json.loads(body)["files"]:
        old = current.files.get(f["path"]) if current else None
        lfs = hub.is_lfs(f["path"])
        oid = None if old is None else (hashlib.sha256(old).hexdigest() if lfs else git_blob_oid(old))
        files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    h._reply(200, {"files": files, "commitOid": current.oid if current else None})


def lfs_batch(h, hub, body, query, repo):
    if not _repo(h, hub, repo):
        return
    objects = []
    for o in json.loads(body)["objects"]:
        obj = {"oid": o["oid"], "size": o["size"]}
        if o["oid"] not in hub.lfs:
            obj["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}
        objects.append(obj)
    h._reply(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})


def lfs_upload(h, hub, body, query, oid):
    if hashlib.sha256(body).hexdigest() != oid:
        return h._error(400, "sha256 does not match the oid")
    hub.lfs[oid] = body
    h._reply(200, b"")


def validate_yaml(h, hub, body, query):
    content = json.loads(body)["content"]
    if not content.startswith("---\n") or "\n---\n" not in content[4:]:
        return h._reply(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
    h._reply(200, {"errors": [], "warnings": []})


def commit(h, hub, body, query, repo, revision):
    r = _repo(h, hub, repo)
    if not r:
        return
    if revision not in r.branches:
        return h._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    head = r.commits[r.branches[revision]]
    files = dict(head.files)
    header = None
    for line in body.splitlines():
        item = json.loads(line)
        key, value = item["key"], item["value"]
        if key == "header":
            header = value
        elif key == "file":
            files[value["path"]] = base64.b64decode(value["content"])
        elif key == "lfsFile":
            if value["oid"] not in hub.lfs:
                return h._error(422, f"LFS object {value['oid']} was never uploaded")
            files[value["path"]] = hub.lfs[value["oid"]]
        elif key == "deletedFile":
            if value["path"] not in files:
                return h._error(404, "A file with this name doesn't exist", "EntryNotFound")
            del files[value["path"]]
        else:
            return h._error(400, f"fake hub: unsupported commit operation {key}")
    if header is None:
        return h._error(400, "no header line")
    if header.get("parentCommit") and header["parentCommit"] != head.oid:
        return h._error(412, f"parent commit {header['parentCommit']} is not the head of {revision}")
    c = hub.commit(r, revision, header["summary"], files, head.oid)
    h._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{c.oid}", "commitOid": c.oid,
                   "pullRequestUrl": None, "success": True})


def tree(h, hub, body, query, repo, revision, path=""):
    r = _repo(h, hub, repo)
    c = r and _commit(h, r, revision)
    if not c:
        return
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    recursive = query.get("recursive", ["false"])[0].lower() == "true"
    entries, dirs = [], set()
    for p in sorted(c.files):
        if not p.startswith(prefix):
            continue
        rest = p[len(prefix):]
        if "/" in rest and not recursive:
            dirs.add(prefix + rest.split("/")[0])
            continue
        parts = rest.split("/")
        dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
        entries.append(hub.entry(p, c.files[p]))
    entries += [{"type": "directory", "path": d, "size": 0, "oid": git_blob_oid(d.encode())} for d in sorted(dirs)]
    h._reply(200, entries)


def resolve(h, hub, body, query, repo, revision, path):
    r = _repo(h, hub, repo)
    c = r and _commit(h, r, revision)
    if not c:
        return
    if path not in c.files:
        return h._error(404, f"Entry not found: {path}", "EntryNotFound")
    data = c.files[path]
    headers = {"X-Repo-Commit": c.oid, "ETag": f'"{git_blob_oid(data)}"', "Content-Type": "application/octet-stream"}
    if hub.is_lfs(path):
        headers.update({"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": str(len(data))})
    h._reply(200, data, headers)


_ROUTES = [
    ("POST", r"/api/repos/create", create_repo),
    ("POST", r"/api/validate-yaml", validate_yaml),
    ("GET", rf"/api/models/{_REPO}", repo_info),
    ("GET", rf"/api/models/{_REPO}/revision/(?P<revision>.+)", repo_info),
    ("GET", rf"/api/models/{_REPO}/refs", refs),
    ("GET", rf"/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", tree),
    ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>.+)", create_branch),
    ("POST", rf"/api/models/{_REPO}/tag/(?P<revision>.+)", create_tag),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<revision>.+)", preupload),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<revision>.+)", commit),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", lfs_batch),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", lfs_upload),
    ("GET", rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", resolve),
]

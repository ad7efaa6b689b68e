"""A loopback stand-in for the part of the Hugging Face Hub HTTP API that `huggingface_hub` uses to
create repos and branches, commit regular (non-LFS) files, validate README metadata, and download
files (`hf_hub_download`, `snapshot_download`). Test equipment, not product.

State lives in memory: repos -> branches -> commits -> {path: bytes}. Writes and private reads need
a known bearer token; errors carry the `X-Error-Code` headers the client turns into its exceptions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from huggingface_hub.repocard_data import model_index_to_eval_results

KNOWN_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "openrail", "other"}


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def commit(self, branch: str, message: str, files: dict[str, bytes]) -> Commit:
        oid = hashlib.sha1(f"{branch}{message}{time.time_ns()}{len(self.commits)}".encode()).hexdigest()
        self.commits[oid] = Commit(oid, message, files)
        self.branches[branch] = oid
        return self.commits[oid]

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubState:
    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.messages: dict[str, list[tuple[str, str]]] = {}  # repo -> [(branch, message)]
        self.lock = threading.Lock()

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self.repos[repo_id].resolve(revision).files[path]


class _Error(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


def validate_metadata(content: str) -> list[str]:
    """The Hub's README checks that matter here: YAML mapping, known license, repo ids, model-index."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
    if not match:
        return []
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return [f"YAML parse error: {err}"]
    if not isinstance(meta, dict):
        return ["metadata must be a mapping"]
    errors = []
    if "license" in meta and meta["license"] not in KNOWN_LICENSES:
        errors.append(f"\"license\" must be a known license id, got {meta['license']!r}")
    for key in ("base_model", "datasets"):
        values = meta.get(key) or []
        for value in [values] if isinstance(values, str) else values:
            if not isinstance(value, str) or value.count("/") > 1 or value.startswith((".", "/", "~")):
                errors.append(f"\"{key}\" must hold Hub repo ids, got {value!r}")
    tags = meta.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        errors.append("\"tags\" must be a list of strings")
    if "model-index" in meta:
        try:
            name, results = model_index_to_eval_results(meta["model-index"])
            if not name or not results:
                raise ValueError("empty")
        except Exception as err:  # the client's own parser: malformed model-index
            errors.append(f"\"model-index\" is malformed ({type(err).__name__}: {err})")
    return errors


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- plumbing ----------------------------------------------------------------------
    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return self.state.tokens.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None


    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        # Read the whole body up front: on a kept-alive connection, unread bytes would become the next request.
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            with self.state.lock:
                self._route(method, parts, query)
        except Exception as err:  # a server bug must show up in the client's error, not as a dropped connection
            if not isinstance(err, _Error):
                err = _Error(500, f"test Hub failure: {type(err).__name__}: {err}")
            headers = {"Content-Type": "application/json", **({"X-Error-Code": err.code} if err.code else {})}
            body = json.dumps({"error": str(err), **getattr(err, "extra", {})}).encode()
            self._send(err.status, body, headers, head=method == "HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        repo, user = self.state.repos.get(repo_id), self._user()
        if repo is None or (repo.private and user != repo.owner):
            raise _Error(401 if user is None else 404, f"Repository {repo_id} not found", "RepoNotFound")
        if write and user != repo.owner:
            raise _Error(403 if user else 401, f"You have no write access to {repo_id}")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _Error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- routes ------------------------------------------------------------------------
    def _route(self, method: str, parts: list[str], query: dict) -> None:
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(self.body))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            errors = validate_metadata(json.loads(self.body)["content"])
            return self._json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            return self._api_model(method, repo_id, rest, query)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        raise _Error(404, f"{method} /{'/'.join(parts)} is not served by this test Hub")

    def _create_repo(self, payload: dict) -> None:
        user = self._user()
        if user is None:
            raise _Error(401, "Invalid credentials in Authorization header")
        owner = payload.get("organization") or user
        if owner != user:
            raise _Error(403, f"You cannot create repos in {owner}")
        repo_id = f"{owner}/{payload['name']}"
        url = f"http://{self.headers['Host']}/{repo_id}"
        if repo_id in self.state.repos:
            raise _Error(409, "You already created this model repo", url=url)
        repo = Repo(owner=user, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        repo.commit("main", "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        self.state.repos[repo_id] = repo
        self.state.messages[repo_id] = []
        self._json({"url": url, "name": repo_id})

    def _api_model(self, method: str, repo_id: str, rest: list[str], query: dict) -> None:
        if method == "GET" and (not rest or rest[0] == "revision"):
            repo = self._repo(repo_id)
            commit = self._commit_at(repo, rest[1] if rest else "main")
            return self._json({"id": repo_id, "sha": commit.oid, "private": repo.private,
                               "siblings": [{"rfilename": p} for p in sorted(commit.files)]})
        if method == "GET" and rest and rest[0] == "tree":
            commit = self._commit_at(self._repo(repo_id), rest[1])
            prefix = "/".join(rest[2:])
            return self._json([
                {"type": "file", "path": p, "size": len(data), "oid": git_blob_oid(data)}
                for p, data in sorted(commit.files.items()) if p.startswith(prefix)
            ])
        if method == "POST" and len(rest) == 2 and rest[0] == "branch":
            repo = self._repo(repo_id, write=True)
            if rest[1] in repo.branches:
                raise _Error(409, f"Branch {rest[1]} already exists")
            repo.branches[rest[1]] = repo.branches["main"]
            return self._json({})
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            repo = self._repo(repo_id, write=True)
            files = self._commit_at(repo, rest[1]).files
            payload = json.loads(self.body)
            return self._json({"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_blob_oid(files[f["path"]]) if f["path"] in files else None}
                for f in payload["files"]
            ]})
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            if query.get("create_pr"):
                raise _Error(400, "This test Hub does not serve pull requests")
            return self._commit(repo_id, rest[1], self.body)
        raise _Error(404, f"{method} /api/models/{repo_id}/{'/'.join(rest)} is not served by this test Hub")

    def _commit(self, repo_id: str, branch: str, body: bytes) -> None:
        repo = self._repo(repo_id, write=True)
        files = dict(self._commit_at(repo, branch).files)
        header = None
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                header = value
            elif item["key"] == "file":
                if value.get("encoding") != "base64":
                    raise _Error(400, "file content must be base64")
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:
                raise _Error(400, f"This test Hub only takes regular files, not {item['key']!r}")
        if header is None:
            raise _Error(400, "commit has no header")
        commit = repo.commit(branch, header["summary"], files)
        self.state.messages[repo_id].append((branch, header["summary"]))
        self._json({"success": True, "commitOid": commit.oid,
                    "commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{commit.oid}"})

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        commit = self._commit_at(self._repo(repo_id), revision)
        if path not in commit.files:
            raise _Error(404, f"{path} does not exist at {revision}", "EntryNotFound")
        data = commit.files[path]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"',
                   "Content-Type": "application/octet-stream"}
        self._send(200, data, headers, head=method == "HEAD")


class LocalHub:
    """Serve `HubState` on 127.0.0.1 in a daemon thread; `url` is the value for `HF_ENDPOINT`."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.state = HubState(tokens)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

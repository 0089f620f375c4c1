"""A local Hugging Face Hub: enough of the Hub's HTTP protocol for the real ``huggingface_hub``.

This module owns the in-process fake Hub used by modelfix's tests (and offered to its users):
repositories with commits, branches and tags held in memory, files served from bytes or from
disk, an injectable fault per file, and a log of every request. Nothing is mocked on the client
side: point ``HF_ENDPOINT`` (or ``endpoint=``) at :attr:`LocalHub.endpoint`.

Two listeners, because the client follows same-origin redirects on its metadata HEAD and the
CDN's answer carries no ``X-Repo-Commit`` (see shared/HUB-NOTES.md)::

    API   http://127.0.0.1:P1
      GET  /api/models/{repo}[/revision/{rev}][?blobs=true]    model_info
      GET  /api/models/{repo}/tree/{rev}[/{path}]?recursive=&expand=&cursor=   (Link: rel="next")
      POST /api/models/{repo}/paths-info/{rev}                 form: paths=..&paths=..&expand=
      GET  /api/models/{repo}/refs                             branches, tags, converts
      HEAD|GET /{repo}/resolve/{rev}/{path}                    plain file: 200 (+Range)
                                                               LFS file: 302 ──┐
    CDN   http://127.0.0.1:P2                                                  │
      HEAD|GET /repos/{repo}/{sha256}/{path}   ◀───────────────────────────────┘  200/206
    both  GET|DELETE /_modelfix/requests                       the request log (not logged)

Faults (:class:`Fault`) apply to byte downloads only: a GET on the CDN, or a GET on resolve
for a plain (non-LFS) file. No Xet header or field is ever sent, so the client uses plain HTTP.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

__all__ = ["LocalHub", "Fault", "Request", "is_lfs", "main"]

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_LFS_NAME = re.compile(r"\.gguf|\.(bin|safetensors)$")
_CHUNK = 4 * 1024 * 1024


def is_lfs(path: str, size: int) -> bool:
    """The Hub's choice for our repos: model weights and anything over 10 MiB go to LFS."""
    return bool(_LFS_NAME.search(path)) or size > LFS_SIZE_THRESHOLD


# ---------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Fault:
    """One way a byte download goes wrong. Build with the class methods, not the constructor."""

    kind: str  # status | reset | truncate | corrupt | stall
    status_code: int = 0
    retry_after: int | None = None
    after_bytes: int = 0
    offset: int = 0
    seconds: float = 0.0

    @classmethod
    def status(cls, code: int, retry_after: int | None = None) -> Fault:
        """Answer ``code`` (JSON error body) instead of the bytes, with ``Retry-After`` if given."""
        return cls("status", status_code=code, retry_after=retry_after)

    @classmethod
    def reset(cls, after_bytes: int = 0) -> Fault:
        """Send headers and ``after_bytes`` of the body, then a TCP RST (SO_LINGER 0)."""
        return cls("reset", after_bytes=after_bytes)

    @classmethod
    def truncate(cls, after_bytes: int) -> Fault:
        """Announce the full Content-Length, send ``after_bytes``, then close cleanly (FIN)."""
        return cls("truncate", after_bytes=after_bytes)

    @classmethod
    def corrupt(cls, offset: int) -> Fault:
        """Flip (XOR 0xFF) the byte at file ``offset`` when the served range covers it."""
        return cls("corrupt", offset=offset)

    @classmethod
    def stall(cls, seconds: float, after_bytes: int = 0) -> Fault:
        """Go silent for ``seconds``: before the status line if ``after_bytes`` is 0, else after
        that many body bytes; then answer normally."""
        return cls("stall", seconds=seconds, after_bytes=after_bytes)


@dataclass
class Request:
    """One logged request, as the server saw it."""

    origin: str  # "api" | "cdn"
    method: str
    path: str  # percent-decoded, without the query
    query: str
    range: str | None
    status: int
    repo: str | None
    filename: str | None


# ---------------------------------------------------------------------------------------------
# Repository model


@dataclass(frozen=True)
class _Blob:
    size: int
    oid: str  # git blob sha1; of the LFS pointer for LFS files, as on the Hub
    sha256: str | None  # LFS files only
    data: bytes | None = None
    path: Path | None = None

    @property
    def pointer_size(self) -> int:
        return len(_pointer(self.sha256 or "", self.size))

    def read(self, start: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[start : start + length]
        with open(self.path, "rb") as f:  # type: ignore[arg-type]
            f.seek(start)
            return f.read(length)


def _pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _make_blob(name: str, content: bytes | Path) -> _Blob:
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
        if is_lfs(name, len(data)):
            sha = hashlib.sha256(data).hexdigest()
            return _Blob(len(data), _git_oid(_pointer(sha, len(data))), sha, data=data)
        return _Blob(len(data), _git_oid(data), None, data=data)
    if not isinstance(content, os.PathLike):  # a str could be text or a path: make callers say
        raise TypeError(f"{name}: give bytes or a pathlib.Path, not {type(content).__name__}")
    path = Path(content).resolve()
    size = path.stat().st_size
    lfs = is_lfs(name, size)
    h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:  # streamed: tests serve files of a gigabyte
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    if lfs:
        return _Blob(size, _git_oid(_pointer(h.hexdigest(), size)), h.hexdigest(), path=path)
    return _Blob(size, h.hexdigest(), None, path=path)


@dataclass
class _Commit:
    sha: str
    parent: str | None
    tree: dict[str, _Blob]
    message: str
    date: datetime


@dataclass
class _Repo:
    id: str
    private: bool
    token: str | None
    created: datetime
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs: dict[str, _Blob] = field(default_factory=dict)  # sha256 -> blob, what the CDN serves

    def resolve(self, rev: str) -> _Commit | None:
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if rev.startswith(prefix) and rev[len(prefix) :] in refs:
                return self.commits[refs[rev[len(prefix) :]]]
        sha = self.branches.get(rev) or self.tags.get(rev) or rev
        return self.commits.get(sha)


def _iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def _dirs(tree: Mapping[str, _Blob]) -> set[str]:
    return {p.rsplit("/", i)[0] for p in tree for i in range(1, p.count("/") + 1)}


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


# ---------------------------------------------------------------------------------------------
# The hub


class LocalHub:
    """A local Hub server (API + CDN listeners). ``with LocalHub() as hub: ...``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, cdn_port: int = 0, page_size: int = 1000) -> None:
        self.host, self._port, self._cdn_port = host, port, cdn_port
        self.page_size = page_size
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._faults: dict[tuple[str, str], list[list[Any]]] = {}
        self._log: list[Request] = []
        self._counter = 0
        self._stopping = threading.Event()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.endpoint = ""
        self.cdn_endpoint = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalHub:
        if self._servers:
            return self
        self._stopping.clear()
        url_host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        for origin, port in (("api", self._port), ("cdn", self._cdn_port)):
            server = _Server((self.host, port), _Handler)
            server.hub, server.origin = self, origin
            self._servers.append(server)
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.name = f"LocalHub-{origin}"
            t.start()
            self._threads.append(t)
        api, cdn = (s.server_address[1] for s in self._servers)
        self.endpoint, self.cdn_endpoint = f"http://{url_host}:{api}", f"http://{url_host}:{cdn}"
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled answers
        for server in self._servers:
            server.shutdown()
            server.close_connections()  # idle keep-alive connections would hold threads forever
            server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- repositories ------------------------------------------------------------------------
    def create_repo(self, repo_id: str, private: bool = False, token: str | None = None) -> str:
        """Create a repo whose main holds one empty commit (the real Hub adds .gitattributes;
        we don't, so listings hold only what tests commit). Returns that commit's sha."""
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id!r} already exists")
            now = datetime.now(timezone.utc)
            repo = _Repo(repo_id, private, token, now)
            self._repos[repo_id] = repo
            return self._add_commit(repo, None, {}, "initial commit", "main")

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        branch: str = "main",
        message: str = "update",
        delete: Sequence[str] = (),
    ) -> str:
        """Add a commit on ``branch`` (created from main's head if missing): parent tree plus
        ``files``, minus ``delete`` (files or whole folders). Returns the 40-hex commit sha."""
        for name in files:
            if not name or name.startswith("/") or ".." in name.split("/") or "\\" in name:
                raise ValueError(f"bad path in repo: {name!r}")
        with self._lock:
            self._repo(repo_id)  # fail before hashing a gigabyte
        blobs = {name: _make_blob(name, content) for name, content in files.items()}  # hash outside the lock
        with self._lock:
            repo = self._repo(repo_id)
            parent = repo.branches.get(branch) or repo.branches["main"]
            tree = dict(repo.commits[parent].tree)
            for d in delete:
                d = d.strip("/")
                for p in [p for p in tree if p == d or p.startswith(d + "/")]:
                    del tree[p]
            tree.update(blobs)
            return self._add_commit(repo, parent, tree, message, branch)

    def create_branch(self, repo_id: str, branch: str, revision: str | None = None) -> str:
        return self._create_ref(repo_id, "branches", branch, revision)

    def create_tag(self, repo_id: str, tag: str, revision: str | None = None) -> str:
        return self._create_ref(repo_id, "tags", tag, revision)

    def url(self, repo_id: str, filename: str, revision: str = "main") -> str:
        """The resolve URL of a file, as ``hf_hub_url`` builds it."""
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"

    def _create_ref(self, repo_id: str, kind: str, name: str, revision: str | None) -> str:
        with self._lock:
            repo = self._repo(repo_id)
            refs: dict[str, str] = getattr(repo, kind)
            if name in refs:
                raise ValueError(f"{repo_id}: ref {name!r} already exists")
            commit = repo.resolve(revision or "main")
            if commit is None:
                raise ValueError(f"{repo_id}: unknown revision {revision!r}")
            refs[name] = commit.sha
            return commit.sha

    def _repo(self, repo_id: str) -> _Repo:
        try:
            return self._repos[repo_id]
        except KeyError:
            raise KeyError(f"no repo {repo_id!r} on this LocalHub: call create_repo first") from None

    def _add_commit(self, repo: _Repo, parent: str | None, tree: dict[str, _Blob], message: str, branch: str) -> str:
        self._counter += 1
        digest = hashlib.sha1("".join(f"{p}\0{b.oid}\n" for p, b in sorted(tree.items())).encode())
        sha = hashlib.sha1(f"{parent}\n{digest.hexdigest()}\n{message}\n{self._counter}".encode()).hexdigest()
        repo.commits[sha] = _Commit(sha, parent, tree, message, datetime.now(timezone.utc))
        repo.branches[branch] = sha
        repo.lfs.update({b.sha256: b for b in tree.values() if b.sha256})
        return sha

    # -- faults and the request log ----------------------------------------------------------
    def inject(self, repo_id: str, filename: str, fault: Fault, times: int | None = 1) -> None:
        """Make the next ``times`` byte downloads of ``filename`` (path in the repo) fail as
        ``fault`` (``None`` = every one). Faults on one file queue up in injection order."""
        with self._lock:
            self._faults.setdefault((repo_id, filename), []).append([fault, times])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, repo_id: str, filename: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get((repo_id, filename), [])
            while queue and queue[0][1] == 0:
                queue.pop(0)
            if not queue:
                return None
            if queue[0][1] is not None:
                queue[0][1] -= 1
            return queue[0][0]

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._log)

    def count(
        self,
        method: str | None = None,
        origin: str | None = None,
        path_contains: str | None = None,
        filename: str | None = None,
    ) -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (origin is None or r.origin == origin)
            and (path_contains is None or path_contains in r.path)
            and (filename is None or r.filename == filename)
        )

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()


# ---------------------------------------------------------------------------------------------
# HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # parallel range downloads open many connections at once
    hub: LocalHub
    origin: str

    def __init__(self, *args: Any) -> None:
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(*args)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can hang offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients drop keep-alive connections and abort downloads all the time (that is what
        # the fault tests do); only unexpected errors deserve a traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.conns_lock:
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _Server
    server_version = "LocalHub/1"

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the hub keeps its own log
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        # Logged before the answer leaves: a client that counts requests right after
        # its call returns must see this one.
        self._record()
        super().send_response(code, message)

    def _record(self) -> None:
        if self._logged:
            return
        self._logged = True
        split = urlsplit(self.path)
        with self.server.hub._lock:
            self.server.hub._log.append(
                Request(
                    self.server.origin, self.command, unquote(split.path), split.query,
                    self.headers.get("Range"), self._status, self._repo_id, self._filename,
                )
            )

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_DELETE = do_PUT = do_GET

    # -- dispatch ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        segs = [unquote(s) for s in split.path.split("/")[1:]]  # split first: %2F stays in one segment
        while segs and not segs[-1]:
            segs.pop()
        self._status, self._repo_id, self._filename = 0, None, None
        self._logged = False
        # Read any body up front, so that an early error answer leaves the connection in sync.
        self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if segs[:2] == ["_modelfix", "requests"]:
            self._logged = True  # the log does not log reads of itself
            return self._admin()
        try:
            if self.server.origin == "cdn":
                self._route_cdn(segs)
            else:
                self._route_api(segs, split.query)
        except _HttpError as e:
            self._send_json(e.status, {"error": e.message}, {"X-Error-Code": e.code} if e.code else {})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug here should show up as a 500, not a hung client
            traceback.print_exc()
            if self._status:
                self.close_connection = True
            else:
                self._send_json(500, {"error": f"LocalHub: {type(e).__name__}: {e}"})
        finally:
            self._record()  # answers that never got a status line (a reset) are logged too

    def _admin(self) -> None:
        hub = self.server.hub
        if self.command == "DELETE":
            hub.clear_log()
            return self._send(204, b"")
        self._send_json(200, [asdict(r) for r in hub.requests])

    def _split_repo(self, segs: list[str]) -> tuple[str, list[str]]:
        """Repo ids are usually org/name; a known one-segment id (gpt2) is accepted too."""
        repos = self.server.hub._repos
        if len(segs) >= 2 and f"{segs[0]}/{segs[1]}" not in repos and segs[0] in repos:
            repo_id, rest = segs[0], segs[1:]
        else:
            repo_id, rest = "/".join(segs[:2]), segs[2:]
        self._repo_id = repo_id
        return repo_id, rest

    def _route_api(self, segs: list[str], query: str) -> None:
        m, params = self.command, parse_qs(query)
        if segs[:2] == ["api", "models"] and len(segs) > 2:
            repo_id, rest = self._split_repo(segs[2:])
            head = rest[0] if rest else ""
            if m == "GET" and not rest:
                return self._info(repo_id, "main", params)
            if m == "GET" and head == "revision" and len(rest) > 1:
                return self._info(repo_id, "/".join(rest[1:]), params)
            if m == "GET" and head == "tree" and len(rest) > 1:
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), params)
            if m == "POST" and head == "paths-info" and len(rest) > 1:
                return self._paths_info(repo_id, "/".join(rest[1:]))
            if m == "GET" and rest == ["refs"]:
                return self._refs(repo_id, params)
        elif m in ("GET", "HEAD") and len(segs) > 3:
            repo_id, rest = self._split_repo(segs)
            if len(rest) > 2 and rest[0] == "resolve":
                return self._resolve(repo_id, rest[1], "/".join(rest[2:]))
        raise _HttpError(404, f"LocalHub does not serve {m} {urlsplit(self.path).path}")

    # -- API routes --------------------------------------------------------------------------
    def _lookup(self, repo_id: str, rev: str) -> tuple[_Repo, _Commit]:
        hub = self.server.hub
        with hub._lock:
            repo = hub._repos.get(repo_id)
            if repo is None:
                raise _HttpError(404, f"Repository not found: {repo_id}", "RepoNotFound")
            auth = self.headers.get("Authorization", "")
            if repo.private and (repo.token is None or auth != f"Bearer {repo.token}"):
                # The Hub answers 401 + RepoNotFound: it does not reveal that a private repo exists.
                raise _HttpError(401, f"Repository not found: {repo_id}", "RepoNotFound")
            commit = repo.resolve(rev)
            if commit is None:
                raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return repo, commit

    def _info(self, repo_id: str, rev: str, params: dict[str, list[str]]) -> None:
        repo, c = self._lookup(repo_id, rev)
        blobs = params.get("blobs", [""])[0].lower() == "true"
        siblings = []
        for path, b in sorted(c.tree.items()):
            s: dict[str, Any] = {"rfilename": path}
            if blobs:
                s.update(size=b.size, blobId=b.oid)
                if b.sha256:
                    s["lfs"] = {"sha256": b.sha256, "size": b.size, "pointerSize": b.pointer_size}
            siblings.append(s)
        body = {
            "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24], "id": repo.id, "modelId": repo.id,
            "author": repo.id.split("/")[0], "sha": c.sha, "lastModified": _iso(c.date),
            "createdAt": _iso(repo.created), "private": repo.private, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings, "spaces": [],
            "usedStorage": sum(b.size for b in c.tree.values()),
        }
        self._send_json(200, body)

    def _entries(self, repo: _Repo, c: _Commit, paths: list[str], expand: bool) -> list[dict[str, Any]]:
        out = []
        for path in paths:
            if path in c.tree:
                b = c.tree[path]
                e: dict[str, Any] = {"type": "file", "oid": b.oid, "size": b.size, "path": path}
                if b.sha256:
                    e["lfs"] = {"oid": b.sha256, "size": b.size, "pointerSize": b.pointer_size}
                last = self._last_commit(repo, c, path)
            else:
                under = sorted(f"{p}\0{b.oid}" for p, b in c.tree.items() if p.startswith(path + "/"))
                e = {"type": "directory", "oid": hashlib.sha1("\n".join(under).encode()).hexdigest(),
                     "size": 0, "path": path}
                last = c
            if expand:
                e["lastCommit"] = {"id": last.sha, "title": last.message.split("\n")[0], "date": _iso(last.date)}
            out.append(e)
        return out

    @staticmethod
    def _last_commit(repo: _Repo, c: _Commit, path: str) -> _Commit:
        """The oldest ancestor from which ``path`` kept the same content up to ``c``."""
        oid = c.tree[path].oid
        while c.parent and getattr(repo.commits[c.parent].tree.get(path), "oid", None) == oid:
            c = repo.commits[c.parent]
        return c

    def _tree(self, repo_id: str, rev: str, path: str, params: dict[str, list[str]]) -> None:
        repo, c = self._lookup(repo_id, rev)
        recursive = params.get("recursive", [""])[0].lower() == "true"
        expand = params.get("expand", [""])[0].lower() == "true"
        dirs = _dirs(c.tree)
        if path and path not in dirs:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        prefix = path + "/" if path else ""
        names = [p for p in (*c.tree, *dirs) if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])]
        names.sort(key=lambda p: p.split("/"))  # a folder comes right before its contents
        try:
            cursor = params.get("cursor", [""])[0]
            start = int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))) if cursor else 0
        except ValueError:
            raise _HttpError(400, "invalid cursor") from None
        size = self.server.hub.page_size
        headers = {}
        if start + size < len(names):
            query = {k: v for k, v in params.items() if k != "cursor"}
            query["cursor"] = [base64.urlsafe_b64encode(str(start + size).encode()).decode().rstrip("=")]
            link = f"{self.server.hub.endpoint}{urlsplit(self.path).path}?{urlencode(query, doseq=True)}"
            headers["Link"] = f'<{link}>; rel="next"'
        self._send_json(200, self._entries(repo, c, names[start : start + size], expand), headers)

    def _paths_info(self, repo_id: str, rev: str) -> None:
        form = parse_qs(self._body.decode(), keep_blank_values=True)
        repo, c = self._lookup(repo_id, rev)
        dirs = _dirs(c.tree)
        paths = [p.strip("/") for p in form.get("paths", [])]
        known = [p for p in dict.fromkeys(paths) if p in c.tree or p in dirs]  # the Hub skips unknown paths
        expand = form.get("expand", [""])[0].lower() == "true"
        self._send_json(200, self._entries(repo, c, known, expand))

    def _refs(self, repo_id: str, params: dict[str, list[str]]) -> None:
        repo, _ = self._lookup(repo_id, "main")
        with self.server.hub._lock:
            body: dict[str, Any] = {
                kind: [{"name": n, "ref": f"refs/{ref}/{n}", "targetCommit": sha} for n, sha in sorted(refs.items())]
                for kind, ref, refs in (("branches", "heads", repo.branches), ("tags", "tags", repo.tags))
            }
        body["converts"] = []
        if params.get("include_prs"):
            body["pullRequests"] = []
        self._send_json(200, body)

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        self._filename = path
        repo, c = self._lookup(repo_id, rev)
        blob = c.tree.get(path)
        if blob is None:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {"X-Repo-Commit": c.sha}
        if blob.sha256:
            cdn = f"{self.server.hub.cdn_endpoint}/repos/{repo.id}/{blob.sha256}/{quote(path)}"
            headers.update({"Location": cdn, "ETag": f'"{blob.sha256}"', "X-Linked-Etag": f'"{blob.sha256}"',
                            "X-Linked-Size": str(blob.size)})
            return self._send(302, f"Found. Redirecting to {cdn}".encode(), headers, "text/plain; charset=utf-8")
        headers["ETag"] = f'"{blob.oid}"'
        self._send_blob(blob, repo.id, path, headers)

    def _route_cdn(self, segs: list[str]) -> None:
        # Like the Hub's signed CDN URLs: no token needed, the URL itself is the capability.
        if self.command in ("GET", "HEAD") and segs[:1] == ["repos"]:
            repo_id, rest = self._split_repo(segs[1:])
            if len(rest) >= 2:
                self._filename = "/".join(rest[1:])
                with self.server.hub._lock:
                    repo = self.server.hub._repos.get(repo_id)
                    blob = repo.lfs.get(rest[0]) if repo else None
                if blob is not None:
                    name = quote(self._filename.rsplit("/", 1)[-1])
                    headers = {"ETag": f'"{blob.sha256}"',
                               "Content-Disposition": f"inline; filename*=UTF-8''{name}; filename=\"{name}\";"}
                    return self._send_blob(blob, repo_id, self._filename, headers)
        raise _HttpError(404, "NoSuchKey")

    # -- answers -----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, headers: Mapping[str, str] = {}, ctype: str | None = None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] = {}) -> None:
        self._send(status, json.dumps(obj).encode(), headers, "application/json; charset=utf-8")

    def _send_blob(self, blob: _Blob, repo_id: str, path: str, headers: dict[str, str]) -> None:
        start, end, partial = _parse_range(self.headers.get("Range"), blob.size)
        if start < 0:
            return self._send(416, b"", {**headers, "Content-Range": f"bytes */{blob.size}"})
        fault = self.server.hub._take_fault(repo_id, path) if self.command == "GET" else None
        kind = fault.kind if fault else ""
        if fault and kind == "status":
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return self._send_json(fault.status_code, {"error": f"injected fault: {fault.status_code}"}, extra)
        if fault and kind == "stall" and fault.after_bytes <= 0:
            self.server.hub._stopping.wait(fault.seconds)
        self.send_response(206 if partial else 200)
        for k, v in {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}.items():
            self.send_header(k, v)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault and kind in ("reset", "truncate"):
            self._write(blob, start, min(end, start + fault.after_bytes), None)
            if kind == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                os.close(self.connection.detach())  # detach: rfile/wfile still hold the socket object
            self.close_connection = True  # truncate: the server's shutdown(SHUT_WR) sends FIN
            return
        if fault and kind == "stall" and fault.after_bytes > 0:
            cut = min(end, start + fault.after_bytes)
            self._write(blob, start, cut, None)
            self.server.hub._stopping.wait(fault.seconds)
            start = cut
        self._write(blob, start, end, fault.offset if kind == "corrupt" else None)

    def _write(self, blob: _Blob, start: int, end: int, corrupt_at: int | None) -> None:
        if corrupt_at is not None and start <= corrupt_at < end:
            self._write(blob, start, corrupt_at, None)
            self.wfile.write(bytes([blob.read(corrupt_at, 1)[0] ^ 0xFF]))
            return self._write(blob, corrupt_at + 1, end, None)
        if end <= start:
            return
        if blob.data is not None:
            self.wfile.write(memoryview(blob.data)[start:end])
        else:
            with open(blob.path, "rb") as f:  # type: ignore[arg-type]
                self.connection.sendfile(f, offset=start, count=end - start)  # zero-copy for big files


def _parse_range(header: str | None, size: int) -> tuple[int, int, bool]:
    """(start, end exclusive, partial); start -1 = unsatisfiable. Multi-ranges are ignored."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if not m or size == 0 or m.group(1) == m.group(2) == "":
        return 0, size, False
    if m.group(1) == "":  # suffix: the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size, True) if n else (-1, -1, True)
    start = int(m.group(1))
    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
    if start >= size or end <= start:
        return -1, -1, True
    return start, end, True


# ---------------------------------------------------------------------------------------------
# Command line


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(".git/") and "/.git/" not in rel:
            yield rel, p


def main(argv: Sequence[str] | None = None) -> int:
    """``modelfix-hub``: serve folders as Hub repos until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="modelfix-hub", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0)
    parser.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=DIR",
                        help="serve DIR's files (recursive) as one commit on main")
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args(argv)
    hub = LocalHub(args.host, args.port, args.cdn_port, args.page_size)
    for spec in args.repo:
        repo_id, sep, folder = spec.partition("=")
        if not sep or not Path(folder).is_dir():
            parser.error(f"--repo wants ORG/NAME=DIR with an existing DIR, got {spec!r}")
        hub.create_repo(repo_id)
        hub.commit(repo_id, dict(_walk(Path(folder))), message=f"add {folder}")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with hub:
        print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
        while not done.wait(0.5):  # a timed wait lets the signal handler run promptly
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

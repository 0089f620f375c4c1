"""A local Hugging Face Hub: enough of the Hub's HTTP protocol for the real ``huggingface_hub``.

This module owns the in-process fake Hub used by modelfix's tests (and offered to its users):
repositories with commits, branches and tags held in memory, files served from bytes or from
disk, an injectable fault per file, a log of every request, and the ``modelfix-hub`` command,
which serves folders as commits and adds commits to a running hub (``modelfix-hub commit``),
so that ``modelfix lock --upgrade`` can be tried with no network.
Nothing is mocked on the client side: point ``HF_ENDPOINT`` (or ``endpoint=``) at
:attr:`LocalHub.endpoint`. The listeners and the routes below live in
:mod:`modelfix.testing._hub_http`, which serves this module's state.

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
    API   POST /_modelfix/commit/{repo}                         modelfix-hub commit (not logged)

Faults (:class:`~modelfix.testing.faults.Fault`) apply to byte downloads only: a GET on the CDN, or a GET on resolve
for a plain (non-LFS) file. No Xet header or field is ever sent, so the client uses plain HTTP.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from modelfix.testing._hub_http import HubHandler, HubServer
from modelfix.testing.faults import Fault, Request

__all__ = ["LocalHub", "Fault", "Request", "is_lfs", "main", "build_parser"]

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_LFS_NAME = re.compile(r"\.gguf|\.(bin|safetensors)$")
_CHUNK = 4 * 1024 * 1024


def is_lfs(path: str, size: int) -> bool:
    """The Hub's choice for our repos: model weights and anything over 10 MiB go to LFS."""
    return bool(_LFS_NAME.search(path)) or size > LFS_SIZE_THRESHOLD


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
        with open(self.path, "rb") as f:  # type: ignore[arg-type]  # a blob not held in memory has a path
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
    gated: bool = False
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


# ---------------------------------------------------------------------------------------------
# The hub


class LocalHub:
    """A local Hub server (API + CDN listeners). ``with LocalHub() as hub: ...``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, cdn_port: int = 0, page_size: int = 1000) -> None:
        self.host, self._port, self._cdn_port = host, port, cdn_port
        self.page_size = page_size
        # Where a listing's Link: rel="next" points: None the endpoint itself; "" a relative URL;
        # else that base (the Hub's canonical host, when HF_ENDPOINT spells it otherwise).
        self.page_link_base: str | None = None
        # False: every byte request gets the whole file (200), as some mirrors and proxies answer.
        self.honour_ranges = True
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._revoked: set[str] = set()
        self._faults: dict[tuple[str, str | None], list[list[Any]]] = {}  # None: the repo's API calls
        self._log: list[Request] = []
        self._counter = 0
        self._stopping = threading.Event()
        self._unstall = threading.Event()  # set (and replaced) by release_stalls(): ends the stalls under way
        self._servers: list[HubServer] = []
        self._threads: list[threading.Thread] = []
        self._uploads: str | None = None  # where files committed over HTTP are kept, made on the first
        self.endpoint = ""
        self.cdn_endpoint = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalHub:
        if self._servers:
            return self
        self._stopping.clear()
        self._unstall = threading.Event()
        url_host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        for origin, port in (("api", self._port), ("cdn", self._cdn_port)):
            server = HubServer((self.host, port), HubHandler)
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
        self._stopping.set()
        self._unstall.set()  # wakes stalled answers
        for server in self._servers:
            server.shutdown()
            server.close_connections()  # idle keep-alive connections would hold threads forever
            server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers, self._threads = [], []
        if self._uploads is not None:  # the files of commits made over HTTP go with the server
            shutil.rmtree(self._uploads, ignore_errors=True)
            self._uploads = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- repositories ------------------------------------------------------------------------
    def create_repo(self, repo_id: str, private: bool = False, token: str | None = None, gated: bool = False) -> str:
        """Create a repo whose main holds one empty commit (the real Hub adds .gitattributes;
        we don't, so listings hold only what tests commit). Returns that commit's sha.

        ``private``: every request needs ``token``. ``gated``: the metadata is public but the files
        need ``token`` (the account that accepted the terms): without a token 401, with another
        403, both ``X-Error-Code: GatedRepo``, as on the Hub."""
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id!r} already exists")
            now = datetime.now(timezone.utc)
            repo = _Repo(repo_id, private, token, now, gated)
            self._repos[repo_id] = repo
            return self._add_commit(repo, None, {}, "initial commit", "main")

    def revoke_token(self, token: str) -> None:
        """From now on ``token`` is unknown, as a revoked or expired token is to the Hub: every
        request that sends it gets 401 ``Invalid credentials in Authorization header``."""
        with self._lock:
            self._revoked.add(token)

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
            for deleted in delete:
                d = deleted.strip("/")
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

    def _receive(self, stream: Any, size: int) -> Path:
        """``size`` bytes of an upload, read from ``stream`` into a file of the hub's own."""
        with self._lock:
            if self._uploads is None:
                self._uploads = tempfile.mkdtemp(prefix="modelfix-hub-")
        fd, name = tempfile.mkstemp(dir=self._uploads)
        with os.fdopen(fd, "wb") as f:
            left = size
            while left:
                chunk = stream.read(min(_CHUNK, left))
                if not chunk:
                    raise ValueError(f"the upload ended {left} bytes early")
                f.write(chunk)
                left -= len(chunk)
        return Path(name)

    def _commit_upload(
        self, repo_id: str, files: Mapping[str, Path], message: str, branch: str, delete: Sequence[str]
    ) -> str:
        """A commit of uploaded ``files`` on ``branch``; the repository is created if it is new."""
        with self._lock:
            if repo_id not in self._repos:
                self.create_repo(repo_id)
        return self.commit(repo_id, files, branch=branch, message=message, delete=delete)

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

    def inject_api(self, repo_id: str, fault: Fault, times: int | None = 1) -> None:
        """Make the next ``times`` API calls about ``repo_id`` (``/api/models/{repo}/...``: info,
        tree, paths-info, refs) fail as ``fault``: an error status, a reset before any answer, or
        a stall before answering."""
        with self._lock:
            self._faults.setdefault((repo_id, None), []).append([fault, times])

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def release_stalls(self) -> None:
        """End every stall under way now (they answer normally from there); later stalls stall again.

        With a long stall (``Fault.stall(60, ...)``) and this, a test holds a download in flight
        exactly as long as it needs, however slow the machine, rather than betting on a duration.
        """
        with self._lock:
            released, self._unstall = self._unstall, threading.Event()
        released.set()

    def _stall(self, seconds: float) -> None:
        """Go silent for ``seconds``, or until :meth:`release_stalls` or :meth:`stop`."""
        with self._lock:
            unstall = self._unstall
        if not self._stopping.is_set():
            unstall.wait(seconds)

    def _take_fault(self, repo_id: str, filename: str | None) -> Fault | None:
        with self._lock:
            queue = self._faults.get((repo_id, filename), [])
            while queue and queue[0][1] == 0:
                queue.pop(0)
            if not queue:
                return None
            if queue[0][1] is not None:
                queue[0][1] -= 1
            return queue[0][0]

    def _record(self, *fields: Any) -> None:
        """Log one request; ``fields`` are :class:`Request`'s, in order. The handler passes
        fields rather than a Request so that the HTTP module needs no runtime import of this one."""
        with self._lock:
            self._log.append(Request(*fields))

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
# Command line


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(".git/") and "/.git/" not in rel:
            yield rel, p


def build_parser() -> argparse.ArgumentParser:
    """``modelfix-hub``'s options (serving), with the ``commit`` sub-command."""
    parser = argparse.ArgumentParser(
        prog="modelfix-hub",
        description="Serve folders as Hugging Face Hub repositories on this machine, for tests and offline "
        "try-outs: point HF_ENDPOINT at the URL it prints. Runs until Ctrl-C or SIGTERM. The hub has no "
        "authentication: whoever can reach its port can read and add commits (it listens on 127.0.0.1 "
        "unless --host says otherwise).",
        epilog="Example: modelfix-hub --repo me/tiny-GGUF=./v1, then `export HF_ENDPOINT=...` as it prints, "
        "`modelfix add tiny me/tiny-GGUF`, `modelfix-hub commit me/tiny-GGUF ./v2` and `modelfix lock --upgrade`.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, metavar="N", help="API port (default: a free one)")
    parser.add_argument(
        "--cdn-port",
        type=int,
        default=0,
        metavar="N",
        help="port of the CDN that serves LFS files (default: a free one)",
    )
    parser.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="ORG/NAME=DIR",
        help="serve DIR's files (recursive) as a commit on main of ORG/NAME; repeat an ORG/NAME for several "
        "commits, in order (the last is main's head)",
    )
    parser.add_argument(
        "--page-size", type=int, default=1000, metavar="N", help="entries per page of a tree listing (default: 1000)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", help="without one: serve")
    commit = commands.add_parser(
        "commit",
        help="add a commit to a running hub",
        description="Add a commit to a running modelfix-hub: DIR's files (recursive) on top of the branch's "
        "files, as `hf upload` does. Creates the repository if it is new. Prints the commit's sha.",
    )
    commit.add_argument("repo_id", metavar="ORG/NAME", help="the repository to commit to")
    commit.add_argument("folder", metavar="DIR", help="the folder whose files to commit")
    commit.add_argument("-m", "--message", help="commit message (default: add DIR)")
    commit.add_argument("--branch", default="main", help="branch to commit to, made from main if new (default: main)")
    commit.add_argument(
        "--delete",
        action="append",
        default=[],
        metavar="PATH",
        help="a file or folder to remove in the commit (repeatable)",
    )
    commit.add_argument("--endpoint", metavar="URL", help="the hub's URL, as it printed it (default: $HF_ENDPOINT)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``modelfix-hub``: serve folders as Hub repos until SIGTERM/SIGINT, or ``commit`` to a running one."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "commit":
        if not Path(args.folder).is_dir():
            parser.error(f"commit: {args.folder} is not a folder")
        try:
            return _commit(args)
        except HubCommandError as exc:
            print(f"modelfix-hub commit: {exc}", file=sys.stderr)
            return 1
    hub = LocalHub(args.host, args.port, args.cdn_port, args.page_size)
    for spec in args.repo:
        repo_id, sep, folder = spec.partition("=")
        if not sep or not Path(folder).is_dir():
            parser.error(f"--repo wants ORG/NAME=DIR with an existing DIR, got {spec!r}")
        if repo_id not in hub._repos:
            hub.create_repo(repo_id)
        sha = hub.commit(repo_id, dict(_walk(Path(folder))), message=f"add {folder}")
        print(f"{repo_id}  {sha}  (main)  from {folder}", file=sys.stderr)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with hub:
        print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
        print(f"add a commit: modelfix-hub commit ORG/NAME DIR --endpoint {hub.endpoint}", file=sys.stderr, flush=True)
        while not done.wait(0.5):  # a timed wait lets the signal handler run promptly
            pass
    return 0


class HubCommandError(Exception):
    """``modelfix-hub commit`` could not add its commit; the message says why and what to do."""


def _commit(args: argparse.Namespace) -> int:
    """Send DIR's files to the hub at ``--endpoint`` as one commit
    (the format: :data:`modelfix.testing._hub_http.UPLOAD_FORMAT`)."""
    endpoint = args.endpoint or os.environ.get("HF_ENDPOINT")
    if not endpoint:
        raise HubCommandError("which hub? Pass --endpoint URL (the HF_ENDPOINT=... line modelfix-hub printed).")
    url = urlsplit(endpoint)
    if url.scheme != "http" or not url.hostname:
        raise HubCommandError(f"--endpoint {endpoint!r} is not a modelfix-hub URL (http://HOST:PORT).")
    folder = Path(args.folder)
    files = dict(_walk(folder))
    head = json.dumps(
        {
            "files": [{"path": path, "size": file.stat().st_size} for path, file in files.items()],
            "message": args.message or f"add {folder}",
            "branch": args.branch,
            "delete": args.delete,
        }
    ).encode()
    head += b"\n"

    def body() -> Iterator[bytes]:
        yield head
        for file in files.values():
            with open(file, "rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk

    length = len(head) + sum(file.stat().st_size for file in files.values())
    connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=600)
    try:
        connection.request(
            "POST",
            f"{url.path.rstrip('/')}/_modelfix/commit/{quote(args.repo_id)}",
            body=body(),
            headers={"Content-Length": str(length), "Content-Type": "application/x-modelfix-commit"},
        )
        answer = connection.getresponse()
        text = answer.read().decode("utf-8", "replace")
    except OSError as exc:
        raise HubCommandError(
            f"no hub answers at {endpoint} ({exc.strerror or exc}). Start one with `modelfix-hub --repo ORG/NAME=DIR` "
            "and pass the HF_ENDPOINT it prints as --endpoint."
        ) from None
    finally:
        connection.close()
    try:
        reply = json.loads(text)
    except ValueError:
        reply = {}
    if answer.status != 200 or "commit" not in reply:
        raise HubCommandError(f"{endpoint} answered {answer.status}: {reply.get('error') or text[:200]}")
    noun = "file" if len(files) == 1 else "files"
    print(
        f"{args.repo_id}: commit {reply['commit']} on {args.branch}, {len(files)} {noun} from {folder}", file=sys.stderr
    )
    print(reply["commit"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

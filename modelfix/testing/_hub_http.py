"""The HTTP side of :class:`~modelfix.testing.hub.LocalHub`: listeners, routing and answers.

This module owns the two ``ThreadingHTTPServer`` listeners (API and CDN), the request handler
that routes each request (the route diagram is in :mod:`modelfix.testing.hub`), the JSON the
Hub's API answers with, ``Range`` parsing, and applying an injected :class:`Fault` to a byte
download. It holds no state of its own: every server carries the ``LocalHub`` whose
repositories, faults and request log it serves, so this module only needs ``hub``'s types
for annotations and the import stays one-way (``hub`` imports this module, never the reverse).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import socketserver
import struct
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    from modelfix.testing.hub import LocalHub, _Blob, _Commit, _Repo

__all__ = ["HubServer", "HubHandler", "parse_range", "UPLOAD_FORMAT"]

UPLOAD_FORMAT = """\
POST /_modelfix/commit/{ORG/NAME}   (API listener; the repository is created if missing)
  one JSON line: {"files": [{"path": "a/x.gguf", "size": 123}, ...], "message": "...",
                  "branch": "main", "delete": ["old.gguf"]}
  then each file's bytes, in that order; Content-Length = the line + the sizes
-> 200 {"commit": "<40 hex>", "files": N}, or 400 {"error": "..."}
"""
_MAX_UPLOAD_HEAD = 1 << 20  # the JSON line: a million bytes list some ten thousand files
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def _dirs(tree: Mapping[str, _Blob]) -> set[str]:
    return {p.rsplit("/", i)[0] for p in tree for i in range(1, p.count("/") + 1)}


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # parallel range downloads open many connections at once
    hub: LocalHub  # set by LocalHub.start: the state this listener serves
    origin: str

    def __init__(self, *args: Any) -> None:
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(*args)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can hang offline.
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        self.server_name = host if isinstance(host, str) else bytes(host).decode()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients drop keep-alive connections and abort downloads all the time (that is what
        # the fault tests do); only unexpected errors deserve a traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.conns_lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: HubServer
    server_version = "LocalHub/1"
    # What the request log records of the request being answered (reset for each one by _dispatch).
    _status: int = 0
    _repo_id: str | None = None
    _filename: str | None = None
    _logged: bool = False

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

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
        self.server.hub._record(
            self.server.origin,
            self.command,
            unquote(split.path),
            split.query,
            self.headers.get("Range"),
            self._status,
            self._repo_id,
            self._filename,
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
        if segs[:2] == ["_modelfix", "commit"] and self.command == "POST" and self.server.origin == "api":
            self._logged = True  # an admin call, like the log's: not a request of the Hub's protocol
            return self._upload("/".join(segs[2:]))
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
            headers = {"X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
            self._send_json(e.status, {"error": e.message}, headers)
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

    def _upload(self, repo_id: str) -> None:
        """``modelfix-hub commit``: a commit of the files in the body, streamed to disk (see :data:`UPLOAD_FORMAT`)."""
        hub = self.server.hub
        try:
            if not _REPO_ID.fullmatch(repo_id):
                raise ValueError(f"bad repository id {repo_id!r}: use ORG/NAME")
            length = int(self.headers.get("Content-Length") or -1)
            head = self.rfile.readline(_MAX_UPLOAD_HEAD + 1)
            meta = json.loads(head) if head.endswith(b"\n") else None
            if not isinstance(meta, dict) or not isinstance(meta.get("files"), list):
                raise ValueError(
                    "the body must start with one JSON line {files: [{path, size}], message, branch, delete}"
                )
            files = [(f["path"], f["size"]) for f in meta["files"]]
            if not all(isinstance(p, str) and isinstance(n, int) and n >= 0 for p, n in files):
                raise ValueError("each file needs a path (string) and a size (bytes)")
            if len(head) + sum(n for _, n in files) != length:
                raise ValueError("Content-Length is not the JSON line plus the files' sizes")
            received = {path: hub._receive(self.rfile, size) for path, size in files}
            message, branch = str(meta.get("message") or "upload"), str(meta.get("branch") or "main")
            sha = hub._commit_upload(repo_id, received, message, branch, [str(d) for d in meta.get("delete") or ()])
        except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            self.close_connection = True  # the rest of the body was not read
            return self._send_json(400, {"error": f"LocalHub: {exc}"})
        self._send_json(200, {"commit": sha, "files": len(files)})

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
            if self._api_fault(repo_id):
                return
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

    def _api_fault(self, repo_id: str) -> bool:
        """Apply a fault injected with ``LocalHub.inject_api``; True if it took the answer's place."""
        fault = self.server.hub._take_fault(repo_id, None)
        if fault is None:
            return False
        if fault.kind == "stall":
            self.server.hub._stall(fault.seconds)
            return False
        if fault.kind == "status":
            extra = _fault_headers(fault)
            self._send_json(fault.status_code, {"error": f"injected fault: {fault.status_code}"}, extra)
            return True
        # reset / truncate: the connection dies before any answer
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        os.close(self.connection.detach())
        self.close_connection = True
        return True

    # -- API routes --------------------------------------------------------------------------
    def _lookup(self, repo_id: str, rev: str, files: bool = False) -> tuple[_Repo, _Commit]:
        """The repo and commit a request names, if its token may read them (``files``: the bytes,
        which a gated repo keeps from those who did not accept its terms)."""
        hub = self.server.hub
        with hub._lock:
            auth = self.headers.get("Authorization", "")
            if auth.removeprefix("Bearer ") in hub._revoked:
                raise _HttpError(401, "Invalid credentials in Authorization header")  # no X-Error-Code, as the Hub
            repo = hub._repos.get(repo_id)
            if repo is None:
                raise _HttpError(404, f"Repository not found: {repo_id}", "RepoNotFound")
            allowed = repo.token is not None and auth == f"Bearer {repo.token}"
            if repo.private and not allowed:
                # The Hub answers 401 + RepoNotFound: it does not reveal that a private repo exists.
                raise _HttpError(401, f"Repository not found: {repo_id}", "RepoNotFound")
            if repo.gated and files and not allowed:
                if not auth:
                    message = "You must have access to it and be authenticated to access it. Please log in."
                    raise _HttpError(401, f"Access to model {repo_id} is restricted. {message}", "GatedRepo")
                where = f"{self.server.hub.endpoint}/{repo_id}"
                message = f"you are not in the authorized list. Visit {where} to ask for access."
                raise _HttpError(403, f"Access to model {repo_id} is restricted and {message}", "GatedRepo")
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
            "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24],
            "id": repo.id,
            "modelId": repo.id,
            "author": repo.id.split("/")[0],
            "sha": c.sha,
            "lastModified": _iso(c.date),
            "createdAt": _iso(repo.created),
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "spaces": [],
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
                e = {
                    "type": "directory",
                    "oid": hashlib.sha1("\n".join(under).encode()).hexdigest(),
                    "size": 0,
                    "path": path,
                }
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
            base = self.server.hub.page_link_base
            base = self.server.hub.endpoint if base is None else base
            link = f"{base}{urlsplit(self.path).path}?{urlencode(query, doseq=True)}"
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
        repo, c = self._lookup(repo_id, rev, files=True)
        blob = c.tree.get(path)
        if blob is None:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {"X-Repo-Commit": c.sha}
        if blob.sha256:
            cdn = f"{self.server.hub.cdn_endpoint}/repos/{repo.id}/{blob.sha256}/{quote(path)}"
            headers.update(
                {
                    "Location": cdn,
                    "ETag": f'"{blob.sha256}"',
                    "X-Linked-Etag": f'"{blob.sha256}"',
                    "X-Linked-Size": str(blob.size),
                }
            )
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
                    name = quote(rest[-1])
                    headers = {
                        "ETag": f'"{blob.sha256}"',
                        "Content-Disposition": f"inline; filename*=UTF-8''{name}; filename=\"{name}\";",
                    }
                    return self._send_blob(blob, repo_id, "/".join(rest[1:]), headers)
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
        start, end, partial = (
            parse_range(self.headers.get("Range"), blob.size)
            if self.server.hub.honour_ranges
            else (0, blob.size, False)
        )
        if start < 0:
            return self._send(416, b"", {**headers, "Content-Range": f"bytes */{blob.size}"})
        fault = self.server.hub._take_fault(repo_id, path) if self.command == "GET" else None
        kind = fault.kind if fault else ""
        if fault and kind == "status":
            extra = _fault_headers(fault)
            return self._send_json(fault.status_code, {"error": f"injected fault: {fault.status_code}"}, extra)
        if fault and kind == "stall" and fault.after_bytes <= 0:
            self.server.hub._stall(fault.seconds)
        if fault and kind == "short" and partial:
            end = min(end, start + fault.after_bytes)
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
            self.server.hub._stall(fault.seconds)
            start = cut
        self._write(blob, start, end, fault.offset if fault and kind == "corrupt" else None)

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
            with open(blob.path, "rb") as f:  # type: ignore[arg-type]  # a blob not held in memory has a path
                self.connection.sendfile(f, offset=start, count=end - start)  # zero-copy for big files


def _fault_headers(fault: Any) -> dict[str, str]:
    """The waiting headers of a status fault: ``Retry-After``, and the Hub's quota headers."""
    extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    if fault.ratelimit_reset is not None:
        extra["RateLimit"] = f'"api";r=0;t={fault.ratelimit_reset}'
        extra["RateLimit-Policy"] = '"fixed window";"api";q=500;w=300'
    return extra


def parse_range(header: str | None, size: int) -> tuple[int, int, bool]:
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

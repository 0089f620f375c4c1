"""Reading byte ranges from an origin: one small interface, two transports.

::

    Transport.read(start, end) -> Body(start, total, chunks, abort)
                                  Body.readinto(buffer): the same bytes, into the caller's buffer

* :class:`HttpTransport` for every ``http(s)://`` URL, the Hub's resolve URLs
  included: huggingface_hub's own ``httpx2`` session, redirects followed by
  hand so the bearer token goes to the Hub's origin only (the 302 to the CDN
  is another origin). It shows us the 206/Content-Range answers that
  ``HfFileSystem`` hides; plain ``https://`` goes through it too, so no
  aiohttp is needed. The session sends the request and reads the headers
  (proxies, TLS settings and a ``set_client_factory`` of the user's all
  apply); the body of a plain HTTP/1.1 answer is then read from the
  connection's socket straight into the caller's buffer::

      socket --recv_into--> buffer          (httpx2: socket -> h11's buffer -> a new bytes per 64 KiB)

  That is a quarter of the CPU per byte, and what lets one stream keep up with
  the disk. Anything else (chunked, HTTP/2, TLS inside a proxy's TLS, a
  session without sockets) goes through httpx2's ``iter_raw`` as before.
* :class:`FsspecTransport` for everything else fsspec can open: ``file://``,
  ``s3://``, ``gs://``, ``memory://``, ``hf://`` ...

A transport makes one attempt and says how it went: bytes, or
:class:`~modelfix.retry.Transient` (worth another try: 5xx, 429, reset, truncation, stall),
or a :class:`~modelfix.errors.ModelfixError` that no retry fixes (missing,
denied). Retrying, resuming and hashing are :mod:`modelfix.fetch`'s business. Where
the bytes are (:class:`Location`) is a source's answer (:mod:`modelfix.sources`).
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from .errors import AuthError, IntegrityError, NetworkError, SourceError, SourceMissing, redact
from .retry import Transient, retry_after

__all__ = [
    "CHUNK",
    "Location",
    "Body",
    "Transport",
    "Timeouts",
    "HttpTransport",
    "FsspecTransport",
    "transport_for",
]

CHUNK = 1024 * 1024  # the unit bytes are written and hashed in


@dataclass(frozen=True)
class Location:
    """Where a pinned file's bytes can be read: an fsspec URL and its options (a source's answer).

    ``storage_options`` may carry a token: never log or print them.
    """

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)


class Timeouts(Protocol):
    """What a transport needs to know of the fetch policy (:class:`modelfix.fetch.FetchPolicy` is one)."""

    @property
    def read_timeout(self) -> float: ...

    @property
    def connect_timeout(self) -> float: ...


@dataclass(eq=False)
class Body:
    """An answer to ``read(start, end)``: where its bytes begin (0 if the server
    ignored the range), the file's total size if the server said, the bytes, and
    ``abort()``, callable from any thread, which makes a blocked read fail now.
    ``ranged`` is False when the server sent the whole file (HTTP 200): then even
    an answer that starts where asked (at 0) says nothing of range support.

    The bytes come either as ``chunks`` or through :meth:`readinto`, not both.
    ``fill`` is a transport's own ``readinto`` (bytes land in the caller's buffer
    with no copy on the way); without one, :meth:`readinto` copies from ``chunks``."""

    start: int
    total: int | None
    chunks: Iterator[bytes]
    abort: Callable[[], None] = lambda: None
    ranged: bool = True
    fill: Callable[[memoryview], int] | None = None
    _rest: memoryview = field(default=memoryview(b""), init=False, repr=False)
    _failure: Transient | None = field(default=None, init=False, repr=False)

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` with the next bytes; returns how many, fewer only at the end of the body
        (0 after it). A body that ends early raises :class:`Transient`, once the bytes that did
        arrive have been handed over."""
        if self.fill is not None:
            return self.fill(buffer)
        got = 0
        while got < len(buffer) and self._failure is None:
            if not self._rest:
                try:
                    self._rest = memoryview(next(self.chunks))
                except StopIteration:
                    break
                except Transient as exc:
                    self._failure = exc
                    break
            n = min(len(self._rest), len(buffer) - got)
            buffer[got : got + n] = self._rest[:n]
            self._rest, got = self._rest[n:], got + n
        if got == 0 and self._failure is not None:
            raise self._failure
        return got


class Transport(Protocol):
    """One origin of one file, read by byte range; ``read`` makes a single attempt."""

    url: str  # for messages: never carries a secret

    def read(self, start: int, end: int) -> contextlib.AbstractContextManager[Body]: ...


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, parts.hostname or "", parts.port)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _short(got: int, wanted: int, failure: str | None = None) -> Transient:
    """A body that ended early: the retry asks for the rest."""
    return Transient(f"{failure or 'truncated body'}: got {got} of {wanted} bytes")


class HttpTransport:
    """Byte ranges over HTTP with huggingface_hub's shared ``httpx2`` client.

    The token (if any) is sent only to ``token_origin``; redirects are followed
    by hand so that it never reaches the CDN. The final URL of the first
    redirect chain is reused for later ranges (one Hub round trip per file).
    """

    _MAX_REDIRECTS = 10

    def __init__(
        self, url: str, *, policy: Timeouts, token: str | None = None, token_origin: str | None = None
    ) -> None:
        self.url = url
        self._policy = policy
        self._token = token
        self._token_origin = _origin(token_origin or url)
        self._target: str | None = None

    @contextlib.contextmanager
    def read(self, start: int, end: int) -> Iterator[Body]:
        import httpx2
        from huggingface_hub.utils import get_session

        session = get_session()
        timeout = httpx2.Timeout(self._policy.read_timeout, connect=self._policy.connect_timeout)
        url = self._target or self.url
        response = None
        try:
            for _ in range(self._MAX_REDIRECTS):
                headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
                if self._token and _origin(url) == self._token_origin:
                    headers["Authorization"] = f"Bearer {self._token}"
                request = session.build_request("GET", url, headers=headers, timeout=timeout)
                response = session.send(request, stream=True, follow_redirects=False)
                if not response.is_redirect:
                    break
                location = response.headers.get("location", "")
                response.close()
                url = urljoin(url, location)
            else:
                raise NetworkError(f"{self.url}: more than {self._MAX_REDIRECTS} redirects")
            self._check_status(response, url)
            if url != self.url:
                self._target = url
            body_start, total = self._range_of(response, start)
            _check_encoding(response, url)
            yield Body(
                body_start,
                total,
                self._chunks(response, end - body_start),
                functools.partial(_shutdown, response),
                ranged=response.status_code == 206,
                fill=_socket_fill(response, end - body_start, self._policy.read_timeout),
            )
        except httpx2.TransportError as exc:
            raise Transient(_describe(exc)) from None
        finally:
            if response is not None:
                response.close()

    def _check_status(self, response: Any, url: str) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        response.read()  # error bodies are small; the connection can be reused
        if url == self._target and status in (401, 403, 404):
            self._target = None  # a signed CDN URL expired: resolve again
            raise Transient(f"HTTP {status} from the redirect target")
        if status in (404, 410):
            code = response.headers.get("x-error-code", "")
            said = f"HTTP {status}, {code}" if code else f"HTTP {status}"
            raise SourceMissing(f"{self.url}: {_MISSING.get(code, 'not found')} ({said})")
        if status in (401, 403):
            raise AuthError(f"{self.url}: access denied (HTTP {status}). {_denied_fix(response, bool(self._token))}")
        if status in (408, 425, 429) or status >= 500:
            raise Transient(f"HTTP {status}", retry_after(response.headers))
        if status == 416:
            raise IntegrityError(f"{self.url}: the file at the origin is shorter than pinned (HTTP 416)")
        raise NetworkError(f"{self.url}: unexpected HTTP {status}")

    @staticmethod
    def _range_of(response: Any, start: int) -> tuple[int, int | None]:
        if response.status_code == 200:
            length = response.headers.get("content-length")
            return 0, int(length) if length and length.isdigit() else None
        spec = response.headers.get("content-range", "")  # bytes a-b/total
        try:
            first, total = spec.split(" ", 1)[1].split("-", 1)[0], spec.rsplit("/", 1)[1]
            return int(first), (None if total == "*" else int(total))
        except (IndexError, ValueError):
            raise Transient(f"bad Content-Range {spec!r}") from None

    @staticmethod
    def _chunks(response: Any, wanted: int) -> Iterator[bytes]:
        import httpx2

        got, pending, pending_size = 0, [], 0
        failure = None
        try:
            # The socket gives ~64 KiB at a time; writing and hashing 1 MiB pieces costs
            # a sixteenth of the calls (httpx's own chunk_size is slower than joining here).
            for piece in response.iter_raw():
                piece = piece[: wanted - got - pending_size]
                pending.append(piece)
                pending_size += len(piece)
                if pending_size >= CHUNK or got + pending_size >= wanted:
                    got += pending_size
                    yield b"".join(pending)
                    pending, pending_size = [], 0
                if got >= wanted:
                    return
        except httpx2.TransportError as exc:
            failure = _describe(exc)
        if pending:  # keep what did arrive: the retry resumes after it
            got += pending_size
            yield b"".join(pending)
        raise _short(got, wanted, failure)


# What the Hub's X-Error-Code says of a 404 on a pinned file: which part of the pin is gone.
_MISSING = {
    "RevisionNotFound": "the pinned commit is not on the Hub any more (its history was rewritten, or the repository "
    "replaced)",
    "RepoNotFound": "the repository does not exist (or the token cannot see it)",
    "EntryNotFound": "the pinned commit has no such file",
}


def _denied_fix(response: Any, sent_token: bool) -> str:
    """What to do about a 401/403, from what the Hub says (``X-Error-Code``, ``X-Error-Message``)."""
    code = response.headers.get("x-error-code", "")
    said = redact(response.headers.get("x-error-message", "").strip())
    if code == "GatedRepo":
        fix = (
            "The repository is gated: accept its terms on the Hub, then log in with `hf auth login` or set "
            "HF_TOKEN to a token of that account."
        )
    elif said == "Invalid credentials in Authorization header":
        fix = "The Hub refused your token (revoked or expired): set HF_TOKEN to a valid one or log in again."
    elif sent_token:
        fix = "Check that your Hub token's account may read this repository (HF_TOKEN or `hf auth login`)."
    else:
        fix = "For a private or gated Hub repo log in with `hf auth login` or set HF_TOKEN to a token with read access."
    return f"{fix} The Hub said: {said}" if said else fix


def _check_encoding(response: Any, url: str) -> None:
    """Refuse a compressed body: it was asked for as is, and its bytes are not the file's."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise NetworkError(
            f"{url}: the server sent the file compressed (Content-Encoding: {encoding}) although asked for it "
            "as is (Accept-Encoding: identity). A proxy may be rewriting downloads: bypass it (NO_PROXY) or "
            "use another mirror."
        )


class _Filler:
    """A :attr:`Body.fill` over the source's own ``readinto``: each call fills the buffer to its
    end or the body's, hands over what arrived before a failure, and raises that failure (a
    :class:`Transient`) at the next call. ``errors``: the exceptions that are such failures
    (others propagate as they are); ``length``: what the answer says it holds, less than
    ``wanted`` being a truncation too."""

    def __init__(
        self,
        readinto: Callable[[memoryview], int],
        wanted: int,
        *,
        length: int | None = None,
        errors: tuple[type[BaseException], ...] = (),
        timeout: float | None = None,
    ) -> None:
        self._readinto, self._wanted, self._errors, self._timeout = readinto, wanted, errors, timeout
        self._length = wanted if length is None else min(wanted, length)
        self._got = 0
        self._failure: Transient | None = None

    def __call__(self, buffer: memoryview) -> int:
        want = min(len(buffer), self._length - self._got)
        got = 0
        try:
            while got < want and self._failure is None:
                n = self._readinto(buffer[got:want])
                if n == 0:
                    self._failure = _short(self._got + got, self._wanted)
                got += n
        except self._errors as exc:
            stalled = isinstance(exc, TimeoutError) and self._timeout is not None
            reason = f"no bytes for {self._timeout:g} s" if stalled else _describe(exc)
            self._failure = _short(self._got + got, self._wanted, reason)
        self._got += got
        if self._got == self._length < self._wanted and self._failure is None:
            self._failure = _short(self._got, self._wanted)
        if got == 0 and self._failure is not None:
            raise self._failure
        return got


def _socket_fill(response: Any, wanted: int, timeout: float) -> _Filler | None:
    """A fill that reads ``response``'s body from the connection's socket, or None where that is
    not safe: not HTTP/1.x, no Content-Length (chunked, or until close), or a stream that is not a
    plain socket (TLS inside a proxy's TLS, a session with another transport).

    The first piece still comes through httpx2: it is what h11 buffered past the headers, or one
    read of the socket; after it h11 holds nothing, so the socket's next byte is the body's next.
    The connection is not reused afterwards (h11 never saw the body end): closing the response
    closes it. So does dropping the ``iter_raw`` generator, which is why the closure keeps it.
    """
    import httpx2

    try:
        from httpcore2._backends.sync import SyncStream
    except ImportError:
        return None
    length = response.headers.get("content-length", "")
    if response.http_version not in ("HTTP/1.1", "HTTP/1.0") or "transfer-encoding" in response.headers:
        return None
    stream = response.extensions.get("network_stream")
    if not length.isdigit() or type(stream) is not SyncStream:  # SyncStream: a socket, or TLS on the socket
        return None
    sock = stream.get_extra_info("socket")
    if not isinstance(sock, socket.socket):
        return None
    raw = response.iter_raw()
    pending: memoryview | None = None

    def readinto(buffer: memoryview) -> int:
        nonlocal pending
        if pending is None:
            pending = memoryview(next(raw, b""))
            sock.settimeout(timeout)
        if pending:
            n = min(len(pending), len(buffer))
            buffer[:n], pending = pending[:n], pending[n:]
            return n
        return sock.recv_into(buffer)

    return _Filler(readinto, wanted, length=int(length), errors=(OSError, httpx2.TransportError), timeout=timeout)


def _shutdown(response: Any) -> None:
    # Closing a socket does not wake a thread blocked reading it; shutting it down does.
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class FsspecTransport:
    """Byte ranges from anything fsspec opens (file, s3, gs, memory, hf ...)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self._options = storage_options or {}
        self._fs: Any = None

    def _filesystem(self) -> tuple[Any, str]:
        import fsspec

        if self._fs is None:
            try:
                self._fs = fsspec.core.url_to_fs(self.url, **self._options)
            except (ImportError, ValueError) as exc:
                raise SourceError(f"{self.url}: cannot open this URL: {exc}") from None
        return self._fs

    @contextlib.contextmanager
    def read(self, start: int, end: int) -> Iterator[Body]:
        fs, path = self._filesystem()
        try:
            info = fs.info(path)
            if info.get("type", "file") != "file":  # a folder, or a pipe planted in a shared folder: opening one blocks
                raise SourceError(f"{self.url}: not a regular file ({info.get('type')}); nothing to read there")
            total = int(info["size"])
            # cache_type "none": each read is exactly one ranged request, no read-ahead held in memory
            with fs.open(path, "rb", block_size=CHUNK, cache_type="none") as f:
                f.seek(start)
                fill = _Filler(f.readinto, end - start) if hasattr(f, "readinto") else None
                yield Body(start, total, self._chunks(f, end - start), fill=fill)
        except FileNotFoundError:
            raise SourceMissing(f"{self.url}: no such file") from None
        except PermissionError as exc:
            raise AuthError(f"{self.url}: access denied ({exc}). Check the credentials for this storage.") from None
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise Transient(_describe(exc)) from None

    @staticmethod
    def _chunks(f: Any, wanted: int) -> Iterator[bytes]:
        got = 0
        while got < wanted:
            chunk = f.read(min(CHUNK, wanted - got))
            if not chunk:
                raise _short(got, wanted)
            got += len(chunk)
            yield chunk


def transport_for(location: Location, policy: Timeouts) -> Transport:
    """HTTP(S) through :class:`HttpTransport`, anything else through fsspec.

    A token in ``storage_options`` is used only for the origin of
    ``storage_options["endpoint"]`` (the Hub's, for Hub sources).
    """
    if location.url.startswith(("http://", "https://")):
        options = location.storage_options
        return HttpTransport(
            location.url, policy=policy, token=options.get("token"), token_origin=options.get("endpoint")
        )
    return FsspecTransport(location.url, location.storage_options)

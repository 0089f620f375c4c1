"""Reading byte ranges from an origin: one small interface, two transports.

::

    Transport.read(start, end) -> Body(start, total, chunks, abort)

* :class:`HttpTransport` for every ``http(s)://`` URL, the Hub's resolve URLs
  included: huggingface_hub's own ``httpx2`` session, redirects followed by
  hand so the bearer token goes to the Hub's origin only (the 302 to the CDN
  is another origin). Against ``HfFileSystem`` (``hf://``) on a 1 GB file
  from a local hub it was as fast or faster (1.4-1.8 s vs 1.6-1.8 s), and it
  shows us the 206/Content-Range answers that HfFileSystem hides; plain
  ``https://`` goes through it too, so no aiohttp is needed.
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

from .errors import AuthError, IntegrityError, NetworkError, SourceError, SourceMissing
from .retry import Transient, parse_retry_after

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
    an answer that starts where asked (at 0) says nothing of range support."""

    start: int
    total: int | None
    chunks: Iterator[bytes]
    abort: Callable[[], None] = lambda: None
    ranged: bool = True


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
            yield Body(
                body_start,
                total,
                self._chunks(response, end - body_start),
                functools.partial(_shutdown, response),
                ranged=response.status_code == 206,
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
            raise SourceMissing(f"{self.url}: not found (HTTP {status})")
        if status in (401, 403):
            raise AuthError(
                f"{self.url}: access denied (HTTP {status}). For a private or gated Hub repo log in "
                "with `hf auth login` or set HF_TOKEN to a token with read access."
            )
        if status in (408, 425, 429) or status >= 500:
            raise Transient(f"HTTP {status}", parse_retry_after(response.headers.get("retry-after")))
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
            total = int(fs.size(path))
            # cache_type "none": each read is exactly one ranged request, no read-ahead held in memory
            with fs.open(path, "rb", block_size=CHUNK, cache_type="none") as f:
                f.seek(start)
                yield Body(start, total, self._chunks(f, end - start))
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

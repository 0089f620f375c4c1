"""Moving bytes from an origin into a resumable partial file, hashed on the way.

One small interface, two transports::

    Transport.read(start, end) -> Body(start, total, chunks)

* :class:`HttpTransport` for every ``http(s)://`` URL, the Hub's resolve URLs
  included: huggingface_hub's own ``httpx2`` session, redirects followed by
  hand so the bearer token goes to the Hub's origin only (the 302 to the CDN
  is another origin). Against ``HfFileSystem`` (``hf://``) on a 1 GB file
  from a local hub it was as fast or faster (1.4-1.8 s vs 1.6-1.8 s), and it
  shows us the 206/Content-Range answers that HfFileSystem hides; plain
  ``https://`` goes through it too, so no aiohttp is needed.
* :class:`FsspecTransport` for everything else fsspec can open: ``file://``,
  ``s3://``, ``gs://``, ``memory://``, ``hf://`` ...

:func:`download` fills ``<partial>`` for one blob::

    partial         bytes written so far (sparse while parallel ranges run)
    partial.ranges  JSON [[start, end, done], ...] when several ranges run at once;
                    without it the partial's length is how far it got

A large file starts as one stream; if that stream turns out slow (a CDN that
throttles each connection), the rest of it is split into byte ranges fetched
in parallel (the server must answer ``Range`` with 206). Every range resumes
from where it stopped, with exponential backoff and jitter on 5xx, 429
(``Retry-After`` honoured), resets, truncated bodies and stalls (read
timeout). A hashing thread follows the written bytes in order, taking chunks
straight from the receiving threads (and reading back from the page cache
only what arrived out of order or was already on disk), so sha256 and xxh3
are ready when the last byte lands.

Each file fetch is a :class:`Job`; its status changes and (throttled)
progress go out as ``kind="job"`` :class:`~modelfix.events.Event` objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import functools
import json
import logging
import os
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from .errors import AuthError, CacheError, IntegrityError, ModelfixError, NetworkError, SourceError, redact
from .events import Event, events
from .hashing import Digest, FileHash
from .sources import Location

__all__ = [
    "FetchPolicy",
    "Job",
    "jobs",
    "new_job",
    "Cancelled",
    "SourceMissing",
    "Body",
    "Transport",
    "HttpTransport",
    "FsspecTransport",
    "transport_for",
    "download",
]

log = logging.getLogger("modelfix")

_CHUNK = 1024 * 1024
_QUEUE_CHUNKS = 16  # bounds the bytes in flight to the hashing thread: memory stays flat
_PROGRESS_EVERY = 0.2  # seconds between progress events of one job
_JOURNAL_EVERY = 0.5  # seconds between writes of the ranges journal


# --- policy ----------------------------------------------------------------


@dataclass(frozen=True)
class FetchPolicy:
    """How hard to try. ``from_env()`` reads the ``MODELFIX_*`` overrides at call time.

    ``attempts`` counts consecutive failures that made no progress: a range
    that keeps advancing keeps trying. A file of at least ``parallel_min``
    bytes that still needs more than ``split_after`` seconds after the first
    ``split_after`` seconds is split into up to ``connections`` ranges of at
    least ``min_range`` bytes. Splitting only slow streams matters: on a fast
    link a single stream is quicker (one hashing pass straight from memory).
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    read_timeout: float = 30.0
    connect_timeout: float = 10.0
    connections: int = 4
    parallel_min: int = 64 * 1024 * 1024
    split_after: float = 1.0
    min_range: int = 16 * 1024 * 1024

    @classmethod
    def from_env(cls) -> FetchPolicy:
        """``MODELFIX_RETRIES``, ``MODELFIX_RETRY_BASE_DELAY``, ``MODELFIX_READ_TIMEOUT``,
        ``MODELFIX_CONNECTIONS``, ``MODELFIX_PARALLEL_MIN`` (bytes)."""
        env = os.environ
        default = cls()
        try:
            return cls(
                attempts=int(env.get("MODELFIX_RETRIES", default.attempts)),
                base_delay=float(env.get("MODELFIX_RETRY_BASE_DELAY", default.base_delay)),
                read_timeout=float(env.get("MODELFIX_READ_TIMEOUT", default.read_timeout)),
                connections=max(1, int(env.get("MODELFIX_CONNECTIONS", default.connections))),
                parallel_min=int(env.get("MODELFIX_PARALLEL_MIN", default.parallel_min)),
            )
        except ValueError as exc:
            raise ModelfixError(f"bad fetch setting in the environment: {exc}") from None

    def delay(self, failures: int, retry_after: float | None) -> float:
        backoff = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
        backoff = random.uniform(backoff / 2, backoff)  # jitter: many workers must not retry in step
        if retry_after is not None:
            return min(max(retry_after, backoff), self.max_retry_after)
        return backoff


# --- jobs ------------------------------------------------------------------


@dataclass
class Job:
    """One file being made available; a snapshot of it is what :func:`jobs` returns."""

    model: str
    file: str
    size: int
    status: str = "queued"
    done: int = 0
    source: str = ""
    error: str = ""
    _emitted: float = field(default=0.0, repr=False, compare=False)

    def update(self, status: str | None = None, *, source: str | None = None, error: str | None = None) -> None:
        with _JOBS_LOCK:
            if status is not None:
                self.status = status
            if source is not None:
                self.source = source
            if error is not None:
                self.error = redact(error)
            if status == "completed":
                self.done = self.size
        self._emit()

    def advance(self, n: int, *, to: int | None = None) -> None:
        """Count ``n`` more bytes done (or set the count ``to`` a value, after a resume)."""
        now = time.monotonic()
        with _JOBS_LOCK:
            self.done = min(self.size, max(0, to if to is not None else self.done + n))
            due = now - self._emitted >= _PROGRESS_EVERY or self.done >= self.size
            if due:
                self._emitted = now
        if due:
            self._emit()

    def _emit(self) -> None:
        with _JOBS_LOCK:
            event = Event(
                kind="job", model=self.model, file=self.file, status=self.status,
                done=self.done, total=self.size, source=self.source, message=self.error,
            )
        events.emit(event)


_JOBS_LOCK = threading.RLock()
_JOBS: deque[Job] = deque(maxlen=512)


def new_job(model: str, file: str, size: int) -> Job:
    job = Job(model, file, size)
    with _JOBS_LOCK:
        _JOBS.append(job)
    job.update("queued")
    return job


def jobs() -> list[Job]:
    """Snapshots of the current and most recent jobs, oldest first (safe from any thread)."""
    with _JOBS_LOCK:
        return [dataclasses.replace(j) for j in _JOBS]


# --- errors inside a transfer ------------------------------------------------


class Cancelled(ModelfixError):
    """A fetch was cancelled; its partial download stays and resumes next time."""


class SourceMissing(SourceError):
    """The file is not at this location (404, no such key or path)."""


class _Transient(Exception):
    """Worth another try: 5xx, 429, reset, truncation, stall."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _NoRanges(Exception):
    """The server answered a range request with the whole file."""


# --- transports ----------------------------------------------------------------


@dataclass(eq=False)
class Body:
    """An answer to ``read(start, end)``: where its bytes begin (0 if the server
    ignored the range), the file's total size if the server said, the bytes, and
    ``abort()``, callable from any thread, which makes a blocked read fail now."""

    start: int
    total: int | None
    chunks: Iterator[bytes]
    abort: Callable[[], None] = lambda: None


class Transport(Protocol):
    url: str  # for messages: never carries a secret

    def read(self, start: int, end: int) -> contextlib.AbstractContextManager[Body]: ...


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, parts.hostname or "", parts.port)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class HttpTransport:
    """Byte ranges over HTTP with huggingface_hub's shared ``httpx2`` client.

    The token (if any) is sent only to ``token_origin``; redirects are followed
    by hand so that it never reaches the CDN. The final URL of the first
    redirect chain is reused for later ranges (one Hub round trip per file).
    """

    _MAX_REDIRECTS = 10

    def __init__(self, url: str, *, token: str | None = None, token_origin: str | None = None,
                 policy: FetchPolicy | None = None) -> None:
        self.url = url
        self._token = token
        self._token_origin = _origin(token_origin or url)
        self._policy = policy or FetchPolicy.from_env()
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
            yield Body(body_start, total, self._chunks(response, end - body_start), functools.partial(_shutdown, response))
        except httpx2.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
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
            raise _Transient(f"HTTP {status} from the redirect target")
        if status in (404, 410):
            raise SourceMissing(f"{self.url}: not found (HTTP {status})")
        if status in (401, 403):
            raise AuthError(
                f"{self.url}: access denied (HTTP {status}). For a private or gated Hub repo set "
                "HF_TOKEN to a token with read access."
            )
        if status in (408, 425, 429) or status >= 500:
            raise _Transient(f"HTTP {status}", _retry_after(response.headers.get("retry-after")))
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
            raise _Transient(f"bad Content-Range {spec!r}") from None

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
                if pending_size >= _CHUNK or got + pending_size >= wanted:
                    got += pending_size
                    yield b"".join(pending)
                    pending, pending_size = [], 0
                if got >= wanted:
                    return
        except httpx2.TransportError as exc:
            failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if pending:  # keep what did arrive: the retry resumes after it
            got += pending_size
            yield b"".join(pending)
        raise _Transient(f"{failure} after {got} of {wanted} bytes" if failure else f"truncated body: got {got} of {wanted} bytes")


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
            with fs.open(path, "rb", block_size=_CHUNK, cache_type="none") as f:
                f.seek(start)
                yield Body(start, total, self._chunks(f, end - start))
        except FileNotFoundError:
            raise SourceMissing(f"{self.url}: no such file") from None
        except PermissionError as exc:
            raise AuthError(f"{self.url}: access denied ({exc}). Check the credentials for this storage.") from None
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None

    @staticmethod
    def _chunks(f: Any, wanted: int) -> Iterator[bytes]:
        got = 0
        while got < wanted:
            chunk = f.read(min(_CHUNK, wanted - got))
            if not chunk:
                raise _Transient(f"truncated: got {got} of {wanted} bytes")
            got += len(chunk)
            yield chunk


def transport_for(location: Location, policy: FetchPolicy | None = None) -> Transport:
    """HTTP(S) through :class:`HttpTransport`, anything else through fsspec.

    A token in ``storage_options`` is used only for the origin of
    ``storage_options["endpoint"]`` (the Hub's, for Hub sources).
    """
    if location.url.startswith(("http://", "https://")):
        options = location.storage_options
        return HttpTransport(location.url, token=options.get("token"),
                             token_origin=options.get("endpoint"), policy=policy)
    return FsspecTransport(location.url, location.storage_options)


# --- one download --------------------------------------------------------------


@dataclass
class _Range:
    start: int
    end: int
    done: int = 0

    @property
    def pos(self) -> int:
        return self.start + self.done


class _Hasher(threading.Thread):
    """Hashes the partial file in order while ranges arrive in any order.

    A chunk at the hashing position is hashed straight from memory; a chunk
    further ahead is dropped and its range remembered, to be read back from
    the page cache once the position reaches it. Bytes on disk before this
    run (a resumed partial) are read back the same way.
    """

    def __init__(self, fd: int, size: int, ranges: list[_Range]) -> None:
        super().__init__(name="modelfix-hash", daemon=True)
        self._fd, self._size, self._ranges = fd, size, ranges
        self._on_disk = [r.pos for r in ranges]  # per range: readable from disk up to here
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(_QUEUE_CHUNKS)
        self._digest = Digest()
        self._hashed = 0
        self._error: BaseException | None = None

    def feed(self, offset: int, chunk: bytes) -> None:
        self._queue.put((offset, chunk))

    def add(self, ranges: list[_Range]) -> None:
        """Follow ranges split off while running (call before they are added to the shared list)."""
        self._on_disk.extend(r.pos for r in ranges)

    def finish(self) -> None:
        self._queue.put(None)
        self.join()

    def result(self) -> FileHash | None:
        """The hashes, or None if the file is not complete."""
        if self._error is not None:
            raise self._error
        return self._digest.result() if self._hashed == self._size else None

    def run(self) -> None:
        # Never stop draining the queue, even after an error: writers block on it.
        self._guarded(self._catch_up)
        while (item := self._queue.get()) is not None:
            if self._error is None:
                self._guarded(lambda: self._take(*item))
        self._guarded(self._catch_up)

    def _guarded(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised by result() in the caller's thread
            self._error = exc

    def _take(self, offset: int, chunk: bytes) -> None:
        end = offset + len(chunk)
        if offset <= self._hashed < end:
            self._digest.update(memoryview(chunk)[self._hashed - offset:])
            self._hashed = end
        elif offset > self._hashed:
            i = self._index(offset)
            self._on_disk[i] = max(self._on_disk[i], end)
        self._catch_up()

    def _index(self, offset: int) -> int:
        return next(i for i, r in enumerate(self._ranges) if r.start <= offset < r.end)

    def _catch_up(self) -> None:
        while self._hashed < self._size:
            limit = self._on_disk[self._index(self._hashed)]
            if limit <= self._hashed:
                return
            data = os.pread(self._fd, min(limit - self._hashed, _CHUNK), self._hashed)
            if not data:
                raise OSError(f"partial file shorter than its recorded progress at byte {self._hashed}")
            self._digest.update(data)
            self._hashed += len(data)


class _Download:
    def __init__(self, transport: Transport, partial: Path, size: int, job: Job,
                 cancel: threading.Event, policy: FetchPolicy, label: str) -> None:
        self.transport, self.partial, self.size, self.job = transport, partial, size, job
        self.cancel, self.policy, self.label = cancel, policy, label
        self.journal = partial.with_name(partial.name + ".ranges")
        self._stop = threading.Event()
        self._journal_lock = threading.Lock()
        self._journaled = 0.0
        self.ranges: list[_Range] = []
        self._reading: set[Body] = set()
        self._reading_lock = threading.Lock()
        self._may_split = policy.connections > 1 and size >= policy.parallel_min

    def run(self) -> FileHash:
        ranges = self._plan()
        while True:
            try:
                return self._attempt(ranges)
            except _NoRanges:
                log.info("%s: %s ignores byte ranges; fetching the whole file", self.label, self.transport.url)
                self._may_split = False
                self.journal.unlink(missing_ok=True)
                with open(self.partial, "wb"):
                    pass
                ranges = [_Range(0, self.size)]

    def _plan(self) -> list[_Range]:
        try:
            have = self.partial.stat().st_size
        except FileNotFoundError:
            have = None
        if have is not None and self.journal.exists():
            try:
                saved = json.loads(self.journal.read_text())
                if saved["size"] == self.size:
                    return [_Range(int(s), int(e), int(d)) for s, e, d in saved["ranges"]]
            except (ValueError, KeyError, TypeError, OSError):
                pass
        elif have is not None and have <= self.size:
            return [_Range(0, self.size, have)]  # sequential writes: its length is its progress
        self.journal.unlink(missing_ok=True)
        self.partial.unlink(missing_ok=True)
        self.partial.touch()
        return [_Range(0, self.size)]

    def _attempt(self, ranges: list[_Range]) -> FileHash:
        self.ranges = ranges
        fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self.job.advance(0, to=sum(r.done for r in ranges))
            hasher = _Hasher(fd, self.size, ranges)
            hasher.start()
            finished = threading.Event()
            watcher = threading.Thread(target=self._watch, args=(finished,), name="modelfix-cancel", daemon=True)
            watcher.start()
            try:
                pending = [r for r in ranges if r.pos < r.end]
                if len(pending) == 1 and not self._may_split:
                    self._fetch_range(fd, pending[0], hasher)
                elif pending:
                    self._fetch_parallel(fd, pending, hasher)
            finally:
                finished.set()
                watcher.join()
                hasher.finish()
                self._write_journal(force=True)
            result = hasher.result()
        finally:
            os.close(fd)
        if result is None:
            raise NetworkError(f"{self.label}: download stopped before the end of the file")
        return result

    def _watch(self, finished: threading.Event) -> None:
        """Turn a cancel into an immediate stop, even of a read blocked on a silent server."""
        while not finished.wait(0.1):
            if self.cancel.is_set() or self._stop.is_set():
                self._abort_reads()
                return

    def _abort_reads(self) -> None:
        with self._reading_lock:
            for body in self._reading:
                body.abort()

    def _fetch_parallel(self, fd: int, pending: list[_Range], hasher: _Hasher) -> None:
        def fetch(r: _Range) -> None:
            try:
                self._fetch_range(fd, r, hasher)
            except BaseException:
                self._stop.set()  # one failed range ends the others now; the journal keeps their progress
                self._abort_reads()
                raise

        with ThreadPoolExecutor(max(len(pending), self.policy.connections), thread_name_prefix="modelfix-range") as pool:
            futures = [pool.submit(fetch, r) for r in pending]
            if len(pending) == 1:
                futures += [pool.submit(fetch, r) for r in self._split_if_slow(pending[0], futures[0], hasher)]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            # A range that found no Range support explains the others' failures.
            raise next((e for e in errors if isinstance(e, (_NoRanges, Cancelled))), errors[0])

    def _split_if_slow(self, r: _Range, running: Future, hasher: _Hasher) -> list[_Range]:
        """Watch the single stream for ``split_after`` seconds; if the rest would take longer
        than that again, hand the rest of its range to new ranges."""
        started, before = time.monotonic(), r.done
        with contextlib.suppress(FutureTimeout):
            running.exception(timeout=self.policy.split_after)
            return []  # finished (or failed) already
        rate = (r.done - before) / (time.monotonic() - started)
        remaining = r.end - r.pos
        count = min(self.policy.connections, remaining // max(1, self.policy.min_range))
        if count < 2 or (rate > 0 and remaining / rate <= self.policy.split_after):
            return []
        with self._journal_lock:
            cuts = [r.pos + remaining * i // count for i in range(count + 1)]
            cuts[-1] = r.end
            new = [_Range(a, b) for a, b in zip(cuts[1:-1], cuts[2:])]
            hasher.add(new)
            self.ranges.extend(new)
            # The running range stops at the first cut. Should it write a little past it
            # before it notices, those are the same bytes the next range writes there.
            r.end = cuts[1]
        self._write_journal(force=True)  # from now on the partial's length means nothing
        log.info("%s: slow stream (%.1f MB/s); fetching the rest in %d ranges", self.label, rate / 1e6, count)
        return new

    def _check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"{self.label}: cancelled; the partial download is kept and resumes next time")
        if self._stop.is_set():
            raise Cancelled(f"{self.label}: stopped because another range failed")

    def _fetch_range(self, fd: int, r: _Range, hasher: _Hasher) -> None:
        failures = 0
        while r.pos < r.end:
            self._check()
            before = r.done
            try:
                with self.transport.read(r.pos, r.end) as body, self._tracked(body):
                    if body.start != r.pos:
                        raise _NoRanges()
                    if body.total is not None and body.total != self.size:
                        raise IntegrityError(
                            f"{self.label}: {self.transport.url} now has {body.total} bytes, the lockfile pins "
                            f"{self.size}. The file changed upstream: re-pin with `modelfix lock --upgrade`."
                        )
                    for chunk in body.chunks:
                        if len(chunk) > r.end - r.pos:  # the range was split while it ran
                            chunk = chunk[: max(0, r.end - r.pos)]
                        # Bytes that arrived are kept even when a cancel comes: they need not come again.
                        self._write(fd, chunk, r.pos)
                        offset = r.pos
                        r.done += len(chunk)
                        hasher.feed(offset, chunk)
                        self.job.advance(len(chunk))
                        self._write_journal()
                        self._check()
                        if r.pos >= r.end:
                            break
            except _Transient as exc:
                self._check()  # a read aborted by a cancel fails like a reset; it is not one
                failures = 0 if r.done > before else failures + 1
                if failures >= self.policy.attempts:
                    raise NetworkError(
                        f"{self.label}: giving up after {failures} failed attempts in a row at byte {r.pos} "
                        f"of {self.size} from {self.transport.url}: {redact(str(exc))}. Check the network "
                        "and run the same command again: the download resumes where it stopped."
                    ) from None
                delay = self.policy.delay(failures or 1, exc.retry_after)
                log.info("%s: %s; retrying in %.1fs", self.label, exc, delay)
                if self.cancel.wait(delay):
                    self._check()

    @contextlib.contextmanager
    def _tracked(self, body: Body) -> Iterator[None]:
        with self._reading_lock:
            self._reading.add(body)
        try:
            yield
        finally:
            with self._reading_lock:
                self._reading.discard(body)

    def _write(self, fd: int, chunk: bytes, offset: int) -> None:
        view = memoryview(chunk)
        try:
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            raise CacheError(
                f"{self.label}: cannot write {self.partial}: {exc.strerror or exc}. Free some space "
                "(`modelfix cache prune --max-size SIZE`) or point MODELFIX_CACHE_DIR elsewhere."
            ) from None

    def _write_journal(self, force: bool = False) -> None:
        ranges = self.ranges
        if len(ranges) < 2:
            return
        now = time.monotonic()
        with self._journal_lock:
            if not force and now - self._journaled < _JOURNAL_EVERY:
                return
            self._journaled = now
            # Progress is read after the bytes were written, so the journal never claims more than the disk holds.
            data = json.dumps({"size": self.size, "ranges": [[r.start, r.end, r.done] for r in ranges]})
            tmp = self.journal.with_name(self.journal.name + ".tmp")
            tmp.write_text(data)
            os.replace(tmp, self.journal)


def download(transport: Transport, partial: Path, size: int, *, job: Job, label: str,
             cancel: threading.Event | None = None, policy: FetchPolicy | None = None) -> FileHash:
    """Complete ``partial`` (resuming what is there) to ``size`` bytes from ``transport``.

    Returns the hashes of the whole file; checking them against the pin is the
    caller's business. The partial (and its ranges journal) stay on any error
    so that the next call resumes. The caller holds the blob's lock.
    """
    return _Download(transport, partial, size, job, cancel or threading.Event(),
                     policy or FetchPolicy.from_env(), label).run()

"""Filling a resumable partial file from a transport, hashed on the way.

:func:`download` fills ``<partial>`` for one blob through a
:class:`~modelfix.transports.Transport`::

    partial         bytes written so far (sparse while parallel ranges run)
    partial.ranges  JSON [[start, end, done], ...] when several ranges run at once;
                    without it the partial's length is how far it got

Both live in a folder other users may write (a team's cache): they are opened relative to
that folder's descriptor, never through a link (a link planted at either name is dropped, not
followed), the journal is replaced through a new temporary file, and a partial with a second
hard link is started afresh rather than written into.

A large file starts as one stream; if that stream turns out slow (a CDN that
throttles each connection), the rest of it is split into byte ranges fetched
in parallel (the server must answer ``Range`` with 206). Every range resumes
from where it stopped, with exponential backoff and jitter on 5xx, 429
(``Retry-After`` honoured), resets, truncated bodies and stalls (read
timeout), as :class:`FetchPolicy` says. A hashing thread follows the written
bytes in order, taking chunks straight from the receiving threads (and reading
back from the page cache only what arrived out of order or was already on
disk), so sha256 and xxh3 are ready when the last byte lands.

The bytes of a file pass through a fixed set of buffers, never copied in Python::

    socket --readinto--> buffer --pwrite--> partial
                           |
                           +--> hashing thread (sha256, xxh3) --> buffer free again

Receiving and writing run in the stream's thread, hashing in another; all three
release the GIL, so two cores keep both threads busy. The buffers bound the
memory a download holds, and a hasher that falls behind holds the stream back.

Progress goes to the file's :class:`~modelfix.jobs.Job`. Every error leaving
:func:`download` is a :class:`~modelfix.errors.ModelfixError` that starts with
the caller's label (model and file).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

from . import safefs
from .errors import CacheError, Cancelled, IntegrityError, ModelfixError, NetworkError, redact
from .hashing import Digest, FileHash
from .jobs import Job
from .retry import FetchPolicy, Transient
from .safefs import cache_error, writing
from .transports import CHUNK, Body, Transport

__all__ = ["download"]

log = logging.getLogger("modelfix")

_BUFFERS = 4  # CHUNK-sized buffers per file: received, written, then hashed (8 were no faster than 4)
_JOURNAL_EVERY = 0.5  # seconds between writes of the ranges journal
# The size of one write(2). The kernel sizes a page-cache folio after the write that creates it, and
# a large folio comes from the high-order free blocks a VM's balloon has handed back to its host, so
# each of its pages faults in from the host under the copy: on this project's VMs 1 MiB writes ran
# at half the speed of `curl -o` (which writes 8-16 KiB), 16-128 KiB writes level with it.
_WRITE_PIECE = 64 * 1024
_NETWORK_BOUND = 0.75  # a stream waiting for bytes less of the time than this is held back by this machine


class _Streams:
    """How many byte streams this process has open, across every file being fetched.

    Splitting a file into ranges only uses connections the other downloads leave
    spare: the parts of a split model already stream side by side, and four
    parts each cut into four ranges would only make sixteen streams compete for
    the same link and the same cores.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        with self._lock:
            self.open += 1
        try:
            yield
        finally:
            with self._lock:
                self.open -= 1


_STREAMS = _Streams()


class _NoRanges(Exception):
    """The server answered a range request with the whole file."""


# --- one download --------------------------------------------------------------


@dataclass
class _Range:
    start: int
    end: int
    done: int = 0

    @property
    def pos(self) -> int:
        return self.start + self.done


class _Buffers:
    """The buffers of one file's download: a stream takes one, fills and writes it, and hands
    it to the hasher, which gives it back once hashed. At most ``count``, made as needed (a
    small file needs one); taking waits while all are out."""

    def __init__(self, count: int) -> None:
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._left = count

    def take(self) -> bytearray:
        with contextlib.suppress(queue.Empty):
            return self._free.get_nowait()
        with self._lock:
            if self._left > 0:
                self._left -= 1
                return bytearray(CHUNK)
        return self._free.get()

    def give(self, buffer: bytearray) -> None:
        self._free.put(buffer)


class _Hasher(threading.Thread):
    """Hashes the partial file in order while ranges arrive in any order.

    A chunk at the hashing position is hashed straight from its buffer; a chunk
    further ahead is left to the disk and its range remembered, to be read back
    from the page cache once the position reaches it. Bytes on disk before this
    run (a resumed partial) are read back the same way.
    """

    def __init__(self, fd: int, size: int, ranges: list[_Range], buffers: _Buffers) -> None:
        super().__init__(name="modelfix-hash", daemon=True)
        self._fd, self._size, self._ranges, self._buffers = fd, size, ranges, buffers
        self._on_disk = [r.pos for r in ranges]  # per range: readable from disk up to here
        self._queue: queue.SimpleQueue[tuple[int, bytearray, int] | None] = queue.SimpleQueue()
        self._digest = Digest()
        self._hashed = 0
        self._error: BaseException | None = None
        self._spare: memoryview | None = None  # for reading back from disk

    def feed(self, offset: int, buffer: bytearray, length: int) -> None:
        """Hash ``buffer[:length]``, written at ``offset``; the buffer goes back to the pool after."""
        self._queue.put((offset, buffer, length))

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
        # Never stop giving buffers back, even after an error: the streams wait for them.
        self._guarded(self._catch_up)
        while (item := self._queue.get()) is not None:
            offset, buffer, length = item
            if self._error is None:
                self._guarded(functools.partial(self._take, offset, memoryview(buffer)[:length]))
            self._buffers.give(buffer)
        self._guarded(self._catch_up)

    def _guarded(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised by result() in the caller's thread
            self._error = exc

    def _take(self, offset: int, chunk: memoryview) -> None:
        end = offset + len(chunk)
        if offset <= self._hashed < end:
            self._digest.update(chunk[self._hashed - offset :])
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
            if self._spare is None:
                self._spare = memoryview(bytearray(CHUNK))
            got = os.preadv(self._fd, [self._spare[: min(limit - self._hashed, CHUNK)]], self._hashed)
            if not got:
                raise CacheError(
                    f"the partial download shrank at byte {self._hashed} while it was written (another "
                    "process changed it); run the same command again: it resumes from what is left."
                )
            self._digest.update(self._spare[:got])
            self._hashed += got


class _Download:
    def __init__(
        self,
        transport: Transport,
        partial: Path,
        size: int,
        job: Job,
        cancel: threading.Event,
        policy: FetchPolicy,
        label: str,
    ) -> None:
        self.transport, self.partial, self.size, self.job = transport, partial, size, job
        self.cancel, self.policy, self.label = cancel, policy, label
        self.journal = partial.with_name(partial.name + ".ranges")
        self._folder = -1  # the partial's folder, open while run() runs: every file op is relative to it
        self._stop = threading.Event()
        self._journal_lock = threading.Lock()
        self._journaled = 0.0
        self.ranges: list[_Range] = []
        self._reading: set[Body] = set()
        self._reading_lock = threading.Lock()
        self._may_split = policy.connections > 1 and size >= policy.parallel_min
        self._ranged = False  # has the server answered a range with a range (206)?
        self._buffers = _Buffers(_BUFFERS)
        # Seconds spent waiting for bytes, and since when the wait under way: read only while a
        # single stream runs, to tell a slow link from a busy machine.
        self._waited = 0.0
        self._waiting_since: float | None = None

    def run(self) -> FileHash:
        self._folder = safefs.open_folder(self.partial.parent)
        try:
            ranges = self._plan()
            while True:
                try:
                    return self._attempt(ranges)
                except _NoRanges:
                    log.info("%s: %s ignores byte ranges; fetching the whole file", self.label, self.transport.url)
                    self._may_split = False
                    self._stop.clear()  # set by the parallel attempt that found out
                    self._fresh()
                    ranges = [_Range(0, self.size)]
        finally:
            os.close(self._folder)

    def _plan(self) -> list[_Range]:
        have = self._size_so_far()
        journal = self._saved_journal() if have is not None else None
        if journal is not None:  # a journal: the ranges it lists, else nothing is trusted
            try:
                if journal["size"] == self.size:
                    ranges = [_Range(int(s), int(e), int(d)) for s, e, d in journal["ranges"]]
                    if _tiles(ranges, self.size, have or 0):
                        return ranges
            except (KeyError, TypeError, ValueError):
                pass
        elif have is not None and have <= self.size:
            return [_Range(0, self.size, have)]  # sequential writes: its length is its progress
        self._fresh()
        return [_Range(0, self.size)]

    def _size_so_far(self) -> int | None:
        """The partial's length, None if there is none. Anything but a regular file of one link,
        of this user or root, is dropped, never written into: a link, a second hard link, or
        another user's partial (its owner could still write it after it became a blob)."""
        try:
            st = os.lstat(self.partial.name, dir_fd=self._folder)
        except FileNotFoundError:
            return None
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid in (os.geteuid(), 0):
            return st.st_size
        log.warning("%s: %s is not a partial download of this user; starting afresh", self.label, self.partial)
        os.unlink(self.partial.name, dir_fd=self._folder)  # the name only: unlink never follows
        return None

    def _saved_journal(self) -> dict | None:
        """The ranges journal; None if there is none, ``{}`` if it cannot be read (start afresh)."""
        try:
            data = safefs.read_small(self.journal.name, 16 * 1024 * 1024, dir_fd=self._folder)
            if data is None:
                return None
            saved = json.loads(data)
        except (OSError, ValueError, CacheError):
            return {}
        return saved if isinstance(saved, dict) else {}

    def _fresh(self) -> None:
        """Start over: no journal, a new empty partial."""
        for name in (self.journal.name, self.partial.name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._folder)
        os.close(safefs.create(self.partial.name, dir_fd=self._folder))

    def _open(self) -> int:
        """The partial, open for writing: a regular file of one link, or a new one."""
        if self._size_so_far() is None:
            os.close(safefs.create(self.partial.name, dir_fd=self._folder))
        fd = safefs.open_regular(self.partial.name, os.O_RDWR, dir_fd=self._folder)
        if fd is None or os.fstat(fd).st_nlink != 1:
            if fd is not None:
                os.close(fd)
            raise CacheError(f"{self.partial} changed while it was opened (another process?); run the command again.")
        return fd

    def _attempt(self, ranges: list[_Range]) -> FileHash:
        self.ranges = ranges
        fd = self._open()
        try:
            self.job.advance(0, to=sum(r.done for r in ranges))
            hasher = _Hasher(fd, self.size, ranges, self._buffers)
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
            raise NetworkError(
                f"the download from {self.transport.url} stopped before the end of the file; {self._resume_hint}"
            )
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

        with ThreadPoolExecutor(
            max(len(pending), self.policy.connections), thread_name_prefix="modelfix-range"
        ) as pool:
            futures = [pool.submit(fetch, r) for r in pending]
            if len(pending) == 1:
                futures += [pool.submit(fetch, r) for r in self._split_if_slow(pending[0], futures[0], hasher)]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            # A range that found no Range support explains the others' failures; a range
            # stopped because another failed explains nothing.
            raise next((e for e in errors if isinstance(e, _NoRanges)), None) or next(
                (e for e in errors if not isinstance(e, Cancelled)), errors[0]
            )

    def _split_if_slow(self, r: _Range, running: Future, hasher: _Hasher) -> list[_Range]:
        """Watch the single stream for ``split_after`` seconds; if the rest would take longer
        than that again, hand the rest of its range to new ranges."""
        started, before, waited = time.monotonic(), r.done, self._waited_so_far()
        with contextlib.suppress(FutureTimeout):
            running.exception(timeout=self.policy.split_after)
            return []  # finished (or failed) already
        if not self._ranged:
            return []  # the server has not shown it serves ranges: splitting would only restart it
        elapsed = time.monotonic() - started
        rate = (r.done - before) / elapsed
        waiting = (self._waited_so_far() - waited) / elapsed
        remaining = r.end - r.pos
        spare = self.policy.connections - _STREAMS.open + 1  # this stream's own connection counts as its first range
        count = min(spare, remaining // max(1, self.policy.min_range))
        log.debug(
            "%s: one stream, %.1f MB/s, waiting for bytes %.0f%% of the time", self.label, rate / 1e6, waiting * 100
        )
        if count < 2 or (rate > 0 and remaining / rate <= self.policy.split_after) or waiting < _NETWORK_BOUND:
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
            raise Cancelled("cancelled; the partial download is kept and resumes next time")
        if self._stop.is_set():
            raise Cancelled("stopped because another range failed")

    def _fetch_range(self, fd: int, r: _Range, hasher: _Hasher) -> None:
        with _STREAMS.one():
            self._fetch_range_streaming(fd, r, hasher)

    def _fetch_range_streaming(self, fd: int, r: _Range, hasher: _Hasher) -> None:
        failures = 0
        while r.pos < r.end:
            self._check()
            before = r.done
            try:
                with self.transport.read(r.pos, r.end) as body, self._tracked(body):
                    if body.start != r.pos:
                        raise _NoRanges()
                    self._ranged = self._ranged or body.ranged
                    if body.total is not None and body.total != self.size:
                        raise IntegrityError(
                            f"{self.transport.url} now has {body.total} bytes, the lockfile pins {self.size}. "
                            "The file changed upstream: re-pin with `modelfix lock --upgrade`."
                        )
                    while r.pos < r.end:
                        # Bytes that arrived are kept even when a cancel comes: they need not come again.
                        self._receive(fd, body, r, hasher)
                        self._write_journal()
                        self._check()
            except Transient as exc:
                self._check()  # a read aborted by a cancel fails like a reset; it is not one
                failures = 0 if r.done > before else failures + 1
                if failures == 0 and exc.retry_after is None:
                    # Bytes came: a 206 for part of the range, or a drop mid-body. Ask for the rest at
                    # once; backing off after each piece would only slow a server that answers in pieces.
                    log.debug("%s: %s; asking for the rest", self.label, exc)
                    continue
                if failures >= self.policy.attempts:
                    raise NetworkError(
                        f"giving up after {failures} failed attempts in a row at byte {r.pos} of {self.size} "
                        f"from {self.transport.url}: {redact(str(exc))}. Check the network, then "
                        f"{self._resume_hint}"
                    ) from None
                delay = self.policy.delay(failures or 1, exc.retry_after)
                log.info("%s: %s; retrying in %.1fs", self.label, exc, delay)
                if self.cancel.wait(delay):
                    self._check()

    def _waited_so_far(self) -> float:
        since = self._waiting_since
        return self._waited + (time.monotonic() - since if since is not None else 0.0)

    def _receive(self, fd: int, body: Body, r: _Range, hasher: _Hasher) -> None:
        """One buffer's worth of ``body`` into the partial at ``r``'s position, and on to the hasher."""
        buffer = self._buffers.take()
        try:
            self._waiting_since = since = time.monotonic()
            try:
                got = body.readinto(memoryview(buffer)[: min(CHUNK, r.end - r.pos)])
            finally:
                self._waiting_since = None
                self._waited += time.monotonic() - since
            if got == 0:
                raise Transient(f"the answer ended at byte {r.pos}, before the end of its range at {r.end}")
            got = min(got, r.end - r.pos)  # the range was split while it ran: the rest is another's
            offset = r.pos
            if got > 0:
                self._write(fd, memoryview(buffer)[:got], offset)
                r.done += got
        except BaseException:
            self._buffers.give(buffer)
            raise
        if got <= 0:
            self._buffers.give(buffer)
            return
        hasher.feed(offset, buffer, got)  # the hasher gives the buffer back
        self.job.advance(got)

    @contextlib.contextmanager
    def _tracked(self, body: Body) -> Iterator[None]:
        with self._reading_lock:
            self._reading.add(body)
        try:
            yield
        finally:
            with self._reading_lock:
                self._reading.discard(body)

    def _write(self, fd: int, view: memoryview, offset: int) -> None:
        # Inside a transport's read a bare OSError would pass for a network fault and be retried.
        with writing(self.partial):
            while view:
                written = os.pwrite(fd, view[:_WRITE_PIECE], offset)
                view, offset = view[written:], offset + written

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
            tmp = f"{self.journal.name}.{os.urandom(4).hex()}.tmp"  # new each time: never a planted name
            with writing(self.journal):
                try:
                    with os.fdopen(safefs.create(tmp, dir_fd=self._folder), "w") as f:
                        f.write(data)
                    os.replace(tmp, self.journal.name, src_dir_fd=self._folder, dst_dir_fd=self._folder)
                except BaseException:  # a full disk: no empty journal left behind
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=self._folder)
                    raise

    @property
    def _resume_hint(self) -> str:
        return f"retry with `modelfix sync {self.job.model}`: the download resumes where it stopped."


def _tiles(ranges: list[_Range], size: int, have: int) -> bool:
    """Do journal ``ranges`` cover ``[0, size)`` with no gap or overlap, each done within itself and within the
    partial's ``have`` bytes? A journal that claims more than the partial holds (a partial truncated
    or replaced behind it, a crash that kept the journal but not the bytes) is not resumed from."""
    at = 0
    for r in sorted(ranges, key=lambda r: r.start):
        if r.start != at or r.end < r.start or not 0 <= r.done <= r.end - r.start or (r.done and r.pos > have):
            return False
        at = r.end
    return at == size


def download(
    transport: Transport,
    partial: Path,
    size: int,
    *,
    job: Job,
    label: str,
    cancel: threading.Event | None = None,
    policy: FetchPolicy | None = None,
) -> FileHash:
    """Complete ``partial`` (resuming what is there) to ``size`` bytes from ``transport``.

    Returns the hashes of the whole file; checking them against the pin is the
    caller's business. The partial (and its ranges journal) stay on any error
    so that the next call resumes. The caller holds the blob's lock.
    """
    try:
        return _Download(
            transport, partial, size, job, cancel or threading.Event(), policy or FetchPolicy.from_env(), label
        ).run()
    except OSError as exc:  # the partial's own file operations: opening, resuming, reading back
        raise cache_error(exc, partial, label=label) from None
    except ModelfixError as exc:
        # Transports and ranges know the URL and the bytes; only the caller knows the model and file.
        exc.add_context(label, model=job.model, file=job.file)
        raise

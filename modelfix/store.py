"""The content-addressed store: verified blobs, views of them, leases, eviction.

Layout under the cache root (:meth:`CacheSettings.resolve().root`)::

    <root>/
      blobs/sha256/ab/abcd…ef      one file per sha256, read-only once committed
      memo/ab/abcd…ef.json         what was verified: xxh3, and the (dev, inode, size, mtime_ns,
                                   ctime_ns) the blob had then; same identity = same bytes
      tmp/abcd…ef.partial          a download in progress, resumable (+ .ranges journal)
      tmp/<key>.adopt-<rand>       a file being adopted or joined, before its commit
      locks/abcd…ef.lock           flock: one writer per blob (or view-<key>) across processes
      locks/store.lock             flock: shared while taking a lease, exclusive to evict
      joins/<key>                  sha256 of the file joined from legacy parts <key> (:mod:`modelfix.joins`)
      views/<content_key>/         a model's files under their pinned names, linked to
                                   their blobs (see :mod:`modelfix.views`)
      leases/<host>-<pid>-<rand>   blobs a live process uses (see :mod:`modelfix.leases`)

A blob enters ``blobs/`` only by a rename from ``tmp/`` after its size and
sha256 matched, so no reader ever sees a partial or wrong blob; the one other
way back in is a blob deleted from under a whole view, linked back from the
view's file once its bytes are checked (:meth:`Store.relink`). A partial is
named by its blob, not by its process, so that a download killed outright
(SIGKILL, a closed laptop) is resumed by whichever process next takes the
blob's lock; any source may continue it, since the bytes are the same.
Eviction removes a blob together with every view holding a link to it (a hard
link would otherwise keep its bytes on disk), never a blob a live process
leases. Usage, gc and removal live in :mod:`modelfix.care`, which reads the store from outside.

The cache may be shared by several users (see :mod:`modelfix.safefs`): its own
folders must be folders, not links (the root may be a link the user made);
files are opened without following links and created new, never written
through; a blob is never a symlink; everything is created 0o666/0o777 and the
umask decides. An OSError met writing here becomes a :class:`CacheError` that
names the path and the fix (:func:`modelfix.safefs.cache_error`).

A store this process cannot write (a read-only mount, another user's cache, or a read-only
layer in front of the writable store) serves what it holds in place and writes nothing: its
views are checked as :mod:`modelfix.layers` describes (the trust model of read-only caches),
and what must write there (a miss, ``sync``, ``gc``, ``prune``, ``rm``) is one error naming
the folder and the fix (:meth:`Store.require_writable`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import layers, leases, safefs, views
from .errors import CacheError, Cancelled, NoRoom
from .events import Event, events
from .eviction import Candidate, plan
from .hashing import FileHash, Identity, hash_fd, identity_of
from .safefs import writing
from .views import Snapshot, View, ViewFile

__all__ = ["Store", "FOLDERS", "UseRecorder"]

log = logging.getLogger("modelfix")
_LOCK_POLL = 0.05  # seconds between tries of another writer's lock (and checks for a cancel)
WAIT_NOTICE_S = 10  # seconds of waiting for another writer before saying so
_MEMO_LIMIT = 64 * 1024
# The folders modelfix makes under the root: each must be a folder, never a link.
FOLDERS = ("blobs", "memo", "tmp", "locks", "joins", "views", "leases")


class Store:
    """One cache root. Cheap to create: it only names paths until asked to act.

    ``layer``: a read-only cache in front of the writable store, never written whatever its
    permissions (see :mod:`modelfix.layers`).
    """

    def __init__(self, root: Path, *, layer: bool = False) -> None:
        # The settings' own Path, when given one: leases are looked up by it on every warm call.
        self.root = root if isinstance(root, Path) else Path(root)
        self.layer = layer

    @functools.cached_property
    def readonly(self) -> str | None:
        """Why this process writes nothing here (a layer, a read-only file system...), or None if it may."""
        why = "a read-only layer" if self.layer else layers.unwritable(self.root)
        if why:
            layers.announce(self.root, why)
        return why

    def require_writable(self, doing: str) -> None:
        """Raise the one-line error for ``doing`` (``"`modelfix cache gc`"``) where this process cannot write."""
        if why := self.readonly:
            raise layers.refusal(self.root, why, doing)

    # --- paths -------------------------------------------------------------

    def blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / "sha256" / sha[:2] / sha

    def _memo_path(self, sha: str) -> Path:
        return self.root / "memo" / sha[:2] / f"{sha}.json"

    def partial_path(self, sha: str) -> Path:
        """Where blob ``sha`` is downloaded to; ``self.folder("tmp")`` makes sure the folder exists."""
        return self.folder("tmp") / f"{sha}.partial"

    def discard_partial(self, sha: str) -> None:
        partial = self.partial_path(sha)
        partial.unlink(missing_ok=True)  # unlink never follows a link: it removes the name
        partial.with_name(partial.name + ".ranges").unlink(missing_ok=True)

    def discard_empty_partial(self, sha: str) -> None:
        """Drop blob ``sha``'s partial download if not one byte of it arrived: it has nothing to
        resume, yet would show the model as partly cached. Best effort: it never hides an error."""
        partial = self.root / "tmp" / f"{sha}.partial"  # partial_path() would make tmp/ first
        with contextlib.suppress(OSError, CacheError):
            safefs.folder(self.root, "tmp", create=False)
            st = os.lstat(partial)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                partial.unlink()
                partial.with_name(partial.name + ".ranges").unlink(missing_ok=True)

    def view_path(self, key: str) -> Path:
        return self.root / "views" / key

    def _lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    def folder(self, *parts: str) -> Path:
        """``root/parts...``, made where missing; a folder of the cache that is a link is refused."""
        path = self.root.joinpath(*parts)
        with writing(path):
            self.root.mkdir(parents=True, exist_ok=True)  # the root and above: the user's, links allowed
            return safefs.folder(self.root, *parts)

    def check_folders(self) -> None:
        """Refuse, before deleting anything, a cache whose own folders are links (or files)."""
        for name in FOLDERS:
            with contextlib.suppress(FileNotFoundError):
                safefs.folder(self.root, name, create=False)
        with contextlib.suppress(FileNotFoundError):
            safefs.folder(self.root, "blobs", "sha256", create=False)

    def staged(self, key: str, what: str) -> Path:
        """A fresh name in ``tmp/`` for ``what`` (adopt, join) to fill under ``key``'s writer lock."""
        return self.folder("tmp") / f"{key}.{what}-{os.urandom(4).hex()}"

    # --- blobs and their memo --------------------------------------------------

    def has(self, sha: str) -> bool:
        """Is blob ``sha`` here, as a regular file (a link in its place is no blob)?"""
        try:
            return stat.S_ISREG(os.lstat(self.blob_path(sha)).st_mode)
        except OSError:
            return False

    def memo(self, sha: str) -> dict[str, Any] | None:
        try:
            record = json.loads(safefs.read_small(self._memo_path(sha), _MEMO_LIMIT) or b"")
        except (OSError, ValueError, CacheError):
            return None
        return record if isinstance(record, dict) else None

    def _write_memo(self, sha: str, result: FileHash, identity: Identity) -> None:
        record = {"size": result.size, "xxh3": result.xxh3, "id": list(identity)}
        self.folder("memo", sha[:2])
        with writing(self._memo_path(sha)):
            safefs.replace(self._memo_path(sha), json.dumps(record).encode())

    def check(self, sha: str) -> bool:
        """Is the blob present and still the bytes we verified? Hashes only if its identity moved.

        A blob whose identity changed (restored from a backup, touched, its ctime moved by a
        link elsewhere) is re-hashed: xxh3 against the memo, or sha256 if there is no memo. A
        blob that fails, or is not a regular file, is deleted, so the next fetch replaces it.
        """
        if self.readonly:
            return self.has(sha)  # as built (see modelfix.layers); nothing could be removed here anyway
        path = self.blob_path(sha)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        record = self.memo(sha)
        if stat.S_ISREG(st.st_mode) and record and record.get("id") == list(identity_of(st)):
            return True
        fd = None
        with contextlib.suppress(CacheError):  # a link or a pipe in a blob's place: no blob
            fd = safefs.open_regular(path)
        if fd is None:
            log.warning("%s is not a regular file; removing it so that the blob is fetched again", path)
            self.evict([sha])
            return False
        try:
            ok = self._rehash(sha, fd, record)
        finally:
            os.close(fd)
        if not ok:
            log.warning("blob %s in %s changed on disk; removing it so that it is fetched again", sha[:12], self.root)
            self.evict([sha])
        return ok

    def _rehash(self, sha: str, fd: int, record: dict[str, Any] | None, *, remember: bool = True) -> bool:
        """Hash the file open at ``fd`` against blob ``sha`` (xxh3 of the memo, else sha256); if it
        matches and ``remember``, record its identity (taken before hashing) in the memo."""
        identity = identity_of(os.fstat(fd))
        if record and record.get("xxh3"):
            result = FileHash(identity[2], sha, record["xxh3"])
            ok = identity[2] == record.get("size") and hash_fd(fd, sha256=False).xxh3 == record["xxh3"]
        else:
            result = hash_fd(fd)
            ok = result.sha256 == sha
        if ok and remember:
            with contextlib.suppress(CacheError):  # a read-only cache: checked again next time
                self._write_memo(sha, result, identity)
        return ok

    def verify_blob(self, sha: str, *, full: bool, path: Path | None = None) -> tuple[str, str] | None:
        """Hash a committed blob (or ``path``, a view file showing it): None if good, else (expected, got)
        as ``algo:hex``.

        xxh3 against the memo by default, sha256 against the address with
        ``full`` (or when there is no memo). A wrong blob is removed, with the
        views showing it, so that ``modelfix sync`` fetches it again; in a cache
        this process cannot write, it is only reported, and no memo is written.
        """
        record = self.memo(sha)
        fast = not full and bool(record and record.get("xxh3"))
        fd = None
        with contextlib.suppress(CacheError):
            fd = safefs.open_regular(path or self.blob_path(sha))
        if fd is None:
            if not self.readonly:
                self.evict([sha])
            return f"sha256:{sha}", "not a regular file"
        try:
            identity = identity_of(os.fstat(fd))
            result = hash_fd(fd, sha256=not fast, xxh3=fast or record is None)
        finally:
            os.close(fd)
        expected = f"xxh3:{record['xxh3']}" if fast and record else f"sha256:{sha}"
        got = f"xxh3:{result.xxh3}" if fast else f"sha256:{result.sha256}"
        if got != expected:
            if not self.readonly:
                self.evict([sha])
            return expected, got
        if not self.readonly and path is None and (record is None or record.get("id") != list(identity)):
            with contextlib.suppress(CacheError):
                self._write_memo(sha, FileHash(result.size, sha, result.xxh3 or (record or {}).get("xxh3")), identity)
        return None

    def commit(self, sha: str, staged: Path, result: FileHash) -> None:
        """Make verified file ``staged`` blob ``sha`` (a rename: readers see all of it or nothing)."""
        # No fsync: a power cut may leave a bad blob behind a good name, which
        # `modelfix verify` catches; fsyncing every gigabyte would halve cold fetches.
        final = self.blob_path(sha)
        self.folder("blobs", "sha256", sha[:2])
        with writing(final):
            fd = safefs.open_regular(staged)
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, "the verified file is gone", str(staged))
            try:
                if os.fstat(fd).st_size != result.size:
                    raise CacheError(f"{staged} changed after it was verified (another process?); run again.")
                try:
                    os.fchmod(fd, 0o444 & ~safefs.umask())  # read-only: nothing writes a blob in place
                except PermissionError:
                    # A root-owned file adopted by link: only root could write it, which is trusted.
                    if os.fstat(fd).st_uid != 0:
                        raise
            finally:
                os.close(fd)
            os.replace(staged, final)
            identity = identity_of(os.lstat(final))  # after the rename, which moves the ctime
        self._write_memo(sha, result, identity)

    # --- what checking a view asks of the store (views.Blobs) -------------------

    def rehash(self, sha: str, fd: int, *, is_blob: bool) -> bool:
        """Are the bytes open at ``fd`` those verified as blob ``sha``? If ``is_blob`` (the same
        inode as the blob) its new identity is recorded in the memo, so it is not hashed again."""
        return self._rehash(sha, fd, self.memo(sha), remember=is_blob)

    def relink(self, sha: str, source: Path) -> Identity | None:
        """Put blob ``sha``, deleted from under a whole view, back from the view's file ``source``.

        The link is made first and the blob then hashed through it, its identity taken before
        the hash: what is recorded is what was hashed, and any later change moves the ctime. A
        cache where the link cannot be made (read-only) checks the view's file in place.
        Returns the file's identity now, or None if its bytes are not the blob's.
        """
        blob = self.blob_path(sha)
        try:
            self.folder("blobs", "sha256", sha[:2])
            os.link(source, blob)  # link() never follows: a link at source would stay a link
            linked = True
        except (OSError, CacheError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EEXIST:
                return None  # another process put one back meanwhile: look again next time
            linked = False
        fd = None
        with contextlib.suppress(OSError, CacheError):
            fd = safefs.open_regular(blob if linked else source)
        if fd is None:
            if linked:
                blob.unlink(missing_ok=True)
            return None
        try:
            identity = identity_of(os.fstat(fd))
            ok = self._rehash(sha, fd, self.memo(sha), remember=linked)
        finally:
            os.close(fd)
        if not ok:
            if linked:
                blob.unlink(missing_ok=True)
            return None
        if linked:
            log.info("restored blob %s in %s from view %s", sha[:12], self.root, source.parent.name)
        return identity

    # --- getting a blob ---------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, sha: str, cancel: threading.Event, label: str = "") -> Iterator[None]:
        """Be the one process (and thread) writing blob (or view) ``sha``; others wait here.

        The lock only saves duplicate work. Correctness never rests on it: on
        NFS and other filesystems where flock is advisory, emulated or silently
        absent, two writers may share a partial, and the sha256 check before
        the rename still keeps their mixed bytes out of ``blobs/``. A wait
        longer than :data:`WAIT_NOTICE_S` is said once (a warning naming the
        holder's pid where the system tells it): the holder is alive (a dead
        one's flock is gone), but may be stopped (Ctrl-Z) and never finish.
        """
        with _thread_lock(str(self.root / sha)):
            self.folder("locks")
            with writing(self._lock_path(sha)):
                fd = safefs.lock_file(self._lock_path(sha))
            try:
                since, told = time.monotonic(), False
                while safefs.try_lock(fd) is False:
                    if cancel.wait(_LOCK_POLL):
                        raise Cancelled(f"{label or sha[:12]}: cancelled while another process writes it")
                    if not told and time.monotonic() - since >= WAIT_NOTICE_S:
                        told = True
                        holder = safefs.lock_holder(fd)
                        log.warning(
                            "%s: waiting for another process%s, which is writing it (%g s so far; %s). "
                            "If that process is stopped (Ctrl-Z), resume it (fg) or end it; this one goes on "
                            "as soon as it finishes or dies.",
                            label or f"blob {sha[:12]}",
                            f" (pid {holder})" if holder else "",
                            WAIT_NOTICE_S,
                            self._lock_path(sha),
                        )
                yield
            finally:
                os.close(fd)  # closing drops the flock

    # --- views ---------------------------------------------------------------

    def use_view(
        self, key: str, seen: Snapshot | None = None, expect: layers.Expected | None = None
    ) -> Snapshot | None:
        """View ``key`` if it is whole, each file still the blob it was made from; its blobs leased.

        This is the warm path: with ``seen`` (what an earlier call returned) one
        stat per file, while they match and this process still leases its blobs
        (a forked child does not); otherwise one small read, a stat per file and
        an lstat per blob (:meth:`View.check`), no hashing unless an identity
        moved. The lease is taken, and the view checked again, under the shared
        store lock, so an eviction either sees the lease or finished before the check.
        In a store this process cannot write, the view is checked as :func:`modelfix.layers.check`
        does (against ``expect``, the files the pins name), and nothing is leased or recorded.
        """
        if seen is not None and (seen.shas <= leases.held(self.root) or not seen.leased) and seen.unchanged():
            if seen.leased:
                _used(seen.manifest)
            return seen
        if self.readonly:
            return layers.check(self, key, expect)
        now = self._check_view(key)
        if now is None:
            return None
        if not now.shas <= leases.held(self.root):
            with self.locked(shared=True):
                now = self._check_view(key)
                if now is None:
                    return None
                self._take(now.shas)
        _used(now.manifest)
        return now

    def _check_view(self, key: str) -> Snapshot | None:
        """View ``key`` if it is whole (see :meth:`View.check`), putting back blobs deleted from under it."""
        view = View.read(self.view_path(key))
        return view.check(self) if view.files else None

    def check_view(self, key: str, expect: layers.Expected | None = None) -> bool:
        """Is view ``key`` whole? Restores blobs deleted from under it, takes no lease (for ``verify``)."""
        if self.readonly:
            return layers.check(self, key, expect) is not None
        return self._check_view(key) is not None

    def build_view(self, key: str, files: Sequence[ViewFile], model: str, revision: str | None = None) -> Path:
        """Make (or repair) view ``key`` showing ``files``; every blob must be present."""
        final = self.folder("views") / key
        # One builder at a time, so that a good view is never swapped out under a reader.
        with self.writer(f"view-{key}", threading.Event()):
            if self._check_view(key) is None:
                with writing(final):
                    views.build(final, files, model, self.blob_path, revision)
        return final

    def views(self) -> Iterator[View]:
        return views.scan(self.root / "views")

    # --- leases ------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, shared: bool) -> Iterator[None]:
        """Shared while a lease is taken, exclusive while evicting (see :mod:`modelfix.leases`).

        The lock file is made 0o666 & ~umask, so that every user of a team's cache may take it
        (another user's lock file that this one may not write is opened read-only: flock needs no more).
        """
        path = self.folder("locks") / "store.lock"
        with writing(path):
            fd = safefs.lock_file(path)
        try:
            safefs.try_lock(fd, shared=shared, wait=True)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def lease(self, shas: Iterable[str]) -> None:
        """Mark blobs ``shas`` (present or about to be) in use by this process until it exits."""
        new = [s for s in dict.fromkeys(shas) if s not in leases.held(self.root)]
        if new:
            with self.locked(shared=True):
                self._take(new)

    def unreserve(self, shas: Iterable[str]) -> None:
        """Give back the room :meth:`make_room` reserved for blobs whose download did not finish."""
        with writing(self.root / "leases"):
            leases.unreserve(self.root, shas)

    def _take(self, shas: Iterable[str], sizes: Mapping[str, int] | None = None) -> None:
        self.folder("leases")
        with writing(self.root / "leases"):
            leases.take(self.root, shas, sizes)

    # --- eviction ---------------------------------------------------------------

    def blobs(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every blob (a regular file named by its sha256) and its lstat; anything else there is left alone."""
        base = self.root / "blobs" / "sha256"
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for folder in os.scandir(base):
                if not folder.is_dir(follow_symlinks=False):
                    continue
                for blob in os.scandir(folder.path):
                    with contextlib.suppress(FileNotFoundError):
                        st = blob.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode) and _is_sha256(blob.name):
                            yield blob.name, st

    def make_room(
        self,
        incoming: Mapping[str, int],
        budget: float,
        keep: Iterable[str] = (),
        *,
        model: str = "",
        best_effort: bool = False,
        dry_run: bool = False,
    ) -> list[str]:
        """Evict least recently used blobs until the blobs ``incoming`` (sha256 -> size) fit in ``budget``.

        Never evicts a blob in ``keep`` (pinned by the lockfile in use) or
        leased by a live process, and counts the room other processes
        reserved for downloads still running. If that cannot reach the budget,
        raises :class:`CacheError`, or with ``best_effort`` evicts all it may.
        On success the incoming blobs are reserved for this process (leased,
        with their sizes), in the same turn of the store lock: two processes
        syncing at once cannot both count on the same free space.
        Returns the evicted shas (with ``dry_run``, those it would evict, evicting nothing).
        """
        keep = set(keep)
        self.require_writable(f"fetching {model}" if model else "`modelfix cache prune`")
        self.check_folders()
        with self.locked(shared=False):
            sizes = leases.live_with_sizes(self.root, tidy=not dry_run)
            leased = set(sizes)
            last_used: dict[str, float] = {}
            for view in self.views():
                used = view.last_used() or 0.0
                for sha in view.shas:
                    last_used[sha] = max(used, last_used.get(sha, 0.0))
            candidates = [
                Candidate(sha, st.st_size, last_used.get(sha, st.st_mtime), held=sha in keep or sha in leased)
                for sha, st in self.blobs()
            ]
            present = {str(c.key) for c in candidates}
            # Downloads other processes (or this one's other threads) have room for: held, like a
            # blob in use. One they fetch that this sync needs too is fetched once: not counted twice.
            others = {sha: size for sha, size in sizes.items() if size and sha not in present}
            candidates += [Candidate(sha, size, time.time(), held=True) for sha, size in others.items()]
            needed = sum(size for sha, size in incoming.items() if sha not in others)
            try:
                victims = [str(v) for v in plan(candidates, budget, needed)]
            except NoRoom as exc:
                if not best_effort:
                    raise CacheError(
                        f"{model or 'the store'}: not enough room under the cache cap: {exc}. Raise "
                        "MODELFIX_CACHE_MAX_SIZE (or --max-size), or remove models with `modelfix cache rm NAME`."
                    ) from None
                victims = [str(c.key) for c in candidates if not c.held]
            if dry_run:
                return victims
            evicted = self.evict_locked(victims)
            if incoming:
                self._take(incoming.keys(), sizes=incoming)
            return evicted

    def evict(self, shas: Iterable[str]) -> list[str]:
        with self.locked(shared=False):
            return self.evict_locked(list(shas))

    def evict_locked(self, shas: list[str]) -> list[str]:
        doomed = set(shas)
        for view in self.views():
            gone = [f["name"] for f in view.files if f["sha256"] in doomed]
            for name in gone:
                events.emit(Event(kind="evict", model=", ".join(view.models), file=name, source="cache"))
            if gone:  # a view must be whole; the blobs it shares with others stay
                views.remove_tree(view.path)
        for sha in shas:
            for folder, path in (("blobs/sha256", self.blob_path(sha)), ("memo", self._memo_path(sha))):
                with contextlib.suppress(FileNotFoundError):
                    safefs.folder(self.root, *folder.split("/"), sha[:2], create=False)  # never unlink through a link
                    path.unlink()
        return shas


# --- helpers -----------------------------------------------------------------


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _thread_lock(key: str) -> threading.Lock:
    """One lock per blob, so that threads of one process queue here rather than poll the file lock."""
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.Lock())


# Process-wide: the threads of one process queue per blob, whichever Project (or Store object) they use.
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class UseRecorder:
    """Records a use of a view (its manifest's mtime, for eviction), at most once a minute per process.

    Eviction orders views by last use; a minute is far below the gaps that matter there, and a
    utime on every warm call would double its cost. ``clock`` (seconds, monotonic) is injectable
    so that the minute is tested without waiting one.
    """

    EVERY = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[str, float] = {}  # manifest -> clock() of the last utime

    def __call__(self, manifest: str) -> None:
        now = self.clock()
        if now - self._last.get(manifest, -self.EVERY) >= self.EVERY:
            self._last[manifest] = now
            with contextlib.suppress(OSError):
                os.utime(manifest)


# Process-wide: the last use of a view is a fact of the disk, the same for every Project in the process.
_used = UseRecorder()

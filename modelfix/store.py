"""The content-addressed store: verified blobs, views of them, leases, eviction.

Layout under the cache root (:meth:`CacheSettings.resolve().root`)::

    <root>/
      blobs/sha256/ab/abcd…ef      one file per sha256, read-only once committed
      memo/ab/abcd…ef.json         what was verified: xxh3, and the (dev, inode, size,
                                   mtime_ns) the blob had then; same identity = same bytes
      tmp/abcd…ef.partial          a download in progress, resumable (+ .ranges journal)
      locks/abcd…ef.lock           filelock: one writer per blob across processes
      locks/store.lock             flock: shared while taking a lease, exclusive to evict
      joins/<key>                  sha256 of the file joined from legacy parts <key>
      views/<content_key>/         a model's files under their pinned names, linked to
                                   their blobs (see :mod:`modelfix.views`)
      leases/<host>-<pid>-<rand>   blobs a live process uses (see :mod:`modelfix.leases`)

A blob enters ``blobs/`` only by a rename from ``tmp/`` after its size and
sha256 matched, so no reader ever sees a partial or wrong blob; the one other
way back in is a blob deleted from under a whole view, linked back from the
view's unchanged file (:meth:`Store._relink`). A partial is
named by its blob, not by its process, so that a download killed outright
(SIGKILL, a closed laptop) is resumed by whichever process next takes the
blob's lock; any source may continue it, since the bytes are the same.
Eviction removes a blob together with every view holding a link to it (a hard
link would otherwise keep its bytes on disk), never a blob a live process
leases. An OSError met writing here becomes a :class:`CacheError` that names
the path and the fix (:func:`cache_error`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import leases, views
from .config import CacheSettings
from .errors import CacheError
from .events import Event, events
from .eviction import Candidate, NoRoom, plan
from .hashing import Digest, FileHash, file_identity, hash_file, sha256_text
from .jobs import Cancelled
from .views import Snapshot, View, ViewFile

__all__ = ["Store", "Usage", "stats", "writing", "cache_error"]

log = logging.getLogger("modelfix")
_LOCK_POLL = 0.2  # seconds between checks for a cancel while waiting on another writer


@dataclass(frozen=True)
class Usage:
    """What ``modelfix cache stats`` prints."""

    root: Path
    blobs: int
    blob_bytes: int
    views: tuple[dict[str, Any], ...]
    partial_bytes: int
    live_leases: int


class Store:
    """One cache root. Cheap to create: it only names paths until asked to act."""

    def __init__(self, root: Path) -> None:
        # The settings' own Path, when given one: leases are looked up by it on every warm call.
        self.root = root if isinstance(root, Path) else Path(root)

    # --- paths -------------------------------------------------------------

    def blob_path(self, sha: str) -> Path:
        return self.root / "blobs" / "sha256" / sha[:2] / sha

    def _memo_path(self, sha: str) -> Path:
        return self.root / "memo" / sha[:2] / f"{sha}.json"

    def partial_path(self, sha: str) -> Path:
        """Where blob ``sha`` is downloaded to; ``self._dir("tmp")`` makes sure the folder exists."""
        return self._dir("tmp") / f"{sha}.partial"

    def discard_partial(self, sha: str) -> None:
        partial = self.partial_path(sha)
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".ranges").unlink(missing_ok=True)

    def discard_empty_partial(self, sha: str) -> None:
        """Drop blob ``sha``'s partial download if not one byte of it arrived: it has nothing to
        resume, yet would show the model as partly cached. Best effort: it never hides an error."""
        partial = self.root / "tmp" / f"{sha}.partial"  # partial_path() would make tmp/ first
        with contextlib.suppress(OSError):
            if partial.stat().st_size == 0:
                partial.unlink()
                partial.with_name(partial.name + ".ranges").unlink(missing_ok=True)

    def view_path(self, key: str) -> Path:
        return self.root / "views" / key

    def _lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        with writing(path):
            path.mkdir(parents=True, exist_ok=True)
        return path

    def _staged(self, key: str, what: str) -> Path:
        """A fresh name in ``tmp/`` for ``what`` (adopt, join) to fill under ``key``'s writer lock."""
        return self._dir("tmp") / f"{key}.{what}-{uuid.uuid4().hex[:8]}"

    # --- blobs and their memo --------------------------------------------------

    def has(self, sha: str) -> bool:
        return self.blob_path(sha).is_file()

    def memo(self, sha: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._memo_path(sha).read_text())
        except (OSError, ValueError):
            return None

    def _write_memo(self, sha: str, result: FileHash) -> None:
        record = {"size": result.size, "xxh3": result.xxh3, "id": list(file_identity(self.blob_path(sha)))}
        _atomic_write(self._memo_path(sha), json.dumps(record))

    def check(self, sha: str) -> bool:
        """Is the blob present and still the bytes we verified? Hashes only if its identity moved.

        A blob whose identity changed (restored from a backup, touched) is
        re-hashed: xxh3 against the memo, or sha256 if there is no memo. A
        blob that fails is deleted, so the next fetch replaces it.
        """
        path = self.blob_path(sha)
        try:
            ident = list(file_identity(path))
        except FileNotFoundError:
            return False
        record = self.memo(sha)
        if record and record.get("id") == ident:
            return True
        if record and record.get("xxh3"):
            ok = hash_file(path, sha256=False).xxh3 == record["xxh3"] and ident[2] == record["size"]
            result = FileHash(ident[2], sha, record["xxh3"])
        else:
            result = hash_file(path)
            ok = result.sha256 == sha
        if not ok:
            log.warning("blob %s in %s changed on disk; removing it so that it is fetched again", sha[:12], self.root)
            self.evict([sha])
            return False
        self._write_memo(sha, result)
        return True

    def verify_blob(self, sha: str, *, full: bool) -> tuple[str, str] | None:
        """Hash a committed blob: None if good, else (expected, got) as ``algo:hex``.

        xxh3 against the memo by default, sha256 against the address with
        ``full`` (or when there is no memo). A wrong blob is removed, with the
        views showing it, so that ``modelfix sync`` fetches it again.
        """
        path = self.blob_path(sha)
        record = self.memo(sha)
        fast = not full and bool(record and record.get("xxh3"))
        result = hash_file(path, sha256=not fast, xxh3=fast or record is None)
        expected = f"xxh3:{record['xxh3']}" if fast and record else f"sha256:{sha}"
        got = f"xxh3:{result.xxh3}" if fast else f"sha256:{result.sha256}"
        if got != expected:
            self.evict([sha])
            return expected, got
        if record is None or record.get("id") != list(file_identity(path)):
            self._write_memo(sha, FileHash(result.size, sha, result.xxh3 or (record or {}).get("xxh3")))
        return None

    def commit(self, sha: str, staged: Path, result: FileHash) -> None:
        """Make verified file ``staged`` blob ``sha`` (a rename: readers see all of it or nothing)."""
        # No fsync: a power cut may leave a bad blob behind a good name, which
        # `modelfix verify` catches; fsyncing every gigabyte would halve cold fetches.
        final = self.blob_path(sha)
        with writing(final):
            os.chmod(staged, 0o444)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
        self._write_memo(sha, result)

    # --- getting a blob ---------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, sha: str, cancel: threading.Event) -> Iterator[None]:
        """Be the one process (and thread) writing blob (or view) ``sha``; others wait here.

        The lock only saves duplicate work. Correctness never rests on it: on
        NFS and other filesystems where flock is advisory, emulated or silently
        absent, two writers may share a partial, and the sha256 check before
        the rename still keeps their mixed bytes out of ``blobs/``.
        """
        from filelock import FileLock, Timeout

        with _thread_lock(str(self.root / sha)):
            self._dir("locks")
            lock = FileLock(self._lock_path(sha), thread_local=False)
            while True:
                try:
                    lock.acquire(timeout=_LOCK_POLL)
                    break
                except Timeout:
                    if cancel.is_set():
                        raise Cancelled(f"{sha[:12]}: cancelled while another process writes it") from None
            try:
                yield
            finally:
                lock.release()

    def adopt(self, sha: str, size: int, candidate: Path) -> bool:
        """Take a verified copy of ``candidate`` (another cache's file) as blob ``sha``.

        A hard link costs no space; it also makes the other cache's file
        read-only, which neither huggingface_hub nor llama.cpp minds (they
        only ever replace files, never write into them).
        """
        try:
            # A snapshot entry is a relative symlink to the other cache's blob; Linux's link()
            # would link the symlink itself, which points nowhere from here.
            candidate = candidate.resolve(strict=True)
            if candidate.stat().st_size != size:
                return False
        except OSError:
            return False
        staged = self._staged(sha, "adopt")
        try:
            try:
                os.link(candidate, staged)
            except OSError:
                shutil.copyfile(candidate, staged)
            result = hash_file(staged)
            if result.sha256 != sha:
                log.warning("%s looked like blob %s but its bytes differ; not adopting it", candidate, sha[:12])
                return False
            self.commit(sha, staged, result)
            log.info("adopted %s from %s", sha[:12], candidate)
            return True
        except OSError as exc:
            log.info("could not adopt %s: %s", candidate, exc)
            return False
        finally:
            staged.unlink(missing_ok=True)

    def joined(self, parts: Sequence[str]) -> str | None:
        """The blob made by :meth:`join` from ``parts``, if it was made and is still here."""
        with contextlib.suppress(OSError):
            sha = (self.root / "joins" / _join_key(parts)).read_text().strip()
            return sha if self.check(sha) else None
        return None

    def join(self, parts: Sequence[str], cancel: threading.Event | None = None) -> str:
        """The blob of legacy multi-part blobs concatenated in order (made once, then remembered)."""
        if sha := self.joined(parts):
            return sha
        key = _join_key(parts)
        record = self.root / "joins" / key
        with self.writer(key, cancel or threading.Event()):
            staged = self._staged(key, "join")
            try:
                digest = Digest()
                with writing(staged), open(staged, "wb") as out:
                    for part in parts:
                        with open(self.blob_path(part), "rb") as src:
                            while chunk := src.read(8 * 1024 * 1024):
                                out.write(chunk)
                                digest.update(chunk)
                result = digest.result()
                joined = str(result.sha256)
                if not self.has(joined):
                    self.commit(joined, staged, result)
            finally:
                staged.unlink(missing_ok=True)
            _atomic_write(record, joined)
            return joined

    # --- views ---------------------------------------------------------------

    def use_view(self, key: str, seen: Snapshot | None = None) -> Snapshot | None:
        """View ``key`` if it is whole, each file still the blob it was made from; its blobs leased.

        This is the warm path: one small read and a stat per file, no hashing;
        with ``seen`` (what an earlier call returned) the stats alone, while
        they match and this process still leases its blobs (a forked child
        does not). The lease is taken, and the view checked again, under the
        shared store lock, so an eviction either sees the lease or finished
        before the check.
        """
        if seen is not None and seen.shas <= leases.held(self.root) and seen.unchanged():
            _used(seen.manifest)
            return seen
        now = self._check_view(key)
        if now is None:
            return None
        if not now.shas <= leases.held(self.root):
            with self._store_lock(shared=True):
                now = self._check_view(key)
                if now is None:
                    return None
                self._take(now.shas)
        _used(now.manifest)
        return now

    def _check_view(self, key: str) -> Snapshot | None:
        """View ``key`` if it is whole, putting back any blob deleted from under it (see :meth:`_relink`)."""
        view = View.read(self.view_path(key))
        snapshot = view.snapshot()
        if snapshot is not None:
            self._relink(view)
        return snapshot

    def check_view(self, key: str) -> bool:
        """Is view ``key`` whole? Restores blobs deleted from under it, takes no lease (for ``verify``)."""
        return self._check_view(key) is not None

    def _relink(self, view: View) -> None:
        """Link back into ``blobs/`` each blob of whole ``view`` that was deleted there.

        A hard-linked view keeps a deleted blob's bytes, and the warm path
        trusts the view: without this, ``verify`` would call the blob missing
        while ``sync`` found nothing to fetch. The view's file still has the
        identity recorded when it was linked from the verified blob, so it is
        that blob (the memo, keyed by identity, agrees); a copy is re-hashed
        like any blob whose identity moved. (A symlinked view dangles instead,
        is not whole, and is rebuilt.) A blob that cannot be linked back
        (a read-only cache) stays missing: the view still works.
        """
        for item in view.files:
            blob = self.blob_path(item["sha256"])
            if blob.exists():
                continue
            with contextlib.suppress(OSError):
                blob.parent.mkdir(parents=True, exist_ok=True)
                os.link(view.path / item["name"], blob)
                log.info("restored blob %s in %s from view %s", item["sha256"][:12], self.root, view.path.name)

    def build_view(self, key: str, files: Sequence[ViewFile], model: str) -> Path:
        """Make (or repair) view ``key`` showing ``files``; every blob must be present."""
        final = self._dir("views") / key
        # One builder at a time, so that a good view is never swapped out under a reader.
        with self.writer(f"view-{key}", threading.Event()):
            if self._check_view(key) is None:
                with writing(final):
                    views.build(final, files, model, self.blob_path)
        return final

    def _views(self) -> Iterator[View]:
        return views.scan(self.root / "views")

    # --- leases ------------------------------------------------------------

    @contextlib.contextmanager
    def _store_lock(self, shared: bool) -> Iterator[None]:
        """Shared while a lease is taken, exclusive while evicting (see :mod:`modelfix.leases`)."""
        import fcntl

        path = self._dir("locks") / "store.lock"
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def lease(self, shas: Iterable[str]) -> None:
        """Mark blobs ``shas`` (present or about to be) in use by this process until it exits."""
        new = [s for s in dict.fromkeys(shas) if s not in leases.held(self.root)]
        if new:
            with self._store_lock(shared=True):
                self._take(new)

    def unreserve(self, shas: Iterable[str]) -> None:
        """Give back the room :meth:`make_room` reserved for blobs whose download did not finish."""
        with writing(self.root / "leases"):
            leases.unreserve(self.root, shas)

    def _take(self, shas: Iterable[str], sizes: Mapping[str, int] | None = None) -> None:
        with writing(self.root / "leases"):
            leases.take(self.root, shas, sizes)

    # --- care: usage, eviction, gc --------------------------------------------------

    def _blobs(self) -> Iterator[tuple[str, os.stat_result]]:
        base = self.root / "blobs" / "sha256"
        for folder in base.iterdir() if base.is_dir() else ():
            for blob in folder.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    yield blob.name, blob.stat()

    def usage(self) -> Usage:
        blobs = dict(self._blobs())
        shown = [
            {
                "key": view.path.name,
                "models": list(view.models),
                "last_used": used,
                "bytes": sum(blobs[s].st_size for s in view.shas if s in blobs),
            }
            for view in self._views()
            if (used := view.last_used()) is not None
        ]
        tmp = self.root / "tmp"
        partial = sum(p.stat().st_size for p in tmp.glob("*.partial")) if tmp.is_dir() else 0
        return Usage(
            self.root,
            len(blobs),
            sum(s.st_size for s in blobs.values()),
            tuple(sorted(shown, key=lambda v: -v["last_used"])),
            partial,
            leases.live(self.root)[1],
        )

    def make_room(
        self,
        incoming: Mapping[str, int],
        budget: float,
        keep: Iterable[str] = (),
        *,
        model: str = "",
        best_effort: bool = False,
    ) -> list[str]:
        """Evict least recently used blobs until the blobs ``incoming`` (sha256 -> size) fit in ``budget``.

        Never evicts a blob in ``keep`` (pinned by the lockfile in use) or
        leased by a live process, and counts the room other processes
        reserved for downloads still running. If that cannot reach the budget,
        raises :class:`CacheError`, or with ``best_effort`` evicts all it may.
        On success the incoming blobs are reserved for this process (leased,
        with their sizes), in the same turn of the store lock: two processes
        syncing at once cannot both count on the same free space.
        Returns the evicted shas.
        """
        keep = set(keep)
        with self._store_lock(shared=False):
            sizes = leases.live_with_sizes(self.root)
            leased = set(sizes)
            last_used: dict[str, float] = {}
            for view in self._views():
                used = view.last_used() or 0.0
                for sha in view.shas:
                    last_used[sha] = max(used, last_used.get(sha, 0.0))
            candidates = [
                Candidate(sha, st.st_size, last_used.get(sha, st.st_mtime), held=sha in keep or sha in leased)
                for sha, st in self._blobs()
            ]
            present = {str(c.key) for c in candidates}
            # Downloads other processes (or this one's other threads) have room for: held, like a
            # blob in use. One they fetch that this sync needs too is fetched once: not counted twice.
            others = {sha: size for sha, size in sizes.items() if size and sha not in present}
            candidates += [Candidate(sha, size, time.time(), held=True) for sha, size in others.items()]
            needed = sum(size for sha, size in incoming.items() if sha not in others)
            try:
                victims = plan(candidates, budget, needed)
            except NoRoom as exc:
                if best_effort:
                    return self._evict_locked([str(c.key) for c in candidates if not c.held])
                raise CacheError(
                    f"{model or 'the store'}: not enough room under the cache cap: {exc}. Raise "
                    "MODELFIX_CACHE_MAX_SIZE (or --max-size), or remove models with `modelfix cache rm NAME`."
                ) from None
            evicted = self._evict_locked([str(v) for v in victims])
            if incoming:
                self._take(incoming.keys(), sizes=incoming)
            return evicted

    def evict(self, shas: Iterable[str]) -> list[str]:
        with self._store_lock(shared=False):
            return self._evict_locked(list(shas))

    def _evict_locked(self, shas: list[str]) -> list[str]:
        doomed = set(shas)
        for view in self._views():
            gone = [f["name"] for f in view.files if f["sha256"] in doomed]
            for name in gone:
                events.emit(Event(kind="evict", model=", ".join(view.models), file=name, source="cache"))
            if gone:  # a view must be whole; the blobs it shares with others stay
                shutil.rmtree(view.path, ignore_errors=True)
        for sha in shas:
            self.blob_path(sha).unlink(missing_ok=True)
            self._memo_path(sha).unlink(missing_ok=True)
        return shas

    def remove_views(self, keys: Iterable[str], blobs: Iterable[str]) -> tuple[int, list[str]]:
        """Delete views ``keys`` and whichever of ``blobs`` no other view shows and no other live process leases.

        Returns (bytes freed, blobs kept because they are in use).
        """
        keys, blobs = set(keys), list(blobs)
        with self._store_lock(shared=False):
            leased, _ = leases.live(self.root, own=False)  # removing is this process's own decision
            for view in self._views():
                if view.path.name in keys:  # a joined file is a blob of its own, shown only here
                    blobs += view.shas
                    # A process using these blobs loaded them from this view, and loads them
                    # from it again after an eviction: the view stays while it lives.
                    if not view.shas & leased:
                        shutil.rmtree(view.path, ignore_errors=True)
            shown = {sha for view in self._views() for sha in view.shas}
            freed, kept = 0, []
            for sha in dict.fromkeys(blobs):
                if sha in leased or sha in shown:
                    kept.append(sha)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    freed += self.blob_path(sha).stat().st_size
                self._evict_locked([sha])
            return freed, kept

    def gc(self, keep: Iterable[str] = ()) -> dict[str, int]:
        """Delete what nothing points at; returns counts and bytes freed.

        * blobs that no view shows, that are not in ``keep`` (the lockfile's
          pins) and that no live process leases;
        * views whose blobs are gone;
        * partial downloads no process is writing (they would resume, but
          gc is the request to let them go);
        * leases of dead processes, memo and join records of absent blobs.
        """
        keep = set(keep)
        report = {"blobs": 0, "bytes": 0, "views": 0, "partials": 0}
        with self._store_lock(shared=False):
            leased, _ = leases.live(self.root)
            shown: set[str] = set()
            for view in self._views():
                if not view.shas or not all(self.has(s) for s in view.shas):
                    shutil.rmtree(view.path, ignore_errors=True)
                    report["views"] += 1
                else:
                    shown |= view.shas
            for sha, st in list(self._blobs()):
                if sha not in shown and sha not in keep and sha not in leased:
                    self._evict_locked([sha])
                    report["blobs"] += 1
                    report["bytes"] += st.st_size
            report["partials"], freed = self._drop_idle_partials()
            report["bytes"] += freed
            for record in (self.root / "memo").glob("*/*.json"):
                if not self.has(record.stem):
                    record.unlink(missing_ok=True)
            for record in (self.root / "joins").glob("*"):
                with contextlib.suppress(OSError):
                    if not self.has(record.read_text().strip()):
                        record.unlink()
        return report

    def _drop_idle_partials(self) -> tuple[int, int]:
        from filelock import FileLock, Timeout

        count = freed = 0
        for partial in (self.root / "tmp").glob("*") if (self.root / "tmp").is_dir() else ():
            sha = partial.name.split(".", 1)[0]
            lock = FileLock(self._lock_path(sha), thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # someone is writing it right now
            try:
                with contextlib.suppress(FileNotFoundError):
                    freed += partial.stat().st_size
                    partial.unlink()
                    count += partial.name.endswith(".partial")
            finally:
                lock.release()
        return count, freed


def stats(settings: CacheSettings) -> Usage:
    """What the store at ``settings.root`` holds (for ``modelfix cache stats`` and ``%modelfix_cache``)."""
    return Store(settings.root).usage()


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Write ``path`` (or under it) in the cache: an OSError becomes the :func:`cache_error` for it."""
    try:
        yield
    except OSError as exc:
        raise cache_error(exc, exc.filename or path) from None


def cache_error(exc: OSError, path: str | os.PathLike[str], *, label: str = "") -> CacheError:
    """The :class:`CacheError` for ``exc``, met writing ``path`` in the cache: where, why, what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (
            "Make room in the cache (`modelfix cache prune --max-size SIZE`, `modelfix cache gc`) or set "
            "MODELFIX_CACHE_DIR (or --cache-dir) to a folder on a disk with room."
        )
    else:
        fix = "Point the cache elsewhere: set MODELFIX_CACHE_DIR (or --cache-dir) to a folder you can write to."
    where = f"{label}: " if label else ""
    return CacheError(f"{where}cannot write {path}: {exc.strerror or exc}. {fix}")


# --- helpers -----------------------------------------------------------------


def _join_key(parts: Sequence[str]) -> str:
    return sha256_text("join\n" + "\n".join(parts))


def _atomic_write(path: Path, text: str) -> None:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        os.replace(tmp, path)


def _used(manifest: str) -> None:
    """Record a use of the view (its manifest's mtime, for eviction), at most once a minute per process.

    Eviction orders views by last use; a minute is far below the gaps that
    matter there, and a utime on every warm call would double its cost.
    """
    now = time.monotonic()
    if now - _LAST_USED.get(manifest, -_USE_EVERY) >= _USE_EVERY:
        _LAST_USED[manifest] = now
        with contextlib.suppress(OSError):
            os.utime(manifest)


def _thread_lock(key: str) -> threading.Lock:
    """One lock per blob, so that threads of one process queue here rather than poll the file lock."""
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.Lock())


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_LAST_USED: dict[str, float] = {}  # manifest -> time.monotonic() of the last utime
_USE_EVERY = 60.0

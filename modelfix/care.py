"""Cache care: what the store holds, and what may go (``modelfix cache stats|prune|gc|rm``, ``%modelfix_cache``).

Each function takes the store to work on and the lockfile in use (None outside a project),
and returns a frozen report that the CLI and the notebook both render (``summary()``)::

    usage(store)                        Usage: blobs, bytes, partial downloads, live processes, and
                                        each view (CachedView: key, models, revision, bytes, last use)
    describe(store, lockfile)           the same, each view naming every lockfile model that shares
                                        it, with its state: "pinned" (the lockfile pins it),
                                        "superseded" (its models are the lockfile's, now pinned
                                        elsewhere: an old revision after `lock --upgrade`),
                                        "unpinned" (another project's, or no lockfile)
    prune(store, cap, lockfile)         PruneReport: least recently used blobs evicted down to ``cap``
    drop_superseded(store, lockfile)    GcReport: the revisions the lockfile pins no more
                                        (``prune --superseded``)
    gc(store, lockfile)                 GcReport: what nothing needs: superseded revisions, blobs no
                                        view shows and the lockfile does not pin, views whose blobs
                                        are gone, views left half built or half replaced, idle
                                        partial downloads, stale records
    remove(store, name, lockfile)       Removal: every cached revision of one model (``cache rm``)

:class:`modelfix.Project` passes them its store (or a read-only cache in front of it, for
``usage``) and its lockfile. In a cache this process cannot write, ``prune``, ``gc`` and
``remove`` stop before anything with one error naming it and the fix; ``usage`` reads it as it is.

Every one that deletes takes ``dry_run``: it then says what would go and frees nothing. None
of them removes what a live process leases, and none follows a link: they delete only the
regular files and the folders the store makes, by the names it gives them (a cache folder that
is a link is refused first, :meth:`Store.check_folders`). Bytes are counted as freed only when
the last link to them goes: a blob hard-linked from elsewhere (another cache it was adopted from,
a view kept for a live process) stays on disk and is not counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import leases, safefs, views
from .errors import CacheError
from .eviction import format_size
from .lockfile import content_key
from .views import View

if TYPE_CHECKING:
    from .lockfile import Lockfile
    from .store import Store

__all__ = [
    "CachedView",
    "Usage",
    "PrunedFile",
    "PruneReport",
    "GcReport",
    "Removal",
    "usage",
    "describe",
    "prune",
    "drop_superseded",
    "gc",
    "remove",
]

# A `.tmp-`/`.old-` folder under views/ without a key in its name (made by an older modelfix) is
# taken as abandoned after this long; one with a key, as soon as that view's writer lock is free.
_LEFTOVER_AGE = 3600.0
_PARTIAL_RE = re.compile(r"[0-9a-f]{64}\.partial(\.ranges(\.tmp|\.[0-9a-f]{8}\.tmp)?)?")
_STAGED_RE = re.compile(r"[0-9a-f]{64}\.(adopt|join)-[0-9a-f]{8}")


# --- the reports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedView:
    """One view of the store: a revision of a model as it is cached.

    ``state`` is None from :func:`usage` (no lockfile asked), else ``"pinned"``,
    ``"superseded"`` or ``"unpinned"`` (see the module docstring).
    """

    key: str
    models: tuple[str, ...]
    revision: str | None
    bytes: int
    last_used: float  # seconds since the epoch
    state: str | None = None


@dataclass(frozen=True)
class Usage:
    """What a cache holds (``modelfix cache stats``). ``readonly``: why this process cannot write
    it (then nothing is leased there), or None."""

    root: Path
    blobs: int
    blob_bytes: int
    views: tuple[CachedView, ...]  # most recently used first
    partial_bytes: int
    live_leases: int
    readonly: str | None = None


@dataclass(frozen=True)
class PrunedFile:
    """A blob that :func:`prune` evicted (or would evict): its size and what shows it (``models: file``)."""

    sha256: str
    size: int
    shown: str


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` evicted (or, with ``dry_run``, would evict) to fit ``cap``, and what the store holds now."""

    evicted: tuple[PrunedFile, ...]
    held: int  # bytes of blobs in the store afterwards (with dry_run: as it would be)
    cap: float
    dry_run: bool

    @property
    def freed(self) -> int:
        return sum(f.size for f in self.evicted)

    def summary(self) -> str:
        """``evicted 2 files; the cache holds 1.2 GB`` (a dry run: what would go, one line per file)."""
        if self.dry_run and not self.evicted:
            return f"would evict 0 files; the cache holds {format_size(self.held)}"
        if self.dry_run:
            lines = [f"would evict {_count(len(self.evicted), 'file')} ({format_size(self.freed)}):"]
            return "\n".join([*lines, *(f"  {f.shown}  {format_size(f.size)}" for f in self.evicted)])
        return f"evicted {_count(len(self.evicted), 'file')}; the cache holds {format_size(self.held)}"

    def note(self) -> str | None:
        """Why the store is still above the cap, if it is (what it keeps), else None."""
        if self.held <= self.cap:
            return None
        return f"the rest is in use by running processes or pinned by the lockfile: above {format_size(self.cap)}"


@dataclass(frozen=True)
class GcReport:
    """What :func:`gc` (or, with ``only_superseded``, :func:`drop_superseded`) removed or would remove."""

    blobs: int  # blobs no view shows and the lockfile does not pin
    views: int  # views whose blobs are gone
    superseded: int  # revisions the lockfile pins no more
    leftovers: int  # half-built or half-replaced view folders
    partials: int  # idle partial downloads
    bytes: int  # freed (bytes whose last link went)
    dry_run: bool
    only_superseded: bool = False

    def summary(self) -> str:
        """``removed 1 unused file, 0 broken views, ...: 1.2 MB freed`` (``would remove`` for a dry run)."""
        verb = "would remove" if self.dry_run else "removed"
        if self.only_superseded:
            return (
                f"{verb} {_count(self.superseded, 'superseded revision')} "
                f"({_count(self.blobs, 'file')} no other revision shows): {format_size(self.bytes)} freed"
            )
        return (
            f"{verb} {_count(self.blobs, 'unused file')}, {_count(self.views, 'broken view')}, "
            f"{_count(self.superseded, 'superseded revision')}, "
            f"{_count(self.leftovers, 'leftover view folder')} and {_count(self.partials, 'partial download')}: "
            f"{format_size(self.bytes)} freed"
        )


@dataclass(frozen=True)
class Removal:
    """What ``cache rm NAME`` removed (or, with ``dry_run``, would remove)."""

    name: str
    views: tuple[View, ...]  # the revisions removed
    in_use: tuple[View, ...]  # kept: a live process loads from them
    shared: tuple[str, ...]  # other models of the lockfile pinning one of these views: kept for them
    blobs: tuple[str, ...]  # blobs removed
    kept: tuple[str, ...]  # blobs kept: another view shows them or a live process uses them
    freed: int  # bytes whose last link went
    elsewhere: int  # bytes of removed files that stay on disk: linked from outside what was removed
    dry_run: bool


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


class _Freed:
    """Bytes freed by removing links: an inode's size counts once its last link is among them."""

    def __init__(self) -> None:
        # (dev, ino) -> [links, size, links removed, is a blob removed from the store]
        self._inodes: dict[tuple[int, int], list[int]] = {}

    def link(self, path: str | os.PathLike[str], *, blob: bool = False) -> None:
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                entry = self._inodes.setdefault((st.st_dev, st.st_ino), [st.st_nlink, st.st_size, 0, 0])
                entry[2] += 1
                entry[3] |= blob

    def tree(self, folder: Path) -> None:
        """The files of a view folder (not its manifest: bookkeeping, a few hundred bytes)."""
        for parent, _, names in os.walk(folder):  # never into a linked folder
            for name in names:
                if name != views.MANIFEST:
                    self.link(os.path.join(parent, name))

    @property
    def bytes(self) -> int:
        return sum(size for links, size, removed, _ in self._inodes.values() if removed >= links)

    @property
    def elsewhere(self) -> int:
        """Bytes of blobs removed from the store whose file lives on under another name."""
        return sum(size for links, size, removed, blob in self._inodes.values() if blob and removed < links)


# --- what is there ---------------------------------------------------------------------------


def usage(store: Store) -> Usage:
    """What ``store`` holds, each view as its manifest describes it (no state: no lockfile asked)."""
    blobs = dict(store.blobs())
    shown = [
        CachedView(
            key=view.path.name,
            models=tuple(view.models),
            revision=view.revision,
            bytes=sum(blobs[s].st_size for s in view.shas if s in blobs),
            last_used=used,
        )
        for view in store.views()
        if (used := view.last_used()) is not None
    ]
    partial = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(store.root / "tmp"):
            st = entry.stat(follow_symlinks=False)
            if entry.name.endswith(".partial") and stat.S_ISREG(st.st_mode):
                partial += st.st_size
    return Usage(
        store.root,
        len(blobs),
        sum(s.st_size for s in blobs.values()),
        tuple(sorted(shown, key=lambda v: -v.last_used)),
        partial,
        0 if store.layer else leases.live(store.root, tidy=not store.readonly)[1],
        store.readonly,
    )


@dataclass(frozen=True)
class _Pins:
    """What the lockfile in use says about views: the keys it pins and the names it owns."""

    keys: dict[str, set[str]]  # content key -> the lockfile's names pinning it
    names: frozenset[str]

    def state(self, view: View) -> str:
        if view.path.name in self.keys:
            return "pinned"
        if view.models and set(view.models) <= self.names:
            return "superseded"
        return "unpinned"


def _pins(lockfile: Lockfile | None) -> _Pins:
    keys: dict[str, set[str]] = {}
    for entry in lockfile.entries.values() if lockfile else ():
        if entry.files:
            keys.setdefault(content_key(entry), set()).add(entry.name)
    return _Pins(keys, frozenset(lockfile.entries) if lockfile else frozenset())


def describe(store: Store, lockfile: Lockfile | None) -> Usage:
    """``store``'s usage, each view naming every lockfile model that shares it, and its state.

    A view's manifest names only the model that built it; a second name with the
    same pins reuses it as it is, so only the lockfile knows. Without a lockfile the
    manifest's names are all there is: stats describe the cache, a project is optional.
    """
    found = usage(store)
    pins = _pins(lockfile)
    shown = tuple(
        dataclasses.replace(
            view,
            models=tuple(sorted({*view.models, *pins.keys.get(view.key, ())})),
            state=pins.state(View(store.view_path(view.key), models=view.models)),
        )
        for view in found.views
    )
    return dataclasses.replace(found, views=shown)


# --- what may go -------------------------------------------------------------------------------


def _kept(lockfile: Lockfile | None) -> set[str]:
    """Every blob the lockfile in use pins: care never deletes them."""
    return {p.sha256 for e in lockfile.entries.values() for p in e.files} if lockfile else set()


def prune(store: Store, cap: float, lockfile: Lockfile | None, *, dry_run: bool = False) -> PruneReport:
    """Evict least recently used blobs until ``store`` fits ``cap`` bytes.

    Keeps what live processes lease and what the lockfile in use pins, even if that leaves
    the store above ``cap`` (:meth:`PruneReport.note` says so).
    """
    if math.isinf(cap):
        raise CacheError(
            "the cache has no cap to prune to: pass --max-size SIZE (e.g. 20GB) or set MODELFIX_CACHE_MAX_SIZE."
        )
    sizes = {sha: st.st_size for sha, st in store.blobs()}
    names = {f["sha256"]: f"{', '.join(v.models) or '?'}: {f['name']}" for v in store.views() for f in v.files}
    evicted = store.make_room({}, cap, keep=_kept(lockfile), best_effort=True, dry_run=dry_run)
    files = tuple(PrunedFile(sha, sizes.get(sha, 0), names.get(sha, sha[:12])) for sha in evicted)
    held = sum(sizes.values()) - sum(f.size for f in files) if dry_run else sum(st.st_size for _, st in store.blobs())
    return PruneReport(files, held, cap, dry_run)


def drop_superseded(store: Store, lockfile: Lockfile | None, *, dry_run: bool = False) -> GcReport:
    """Remove the revisions the lockfile in use pins no more (``cache prune --superseded``), and
    the blobs only they showed."""
    return _collect(store, _kept(lockfile), _pins(lockfile), dry_run=dry_run, only_superseded=True)


def gc(store: Store, lockfile: Lockfile | None, *, dry_run: bool = False) -> GcReport:
    """Delete what nothing needs (see the module docstring), keeping the lockfile's pins."""
    return _collect(store, _kept(lockfile), _pins(lockfile), dry_run=dry_run)


def _collect(store: Store, keep: set[str], pins: _Pins, *, dry_run: bool, only_superseded: bool = False) -> GcReport:
    store.require_writable("`modelfix cache prune --superseded`" if only_superseded else "`modelfix cache gc`")
    store.check_folders()
    counts = {"views": 0, "superseded": 0, "leftovers": 0, "partials": 0}
    freed, doomed = _Freed(), []
    leftovers: list[Path] = []
    partials: list[Path] = []
    with store.locked(shared=False):
        leased, _ = leases.live(store.root, tidy=not dry_run)
        shown: set[str] = set()
        for view in store.views():
            broken = not view.shas or not all(store.has(s) for s in view.shas)
            old = pins.state(view) == "superseded" and not view.shas & leased
            if (broken and not only_superseded) or old:
                counts["views" if broken else "superseded"] += 1
                freed.tree(view.path)
                doomed.append(view.path)
            else:
                shown |= view.shas
        blobs = [sha for sha, _ in store.blobs() if sha not in shown | keep | leased]
        if only_superseded:  # only the blobs the dropped revisions showed
            dropped = {s for v in store.views() if v.path in doomed for s in v.shas}
            blobs = [sha for sha in blobs if sha in dropped]
        for sha in blobs:
            freed.link(store.blob_path(sha), blob=True)
        if not only_superseded:
            leftovers = _leftovers(store)
            counts["leftovers"] = len(leftovers)
            for path in leftovers:
                freed.tree(path)
            partials = _idle_partials(store)
            counts["partials"] = sum(1 for p in partials if p.name.endswith(".partial"))
            for path in partials:
                freed.link(path)
        report = GcReport(
            blobs=len(blobs), bytes=freed.bytes, dry_run=dry_run, only_superseded=only_superseded, **counts
        )
        if dry_run:
            return report
        for path in doomed:
            views.remove_tree(path)
        store.evict_locked(blobs)
        if not only_superseded:
            for path in leftovers:
                views.remove_tree(path)
            for path in partials:
                path.unlink(missing_ok=True)
            _drop_stale_records(store)
    return report


def _leftovers(store: Store) -> list[Path]:
    """``views/.tmp-*`` and ``views/.old-*`` that no builder is working on: its view's writer lock is
    free (or, for a name without a key, older than an hour)."""
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(store.root / "views"):
            if not entry.name.startswith((".tmp-", ".old-")):
                continue
            key = views.leftover_key(entry.name)
            if key is None:
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat(follow_symlinks=False).st_mtime > _LEFTOVER_AGE:
                        found.append(Path(entry.path))
            elif _idle(store, f"view-{key}"):
                found.append(Path(entry.path))
    return found


def _idle_partials(store: Store) -> list[Path]:
    """Regular files in ``tmp/`` that modelfix made (partials, journals, staged adoptions and joins)
    and that no process is writing now (their blob's writer lock is free)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(store.root / "tmp"):
            if not (_PARTIAL_RE.fullmatch(entry.name) or _STAGED_RE.fullmatch(entry.name)):
                continue
            if entry.is_file(follow_symlinks=False) and _idle(store, entry.name[:64]):
                found.append(Path(entry.path))
    return found


def _idle(store: Store, key: str) -> bool:
    """Is the writer lock of ``key`` free (no process making that blob or view now)?"""
    path = store.root / "locks" / f"{key}.lock"
    try:
        fd = safefs.open_regular(path, os.O_RDONLY)
    except CacheError:
        return False  # a planted lock file: leave its folder alone, someone may be at work
    if fd is None:
        return True
    try:
        return safefs.try_lock(fd) is True
    finally:
        os.close(fd)


def _drop_stale_records(store: Store) -> None:
    """Memo and join records of blobs that are gone (regular files only, by the names they have)."""
    with contextlib.suppress(FileNotFoundError):
        for folder in os.scandir(store.root / "memo"):
            if folder.is_dir(follow_symlinks=False):
                for record in os.scandir(folder.path):
                    name = record.name.removesuffix(".json")
                    if record.is_file(follow_symlinks=False) and name != record.name and not store.has(name):
                        os.unlink(record.path)
    with contextlib.suppress(FileNotFoundError):
        for record in os.scandir(store.root / "joins"):
            if record.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError, ValueError, CacheError):
                    sha = (safefs.read_small(record.path, 256) or b"").decode().strip()
                    if not store.has(sha):
                        os.unlink(record.path)


# --- one model --------------------------------------------------------------------------------


def remove(store: Store, name: str, lockfile: Lockfile | None, *, dry_run: bool = False) -> Removal:
    """Drop every cached revision of ``name``: the view of its current pins and each view that
    names it (older revisions, or a model gone from the lockfile), with the blobs no other view
    shows and no other live process leases.

    A view a live process uses stays (it reloads from there after an eviction), and so does a
    view that another model of the lockfile pins (the same bytes under two names).
    """
    entry = lockfile.entries.get(name) if lockfile else None
    ours = {content_key(entry)} if entry is not None and entry.files else set()
    cached = list(store.views())
    ours |= {v.path.name for v in cached if name in v.models}
    if not ours and entry is None:
        names = sorted({m for v in cached for m in v.models})
        raise CacheError(
            f"no cached model named {name!r} (cached: {', '.join(names) or 'none'}). `modelfix cache stats` lists them."
        )
    pins = _pins(lockfile)
    shared = {key: pins.keys[key] - {name} for key in ours if pins.keys.get(key, set()) - {name}}
    blobs = [p.sha256 for p in entry.files] if entry is not None else []
    return _remove(store, name, ours - set(shared), blobs, sorted(n for ns in shared.values() for n in ns), dry_run)


def _remove(store: Store, name: str, keys: set[str], blobs: Iterable[str], shared: list[str], dry_run: bool) -> Removal:
    store.require_writable(f"`modelfix cache rm {name}`")
    store.check_folders()
    blobs = list(blobs)
    freed = _Freed()
    with store.locked(shared=False):
        leased, _ = leases.live(store.root, own=False, tidy=not dry_run)  # removing is this process's own decision
        removed: list[View] = []
        in_use: list[View] = []
        staying: list[View] = []
        for view in store.views():
            if view.path.name in keys:
                blobs += view.shas  # a joined file is a blob of its own, shown only here
                # A process using these blobs loaded them from this view, and loads them
                # from it again after an eviction: the view stays while it lives.
                (in_use if view.shas & leased else removed).append(view)
            else:
                staying.append(view)
        for view in removed:
            freed.tree(view.path)
        shown = {sha for view in [*staying, *in_use] for sha in view.shas}
        gone, kept = [], []
        for sha in dict.fromkeys(blobs):
            if sha in leased or sha in shown:
                kept.append(sha)
            elif store.has(sha):
                gone.append(sha)
                freed.link(store.blob_path(sha), blob=True)
        if not dry_run:
            for view in removed:
                views.remove_tree(view.path)
            store.evict_locked(gone)
    return Removal(
        name,
        tuple(removed),
        tuple(in_use),
        tuple(shared),
        tuple(gone),
        tuple(kept),
        freed.bytes,
        freed.elsewhere,
        dry_run,
    )

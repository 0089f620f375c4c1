"""From lockfile entries to verified files on disk: the warm path, the cold path, and verify.

A :class:`Resolver` belongs to one :class:`modelfix.Project`, which hands it the lockfile and
the cache settings in force::

    warm(root, layers, lockfile, entry) -> Materialized | None   a few stats; None: go cold
    make(entries, lockfile, cache) -> [Materialized]             the cold path: fetch what is
                                                                 missing, in parallel
                                                                 (modelfix.obtain), then build
                                                                 each view
    verify(entries, lockfile, cache, full) -> [Problem]          re-hash where each model is served

A model whose view is whole in a read-only cache in front of the store
(``MODELFIX_READONLY_CACHES``, see :mod:`modelfix.layers`) is served from there, in
place. Otherwise its files are made in the writable store, each from the first place that
has it (:mod:`modelfix.obtain`). A warm call costs a few stats: no network, no hashing, no
parsing.

The warm path keeps one memo per Resolver, checked by stats on every call::

    (cache root, read-only caches, lockfile, model) -> (Entry, the store that
                                                 serves it, view Snapshot, Materialized)

A call reuses the Materialized while the entry is the same object (the lockfile did not
change: :class:`~modelfix.lockfile.LockfileMemo` hands back the same parse) and the view's
files still have the identities they had (a stat each): a view removed by ``cache rm``, gc
or an eviction in another process, or a blob removed by ``verify``, fails that check and the
call takes the cold path again. The cache root and the read-only caches are part of the key:
the Project reads them from the environment on every call, so a new ``MODELFIX_CACHE_DIR``
is a new memo entry.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import joins
from .config import CacheSettings, usable_root
from .errors import CacheError, LockError
from .lockfile import Entry, FilePin, Lockfile, content_key
from .store import Store
from .tiers import stores
from .views import Snapshot, View, ViewFile

__all__ = ["Materialized", "Problem", "Resolver", "pinned", "missing", "cached_state"]


@dataclass(frozen=True)
class Materialized:
    """A model's files, verified, under their pinned names in one folder (its view)."""

    name: str
    entry: Entry
    view: Path
    files: tuple[Path, ...]
    model_path: Path
    mmproj_path: Path | None
    preset_path: Path | None
    content_key: str


@dataclass(frozen=True)
class Problem:
    """One file that ``verify`` found missing or wrong (hashes prefixed ``sha256:`` / ``xxh3:``)."""

    model: str
    file: str
    expected: str | None
    got: str | None
    message: str


def pinned(lockfile: Lockfile, name: str) -> Entry:
    """Entry ``name``, if its pins belong to its source; else the LockError that says to lock it."""
    entry = lockfile.entry(name)
    if not entry.files:
        raise LockError(f"model {name!r} in {lockfile.path} is not pinned yet: run `modelfix lock`.", model=name)
    if not entry.is_pinned:
        raise LockError(
            f"the pins of model {name!r} in {lockfile.path} are stale: they were made for "
            f"{entry.pinned_from!r}, the source is now {entry.source!r}. Run `modelfix lock`.",
            model=name,
        )
    return entry


def _layout(entry: Entry) -> list[tuple[str, list[FilePin]]]:
    """(name in the view, pins) in pin order; legacy parts share one joined name."""
    groups: dict[str, list[FilePin]] = {}
    for pin in entry.files:
        groups.setdefault(pin.join or pin.path, []).append(pin)
    return list(groups.items())


def _expected(entry: Entry) -> dict[str, tuple[str | None, int]]:
    """Each file the entry's view shows: the sha256 it must hold (None for a joined file) and its size."""
    return {
        name: (None if pins[0].join else pins[0].sha256, sum(p.size for p in pins)) for name, pins in _layout(entry)
    }


def _materialized(entry: Entry, view: Path, key: str) -> Materialized:
    layout = _layout(entry)

    def first(role: str) -> Path | None:
        return next((view / name for name, pins in layout if pins[0].role == role), None)

    model = first("model")
    if model is None:
        raise LockError(f"model {entry.name!r} pins no model file: run `modelfix lock --upgrade`.", model=entry.name)
    return Materialized(
        name=entry.name,
        entry=entry,
        view=view,
        files=tuple(view / name for name, _ in layout),
        model_path=model,
        mmproj_path=first("mmproj"),
        preset_path=first("preset"),
        content_key=key,
    )


@dataclass(frozen=True)
class _Seen:
    """What the last call for a model found: valid while ``entry`` is the lockfile's and ``view`` is unchanged."""

    entry: Entry
    store: Store  # the one that serves it: the writable store, or a read-only cache in front of it
    view: Snapshot
    materialized: Materialized


_Slot = tuple[Path, tuple[Path, ...], Path, str]  # (cache root, read-only caches, lockfile, model)


class Resolver:
    """Materializes lockfile entries in a store, remembering what it found (the warm path's memo).

    ``limit`` bounds the memo: models x cache roots one project uses (a test run makes a root per test).
    """

    def __init__(self, limit: int = 256) -> None:
        self._warm: dict[_Slot, _Seen] = {}
        self._limit = limit

    def warm(self, root: Path, layers: tuple[Path, ...], lockfile: Lockfile, entry: Entry) -> Materialized | None:
        """``entry``'s Materialized if its view is whole in a read-only cache, else in the store (leased,
        last use recorded); None if it must be made."""
        slot = (root, layers, lockfile.path, entry.name)
        seen = self._warm.get(slot)
        if seen is not None and seen.entry is entry:  # else the lockfile changed since
            key = seen.materialized.content_key
            view = seen.store.use_view(key, seen.view)
            if view is seen.view:
                return seen.materialized
            if view is not None and (found := self._fresh(slot, seen.store, entry, key, view)):
                return found
        key = content_key(entry)
        expect = _expected(entry)
        usable_root(root)  # a cache folder that is a file: the error that says so, not one about a view in it
        for store in (*(Store(layer, layer=True) for layer in layers), Store(root)):
            view = store.use_view(key, None, expect)
            if view is not None and (found := self._fresh(slot, store, entry, key, view)):
                return found
        return None

    def make(
        self,
        entries: Sequence[Entry],
        lockfile: Lockfile,
        cache: CacheSettings,
        *,
        workers: int = 4,
        cancel: threading.Event | None = None,
    ) -> list[Materialized]:
        """The cold path: fetch what ``entries`` lack (``workers`` files at a time; ``cancel`` stops the
        transfers, keeping partial downloads), then build and remember each view."""
        from .obtain import fetch  # the network stack: imported only when something is missing

        store = Store(cache.root)
        fetch(entries, lockfile, cache, store, workers, cancel or threading.Event())
        return [self._build(entry, lockfile, store, cache.layers) for entry in entries]

    def verify(
        self, entries: Sequence[Entry], lockfile: Lockfile, cache: CacheSettings, *, full: bool = False
    ) -> list[Problem]:
        """Re-hash what ``entries`` pin (xxh3 against the memo; sha256 against the pins with ``full``).

        A model is checked where it is served from: the first read-only cache whose view of it is
        whole, else the store. A wrong blob is removed from the store (and its views), so that
        ``modelfix sync`` fetches it again; in a cache this process cannot write it is reported
        and stays, and nothing is written there. Missing files are problems too.
        """
        from .obtain import sync_command

        store = Store(cache.root)
        problems: list[Problem] = []
        checked: dict[tuple[Path, str], tuple[str, str] | None] = {}
        for entry in entries:
            key, expect = content_key(entry), _expected(entry)
            layer = next((s for s in stores(cache, writable=False) if s.check_view(key, expect)), None)
            where = layer or store
            whole = layer is not None or store.check_view(key, expect)  # puts back blobs deleted from under a view
            shown: dict[str, Path] = {}
            if where.readonly and whole:  # what is served there are the view's files: a copy may have unlinked them
                shown = {f["sha256"]: where.view_path(key) / f["name"] for f in View.read(where.view_path(key)).files}
            files = [(pin.path, pin.sha256) for pin in entry.files]
            for name, pins in _layout(entry):  # a joined file is a blob of its own, and the one llama.cpp reads
                if pins[0].join and (joined := joins.joined(where, [p.sha256 for p in pins], check=False)):
                    files.append((name, joined))
            fetch_again = f"run `{sync_command(entry.name, lockfile, store)}`"
            for name, sha in files:
                if sha not in shown and not where.has(sha):
                    # The next sync must not trust the view this resolver remembers: a fresh look fetches the blob.
                    self._warm.pop((store.root, cache.layers, lockfile.path, entry.name), None)
                    problems.append(
                        Problem(entry.name, name, f"sha256:{sha}", None, f"not in the cache: {fetch_again}")
                    )
                    continue
                if (where.root, sha) not in checked:
                    checked[where.root, sha] = where.verify_blob(sha, full=full, path=shown.get(sha))
                if (bad := checked[where.root, sha]) is not None:
                    expected, got = bad
                    fix = (
                        f"it stays there: {where.root} is {where.readonly}; sync that cache again where it is made"
                        if where.readonly
                        else f"removed from the cache; {fetch_again} to fetch it again"
                    )
                    problems.append(
                        Problem(entry.name, name, expected, got, f"corrupt (expected {expected}, got {got}): {fix}")
                    )
        return problems

    def _fresh(self, slot: _Slot, store: Store, entry: Entry, key: str, view: Snapshot) -> Materialized | None:
        # A fresh look (a new process, or the view changed) also checks the pinned blobs, which
        # use_view put back if deleted from under the view: one a view cannot hold (a legacy part
        # of a joined file) must be fetched again, or `verify` would call it missing for ever.
        if not all(store.has(p.sha256) for p in entry.files):
            return None
        return self._remember(slot, store, entry, view, _materialized(entry, store.view_path(key), key))

    def _remember(
        self, slot: _Slot, store: Store, entry: Entry, view: Snapshot, materialized: Materialized
    ) -> Materialized:
        if len(self._warm) >= self._limit:
            self._warm.clear()
        self._warm[slot] = _Seen(entry, store, view, materialized)
        return materialized

    def _build(self, entry: Entry, lockfile: Lockfile, store: Store, layers: tuple[Path, ...]) -> Materialized:
        shown = []
        for name, pins in _layout(entry):
            sha = joins.join(store, [p.sha256 for p in pins]) if pins[0].join else pins[0].sha256
            shown.append(ViewFile(name, sha))
        key = content_key(entry)
        store.build_view(key, shown, entry.name, entry.revision)
        view = store.use_view(key)
        if view is None:
            raise CacheError(
                f"{entry.name}: the view {store.view_path(key)} changed while it was being made; run again.",
                model=entry.name,
            )
        made = _materialized(entry, store.view_path(key), key)
        return self._remember((store.root, layers, lockfile.path, entry.name), store, entry, view, made)


def missing(lockfile: Lockfile, cache: CacheSettings) -> list[tuple[str, FilePin]]:
    """(model, pin) for every pinned file of ``lockfile`` that neither the store nor a read-only cache holds."""
    where = stores(cache)
    return [(e.name, p) for e in lockfile.entries.values() for p in e.files if not any(s.has(p.sha256) for s in where)]


def cached_state(entry: Entry, cache: CacheSettings) -> str:
    """``"cached"`` (every pinned file present, in the store or a read-only cache), ``"partial"`` (some, or a
    download begun) or ``"missing"``."""
    where = stores(cache)
    present = [any(s.has(p.sha256) for s in where) for p in entry.files]
    if present and all(present):
        return "cached"
    partials = cache.root / "tmp"  # not Store.partial_path, which makes the folder (a read-only cache...)
    if any(present) or any((partials / f"{p.sha256}.partial").exists() for p in entry.files):
        return "partial"
    return "missing"

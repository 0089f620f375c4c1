"""From lockfile entries to verified files on disk: the public face of the store.

::

    files(name, lock=None) -> Materialized    every file of the entry, in its view
    path(name, lock=None)  -> Path            the first model file (what llama.cpp loads)
    sync(names=None, lock=None) -> [Materialized]   fetch what is missing, in parallel
    verify(names=None, lock=None, full=False) -> [Problem]
    push(names=None, lock=None)               copy the pinned blobs to the remote tier
    prune(max_size), gc(), remove(name)       cache care, never touching what is in use (from
    cache_stats()                             :mod:`modelfix.care`, re-exported)
    missing(lockfile, settings), cached_state(entry, settings), jobs()

``lock`` is a path, a :class:`Lockfile`, or ``None`` for the nearest
``model-lock.toml`` upward. A model whose view is whole in a read-only cache
in front of the store (``MODELFIX_READONLY_CACHES``, see :mod:`modelfix.layers`)
is served from there, in place. Otherwise bytes come from the first place that
has them: the store, a read-only cache (copied, verified), another local cache
(huggingface_hub's or llama.cpp's, verified and linked in), the remote tier
(``MODELFIX_REMOTE``), then the entry's origin. A warm call costs a few stats:
no network, no hashing, no parsing.

The warm path keeps two memos per process, each checked by stats on every call::

    lockfile path -> (identity, text, parsed Lockfile)    re-read when the identity moves
                                                          (or the file is under 2 s old)
    (cache root, read-only caches, lockfile, model) -> (Entry, the store that
                                                 serves it, view Snapshot, Materialized)

A call reuses the Materialized while the entry is the same object (the
lockfile did not change) and the view's files still have the identities they
had (a stat each): a view removed by ``cache rm``, gc or an eviction in
another process, or a blob removed by ``verify``, fails that check and the
call takes the cold path again. The cache root is read from the environment
on every call (:func:`~modelfix.config.cache_root`), so a new
``MODELFIX_CACHE_DIR`` is a new memo key; so are the read-only caches.

The other caches and the remote tier (``push`` included) live in :mod:`modelfix.tiers`.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .config import CacheSettings, cache_root, layer_roots
from .errors import CacheError, IntegrityError, LockError, ModelfixError, OfflineError
from .eviction import format_size
from .fetch import FetchPolicy, download
from .hashing import Identity, file_identity, sha256_text
from .jobs import Cancelled, Job, jobs, new_job
from .lockfile import Entry, FilePin, Lockfile, nearest_lockfile, read_raw
from .sources import Location, source_for
from .care import cache_stats, gc, prune, remove
from .store import Store
from .tiers import adopt, adoption_candidates, push, remote_url, stores
from .transports import SourceMissing, Transport, transport_for
from .views import Snapshot, View, ViewFile

__all__ = [
    "Materialized",
    "Problem",
    "files",
    "path",
    "sync",
    "verify",
    "push",
    "prune",
    "gc",
    "remove",
    "missing",
    "cached_state",
    "cache_stats",
    "content_key",
    "jobs",
    "remote_url",
    "adoption_candidates",
]

LockLike = str | os.PathLike[str] | Lockfile | None
log = logging.getLogger("modelfix")


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


# --- the lockfile side -------------------------------------------------------

_LOCKS: dict[str, tuple[Identity, str, Lockfile]] = {}  # path -> (identity, text, parse)
# A file written this recently may be written again within the same tick of the filesystem's clock
# (a jiffy on ext4, up to 2 s elsewhere) and keep its identity: its text is compared instead.
_RACY_NS = 2_000_000_000


def _lockfile(lock: LockLike) -> Lockfile:
    """Parse once per change of the file: a warm ``path()`` pays a stat, not a TOML parse."""
    if isinstance(lock, Lockfile):
        return lock
    chosen = lock or os.environ.get("MODELFIX_LOCK")  # find_lockfile's order, without building a Path
    where = os.path.abspath(chosen) if chosen else nearest_lockfile()
    try:
        stamp = file_identity(where)  # the inode too: editors and `modelfix lock` replace the file
    except OSError:
        return Lockfile.load(where)  # raises the friendly "no such lockfile"
    cached = _LOCKS.get(where)
    if cached and cached[0] == stamp and time.time_ns() - stamp[3] > _RACY_NS:
        return cached[2]
    text = read_raw(Path(where))  # a regular file of a bounded size, or a one-line LockError
    parsed = cached[2] if cached and cached[1] == text else Lockfile.parse(text, Path(where))
    _LOCKS[where] = (stamp, text, parsed)
    return parsed


def _pinned(lockfile: Lockfile, name: str) -> Entry:
    entry = lockfile.entry(name)
    if not entry.files:
        raise LockError(f"model {name!r} in {lockfile.path} is not pinned yet: run `modelfix lock`.")
    if not entry.is_pinned:
        raise LockError(
            f"the pins of model {name!r} in {lockfile.path} are stale: they were made for "
            f"{entry.pinned_from!r}, the source is now {entry.source!r}. Run `modelfix lock`."
        )
    return entry


def _entries(lockfile: Lockfile, names: Sequence[str] | None) -> list[Entry]:
    return [_pinned(lockfile, n) for n in (names if names else list(lockfile.entries))]


def content_key(entry: Entry) -> str:
    """sha256 over the entry's pins: entries pinning the same bytes share a view and a pool slot."""
    return sha256_text("".join(f"{p.role}\t{p.path}\t{p.size}\t{p.sha256}\t{p.join or ''}\n" for p in entry.files))


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
        raise LockError(f"model {entry.name!r} pins no model file: run `modelfix lock --upgrade`.")
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


def _open(settings: CacheSettings | None) -> tuple[CacheSettings, Store]:
    """The settings in force (the given ones, else resolved now) and their store."""
    settings = settings or CacheSettings.resolve()
    return settings, Store(settings.root)


# --- public API -------------------------------------------------------------------


def files(name: str, lock: LockLike = None, *, settings: CacheSettings | None = None) -> Materialized:
    """Every file of model ``name``, verified, in its view; fetches what is missing."""
    lockfile = _lockfile(lock)
    root = settings.root if settings else cache_root()
    # A warm call skips _materialize and its lists: about a tenth of what it costs.
    warm = _warm(root, settings.layers if settings else layer_roots(root), lockfile, _pinned(lockfile, name))
    return warm or _materialize([name], lockfile, settings, workers=4, cancel=None)[0]


def path(name: str, lock: LockLike = None, *, settings: CacheSettings | None = None) -> Path:
    """The first model file of ``name`` (split siblings and mmproj beside it)."""
    return files(name, lock, settings=settings).model_path


def sync(
    names: Sequence[str] | None = None,
    lock: LockLike = None,
    *,
    settings: CacheSettings | None = None,
    workers: int = 4,
    cancel: threading.Event | None = None,
) -> list[Materialized]:
    """Fetch and verify ``names`` (default: every model of the lockfile), ``workers`` files at a time.

    ``cancel`` (or Ctrl-C) stops every transfer at its next chunk; partial
    downloads stay and resume on the next call.
    """
    lockfile = _lockfile(lock)
    return _materialize(names or list(lockfile.entries), lockfile, settings, workers=workers, cancel=cancel)


def _materialize(
    names: Sequence[str],
    lock: LockLike,
    settings: CacheSettings | None,
    *,
    workers: int,
    cancel: threading.Event | None,
) -> list[Materialized]:
    lockfile = _lockfile(lock)
    entries = _entries(lockfile, names)
    root = settings.root if settings else cache_root()  # the warm path needs no other setting
    layers = settings.layers if settings else layer_roots(root)
    ready: dict[str, Materialized] = {}
    for entry in entries:
        if (found := _warm(root, layers, lockfile, entry)) is not None:
            ready[entry.name] = found
    cold = [e for e in entries if e.name not in ready]
    if cold:
        settings = settings or CacheSettings.resolve(cache_dir=root)
        store = Store(root)
        _fetch(cold, lockfile, settings, store, workers, cancel or threading.Event())
        for entry in cold:
            ready[entry.name] = _build(entry, lockfile, store, layers)
    return [ready[e.name] for e in entries]


@dataclass(frozen=True)
class _Seen:
    """What the last call for a model found: valid while ``entry`` is the lockfile's and ``view`` is unchanged."""

    entry: Entry
    store: Store  # the one that serves it: the writable store, or a read-only cache in front of it
    view: Snapshot
    materialized: Materialized


_Slot = tuple[Path, tuple[Path, ...], Path, str]  # (cache root, read-only caches, lockfile, model)
_WARM: dict[_Slot, _Seen] = {}
_WARM_LIMIT = 256  # models x cache roots one process uses; a test run makes a root per test


def _warm(root: Path, layers: tuple[Path, ...], lockfile: Lockfile, entry: Entry) -> Materialized | None:
    """``entry``'s Materialized if its view is whole in a read-only cache, else in the store (leased,
    last use recorded); None if it must be made."""
    slot = (root, layers, lockfile.path, entry.name)
    seen = _WARM.get(slot)
    if seen is not None and seen.entry is entry:  # else the lockfile changed since
        key = seen.materialized.content_key
        view = seen.store.use_view(key, seen.view)
        if view is seen.view:
            return seen.materialized
        if view is not None and (found := _fresh(slot, seen.store, entry, key, view)):
            return found
    key = content_key(entry)
    expect = _expected(entry)
    for store in (*(Store(layer, layer=True) for layer in layers), Store(root)):
        view = store.use_view(key, None, expect)
        if view is not None and (found := _fresh(slot, store, entry, key, view)):
            return found
    return None


def _fresh(slot: _Slot, store: Store, entry: Entry, key: str, view: Snapshot) -> Materialized | None:
    # A fresh look (a new process, or the view changed) also checks the pinned blobs, which
    # use_view put back if deleted from under the view: one a view cannot hold (a legacy part
    # of a joined file) must be fetched again, or `verify` would call it missing for ever.
    if not all(store.has(p.sha256) for p in entry.files):
        return None
    return _remember(slot, store, entry, view, _materialized(entry, store.view_path(key), key))


def _remember(slot: _Slot, store: Store, entry: Entry, view: Snapshot, materialized: Materialized) -> Materialized:
    if len(_WARM) >= _WARM_LIMIT:
        _WARM.clear()
    _WARM[slot] = _Seen(entry, store, view, materialized)
    return materialized


def _build(entry: Entry, lockfile: Lockfile, store: Store, layers: tuple[Path, ...]) -> Materialized:
    shown = []
    for name, pins in _layout(entry):
        sha = store.join([p.sha256 for p in pins]) if pins[0].join else pins[0].sha256
        shown.append(ViewFile(name, sha))
    key = content_key(entry)
    store.build_view(key, shown, entry.name, entry.revision)
    view = store.use_view(key)
    if view is None:
        raise CacheError(f"{entry.name}: the view {store.view_path(key)} changed while it was being made; run again.")
    made = _materialized(entry, store.view_path(key), key)
    return _remember((store.root, layers, lockfile.path, entry.name), store, entry, view, made)


def _fetch(
    entries: list[Entry],
    lockfile: Lockfile,
    settings: CacheSettings,
    store: Store,
    workers: int,
    cancel: threading.Event,
) -> None:
    wanted: dict[str, tuple[Entry, FilePin]] = {}
    for entry in entries:
        for pin in entry.files:
            wanted.setdefault(pin.sha256, (entry, pin))
    names = ", ".join(e.name for e in entries)
    store.require_writable(
        f"fetching {names} (not whole in the cache{' or a read-only one' if settings.layers else ''})"
    )
    store.check_folders()  # a cache folder that is a link: one clear error before any download
    absent = {sha: item for sha, item in wanted.items() if not store.has(sha)}
    if settings.offline:
        stuck = {sha for sha, (e, p) in absent.items() if not _adoptable(e, p, lockfile, settings.layers)}
        if stuck:  # every model lists every file it lacks, those it shares with another too
            raise OfflineError(
                _offline_message([(e.name, p) for e in entries for p in e.files if p.sha256 in stuck], lockfile, store)
            )
    if absent and settings.max_size != float("inf"):
        store.make_room(
            {sha: p.size for sha, (_, p) in absent.items()},
            settings.max_size,
            keep=set(wanted),
            model=names,
        )
    store.lease(wanted)  # from now on no other process evicts what this sync brings in
    policy = FetchPolicy.from_env()
    work = [(new_job(e.name, p.path, p.size), e, p) for e, p in wanted.values()]
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="modelfix-fetch")
    errors: list[BaseException] = []
    try:
        futures = [pool.submit(_ensure, store, e, p, lockfile, settings, job, cancel, policy) for job, e, p in work]
        for future in as_completed(futures):
            if (exc := future.exception()) is not None:
                errors.append(exc)
    except KeyboardInterrupt:
        cancel.set()  # every transfer stops at its next chunk, leaving a resumable partial
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for job, _, _ in work:
            if job.status == "queued":
                job.update("cancelled")
        # Room reserved for downloads that did not finish goes back to the other processes now,
        # not when this one (a notebook, say) exits.
        store.unreserve([sha for sha in absent if not store.has(sha)])
    if errors:
        first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
        others = "; ".join(dict.fromkeys(str(e) for e in errors if str(e) != str(first)))
        if others and isinstance(first, ModelfixError):
            raise type(first)(f"{first} (also failed: {others})") from None
        raise first


def _ensure(
    store: Store,
    entry: Entry,
    pin: FilePin,
    lockfile: Lockfile,
    settings: CacheSettings,
    job: Job,
    cancel: threading.Event,
    policy: FetchPolicy,
) -> None:
    label = f"{entry.name}: {pin.path}"
    try:
        if cancel.is_set():
            raise Cancelled(f"{label}: cancelled")
        source = source_for(entry.source, lockfile.path)
        sources = []
        if not settings.offline:
            if settings.remote:
                sources.append(("remote", transport_for(Location(remote_url(settings.remote, pin.sha256)), policy)))
            sources.append(("origin", transport_for(source.locate(pin, entry.revision), policy)))
        # Read-only caches first, copied (never linked: see modelfix.layers), then the other caches.
        others = [(s.blob_path(pin.sha256), False) for s in stores(settings, writable=False) if s.has(pin.sha256)]
        others += [
            (path, True)
            for path in adoption_candidates(
                pin.sha256, repo=getattr(source, "repo", None), filename=pin.path, revision=entry.revision
            )
        ]
        try:
            _obtain(store, pin, label, job, sources, others, cancel, policy)
        except SourceMissing as exc:
            if settings.offline:
                raise OfflineError(_offline_message([(entry.name, pin)], lockfile, store)) from None
            raise SourceMissing(
                f"{exc}. The pinned file is not where its source says: check the source "
                f"(and HF_ENDPOINT), or re-pin with `modelfix lock --upgrade --model {entry.name}`."
            ) from None
    except Cancelled:
        job.update("cancelled")
        raise
    except BaseException as exc:
        job.update("failed", error=str(exc))
        raise


def _obtain(
    store: Store,
    pin: FilePin,
    label: str,
    job: Job,
    sources: Sequence[tuple[str, Transport]],
    others: Sequence[tuple[Path, bool]],
    cancel: threading.Event,
    policy: FetchPolicy,
) -> None:
    """Make blob ``pin`` present and verified, from the first place that has it.

    The store itself ("cache"), a read-only cache's or another cache's file ("adopted";
    ``others``: (path, whether it may be hard-linked)), then each
    source in turn ("remote", "origin"). A missing, failing or corrupt copy in
    the remote falls through to the origin; a mismatch from the origin is
    fetched once more from scratch, then raised as :class:`IntegrityError`.
    Raises :class:`SourceMissing` when nothing is left to try.
    """
    if store.check(pin.sha256):
        job.update("completed", source="cache")
        return
    with store.writer(pin.sha256, cancel):
        if store.check(pin.sha256):  # another process fetched it while we waited
            job.update("completed", source="cache")
            return
        for candidate, linkable in others:
            job.update("verifying", source="adopted")
            if adopt(store, pin.sha256, pin.size, candidate, link=linkable):
                job.update("completed")
                return
        try:
            for i, (name, transport) in enumerate(sources):
                if _fetch_from(store, pin, name, transport, i == len(sources) - 1, label, job, cancel, policy):
                    job.update("completed", source=name)
                    return
        finally:
            store.discard_empty_partial(pin.sha256)  # a source that sent nothing leaves nothing behind
    raise SourceMissing(f"{label}: not in the cache and no source to fetch it from")


def _fetch_from(
    store: Store,
    pin: FilePin,
    name: str,
    transport: Transport,
    last: bool,
    label: str,
    job: Job,
    cancel: threading.Event,
    policy: FetchPolicy,
) -> bool:
    for attempt in (1, 2):
        job.update("downloading", source=name)
        try:
            result = download(
                transport, store.partial_path(pin.sha256), pin.size, job=job, label=label, cancel=cancel, policy=policy
            )
        except (CacheError, Cancelled):
            raise
        except Exception as exc:  # the remote tier is a shortcut: any trouble there sends us on
            if last:
                raise
            if isinstance(exc, IntegrityError):
                store.discard_partial(pin.sha256)
            log.info("%s: the %s tier has no usable copy (%s); trying the next source", label, name, exc)
            return False
        job.update("verifying")
        if result.sha256 == pin.sha256 and result.size == pin.size:
            store.commit(pin.sha256, store.partial_path(pin.sha256), result)
            store.discard_partial(pin.sha256)  # the ranges journal
            return True
        store.discard_partial(pin.sha256)  # bad bytes never get another chance
        job.advance(0, to=0)
        if not last:
            log.warning(
                "%s: the copy in the %s tier is corrupt (sha256 %s); using the next source. "
                "`modelfix push --force` repairs it",
                label,
                name,
                result.sha256,
            )
            return False
        if attempt == 2:
            raise IntegrityError(
                f"{label}: the bytes from {transport.url} do not match the lockfile, twice: expected sha256 "
                f"{pin.sha256} ({pin.size} bytes), got {result.sha256} ({result.size} bytes). Nothing "
                "entered the cache. If the file changed upstream, re-pin with `modelfix lock --upgrade`."
            )
        log.warning("%s: sha256 mismatch (got %s); fetching it again from scratch", label, result.sha256)
    return False


def _adoptable(entry: Entry, pin: FilePin, lockfile: Lockfile, layers: tuple[Path, ...]) -> bool:
    if any(Store(layer, layer=True).has(pin.sha256) for layer in layers):
        return True
    try:
        repo = getattr(source_for(entry.source, lockfile.path), "repo", None)
    except ModelfixError:
        repo = None
    return bool(adoption_candidates(pin.sha256, repo=repo, filename=pin.path, revision=entry.revision))


def _offline_message(items: Iterable[tuple[str, FilePin]], lockfile: Lockfile, store: Store) -> str:
    by_model: dict[str, list[FilePin]] = {}
    for model, pin in items:
        by_model.setdefault(model, []).append(pin)
    lines = [
        f"  {model}: {', '.join(f'{p.path} ({format_size(p.size)})' for p in pins)}  ->  "
        f"{_sync_command(model, lockfile, store)}"
        for model, pins in by_model.items()
    ]
    return (
        "offline mode is on (an offline option such as --offline / --modelfix-offline, MODELFIX_OFFLINE=1 or "
        "HF_HUB_OFFLINE=1) and these models are not in the cache:\n"
        + "\n".join(lines)
        + "\nRun those commands with network access, or turn offline mode off."
    )


def _sync_command(model: str, lockfile: Lockfile, store: Store) -> str:
    """The ``modelfix sync`` that fills this store from this lockfile, run from the working folder.

    A plain ``modelfix sync`` finds the nearest lockfile and the default cache; the
    options are added where this call used others (``--cache-dir``, the pytest
    plugin's ``--modelfix-cache-dir``, a ``modelfix_lock`` ini key...).
    """
    words = ["modelfix", "sync", model]
    if _default_lockfile() != os.path.realpath(lockfile.path):
        words += ["--lock", os.path.abspath(lockfile.path)]
    if store.root != cache_root():
        words += ["--cache-dir", str(store.root)]
    return shlex.join(words)


def _default_lockfile() -> str | None:
    """The lockfile a plain ``modelfix`` command would use here, or None if there is none."""
    try:
        return os.path.realpath(os.environ.get("MODELFIX_LOCK") or nearest_lockfile())
    except LockError:
        return None


def verify(
    names: Sequence[str] | None = None,
    lock: LockLike = None,
    *,
    full: bool = False,
    settings: CacheSettings | None = None,
) -> list[Problem]:
    """Re-hash what ``names`` pin (xxh3 against the memo; sha256 against the pins with ``full``).

    A model is checked where it is served from: the first read-only cache whose view of it is
    whole, else the store. A wrong blob is removed from the store (and its views), so that
    ``modelfix sync`` fetches it again; in a cache this process cannot write it is reported
    and stays, and nothing is written there. Missing files are problems too.
    """
    lockfile = _lockfile(lock)
    settings, store = _open(settings)
    problems: list[Problem] = []
    checked: dict[tuple[Path, str], tuple[str, str] | None] = {}
    for entry in _entries(lockfile, names):
        key, expect = content_key(entry), _expected(entry)
        layer = next((s for s in stores(settings, writable=False) if s.check_view(key, expect)), None)
        where = layer or store
        whole = layer is not None or store.check_view(key, expect)  # puts back blobs deleted from under a whole view
        shown: dict[str, Path] = {}
        if where.readonly and whole:  # what is served there are the view's files: a copy may have unlinked them
            shown = {f["sha256"]: where.view_path(key) / f["name"] for f in View.read(where.view_path(key)).files}
        files = [(pin.path, pin.sha256) for pin in entry.files]
        for name, pins in _layout(entry):  # a joined file is a blob of its own, and the one llama.cpp reads
            if pins[0].join and (joined := where.joined([p.sha256 for p in pins], check=False)):
                files.append((name, joined))
        for name, sha in files:
            if sha not in shown and not where.has(sha):
                # This process's next sync must not trust the view it remembers: the fresh look fetches the blob.
                _WARM.pop((store.root, settings.layers, lockfile.path, entry.name), None)
                problems.append(
                    Problem(
                        entry.name,
                        name,
                        f"sha256:{sha}",
                        None,
                        f"not in the cache: run `{_sync_command(entry.name, lockfile, store)}`",
                    )
                )
                continue
            if (where.root, sha) not in checked:
                checked[where.root, sha] = where.verify_blob(sha, full=full, path=shown.get(sha))
            if (bad := checked[where.root, sha]) is not None:
                expected, got = bad
                fix = (
                    f"it stays there: {where.root} is {where.readonly}; sync that cache again where it is made"
                    if where.readonly
                    else f"removed from the cache; run `{_sync_command(entry.name, lockfile, store)}` to fetch it again"
                )
                problems.append(
                    Problem(entry.name, name, expected, got, f"corrupt (expected {expected}, got {got}): {fix}")
                )
    return problems


def missing(lockfile: Lockfile, settings: CacheSettings) -> list[tuple[str, FilePin]]:
    """(model, pin) for every pinned file of ``lockfile`` that neither the store nor a read-only cache holds."""
    where = stores(settings)
    return [(e.name, p) for e in lockfile.entries.values() for p in e.files if not any(s.has(p.sha256) for s in where)]


def cached_state(entry: Entry, settings: CacheSettings) -> str:
    """``"cached"`` (every pinned file present, in the store or a read-only cache), ``"partial"`` (some, or a
    download begun) or ``"missing"``."""
    where = stores(settings)
    present = [any(s.has(p.sha256) for s in where) for p in entry.files]
    if present and all(present):
        return "cached"
    partials = settings.root / "tmp"  # not Store.partial_path, which makes the folder (a read-only cache...)
    if any(present) or any((partials / f"{p.sha256}.partial").exists() for p in entry.files):
        return "partial"
    return "missing"

"""Bringing pinned blobs into the store, each from the first place that has it.

::

    fetch(entries, lockfile, cache, store, workers, cancel)
        for each blob the entries pin, in parallel (one job each, see modelfix.jobs):
            the store itself            "cache"    (checked: identity, else re-hashed)
            a read-only cache           "adopted"  copied and hashed, never linked (modelfix.layers)
            another local cache         "adopted"  huggingface_hub's, llama.cpp's (modelfix.tiers)
            the remote tier             "remote"   MODELFIX_REMOTE: a missing or corrupt copy falls through
            the origin                  "origin"   the entry's source (modelfix.sources, modelfix.fetch)

A blob enters the store only verified (:meth:`Store.commit`); a mismatch from the origin
is fetched once more from scratch, then an :class:`IntegrityError`. Offline, nothing but
the caches is asked, and what they lack is one :class:`OfflineError` listing every model,
its files and the command that fetches them (:func:`sync_command` names the command).
Under a size cap the room is made, and reserved, before the first byte arrives.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import CacheSettings, cache_root
from .errors import CacheError, Cancelled, IntegrityError, LockError, ModelfixError, OfflineError, SourceMissing
from .eviction import format_size
from .fetch import download
from .jobs import Job, new_job
from .lockfile import Entry, FilePin, Lockfile, nearest_lockfile
from .retry import FetchPolicy
from .sources import source_for
from .store import Store
from .tiers import adopt, adoption_candidates, remote_url, stores
from .transports import Location, Transport, transport_for

__all__ = ["fetch", "sync_command"]

log = logging.getLogger("modelfix")


def fetch(
    entries: Sequence[Entry],
    lockfile: Lockfile,
    cache: CacheSettings,
    store: Store,
    workers: int,
    cancel: threading.Event,
) -> None:
    """Make every blob ``entries`` pin present and verified in ``store``, ``workers`` files at a time.

    Offline, a blob no other cache holds stops everything first (every model lists every
    file it lacks); under a size cap, room is made (and reserved) before any download.
    """
    wanted: dict[str, tuple[Entry, FilePin]] = {}
    for entry in entries:
        for pin in entry.files:
            wanted.setdefault(pin.sha256, (entry, pin))
    names = ", ".join(e.name for e in entries)
    store.require_writable(f"fetching {names} (not whole in the cache{' or a read-only one' if cache.layers else ''})")
    store.check_folders()  # a cache folder that is a link: one clear error before any download
    absent = {sha: item for sha, item in wanted.items() if not store.has(sha)}
    if cache.offline:
        stuck = {sha for sha, (e, p) in absent.items() if not _adoptable(e, p, lockfile, cache.layers)}
        if stuck:  # every model lists every file it lacks, those it shares with another too
            raise OfflineError(
                _offline_message([(e.name, p) for e in entries for p in e.files if p.sha256 in stuck], lockfile, store)
            )
    if absent and cache.max_size != float("inf"):
        store.make_room(
            {sha: p.size for sha, (_, p) in absent.items()},
            cache.max_size,
            keep=set(wanted),
            model=names,
        )
    store.lease(wanted)  # from now on no other process evicts what this sync brings in
    policy = FetchPolicy.from_env()
    work = [(new_job(e.name, p.path, p.size), e, p) for e, p in wanted.values()]
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="modelfix-fetch")
    errors: list[BaseException] = []
    try:
        futures = [pool.submit(_ensure, store, e, p, lockfile, cache, job, cancel, policy) for job, e, p in work]
        # In pin order, not as they end: the error a user reads first is the same on every run.
        errors.extend(exc for future in futures if (exc := future.exception()) is not None)
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
        if isinstance(first, ModelfixError):
            _also_failed(first, [e for e in errors if e is not first and str(e) != str(first)])
        raise first


def _also_failed(first: ModelfixError, others: Sequence[BaseException]) -> None:
    """Add the other files' failures to ``first``: by name where they failed the same way, else in full."""
    same, different = [], []
    for e in others:
        if isinstance(e, ModelfixError) and e.file and first.file and _reason(e) == _reason(first):
            same.append(e.file)
        else:
            different.append(str(e))
    parts = [f"{', '.join(dict.fromkeys(same))} failed the same way"] if same else []
    parts += dict.fromkeys(different)
    if parts:
        first.add_context(suffix=f" (also: {'; '.join(parts)})")


def _reason(e: ModelfixError) -> str:
    """The error's text without its file's name, URL and where its download stopped (fetch's
    "at byte N of M"): what went wrong, whichever file it was."""
    text = str(e)
    for part in (e.url, e.file):
        if part:
            text = text.replace(part, "")
    return _PROGRESS_RE.sub("", text)


_PROGRESS_RE = re.compile(r" at byte \d+ of \d+")


def _ensure(
    store: Store,
    entry: Entry,
    pin: FilePin,
    lockfile: Lockfile,
    cache: CacheSettings,
    job: Job,
    cancel: threading.Event,
    policy: FetchPolicy,
) -> None:
    label = f"{entry.name}: {pin.path}"
    try:
        if cancel.is_set():
            raise Cancelled(f"{label}: cancelled", model=entry.name, file=pin.path)
        source = source_for(entry.source, lockfile.path)
        sources = []
        if not cache.offline:
            if cache.remote:
                sources.append(("remote", transport_for(Location(remote_url(cache.remote, pin.sha256)), policy)))
            sources.append(("origin", transport_for(source.locate(pin, entry.revision), policy)))
        # Read-only caches first, copied (never linked: see modelfix.layers), then the other caches.
        others = [(s.blob_path(pin.sha256), False) for s in stores(cache, writable=False) if s.has(pin.sha256)]
        others += [
            (path, True)
            for path in adoption_candidates(
                pin.sha256, repo=getattr(source, "repo", None), filename=pin.path, revision=entry.revision
            )
        ]
        try:
            _obtain(store, pin, label, job, sources, others, cancel, policy)
        except SourceMissing as exc:
            if cache.offline:
                raise OfflineError(
                    _offline_message([(entry.name, pin)], lockfile, store), model=entry.name, file=pin.path
                ) from None
            exc.add_context(
                suffix=". The pinned file is not where its source says: check the source "
                f"(and HF_ENDPOINT), or re-pin with `modelfix lock --upgrade --model {entry.name}`.",
                model=entry.name,
                file=pin.path,
            )
            raise
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
    with store.writer(pin.sha256, cancel, label):
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
    raise SourceMissing(f"{label}: not in the cache and no source to fetch it from", file=pin.path)


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
                "entered the cache. If the file changed upstream, re-pin with `modelfix lock --upgrade`.",
                file=pin.path,
                url=transport.url,
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
        f"{sync_command(model, lockfile, store)}"
        for model, pins in by_model.items()
    ]
    return (
        "offline mode is on (an offline option such as --offline / --modelfix-offline, MODELFIX_OFFLINE=1 or "
        "HF_HUB_OFFLINE=1) and these models are not in the cache:\n"
        + "\n".join(lines)
        + "\nRun those commands with network access, or turn offline mode off."
    )


def sync_command(model: str, lockfile: Lockfile, store: Store) -> str:
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

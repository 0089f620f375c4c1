"""Turning sources into pins: what ``modelfix lock``, ``add`` and ``lock --check`` do.

An entry needs (re)locking when it has no pins, or when its ``source`` was
edited since it was pinned (``pinned_from`` differs). ``upgrade`` re-resolves
pinned entries too, moving them to the newest upstream commit. Everything is
resolved first and written once, so a failure on one model leaves the file
exactly as it was: no half-updated lockfile, no lost pin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import LockError, ModelfixError, OfflineError
from .lockfile import Entry, Lockfile, Pins, add_entry, replace_text, write_pins
from .sources import shared_lookups, source_for

__all__ = ["LockResult", "Problem", "lock", "add", "check"]


@dataclass(frozen=True)
class LockResult:
    """What a lock run did: per model, the old and new pins."""

    path: Path
    changed: dict[str, tuple[Pins | None, Pins]]
    unchanged: tuple[str, ...]
    written: bool


@dataclass(frozen=True)
class Problem:
    """An entry that ``lock --check`` finds unpinned or stale."""

    name: str
    reason: str


def check(lockfile: Lockfile) -> list[Problem]:
    """Entries that need ``modelfix lock``; reads nothing but the file."""
    problems = []
    for entry in lockfile.entries.values():
        if not entry.files:
            problems.append(Problem(entry.name, "is not pinned"))
        elif entry.pinned_from != entry.source:
            problems.append(
                Problem(entry.name, f"source changed from {entry.pinned_from!r} to {entry.source!r}")
            )
    return problems


def _offline_switch(offline: bool | None) -> str | None:
    """The switch that turned offline mode on (``--offline``, an environment variable), if any."""
    from .config import env_flag

    if offline:
        return "--offline"
    if offline is None:
        return next((f"{v}=1" for v in ("MODELFIX_OFFLINE", "HF_HUB_OFFLINE") if env_flag(v)), None)
    return None


def _resolve(source_text: str, lock_path: Path, offline: bool | None) -> Pins:
    source = source_for(source_text, lock_path)
    switch = _offline_switch(offline)
    if switch and getattr(source, "needs_network", False):
        raise OfflineError(
            f"pinning {source_text!r} needs the network, but offline mode is on ({switch}). "
            "Run it online; `modelfix lock --check` is the check that works offline."
        )
    return source.resolve()


def _needs_lock(entry: Entry, upgrade: bool, models: Sequence[str] | None) -> bool:
    if models and entry.name not in models:
        return False
    return upgrade or not entry.is_pinned


def lock(
    path: Path | str | None = None,
    *,
    upgrade: bool = False,
    models: Sequence[str] | None = None,
    offline: bool | None = None,
) -> LockResult:
    """Pin every entry that needs it (all selected entries with ``upgrade``).

    ``offline`` (default: ``MODELFIX_OFFLINE`` / ``HF_HUB_OFFLINE``) refuses
    entries whose source needs the network; local files still lock.
    """
    lockfile = Lockfile.find(path)
    for name in models or ():
        lockfile.entry(name)  # unknown names fail before any network call
    changed: dict[str, tuple[Pins | None, Pins]] = {}
    unchanged = []
    with shared_lookups():  # entries from one repository share its commit and file listing
        for entry in lockfile.entries.values():
            if not _needs_lock(entry, upgrade, models):
                unchanged.append(entry.name)
                continue
            try:
                pins = _resolve(entry.source, lockfile.path, offline)
            except ModelfixError as exc:
                raise type(exc)(f"model {entry.name!r} ({lockfile.path}): {exc}") from None
            if pins == entry.pins:
                unchanged.append(entry.name)
            else:
                changed[entry.name] = (entry.pins, pins)
    written = write_pins(lockfile.path, {n: new for n, (_, new) in changed.items()}) if changed else False
    return LockResult(lockfile.path, changed, tuple(unchanged), written)


def add(name: str, source: str, path: Path | str | None = None, *, offline: bool | None = None,
        **settings) -> LockResult:
    """Add ``[models.NAME]`` and pin it; nothing is written if resolving fails (``offline`` as in :func:`lock`)."""
    from .lockfile import LOCK_NAME, find_lockfile

    try:
        lock_path = find_lockfile(path)
    except LockError:
        lock_path = Path.cwd() / LOCK_NAME
    pins = _resolve(source, lock_path, offline)  # fail before touching the file
    previous = lock_path.read_text(encoding="utf-8") if lock_path.exists() else None
    before = Lockfile.parse(previous, lock_path).entries.get(name) if previous is not None else None
    add_entry(lock_path, name, source, settings)
    try:
        written = write_pins(lock_path, {name: pins})
    except BaseException:
        # Leave the file as the user had it rather than with an unpinned entry.
        if previous is None:
            lock_path.unlink(missing_ok=True)
        else:
            replace_text(lock_path, previous)
        raise
    old = before.pins if before else None
    return LockResult(lock_path, {name: (old, pins)} if old != pins else {}, (), written)

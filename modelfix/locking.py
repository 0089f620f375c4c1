"""Turning sources into pins, and writing them: what ``modelfix lock``, ``add`` and ``lock --check`` do.

An entry needs (re)locking when it has no pins, when its ``source`` was edited
since it was pinned (``pinned_from`` differs), or when its pins hold no model
file. ``upgrade`` re-resolves pinned entries too, moving them to the newest
upstream commit.

Writing is safe against failures and against other writers:

* pins are resolved (over the network) first, then written in one atomic
  replace (temp file + rename): a failure leaves the file exactly as it was;
* writers of one lockfile take turns (a file lock): each re-reads the file
  under the lock and writes its whole change at once, so concurrent ``add``
  and ``lock`` runs never lose each other's pins;
* comments, layout, line endings and a BOM survive; a symlinked lockfile is
  written through to its target; an unchanged file is never rewritten.

Removing an entry (``modelfix remove``) cuts its table out of the text, with the
comment lines right above its header, which describe it::

    version = 1                   version = 1

    # the chat model       ─┐     # three parts
    [models.chat]           │ ─▶  [models.split]
    source = "org/a"        │     source = "org/b"
                           ─┘
    # three parts
    [models.split]
    source = "org/b"

tomlkit alone would keep the comment above a removed table and drop the one above
the next (it files a comment under the table before it). Should the cut not give
exactly the lockfile without the entry (an unusual layout), tomlkit removes it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LockError, ModelfixError, OfflineError, SettingsError, SourceError
from .lockfile import (
    BOM,
    LOCK_NAME,
    SCHEMA_VERSION,
    Entry,
    Lockfile,
    Pins,
    check_name,
    find_lockfile,
    is_commit_sha,
    read_raw,
)
from .safefs import umask, writers_lock
from .sources import shared_lookups, source_for

__all__ = ["LockResult", "Problem", "lock", "add", "remove", "check", "write_pins", "add_entry"]


@dataclass(frozen=True)
class LockResult:
    """What a lock run did: per model, the old and new pins (``add``: also the entry it replaced)."""

    path: Path
    changed: dict[str, tuple[Pins | None, Pins]]
    unchanged: tuple[str, ...]
    written: bool
    replaced: Entry | None = None


@dataclass(frozen=True)
class Problem:
    """An entry that ``lock --check`` finds unpinned, stale, or pinned to no model file."""

    name: str
    reason: str


def check(lockfile: Lockfile) -> list[Problem]:
    """Entries that need ``modelfix lock``; reads nothing but the file."""
    return [
        Problem(entry.name, reason) for entry in lockfile.entries.values() if (reason := _problem(entry, lockfile.path))
    ]


def _problem(entry: Entry, lock_path: Path) -> str | None:
    if not entry.files:
        return "is not pinned"
    if entry.pinned_from != entry.source:
        return f"source changed from {entry.pinned_from!r} to {entry.source!r}"
    # Only a hand edit gets past here; re-resolving moves a Hub source to its newest commit.
    if not entry.model_files:
        return f'no file in `files` has role = "model". Re-pin it with `modelfix lock --upgrade --model {entry.name}`'
    if entry.revision is None and _from_hub(entry, lock_path):
        return (
            "pins files but no revision, so a fetch would take whatever the branch holds then. "
            f"Re-pin it with `modelfix lock --upgrade --model {entry.name}`"
        )
    return None


def _from_hub(entry: Entry, lock_path: Path) -> bool:
    """Whether the entry's files come from a Hub commit (a source that does not parse is no reason to lock)."""
    try:
        return source_for(entry.source, lock_path).kind == "hub"
    except ModelfixError:
        return False


def _offline_switch(offline: bool | None) -> str | None:
    """The switch that turned offline mode on (``--offline``, an environment variable), if any."""
    from .config import env_flag

    if offline:
        return "--offline"
    if offline is None:
        return next((f"{v}=1" for v in ("MODELFIX_OFFLINE", "HF_HUB_OFFLINE") if env_flag(v)), None)
    return None


def _resolve(name: str, source_text: str, lock_path: Path, offline: bool | None) -> Pins:
    """Pins for ``source_text``; errors name the model and the lockfile, as every lock error does."""
    try:
        source = source_for(source_text, lock_path)
        switch = _offline_switch(offline)
        if switch and getattr(source, "needs_network", False):
            raise OfflineError(
                f"pinning {source_text!r} needs the network, but offline mode is on ({switch}). "
                "Run it online; `modelfix lock --check` is the check that works offline."
            )
        pins = source.resolve()
        if pins.revision is not None and not is_commit_sha(pins.revision):
            # A source plugin's bug: the lockfile would refuse to read this back.
            raise SourceError(
                f"{source_text!r} resolved to revision {pins.revision!r}, not a full commit sha. "
                "A source must pin a 40-hex commit sha or no revision at all."
            )
        return pins
    except ModelfixError as exc:
        exc.add_context(f"model {name!r} ({lock_path})", model=name)
        raise


def _needs_lock(entry: Entry, lock_path: Path, upgrade: bool, models: Sequence[str] | None) -> bool:
    if models and entry.name not in models:
        return False
    return upgrade or _problem(entry, lock_path) is not None


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
    # A broken pin of an entry about to be re-pinned reads as none: it is what --upgrade repairs.
    lockfile = Lockfile.find(path, repin=(models or True) if upgrade else ())
    for name in models or ():
        lockfile.entry(name)  # unknown names fail before any network call
    changed: dict[str, tuple[Pins | None, Pins]] = {}
    unchanged = []
    with shared_lookups():  # entries from one repository share its commit and file listing
        for entry in lockfile.entries.values():
            if not _needs_lock(entry, lockfile.path, upgrade, models):
                unchanged.append(entry.name)
                continue
            pins = _resolve(entry.name, entry.source, lockfile.path, offline)
            if pins == entry.pins:
                unchanged.append(entry.name)
            else:
                changed[entry.name] = (entry.pins, pins)
    written = write_pins(lockfile.path, {n: new for n, (_, new) in changed.items()}) if changed else False
    return LockResult(lockfile.path, changed, tuple(unchanged), written)


def add(
    name: str, source: str, path: Path | str | None = None, *, offline: bool | None = None, **settings: Any
) -> LockResult:
    """Add ``[models.NAME]`` and pin it; nothing is written if resolving fails (``offline`` as in :func:`lock`)."""
    check_name(name)
    _check_settings(name, settings)
    try:
        lock_path = find_lockfile(path)
    except LockError:
        lock_path = Path.cwd() / LOCK_NAME
    if lock_path.exists():
        Lockfile.load(lock_path, repin={name})  # a broken lockfile fails before any network call
    pins = _resolve(name, source, lock_path, offline)
    before, written = add_entry(lock_path, name, source, settings, pins)
    old = before.pins if before else None
    return LockResult(lock_path, {name: (old, pins)} if old != pins else {}, (), written, before)


def remove(names: Sequence[str], path: Path | str | None = None) -> tuple[Path, list[Entry]]:
    """Remove the ``[models.NAME]`` tables of ``names`` in one atomic write; returns (lockfile, removed entries).

    An unknown name, or one that ``[routing]`` names, is a LockError and nothing is written.
    """
    lock_path = find_lockfile(path)
    removed: list[Entry] = []

    def edit(current: Lockfile | None, text: str | None) -> str:
        assert current is not None and text is not None
        for name in names:
            if name not in current.entries:
                known = ", ".join(current.entries) or "none"
                raise LockError(f"no model named {name!r} in {lock_path} (models: {known}): nothing removed.")
            users = [f"routing.rules[{i}]" for i, rule in enumerate(current.routing) if rule.model == name]
            if current.routing_default == name:
                users.append("routing.default")
            if users:
                raise LockError(
                    f"{current.where(name)}: {name!r} is named by {' and '.join(users)}. "
                    "Take it out of [routing] first; nothing removed."
                )
        removed[:] = [current.entries[name] for name in dict.fromkeys(names)]
        return _without_tables(text, [e.name for e in removed])

    _rewrite(lock_path, edit, repin=names)
    return lock_path, removed


def _without_tables(text: str, names: Sequence[str]) -> str:
    """``text`` without the ``[models.NAME]`` tables of ``names``, everything else as it was (see the module doc)."""
    import tomlkit

    lines = text.splitlines(keepends=True)
    for name in names:
        header = re.compile(
            r"\s*\[\s*models\s*\.\s*(" + re.escape(name) + r'|"' + re.escape(name) + r'")\s*\]\s*(#.*)?$'
        )
        start = next((i for i, line in enumerate(lines) if header.match(line)), None)
        if start is None:
            break
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        while end < len(lines) and end > start + 1 and lines[end - 1].lstrip().startswith("#"):
            end -= 1  # the comment above the next table is that table's
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        if end == len(lines):  # the last table: the blank lines that set it apart go with it
            while start > 0 and not lines[start - 1].strip():
                start -= 1
        del lines[start:end]
    cut = "".join(lines)
    if _same_apart_from(text, cut, names):
        return cut
    doc = tomlkit.parse(text)
    for name in names:
        del doc["models"][name]
    return tomlkit.dumps(doc)


def _same_apart_from(text: str, cut: str, names: Sequence[str]) -> bool:
    """Is ``cut`` the document ``text`` minus the ``[models.NAME]`` tables of ``names``, and nothing else?"""
    import tomlkit
    from tomlkit.exceptions import ParseError

    try:
        before, after = tomlkit.parse(text).unwrap(), tomlkit.parse(cut).unwrap()
    except ParseError:
        return False
    for name in names:
        before.get("models", {}).pop(name, None)
    return before == after


def _check_settings(name: str, settings: Mapping[str, Any]) -> None:
    """Refuse a setting the lockfile reader would refuse, before any network call."""
    from .lockfile import ENTRY_SETTINGS
    from .settings import check_setting

    for key, value in settings.items():
        if key not in ENTRY_SETTINGS:
            raise SettingsError(f"{key!r} is not a setting of a lockfile entry (valid: {', '.join(ENTRY_SETTINGS)}).")
        try:
            check_setting(key, value)
        except ValueError as exc:
            raise SettingsError(f"model {name!r}: setting {key} = {value!r} is invalid: expected {exc}.") from None


# --- writing the file --------------------------------------------------------


def _plain(raw: str) -> str:
    """What tomlkit edits: no BOM, LF line ends (:func:`_styled` puts the file's own back)."""
    return raw.removeprefix(BOM).replace("\r\n", "\n")


def _styled(text: str, like: str | None) -> str:
    """``text`` in the style of ``like``, the file as it was: its BOM and its first line's ending.

    Rewriting a CRLF file as LF would show every line as changed in git.
    """
    if like is None:
        return text
    end = like.find("\n")
    if end > 0 and like[end - 1] == "\r":
        text = text.replace("\n", "\r\n")
    return BOM + text if like.startswith(BOM) else text


def _update(
    path: Path,
    change: Callable[[Lockfile | None, Any], None],
    *,
    create: bool = False,
    repin: Collection[str] = (),
) -> bool:
    """Apply ``change(current, document)`` to the file's tomlkit document and write it once (see :func:`_rewrite`)."""
    import tomlkit

    def edit(current: Lockfile | None, text: str | None) -> str:
        doc = _new_document() if text is None else tomlkit.parse(text)
        change(current, doc)
        return tomlkit.dumps(doc)

    return _rewrite(path, edit, create=create, repin=repin)


def _rewrite(
    path: Path,
    edit: Callable[[Lockfile | None, str | None], str],
    *,
    create: bool = False,
    repin: Collection[str] = (),
) -> bool:
    """Replace the file with ``edit(current, text)``, written once; True if it changed.

    Under the writers' lock the file is re-read, so no other writer's change is overwritten;
    ``edit`` sees it parsed and as plain text (no BOM, LF ends; :func:`_styled` puts the file's
    own back). The result must parse back before it replaces the file. ``create`` starts a
    missing file anew (``current`` and ``text`` None). In ``current``, a broken pin of the ``repin``
    entries (which the edit replaces or removes) reads as none; the result is read whole.
    """
    with writers_lock(path, tag="lockfile", kind="lockfile", error=LockError, who="modelfix process"):
        raw = None if create and not path.exists() else read_raw(path)
        current = (
            None if raw is None else Lockfile.parse(raw, path, repin=repin)
        )  # never rewrite a file we could not read back
        new = _styled(edit(current, None if raw is None else _plain(raw)), raw)
        if new == raw:
            return False
        Lockfile.parse(new, path)
        _replace(path, new)
        return True


def _new_document():
    import tomlkit

    doc = tomlkit.document()
    doc.add(tomlkit.comment("Models pinned by modelfix. Edit `source`; `modelfix lock` writes the pins."))
    doc["version"] = SCHEMA_VERSION
    return doc


def write_pins(path: Path, pins: Mapping[str, Pins]) -> bool:
    """Write ``pins`` into their ``[models.NAME]`` tables; True if the file changed.

    Pins whose entry is gone, or whose ``source`` no longer is the one they were resolved
    from, are left out: another writer changed that entry meanwhile, and its edit stands.
    """

    def change(current: Lockfile | None, doc: Any) -> None:
        for name, pin in pins.items():
            entry = current.entries.get(name) if current else None
            if entry is not None and entry.source == pin.pinned_from:
                _set_pins(doc["models"][name], pin)

    return _update(path, change, repin=pins.keys())


def add_entry(
    path: Path, name: str, source: str, settings: Mapping[str, Any] | None = None, pins: Pins | None = None
) -> tuple[Entry | None, bool]:
    """Add or replace ``[models.NAME]``: its source, settings and pins, in one write.

    Creates the file if needed. Returns the entry it replaced (None for a new one) and
    whether the file changed.
    """
    import tomlkit

    check_name(name)
    replaced: Entry | None = None

    def change(current: Lockfile | None, doc: Any) -> None:
        nonlocal replaced
        replaced = current.entries.get(name) if current else None
        models = doc.setdefault("models", tomlkit.table(is_super_table=True))
        if name not in models:
            models[name] = tomlkit.table()
        table = models[name]
        with _above_trailing_comments(table):
            table["source"] = source
            for key, value in (settings or {}).items():
                table[key] = value
        if pins is not None:
            _set_pins(table, pins)

    written = _update(path, change, create=True, repin=(name,))
    return replaced, written


def _set_pins(table: Any, pins: Pins) -> None:
    import tomlkit

    array = tomlkit.array()
    for pin in pins.files:
        inline = tomlkit.inline_table()
        inline.update(pin.as_toml())
        array.append(inline)
    with _above_trailing_comments(table):
        if pins.revision is None:
            table.pop("revision", None)
        else:
            table["revision"] = pins.revision
        table["pinned_from"] = pins.pinned_from
        table["files"] = array.multiline(True)


@contextmanager
def _above_trailing_comments(table: Any) -> Iterator[None]:
    """Keys added meanwhile go after the table's last key, above the blank lines and comments that end it.

    tomlkit files the comment lines above a table header under the table before it, and
    appends new keys after them: the comment would move to the wrong table.
    """
    body = table.value.body
    trailing: list[Any] = []
    while body and body[-1][0] is None:  # keyless items: whitespace and comments
        trailing.insert(0, body.pop())
    try:
        yield
    finally:
        body.extend(trailing)


def _replace(path: Path, text: str) -> None:
    """Atomically replace the file at ``path`` with ``text`` (temp file + rename)."""
    # Through a symlink, replace its target: renaming onto the link would turn it into a file.
    target = Path(os.path.realpath(path))
    folder = target.parent
    if not folder.is_dir():
        raise LockError(f"{path}: folder {folder} does not exist. Create it, or pass another --lock PATH.")
    # rename() ignores the file's own mode: a lockfile made read-only on purpose stays untouched.
    if target.exists() and not os.access(target, os.W_OK):
        raise LockError(f"{path} is read-only. Make it writable (chmod u+w) to let modelfix update it.")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # A new lockfile gets what any new file would (0o666 & ~umask): a team's umask 002 keeps group write.
        os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~umask())
        os.replace(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        if isinstance(exc, PermissionError):
            raise LockError(
                f"{path}: permission denied writing the lockfile; it was left as it was. Make {folder} "
                "writable (the file is replaced through a temporary file there), or pass another --lock PATH."
            ) from None
        raise LockError(f"{path}: cannot write the lockfile ({exc.strerror or exc}); it was left as it was.") from None

"""``modelfix add``, ``remove``, ``lock`` and ``list``: the commands that read and write the lockfile.

``add``, ``remove`` and ``lock`` write it through :mod:`modelfix.locking` (one writer at a time,
atomically); ``lock --check`` and ``list`` read it through the command's Project, ``list`` with
each model's cache state.

Every message names the lockfile by its absolute path: it may have been found
in a parent folder, and the path says which file changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..eviction import format_size
from ..lockfile import ENTRY_SETTINGS, Entry, Lockfile, Pins
from . import count

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["register"]

# `add`'s help for each reproducibility setting it writes (docs/lockfile.md has the same words).
_SETTING_HELP = {
    "n_ctx": "context length the model is loaded with",
    "seed": "sampling seed (the pytest `llama` fixture resets to it before each test)",
    "chat_format": "llama-cpp-python chat format, when the GGUF's own template is not wanted",
    "embedding": "load for embeddings (llm.embed(...))",
    "n_batch": "batch size for prompt processing (changes numerics slightly, so it is pinned)",
    "n_ubatch": "physical batch size (changes numerics slightly, so it is pinned)",
    "rope_freq_base": "RoPE base frequency override (0: the model's own)",
    "rope_freq_scale": "RoPE frequency scale override (0: the model's own)",
    "mmproj": "load the pinned multimodal projector with the model (default: no)",
    "repack": "llama.cpp weight repacking: auto (follow the backend probe), on or off",
}


def register(commands: argparse._SubParsersAction) -> None:
    add = commands.add_parser(
        "add",
        help="add a model to the lockfile and pin it (replaces an entry of that name)",
        description="Add [models.NAME] to the lockfile (a new model-lock.toml here if none is found upward) "
        "and pin it: commit, files, sizes and sha256. An existing NAME gets the new source and the settings "
        "given; the settings not given stay as they were.",
    )
    add.add_argument("name", help="the name tests and notebooks use, e.g. chat")
    add.add_argument("source", help="ORG/REPO[:TAG][@REV], hf://ORG/REPO/file.gguf, a URL or a path")
    for key, types in ENTRY_SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        text = f"{_SETTING_HELP[key]}; written into the entry"
        if types == (bool,):
            add.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            metavar = {"chat_format": "NAME", "repack": "auto|on|off"}.get(key) or {int: "N", float: "X"}.get(
                types[-1], key.upper()
            )
            add.add_argument(flag, dest=key, type=types[-1], default=None, metavar=metavar, help=text)
    add.set_defaults(handler=_add)

    remove = commands.add_parser(
        "remove",
        help="remove models from the lockfile (their cached files stay until `cache gc`)",
        description="Remove [models.NAME] from the lockfile, keeping the rest of the file as it is. "
        "The files it pinned stay in the cache until `modelfix cache gc` deletes what no lockfile pins.",
    )
    remove.add_argument("names", nargs="+", metavar="NAME", help="models to remove; an unknown name removes none")
    remove.set_defaults(handler=_remove)

    lock = commands.add_parser(
        "lock",
        help="pin entries that are unpinned or whose source changed",
        description="Pin the entries that need it: unpinned, or whose source was edited since. "
        "Pinned entries stay put until --upgrade.",
    )
    lock.add_argument("--upgrade", action="store_true", help="re-resolve to the newest upstream revision")
    lock.add_argument("--model", action="append", metavar="NAME", help="limit to this model (repeatable)")
    lock.add_argument("--check", action="store_true", help="exit 1 if any entry needs locking (no network)")
    lock.set_defaults(handler=_lock)

    show = commands.add_parser("list", help="show pinned models and whether they are cached")
    show.add_argument(
        "--json",
        action="store_true",
        help="a JSON array of {name, source, revision, pinned, files, size, cache} instead of the table",
    )
    show.set_defaults(handler=_list)


def _short(pins: Pins | None) -> str:
    if pins is None:
        return "unpinned"
    where = f"{pins.revision[:12]} " if pins.revision else ""
    first = next((f.path for f in pins.files if f.role == "model"), pins.files[0].path)
    return f"{where}{first} ({count(len(pins.files), 'file')}, {format_size(sum(f.size for f in pins.files))})"


def _add(args: argparse.Namespace) -> int:
    from ..locking import add

    settings = {k: getattr(args, k) for k in ENTRY_SETTINGS if getattr(args, k) is not None}
    result = add(args.name, args.source, args.lock, offline=args.offline, **settings)
    path = os.path.abspath(result.path)
    entry = Lockfile.load(result.path).entry(args.name)
    before = result.replaced
    if before is None:
        print(f"Added {args.name} = {args.source!r} to {path}: {_short(entry.pins)}")
        return 0
    changes = _changes(before, entry)
    if changes:
        print(f"Replaced {args.name} in {path}: {'; '.join(changes)}")
    else:
        print(f"{args.name} in {path} already is {entry.source!r} with these settings: nothing changed")
    return 0


def _changes(before: Entry, after: Entry) -> list[str]:
    """What ``add`` changed in an entry it replaced: source, each setting, then the pins."""
    changes = [f"source {before.source!r} -> {after.source!r}"] if before.source != after.source else []
    for key in ENTRY_SETTINGS:
        old, new = before.settings.get(key), after.settings.get(key)
        if old != new:
            changes.append(f"{key} {_setting(old)} -> {_setting(new)}")
    if before.pins != after.pins:
        changes.append(f"pins {_short(before.pins)} -> {_short(after.pins)}")
    elif changes:
        changes.append("pins unchanged")
    return changes


def _setting(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)


def _remove(args: argparse.Namespace) -> int:
    from ..locking import remove

    path, removed = remove(args.names, args.lock)
    for entry in removed:
        print(f"Removed {entry.name} ({entry.source}) from {os.path.abspath(path)}")
    if any(entry.files for entry in removed):
        print("Cached files stay until `modelfix cache gc` deletes what no lockfile pins.", file=sys.stderr)
    return 0


def _lock(args: argparse.Namespace) -> int:
    from ..locking import check, lock

    if args.check:
        from . import project

        lockfile = project(args).lockfile
        for name in args.model or ():
            lockfile.entry(name)  # an unknown name fails here, as it does without --check
        problems = check(lockfile)
        if args.model:
            problems = [p for p in problems if p.name in args.model]
        if problems:
            for problem in problems:
                print(f"  {problem.name}: {problem.reason}", file=sys.stderr)
            print(
                f"error: the lockfile at `{lockfile.path}` needs to be updated, but `--check` was "
                "provided. To update it, run `modelfix lock`.",
                file=sys.stderr,
            )
            return 1
        print(f"{os.path.abspath(lockfile.path)}: {count(len(lockfile.entries), 'model')}, all pinned")
        return 0
    result = lock(args.lock, upgrade=args.upgrade, models=args.model, offline=args.offline)
    for name, (old, new) in result.changed.items():
        verb = "Updated" if old else "Locked"
        change = f"{_short(old)} -> {_short(new)}" if old else _short(new)
        print(f"{verb} {name}: {change}")
    if not result.changed:
        print(f"{os.path.abspath(result.path)}: up to date ({count(len(result.unchanged), 'model')})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from . import project

    chosen = project(args)
    lockfile = chosen.lockfile
    state = _cache_state(chosen)
    if args.json:
        listed = [_listed(entry, state(entry) if entry.files else "unpinned") for entry in lockfile.entries.values()]
        print(json.dumps(listed, indent=2))
        return 0
    rows = [("NAME", "SOURCE", "REVISION", "FILES", "SIZE", "CACHE")]
    for entry in lockfile.entries.values():
        revision = (entry.revision or "-")[:12] if entry.is_pinned else "unpinned"
        rows.append((entry.name, entry.source, revision, str(len(entry.files)), format_size(entry.size), state(entry)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _listed(entry: Entry, cache: str) -> Mapping[str, Any]:
    """One row of ``list --json``: the table's columns, with the full revision and sizes in bytes."""
    return {
        "name": entry.name,
        "source": entry.source,
        "revision": entry.revision,
        "pinned": entry.is_pinned,
        "files": len(entry.files),
        "size": entry.size,
        "cache": cache,
    }


def _cache_state(project: Project) -> Callable[[Entry], str]:
    """``entry -> "cached" | "partial" | "missing"`` (``-`` for unpinned entries); no network."""
    return lambda entry: project.cached_state(entry) if entry.files else "-"

"""``modelfix add``, ``modelfix lock`` and ``modelfix list``."""

from __future__ import annotations

import argparse
import sys

from ..eviction import format_size
from ..lockfile import ENTRY_SETTINGS, Lockfile, Pins
from . import count

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    add = commands.add_parser("add", help="add a model to the lockfile and pin it")
    add.add_argument("name", help="the name tests and notebooks use, e.g. chat")
    add.add_argument("source", help="ORG/REPO[:TAG][@REV], hf://ORG/REPO/file.gguf, a URL or a path")
    for key, types in ENTRY_SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        if types == (bool,):
            add.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None)
        else:
            add.add_argument(flag, dest=key, type=types[-1], default=None, metavar=key.upper())
    add.set_defaults(handler=_add)

    lock = commands.add_parser("lock", help="pin entries that are unpinned or whose source changed")
    lock.add_argument("--upgrade", action="store_true", help="re-resolve to the newest upstream revision")
    lock.add_argument("--model", action="append", metavar="NAME", help="limit to this model (repeatable)")
    lock.add_argument("--check", action="store_true", help="exit 1 if any entry needs locking (no network)")
    lock.set_defaults(handler=_lock)

    show = commands.add_parser("list", help="show pinned models and whether they are cached")
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
    entry = Lockfile.load(result.path).entry(args.name)
    old = result.changed.get(args.name, (None, None))[0]
    if old is not None:
        print(f"Updated {args.name} in {result.path}: {_short(old)} -> {_short(entry.pins)}")
    else:
        print(f"Added {args.name} = {args.source!r} to {result.path}: {_short(entry.pins)}")
    return 0


def _lock(args: argparse.Namespace) -> int:
    from ..locking import check, lock

    if args.check:
        lockfile = Lockfile.find(args.lock)
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
        print(f"{lockfile.path}: {count(len(lockfile.entries), 'model')}, all pinned")
        return 0
    result = lock(args.lock, upgrade=args.upgrade, models=args.model, offline=args.offline)
    for name, (old, new) in result.changed.items():
        verb = "Updated" if old else "Locked"
        change = f"{_short(old)} -> {_short(new)}" if old else _short(new)
        print(f"{verb} {name}: {change}")
    if not result.changed:
        print(f"{result.path}: up to date ({count(len(result.unchanged), 'model')})")
    return 0


def _list(args: argparse.Namespace) -> int:
    lockfile = Lockfile.find(args.lock)
    state = _cache_state(args)
    rows = [("NAME", "SOURCE", "REVISION", "FILES", "SIZE", "CACHE")]
    for entry in lockfile.entries.values():
        revision = (entry.revision or "-")[:12] if entry.is_pinned else "unpinned"
        rows.append((entry.name, entry.source, revision, str(len(entry.files)), format_size(entry.size), state(entry)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _cache_state(args: argparse.Namespace):
    """``entry -> "cached" | "partial" | "missing"`` (``-`` for unpinned entries); no network."""
    from ..config import CacheSettings
    from ..resolver import cached_state

    settings = CacheSettings.resolve(cache_dir=args.cache_dir, offline=args.offline)
    return lambda entry: cached_state(entry, settings) if entry.files else "-"

"""``modelfix sync``, ``verify``, ``push`` and ``cache stats|prune|gc|rm|path``.

Handlers are thin: each calls a method of the command's :class:`~modelfix.Project`
(:func:`modelfix.cli.project`) and prints what it returns; the cache-care reports
(:mod:`modelfix.care`) say themselves what they did, in the words ``%modelfix_cache``
shows too. What arrives meanwhile is shown by :mod:`.progress` (one tqdm bar per file
being downloaded: name, bytes, speed). ``prune``, ``gc`` and ``rm`` take ``--dry-run``;
``stats`` takes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from ..eviction import format_size
from . import count, positive_int, project
from .progress import progress

if TYPE_CHECKING:
    from ..care import Usage
    from ..config import CacheSettings

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    sync = commands.add_parser("sync", help="fetch and verify the pinned files into the cache")
    sync.add_argument("names", nargs="*", metavar="NAME", help="models to sync (default: all)")
    sync.add_argument(
        "-j", "--jobs", type=positive_int, default=4, metavar="N", help="files fetched at once (default: 4)"
    )
    sync.set_defaults(handler=_sync)

    verify = commands.add_parser("verify", help="re-hash cached files; exit 1 naming each bad one")
    verify.add_argument("names", nargs="*", metavar="NAME", help="models to verify (default: all)")
    verify.add_argument("--full", action="store_true", help="check sha256 against the lockfile (default: fast xxh3)")
    verify.set_defaults(handler=_verify)

    push = commands.add_parser("push", help="upload the pinned files to the remote tier (MODELFIX_REMOTE)")
    push.add_argument("names", nargs="*", metavar="NAME", help="models to push (default: all)")
    push.add_argument(
        "--force",
        action="store_true",
        help="upload every file again, also those already there (repairs a corrupt copy)",
    )
    push.set_defaults(handler=_push)

    cache = commands.add_parser("cache", help="inspect and clean the cache")
    care = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True, help="what to do")
    stats = care.add_parser("stats", help="sizes, models (with their revisions) and leases")
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    stats.set_defaults(handler=_stats)
    dry_run = {"action": "store_true", "help": "print what would be removed, and remove nothing"}
    prune = care.add_parser("prune", help="evict least recently used files down to a size")
    prune.add_argument("--max-size", metavar="SIZE", help="target size, e.g. 20GB (default: MODELFIX_CACHE_MAX_SIZE)")
    prune.add_argument(
        "--superseded",
        action="store_true",
        help="first drop revisions the lockfile no longer pins (those `lock --upgrade` replaced); no size needed",
    )
    prune.add_argument("--dry-run", **dry_run)
    prune.set_defaults(handler=_prune)
    gc = care.add_parser(
        "gc",
        help="delete what nothing needs: files no cached model or the lockfile needs, superseded revisions, "
        "half-built views and stale partial downloads",
    )
    gc.add_argument("--dry-run", **dry_run)
    gc.set_defaults(handler=_gc)
    rm = care.add_parser("rm", help="remove every cached revision of one model")
    rm.add_argument("name", metavar="NAME", help="a model of the lockfile, or one `cache stats` lists")
    rm.add_argument("--dry-run", **dry_run)
    rm.set_defaults(handler=_rm)
    path = care.add_parser("path", help="print the cache folder (or a model's file, fetching it if needed)")
    path.add_argument("name", nargs="?", metavar="NAME", help="the model whose first model file to print")
    path.set_defaults(handler=_path)


def _sync(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with progress():
        done = project(args).sync(args.names or None, workers=args.jobs)
    for m in done:
        print(f"{m.name}: {count(len(m.files), 'file')}, {format_size(m.entry.size)}  {m.model_path}")
    print(f"{count(len(done), 'model')} ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    problems = project(args).verify(args.names or None, full=args.full)
    for p in problems:
        print(f"{p.model}: {p.file}: {p.message}", file=sys.stderr)
    if problems:
        return 1
    print(f"all files match ({'sha256' if args.full else 'xxh3'})")
    return 0


def _push(args: argparse.Namespace) -> int:
    chosen = project(args)
    with progress():
        report = chosen.push(args.names or None, force=args.force)
    for model, file, what in report:
        print(f"{model}: {file}: {what}")
    uploaded = sum(1 for *_, what in report if what == "uploaded")
    print(f"{uploaded} uploaded, {len(report) - uploaded} already in {chosen.cache_settings.remote}", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    chosen = project(args)
    settings = chosen.cache_settings
    usage = chosen.stats()
    layers = chosen.layer_stats()
    if args.json:
        print(json.dumps(_stats_json(usage, settings, layers), indent=1))
        return 0
    for layer in layers:
        print(f"read-only {layer.root} · {layer.blobs} blobs ({format_size(layer.blob_bytes)}) · served in place")
    readonly = f" (read-only: {usage.readonly}; nothing is written there)" if usage.readonly else ""
    print(f"cache     {usage.root}{readonly}")
    print(f"cap       {format_size(settings.max_size)}")
    print(f"blobs     {usage.blobs} ({format_size(usage.blob_bytes)})")
    print(f"partial   {format_size(usage.partial_bytes)} of interrupted downloads")
    print(f"in use by {usage.live_leases} live processes")
    views = [(layer.root, view) for layer in layers for view in layer.views] + [(None, view) for view in usage.views]
    if views:
        print(f"\n{'MODELS':<30}  {'REVISION':<12}  {'SIZE':>10}  {'LAST USED':<16}  STATE")
        for root, view in views:
            models = ", ".join(view.models) or "?"
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(view.last_used))
            revision = (view.revision or "-")[:12]
            state = f"{view.state}" + (f" (read-only {root})" if root else "")
            print(f"{models:<30}  {revision:<12}  {format_size(view.bytes):>10}  {used:<16}  {state}")
    if any(v.state == "superseded" for v in usage.views):
        print(
            "\nsuperseded: the lockfile pins these models elsewhere now; `modelfix cache gc` drops them",
            file=sys.stderr,
        )
    return 0


def _stats_json(usage: Usage, settings: CacheSettings, layers: list[Usage]) -> dict[str, Any]:
    def models(found: Usage) -> list[dict[str, Any]]:
        return [
            {
                "models": list(view.models),
                "revision": view.revision,
                "bytes": view.bytes,
                "last_used": view.last_used,
                "state": view.state,
                "key": view.key,
            }
            for view in found.views
        ]

    return {
        "cache": str(usage.root),
        "readonly": usage.readonly,
        "cap": None if settings.max_size == float("inf") else int(settings.max_size),
        "blobs": usage.blobs,
        "blob_bytes": usage.blob_bytes,
        "partial_bytes": usage.partial_bytes,
        "live_processes": usage.live_leases,
        "models": models(usage),
        "readonly_caches": [
            {"cache": str(layer.root), "blobs": layer.blobs, "blob_bytes": layer.blob_bytes, "models": models(layer)}
            for layer in layers
        ],
    }


def _prune(args: argparse.Namespace) -> int:
    chosen = project(args, max_size=args.max_size)
    if args.superseded:
        print(chosen.drop_superseded(dry_run=args.dry_run).summary())
        if chosen.cache_settings.max_size == float("inf"):
            return 0  # no size asked for: dropping the old revisions was the whole request
    report = chosen.prune(dry_run=args.dry_run)
    print(report.summary())
    if (note := report.note()) and not args.dry_run:
        print(note, file=sys.stderr)
    return 0


def _gc(args: argparse.Namespace) -> int:
    print(project(args).gc(dry_run=args.dry_run).summary())
    return 0


def _rm(args: argparse.Namespace) -> int:
    removal = project(args).remove(args.name, dry_run=args.dry_run)
    revisions = count(len(removal.views), "revision")
    if args.dry_run:
        print(f"{args.name}: would free {format_size(removal.freed)}, removing {revisions}")
        for view in removal.views:
            print(f"  {(view.revision or '-')[:12]}  {', '.join(f['name'] for f in view.files)}")
    else:
        print(f"{args.name}: {format_size(removal.freed)} freed, {revisions} removed")
    if removal.in_use:
        print(f"{args.name}: kept {count(len(removal.in_use), 'revision')} that running processes use", file=sys.stderr)
    if removal.shared:
        print(f"{args.name}: kept the files {', '.join(removal.shared)} pins too", file=sys.stderr)
    if removal.kept:
        print(
            f"{args.name}: kept {count(len(removal.kept), 'file')} that other models or running processes use",
            file=sys.stderr,
        )
    if removal.elsewhere:
        print(
            f"{args.name}: {format_size(removal.elsewhere)} of removed files stay on disk, linked from outside "
            "the cache (another cache they were adopted from)",
            file=sys.stderr,
        )
    return 0


def _path(args: argparse.Namespace) -> int:
    chosen = project(args)
    if not args.name:
        print(chosen.cache_settings.root)
        return 0
    with progress():  # on a cold cache the model is fetched first
        found = chosen.path(args.name)
    print(found)
    return 0

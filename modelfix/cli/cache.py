"""``modelfix sync``, ``verify``, ``push`` and ``cache stats|prune|gc|rm|path``.

Handlers are thin: the work is in :mod:`modelfix.resolver` and
:mod:`modelfix.care`; what arrives meanwhile is shown by :mod:`.progress`
(one tqdm bar per file being downloaded: name, bytes, speed). ``prune``, ``gc``
and ``rm`` take ``--dry-run``; ``stats`` takes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from ..eviction import format_size
from . import cache_settings, count
from .progress import progress

if TYPE_CHECKING:
    from ..config import CacheSettings

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    sync = commands.add_parser("sync", help="fetch and verify the pinned files into the cache")
    sync.add_argument("names", nargs="*", metavar="NAME", help="models to sync (default: all)")
    sync.add_argument("-j", "--jobs", type=int, default=4, metavar="N", help="files fetched at once (default: 4)")
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
    from ..resolver import sync

    started = time.perf_counter()
    with progress():
        done = sync(args.names or None, args.lock, settings=cache_settings(args), workers=max(1, args.jobs))
    for m in done:
        print(f"{m.name}: {count(len(m.files), 'file')}, {format_size(m.entry.size)}  {m.model_path}")
    print(f"{count(len(done), 'model')} ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..resolver import verify

    problems = verify(args.names or None, args.lock, full=args.full, settings=cache_settings(args))
    for p in problems:
        print(f"{p.model}: {p.file}: {p.message}", file=sys.stderr)
    if problems:
        return 1
    print(f"all files match ({'sha256' if args.full else 'xxh3'})")
    return 0


def _push(args: argparse.Namespace) -> int:
    from ..resolver import push

    settings = cache_settings(args)
    with progress():
        report = push(args.names or None, args.lock, settings=settings, force=args.force)
    for model, file, what in report:
        print(f"{model}: {file}: {what}")
    uploaded = sum(1 for *_, what in report if what == "uploaded")
    print(f"{uploaded} uploaded, {len(report) - uploaded} already in {settings.remote}", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ..care import cache_stats, layer_stats

    settings = cache_settings(args)
    usage = cache_stats(args.lock, settings=settings)
    layers = layer_stats(args.lock, settings=settings)
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
            models = ", ".join(view["models"]) or "?"
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(view["last_used"]))
            revision = (view["revision"] or "-")[:12]
            state = view["state"] + (f" (read-only {root})" if root else "")
            print(f"{models:<30}  {revision:<12}  {format_size(view['bytes']):>10}  {used:<16}  {state}")
    if any(v["state"] == "superseded" for v in usage.views):
        print(
            "\nsuperseded: the lockfile pins these models elsewhere now; `modelfix cache gc` drops them",
            file=sys.stderr,
        )
    return 0


def _stats_json(usage: Any, settings: CacheSettings, layers: list[Any]) -> dict[str, Any]:
    def models(found: Any) -> list[dict[str, Any]]:
        keys = ("models", "revision", "bytes", "last_used", "state", "key")
        return [{k: view[k] for k in keys} for view in found.views]

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
    from ..care import drop_superseded, prune
    from ..store import stats

    settings = cache_settings(args, max_size=args.max_size)
    verb = "would remove" if args.dry_run else "removed"
    if args.superseded:
        report = drop_superseded(args.lock, settings=settings, dry_run=args.dry_run)
        print(
            f"{verb} {count(report['superseded'], 'superseded revision')} "
            f"({count(report['blobs'], 'file')} no other revision shows): {format_size(report['bytes'])} freed"
        )
        if settings.max_size == float("inf"):
            return 0  # no size asked for: dropping the old revisions was the whole request
    before = _names(settings) if args.dry_run else {}
    evicted = prune(lock=args.lock, settings=settings, dry_run=args.dry_run)
    if args.dry_run:
        freed = sum(before.get(sha, (0, ""))[0] for sha in evicted)
        print(f"would evict {count(len(evicted), 'file')} ({format_size(freed)}):")
        for sha in evicted:
            size, shown = before.get(sha, (0, sha[:12]))
            print(f"  {shown}  {format_size(size)}")
        return 0
    size = stats(settings).blob_bytes
    print(f"evicted {len(evicted)} files; the cache holds {format_size(size)}")
    if size > settings.max_size:
        print(
            f"the rest is in use by running processes or pinned by the lockfile: above {format_size(settings.max_size)}",
            file=sys.stderr,
        )
    return 0


def _names(settings: CacheSettings) -> dict[str, tuple[int, str]]:
    """sha256 -> (size, "models: file") of every blob a view shows, for what a dry run lists."""
    from ..store import Store

    store = Store(settings.root)
    sizes = {sha: st.st_size for sha, st in store.blobs()}
    return {
        f["sha256"]: (sizes.get(f["sha256"], 0), f"{', '.join(view.models) or '?'}: {f['name']}")
        for view in store._views()
        for f in view.files
    }


def _gc(args: argparse.Namespace) -> int:
    from ..care import gc

    report = gc(args.lock, settings=cache_settings(args), dry_run=args.dry_run)
    what = (
        f"{count(report['blobs'], 'unused file')}, {count(report['views'], 'broken view')}, "
        f"{count(report['superseded'], 'superseded revision')}, {count(report['leftovers'], 'leftover view folder')} "
        f"and {count(report['partials'], 'partial download')}"
    )
    if args.dry_run:
        print(f"would remove {what}: {format_size(report['bytes'])} freed")
    else:
        print(f"removed {what}: {format_size(report['bytes'])} freed")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from ..care import remove_model

    removal = remove_model(args.name, args.lock, settings=cache_settings(args), dry_run=args.dry_run)
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
            f"{args.name}: kept {len(removal.kept)} files that other models or running processes use",
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
    settings = cache_settings(args)
    if not args.name:
        print(settings.root)
        return 0
    from ..resolver import path

    with progress():  # on a cold cache the model is fetched first
        found = path(args.name, args.lock, settings=settings)
    print(found)
    return 0

"""``modelfix sync``, ``verify``, ``push`` and ``cache stats|prune|gc|rm|path``.

Handlers are thin: the work is in :mod:`modelfix.resolver` and
:mod:`modelfix.store`; what arrives meanwhile is shown by :mod:`.progress`
(one tqdm bar per file being downloaded: name, bytes, speed).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from ..eviction import format_size
from . import count
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
    care.add_parser("stats", help="sizes, models and leases").set_defaults(handler=_stats)
    prune = care.add_parser("prune", help="evict least recently used files down to a size")
    prune.add_argument("--max-size", metavar="SIZE", help="target size, e.g. 20GB (default: MODELFIX_CACHE_MAX_SIZE)")
    prune.set_defaults(handler=_prune)
    care.add_parser(
        "gc", help="delete files no cached model or the lockfile needs, and stale partial downloads"
    ).set_defaults(handler=_gc)
    rm = care.add_parser("rm", help="remove one model's files from the cache")
    rm.add_argument("name", metavar="NAME", help="the model whose files to remove")
    rm.set_defaults(handler=_rm)
    path = care.add_parser("path", help="print the cache folder (or a model's file, fetching it if needed)")
    path.add_argument("name", nargs="?", metavar="NAME", help="the model whose first model file to print")
    path.set_defaults(handler=_path)


def _settings(args: argparse.Namespace, **overrides: Any) -> CacheSettings:
    from ..config import CacheSettings

    return CacheSettings.resolve(cache_dir=args.cache_dir, offline=args.offline, **overrides)


def _sync(args: argparse.Namespace) -> int:
    from ..resolver import sync

    started = time.perf_counter()
    with progress():
        done = sync(args.names or None, args.lock, settings=_settings(args), workers=max(1, args.jobs))
    for m in done:
        print(f"{m.name}: {count(len(m.files), 'file')}, {format_size(m.entry.size)}  {m.model_path}")
    print(f"{count(len(done), 'model')} ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..resolver import verify

    problems = verify(args.names or None, args.lock, full=args.full, settings=_settings(args))
    for p in problems:
        print(f"{p.model}: {p.file}: {p.message}", file=sys.stderr)
    if problems:
        return 1
    print(f"all files match ({'sha256' if args.full else 'xxh3'})")
    return 0


def _push(args: argparse.Namespace) -> int:
    from ..resolver import push

    settings = _settings(args)
    with progress():
        report = push(args.names or None, args.lock, settings=settings, force=args.force)
    for model, file, what in report:
        print(f"{model}: {file}: {what}")
    uploaded = sum(1 for *_, what in report if what == "uploaded")
    print(f"{uploaded} uploaded, {len(report) - uploaded} already in {settings.remote}", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ..resolver import cache_stats

    settings = _settings(args)
    usage = cache_stats(args.lock, settings=settings)
    print(f"cache     {usage.root}")
    print(f"cap       {format_size(settings.max_size)}")
    print(f"blobs     {usage.blobs} ({format_size(usage.blob_bytes)})")
    print(f"partial   {format_size(usage.partial_bytes)} of interrupted downloads")
    print(f"in use by {usage.live_leases} live processes")
    if usage.views:
        print("\nMODELS                          SIZE        LAST USED")
        for view in usage.views:
            models = ", ".join(view["models"]) or "?"
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(view["last_used"]))
            print(f"{models:<30}  {format_size(view['bytes']):>10}  {used}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from ..resolver import prune
    from ..store import stats

    settings = _settings(args, max_size=args.max_size)
    evicted = prune(lock=args.lock, settings=settings)
    size = stats(settings).blob_bytes
    print(f"evicted {len(evicted)} files; the cache holds {format_size(size)}")
    if size > settings.max_size:
        print(
            f"the rest is in use by running processes or pinned by the lockfile: above {format_size(settings.max_size)}",
            file=sys.stderr,
        )
    return 0


def _gc(args: argparse.Namespace) -> int:
    from ..resolver import gc

    report = gc(args.lock, settings=_settings(args))
    print(
        f"removed {report['blobs']} unused files, {report['views']} broken views and "
        f"{report['partials']} partial downloads: {format_size(report['bytes'])} freed"
    )
    return 0


def _rm(args: argparse.Namespace) -> int:
    from ..resolver import remove

    freed, kept = remove(args.name, args.lock, settings=_settings(args))
    print(f"{args.name}: {format_size(freed)} freed")
    if kept:
        print(f"{args.name}: kept {len(kept)} files that other models or running processes use", file=sys.stderr)
    return 0


def _path(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not args.name:
        print(settings.root)
        return 0
    from ..resolver import path

    with progress():  # on a cold cache the model is fetched first
        found = path(args.name, args.lock, settings=settings)
    print(found)
    return 0

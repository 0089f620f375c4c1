"""The ``modelfix`` command line.

One module per group of commands, each exposing ``register(subparsers)``
which adds its sub-commands with a ``handler(args) -> int``::

    lock.py   add, lock, list
    cache.py  sync, verify, push, cache {stats,prune,gc,rm,path}
    run.py    run

Exit codes: 0 ok, 1 out of date / mismatch / failure, 2 usage error.
Every :class:`~modelfix.errors.ModelfixError` is printed as one line on
stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import ModelfixError, redact

__all__ = ["main", "build_parser"]

_GROUPS = ("lock", "cache", "run")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="modelfix",
        description="Pinned, verified, cached llama.cpp models for tests and notebooks.",
    )
    parser.add_argument("--lock", metavar="PATH", help="lockfile to use (default: nearest model-lock.toml upward)")
    parser.add_argument("--cache-dir", metavar="DIR", help="store root (default: $MODELFIX_CACHE_DIR or the user cache dir)")
    parser.add_argument("--offline", action="store_true", default=None, help="never touch the network")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        try:
            module = importlib.import_module(f"{__name__}.{group}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{group}":
                raise
            continue
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ModelfixError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

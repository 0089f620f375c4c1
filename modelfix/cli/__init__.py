"""The ``modelfix`` command line.

One module per group of commands, each exposing ``register(subparsers)``
which adds its sub-commands with a ``handler(args) -> int``::

    lock.py   add, remove, lock, list
    cache.py  sync, verify, push, cache {stats,prune,gc,rm,path}
    run.py    run
    inspect_model.py  inspect
    doctor.py         doctor
    progress.py       what sync, push, run and cache path show while files arrive

Every command that touches the cache, the store or the pool works through one
:class:`~modelfix.Project`, built here from the common options (:func:`project`:
``--lock``, ``--cache-dir``, ``--offline``, ``--readonly-cache``); ``add``, ``remove``
and ``lock`` write the lockfile through :mod:`modelfix.locking`.

Exit codes: 0 ok, 1 out of date / mismatch / failure, 2 usage error.
Every :class:`~modelfix.errors.ModelfixError` is printed as one line on
stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ModelfixError, redact

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["main", "build_parser", "count", "positive_int", "project", "readonly_caches"]

_GROUPS = ("lock", "cache", "run", "inspect_model", "doctor")
# The group that registers each command: `modelfix sync` builds only its own group's parser, since
# building every command's took a tenth of a warm `modelfix sync`. A test keeps this map whole.
_COMMANDS = {
    **dict.fromkeys(("add", "remove", "lock", "list"), "lock"),
    **dict.fromkeys(("sync", "verify", "push", "cache"), "cache"),
    "run": "run",
    "inspect": "inspect_model",
    "doctor": "doctor",
}


def count(n: int, thing: str) -> str:
    """``1 model``, ``2 models``."""
    return f"{n} {thing}{'s' if n != 1 else ''}"


def positive_int(text: str) -> int:
    """An argparse type for counts (``--max-tokens``, ``-j``): ``0`` or ``-3`` is a usage error,
    not llama.cpp's "until the context is full" or a silent 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _common_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument(
        "--lock", metavar="PATH", default=default, help="lockfile to use (default: nearest model-lock.toml upward)"
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=default,
        help="store root (default: $MODELFIX_CACHE_DIR or the user cache dir)",
    )
    parser.add_argument("--offline", action="store_true", default=default, help="never touch the network")
    # Given after the command too: a sub-command parses into a namespace of its own, which would
    # replace the list given before it, so it keeps its own (readonly_caches() joins them).
    parser.add_argument(
        "--readonly-cache",
        metavar="DIR",
        action="append",
        dest="readonly_cache" if default is None else "readonly_cache_after",
        default=default,
        help="a read-only cache served in place in front of the cache dir, never written (repeatable; "
        "default: $MODELFIX_READONLY_CACHES)",
    )


def readonly_caches(args: argparse.Namespace) -> list[str] | None:
    """The ``--readonly-cache`` folders given before and after the command, None if none was."""
    given = [*(getattr(args, "readonly_cache", None) or ()), *(getattr(args, "readonly_cache_after", None) or ())]
    return given or None


def project(args: argparse.Namespace, **overrides: Any) -> Project:
    """The :class:`~modelfix.Project` of a command: its common options (``overrides`` win), then the environment."""
    from ..project import Project

    options: dict[str, Any] = {
        "cache_dir": args.cache_dir,
        "offline": args.offline,
        "readonly_caches": readonly_caches(args),
        **overrides,
    }
    return Project(args.lock, **options)


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield sub
                yield from _subparsers(sub)


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names after the common options, None for none or for ``--help``."""
    common = argparse.ArgumentParser(prog="modelfix")
    common.add_argument("--version", action="store_true")
    _common_options(common)
    takes_value = {flag: action.nargs != 0 for action in common._actions for flag in action.option_strings}
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help", "--version"):
            return None
        if arg.startswith("--") and "=" not in arg:
            named = [flag for flag in takes_value if flag.startswith(arg)]  # the flag, or what it abbreviates
            if named and all(takes_value[flag] for flag in named):  # --lock PATH
                next(args, None)
            continue
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (``command``, when known) only what that command needs."""
    import importlib

    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="modelfix",
        description="Pinned, verified, cached llama.cpp models for tests and notebooks.",
    )
    parser.add_argument("--version", action="version", version=f"modelfix {__version__}")
    _common_options(parser)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, help="what to do (`modelfix COMMAND --help` for its options)"
    )
    for group in (_COMMANDS[command],) if command in _COMMANDS else _GROUPS:
        importlib.import_module(f"{__name__}.{group}").register(commands)
    _describe(parser)
    # Users type `modelfix sync --offline` as often as `modelfix --offline sync`:
    # every sub-command accepts the common options too, without overriding them.
    for sub in _subparsers(parser):
        _common_options(sub, default=argparse.SUPPRESS)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give each sub-command without a description its line from the command list, for `COMMAND --help`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for listed in action._choices_actions:
                sub = action.choices[listed.dest]
                if not sub.description and listed.help:
                    sub.description = listed.help[0].upper() + listed.help[1:] + "."
                _describe(sub)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_of(argv)).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ModelfixError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `modelfix list | head`: the reader left; say nothing more.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cache settings, resolved once from arguments, then the environment, then defaults.

Read when used, never at import: a test can set ``MODELFIX_CACHE_DIR`` and
the next call sees it. Front ends pass their options (``--cache-dir``,
``--modelfix-offline``...) as arguments of their :class:`~modelfix.Project`, which
resolves its settings from them at each use; they win over the environment.

A warm ``modelfix.path()`` needs only the root (:func:`cache_root`) and the
read-only caches in front of it (:func:`layer_roots`), and asks for them on
every call: the ``realpath`` of each absolute root string is kept for the life
of the process, so a changed ``MODELFIX_CACHE_DIR`` (or
``MODELFIX_READONLY_CACHES``) is a new lookup and an unchanged one costs a dict
lookup. (A symlink on the way to the root re-pointed while the process runs is
therefore not followed.)

=========================  ==========================================
environment                meaning
=========================  ==========================================
``MODELFIX_CACHE_DIR``     store root (default: platformdirs cache dir)
``MODELFIX_READONLY_CACHES`` read-only caches served in front of it, ``os.pathsep``-separated
                           (see :mod:`modelfix.layers`)
``MODELFIX_CACHE_MAX_SIZE`` cap on the store (``50GB``, bytes, ``inf``)
``MODELFIX_OFFLINE``       ``1``: never touch the network
``HF_HUB_OFFLINE``         honoured the same way
``MODELFIX_REMOTE``        fsspec URL of a shared remote tier
=========================  ==========================================
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

from .errors import CacheError
from .eviction import parse_size

__all__ = ["CacheSettings", "cache_root", "usable_root", "layer_roots", "env_flag"]

_TRUE = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The store root, resolved: ``cache_dir``, else ``MODELFIX_CACHE_DIR``, else the platform's cache folder."""
    raw = os.fspath(cache_dir or os.environ.get("MODELFIX_CACHE_DIR") or _platform_cache_dir())
    root = _ROOTS.get(raw)
    if root is None:
        root = Path(raw).expanduser().resolve()
        if os.path.isabs(raw):  # a relative or ~ root depends on the working folder or HOME: resolve it each time
            if len(_ROOTS) >= _ROOTS_LIMIT:
                _ROOTS.clear()
            _ROOTS[raw] = root
    return root


def layer_roots(root: Path, value: Sequence[str | os.PathLike[str]] | str | None = None) -> tuple[Path, ...]:
    """The read-only caches in front of store ``root``: ``value`` (folders, or one ``os.pathsep``-separated
    string), else ``MODELFIX_READONLY_CACHES``; resolved, in order, without repeats or ``root`` itself."""
    if value is None:
        key: tuple[Any, Path] = (_readonly_env(), root)
    else:
        key = (value if isinstance(value, str) else tuple(map(os.fspath, value)), root)
    found = _LAYERS.get(key)
    if found is None:
        raw = key[0] if key[0] is not None else ""
        raw = os.fsdecode(raw) if isinstance(raw, bytes) else raw
        items = [item for item in (raw.split(os.pathsep) if isinstance(raw, str) else raw) if item.strip()]
        found = tuple(layer for layer in dict.fromkeys(cache_root(item) for item in items) if layer != root)
        if all(os.path.isabs(item) for item in items):  # relative ones follow the working folder
            if len(_LAYERS) >= _ROOTS_LIMIT:
                _LAYERS.clear()
            _LAYERS[key] = found
    return found


def _readonly_env() -> bytes | str | None:
    """``MODELFIX_READONLY_CACHES`` as set (bytes on POSIX), or None.

    A warm ``path()`` reads it on every call, and ``os.environ.get`` of an unset variable raises
    and catches a KeyError inside (0.7 µs, 5% of the call). CPython keeps POSIX's environment in
    ``os.environ._data``, as bytes, and updates it in place: a dict lookup there costs 50 ns.
    """
    data = getattr(os.environ, "_data", None)
    if os.name == "posix" and type(data) is dict:
        return data.get(b"MODELFIX_READONLY_CACHES")
    return os.environ.get("MODELFIX_READONLY_CACHES")


def _platform_cache_dir() -> str:
    # platformdirs costs more than the rest of a warm path() together; on Linux and macOS its
    # answer depends on these two variables alone, so they are the key.
    key = (os.environ.get("XDG_CACHE_HOME"), os.environ.get("HOME"))
    found = _DEFAULTS.get(key)
    if found is None:
        import platformdirs

        found = _DEFAULTS[key] = platformdirs.user_cache_dir("modelfix", appauthor=False)
    return found


# Process-wide, shared by every Project: pure lookups (a realpath, platformdirs' answer) that the
# warm path would otherwise pay on every call; keyed by what they depend on.
_ROOTS: dict[str, Path] = {}  # absolute root as given -> its realpath
_ROOTS_LIMIT = 64  # a test run makes a root per test: a bound keeps it from hoarding them
_LAYERS: dict[tuple[Any, Path], tuple[Path, ...]] = {}  # (value as given, root) -> layers
_DEFAULTS: dict[tuple[str | None, str | None], str] = {}  # (XDG_CACHE_HOME, HOME) -> platformdirs' cache dir


@final
@dataclass(frozen=True)
class CacheSettings:
    """Where models are cached. ``layers``: read-only caches served in place in front of ``root``, in order."""

    root: Path
    max_size: float = math.inf
    offline: bool = False
    remote: str | None = None
    layers: tuple[Path, ...] = ()

    @classmethod
    def resolve(
        cls,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
        max_size: str | int | float | None = None,
        remote: str | None = None,
        readonly_caches: Sequence[str | os.PathLike[str]] | str | None = None,
    ) -> CacheSettings:
        if offline is None:
            offline = env_flag("MODELFIX_OFFLINE") or env_flag("HF_HUB_OFFLINE")
        raw_size = max_size if max_size is not None else os.environ.get("MODELFIX_CACHE_MAX_SIZE")
        try:
            what = "MODELFIX_CACHE_MAX_SIZE" if max_size is None else "--max-size"
            size = parse_size(raw_size, what) if raw_size not in (None, "") else math.inf
        except ValueError as exc:
            raise CacheError(str(exc)) from None
        remote = (remote if remote is not None else os.environ.get("MODELFIX_REMOTE")) or None  # "": none
        root = usable_root(cache_root(cache_dir))
        layers = layer_roots(root, readonly_caches)
        return cls(root=root, max_size=size, offline=bool(offline), remote=remote, layers=layers)


def usable_root(root: Path) -> Path:
    """``root``, unless it (or a folder above it) is a file, which no command could use (and
    ``cache stats`` would show as an empty cache). A root that does not exist yet is made on first write."""
    try:
        if stat.S_ISDIR(os.stat(root).st_mode):
            return root
    except NotADirectoryError:
        pass
    except OSError:  # absent (made on first write), or unreadable (the first write says why)
        return root
    raise CacheError(
        f"cannot use {root} as the cache folder: it (or a folder above it) is a file. Set MODELFIX_CACHE_DIR "
        "(or --cache-dir) to a folder."
    )

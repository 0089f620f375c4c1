"""Where the lockfile is and how its bytes are read, before any TOML is parsed.

    find_lockfile(explicit)    --lock PATH, else MODELFIX_LOCK, else nearest_lockfile()
    nearest_lockfile(start)    the nearest model-lock.toml from the working folder upward
    read_raw(path)             the text of a regular file of at most MAX_LOCKFILE_BYTES, UTF-8,
                               or a one-line LockError that says the fix (a folder, a device,
                               a pipe, permissions, another encoding)

:mod:`modelfix.lockfile` parses what this module reads.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import LockError

__all__ = ["LOCK_NAME", "MAX_LOCKFILE_BYTES", "find_lockfile", "nearest_lockfile", "read_raw"]

LOCK_NAME = "model-lock.toml"
# A lockfile of 150,000 pinned models is about 64 MiB; a bigger one is a mistake (a log, a device).
MAX_LOCKFILE_BYTES = 64 * 1024 * 1024


def find_lockfile(explicit: str | os.PathLike[str] | None = None, start: Path | None = None) -> Path:
    """The lockfile to use: ``explicit``, ``MODELFIX_LOCK``, or the nearest upward."""
    chosen = explicit or os.environ.get("MODELFIX_LOCK")
    if chosen:
        return chosen if isinstance(chosen, Path) else Path(chosen)
    return Path(nearest_lockfile(start))


def nearest_lockfile(start: str | os.PathLike[str] | None = None) -> str:
    """The nearest ``model-lock.toml`` from ``start`` (default: the working folder) upward, absolute.

    Strings, not pathlib: a warm ``modelfix.path(name)`` searches on every call.
    """
    here = os.path.realpath(start) if start else os.getcwd()  # getcwd is free of symlinks already
    folder = here
    while True:
        candidate = os.path.join(folder, LOCK_NAME)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    raise LockError(
        f"no {LOCK_NAME} in {here} or any parent folder. "
        f"Create one with `modelfix add NAME SOURCE`, or pass --lock PATH."
    )


def read_raw(path: Path) -> str:
    """The file's text as it is on disk (BOM and line ends kept), or a LockError that says the fix.

    Only a regular file of at most :data:`MAX_LOCKFILE_BYTES` is read: ``--lock /dev/zero`` or a
    pipe would otherwise be read for ever (or block).
    """
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise LockError(f"{path} is a folder, not a lockfile. Pass the file: --lock {path / LOCK_NAME}.")
        if not stat.S_ISREG(st.st_mode):
            raise LockError(f"{path} is not a regular file: pass the lockfile itself with --lock PATH.")
        _check_size(path, st.st_size)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped since the stat
                raise LockError(f"{path} is not a regular file: pass the lockfile itself with --lock PATH.")
            data = f.read(MAX_LOCKFILE_BYTES + 1)
        _check_size(path, len(data))
    except FileNotFoundError:
        raise LockError(f"{path}: no such lockfile. Create one with `modelfix add NAME SOURCE`.") from None
    except PermissionError:
        raise LockError(f"{path}: permission denied reading the lockfile. Make it readable (chmod u+r).") from None
    except OSError as exc:
        raise LockError(f"{path}: cannot read the lockfile ({exc.strerror or exc}).") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LockError(
            f"{path}:{line}: the lockfile is not UTF-8 text (byte 0x{data[exc.start]:02x}). "
            "Save it as UTF-8; TOML files are always UTF-8."
        ) from None


def _check_size(path: Path, size: int) -> None:
    if size > MAX_LOCKFILE_BYTES:
        raise LockError(
            f"{path} is {size / 2**20:.1f} MiB, over the {MAX_LOCKFILE_BYTES // 2**20} MiB a lockfile may have: "
            "is it the right file? Pass the lockfile with --lock PATH."
        )

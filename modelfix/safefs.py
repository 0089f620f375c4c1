"""Touching files in a cache that other users and processes share, without trusting its names.

A shared cache is a trust boundary (see shared/DESIGN.md): another user who may write into it
can plant a link where modelfix is about to write, or swap one of its folders for a link. So
nothing here follows a link inside the cache, and nothing writes through an existing file::

    folder(root, "tmp")          root/tmp, made if missing; a component that is a link (or no
                                 folder) is a CacheError. The root itself may be a link: the user's.
    open_folder(path)            a descriptor of that folder (O_NOFOLLOW), for dir_fd-relative work
    create(name, dir_fd=)        a new file: O_CREAT | O_EXCL | O_NOFOLLOW, never an existing one
    open_regular(name, flags)    an existing regular file (O_NOFOLLOW, fstat-checked), or None
    read_small(path, limit)      the bytes of a small record (memo, manifest, journal), bounded
    replace(path, data)          write a fresh temporary file beside ``path``, then rename it
    lock_file(path)              a descriptor to flock: a link planted at its name is removed
                                 (both relative to their folder's descriptor)
    lock_holder(fd)              the pid holding that flock, where the system tells (Linux)
    with writing(path): ...      an OSError met writing there becomes the CacheError that names
                                 the path and the fix (:func:`cache_error`: disk full, or no right
                                 to write: point MODELFIX_CACHE_DIR elsewhere)

Modes: files are created 0o666 and folders 0o777, so that the umask decides (a team's umask
002 keeps group write; a private 077 keeps everything private); :func:`umask` reads the umask
without changing it, for the few places that set a mode explicitly (read-only blobs).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CacheError, ModelfixError, PlantedError

__all__ = [
    "PlantedError",
    "planted",
    "writing",
    "cache_error",
    "umask",
    "folder",
    "open_folder",
    "create",
    "open_regular",
    "read_small",
    "replace",
    "lock_file",
    "try_lock",
    "lock_holder",
    "writers_lock",
]

log = logging.getLogger("modelfix")

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# flock is not everywhere (some NFS and FUSE mounts): there the store goes on without it, since
# correctness never rests on its locks (a blob is checked before it is renamed into place).
_NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def planted(path: str | os.PathLike[str], what: str = "a symbolic link") -> PlantedError:
    return PlantedError(
        f"{path} is {what}, which modelfix never makes in its cache: another user or program put it "
        "there, and modelfix does not follow links inside the cache. Remove it, or set MODELFIX_CACHE_DIR "
        "(or --cache-dir) to a cache that only trusted users can write."
    )


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Write ``path`` (or under it) in the cache: an OSError becomes the :func:`cache_error` for it."""
    try:
        yield
    except OSError as exc:
        raise cache_error(exc, exc.filename or path) from None


def cache_error(exc: OSError, path: str | os.PathLike[str], *, label: str = "") -> CacheError:
    """The :class:`CacheError` for ``exc``, met writing ``path`` in the cache: where, why, what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (
            "Make room in the cache (`modelfix cache prune --max-size SIZE`, `modelfix cache gc`) or set "
            "MODELFIX_CACHE_DIR (or --cache-dir) to a folder on a disk with room."
        )
    else:
        fix = "Point the cache elsewhere: set MODELFIX_CACHE_DIR (or --cache-dir) to a folder you can write to."
    where = f"{label}: " if label else ""
    return CacheError(f"{where}cannot write {path}: {exc.strerror or exc}. {fix}")


def umask() -> int:
    """The process's umask, read without setting it (os.umask would, for every thread at once)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


_UMASK_LOCK = threading.Lock()


def folder(root: Path, *parts: str, create: bool = True) -> Path:
    """``root / parts...``, each part a real folder (made where missing when ``create``).

    Raises :class:`PlantedError` for a part that is a link or not a folder, FileNotFoundError
    for a missing one when not ``create``; other OSErrors are the caller's to explain.
    """
    path = root
    for part in parts:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)  # 0o777 & ~umask; a setgid parent passes its group and the bit on
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise planted(path)
        if not stat.S_ISDIR(st.st_mode):
            raise planted(path, "not a folder")
    return path


def open_folder(path: str | os.PathLike[str]) -> int:
    """A descriptor of folder ``path`` for ``dir_fd=`` work; its last component must not be a link."""
    try:
        return os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _blocking(Path(path)) from None
        raise


def _blocking(path: Path) -> PlantedError:
    """The error for ``path`` (a link, or no folder) or the nearest folder above it that is no folder."""
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            st = os.lstat(p) if p == path else os.stat(p)  # a link above was followed: the root may be one
            if stat.S_ISLNK(st.st_mode):
                return planted(p)
            if not stat.S_ISDIR(st.st_mode):
                return planted(p, "not a folder")
    return planted(path)


def create(name: str | os.PathLike[str], *, dir_fd: int | None = None, flags: int = os.O_WRONLY) -> int:
    """A descriptor of a new file ``name``; FileExistsError if anything (a link too) has that name."""
    return os.open(name, flags | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666, dir_fd=dir_fd)


def open_regular(name: str | os.PathLike[str], flags: int = os.O_RDONLY, *, dir_fd: int | None = None) -> int | None:
    """A descriptor of existing regular file ``name``, None if there is none.

    A link, a pipe or a device there is a :class:`PlantedError` (never followed, never blocked on).
    """
    try:
        fd = os.open(name, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise planted(name) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise planted(name, "not a regular file")
    return fd


def read_small(name: str | os.PathLike[str], limit: int, *, dir_fd: int | None = None) -> bytes | None:
    """The bytes of regular file ``name`` (None if absent); ValueError if it holds more than ``limit``."""
    fd = open_regular(name, dir_fd=dir_fd)
    if fd is None:
        return None
    try:
        data = b""
        while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"{name} holds more than {limit} bytes")
    return data


def replace(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data``: a new temporary file beside it, renamed over it, both
    relative to the folder's descriptor (a folder swapped for a link meanwhile is not followed)."""
    folder = open_folder(path.parent)
    tmp = f".{path.name}.{os.urandom(4).hex()}"
    try:
        with os.fdopen(create(tmp, dir_fd=folder), "wb") as f:
            f.write(data)
        os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise
    finally:
        os.close(folder)


def lock_file(path: Path) -> int:
    """A descriptor of lock file ``path`` to flock, made (0o666 & ~umask) if missing.

    Opened relative to its folder's descriptor, never through a link: a link planted at its
    name is removed and the file made anew (following it would lock, or create, a file
    elsewhere). A lock file of another user that this one may not write is opened read-only,
    which is all flock needs.
    """
    folder = open_folder(path.parent)
    try:
        try:
            fd = _open_lock(path.name, folder)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            log.warning("%s was a symbolic link, which modelfix never makes; removing it", path)
            os.unlink(path.name, dir_fd=folder)  # the link itself: unlink never follows
            fd = _open_lock(path.name, folder)
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise planted(path, "not a regular file")
    return fd


def _open_lock(name: str, folder: int) -> int:
    try:
        return os.open(name, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o666, dir_fd=folder)
    except PermissionError:
        return os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=folder)


def lock_holder(fd: int) -> int | None:
    """The pid holding a flock on the file open at ``fd``, where the system says (Linux's /proc/locks)."""
    st = os.fstat(fd)
    me = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError, ValueError), open("/proc/locks") as f:
        for line in f:
            words = line.split()  # "1: FLOCK  ADVISORY  WRITE 4242 00:2c:1234 0 EOF"; a waiter's has "->"
            if len(words) > 5 and words[1] == "FLOCK" and words[5] == me and int(words[4]) > 0:
                return int(words[4])
    return None


def try_lock(fd: int, *, shared: bool = False, wait: bool = False) -> bool | None:
    """flock ``fd``: True when held, False when another process holds it (and not ``wait``),
    None where the filesystem has no flock (the caller decides what that means for it)."""
    import fcntl

    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_FLOCK:
            return None
        raise


# Writers hold a writers' lock only to re-read, edit and write one file (never over the
# network), so a minute of waiting means one of them is stuck.
WRITERS_TIMEOUT_S = 60


@contextmanager
def writers_lock(
    path: Path, *, tag: str, kind: str, error: type[ModelfixError], who: str = "process"
) -> Iterator[None]:
    """One writer at a time of the user's file ``path`` (a lockfile, a snapshot file), across processes.

    The lock is not the file itself, which every write replaces (a lock on the old inode would
    not stop the next writer), and not a ``NAME.lock`` beside it, which would litter the user's
    project and its ``git status``: it lives in the temp folder, named by the file's real path so
    that a symlink and its target, or two spellings of one path, share it, and any user may take
    it (another user of a shared project takes the same lock): ``modelfix-{tag}-{hash}.lock``.
    ``kind`` names the file in the messages, ``error`` is what they are raised as.
    """
    import hashlib
    import tempfile

    from filelock import FileLock, Timeout

    key = hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:32]
    where = os.path.join(tempfile.gettempdir(), f"modelfix-{tag}-{key}.lock")
    lock = FileLock(where, mode=0o666)
    try:
        lock.acquire(timeout=WRITERS_TIMEOUT_S)
    except Timeout:
        raise error(
            f"{path}: another {who} has been writing this {kind} for {WRITERS_TIMEOUT_S} s. "
            "Let it finish (or stop it), then try again."
        ) from None
    except OSError as exc:
        raise error(
            f"{path}: cannot take the writers' lock {where} ({exc.strerror or exc}). "
            "Make the temp folder writable, or point TMPDIR at one that is."
        ) from None
    try:
        yield
    finally:
        lock.release()

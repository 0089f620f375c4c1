"""Leases: the blobs that live processes use, which no eviction may remove.

Under the cache root::

    leases/<host>-<pid>-<rand>   the blobs one process uses from this store: a sha256 a
                                 line, appended, never rewritten; flock-held until it exits;
                                 made new (never through a link), readable by the team
                                 "<sha256> <size>" reserves room for a blob that process is
                                 about to download, so that other processes syncing under
                                 the same size cap count it before it exists

Whether a lease is live is asked of the kernel, not inferred from a pid (pids
are reused, and the store may sit on a disk other hosts share): a lease file
whose flock can be taken belongs to a process that is gone, and is deleted.
Appending only means that another process reading a lease file never sees a
sha disappear. A forked child starts a file of its own.

The store takes leases under its shared lock and evicts under its exclusive
one (``locks/store.lock``), so an eviction either sees a lease or finished
before the lease was taken. OSErrors go to the caller, which knows how to
explain them.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import safefs

__all__ = ["held", "take", "unreserve", "live", "live_with_sizes"]


class _Registry:
    """This process's lease file per store root, opened and flock-held until the process exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (root, pid) -> (lease file, its fd, leased shas, bytes reserved per sha)
        self._files: dict[tuple[Path, int], tuple[Path, int, set[str], dict[str, int]]] = {}

    def held(self, root: Path) -> set[str]:
        entry = self._files.get((root, os.getpid()))
        return entry[2] if entry else set()

    def sizes(self, root: Path) -> dict[str, int]:
        entry = self._files.get((root, os.getpid()))
        return dict(entry[3]) if entry else {}

    def path(self, root: Path) -> Path | None:
        entry = self._files.get((root, os.getpid()))
        return entry[0] if entry else None

    def take(self, root: Path, shas: Iterable[str], sizes: Mapping[str, int] | None = None) -> None:
        import fcntl

        with self._lock:
            key = (root, os.getpid())
            if key not in self._files:
                folder = safefs.folder(root, "leases")
                path = folder / f"{os.uname().nodename}-{os.getpid()}-{os.urandom(4).hex()}"
                # New, never followed, 0o666 & ~umask: other users of a team's cache read it.
                fd = safefs.create(path, flags=os.O_WRONLY | os.O_APPEND)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._files[key] = (path, fd, set(), {})
            path, fd, held, reserved = self._files[key]
            fresh = [s for s in dict.fromkeys(shas) if s not in held]
            if fresh:
                sizes = sizes or {}
                os.write(fd, "".join(f"{s} {sizes[s]}\n" if s in sizes else f"{s}\n" for s in fresh).encode())
                held.update(fresh)
                reserved.update({s: sizes[s] for s in fresh if s in sizes})

    def unreserve(self, root: Path, shas: Iterable[str]) -> None:
        with self._lock:
            entry = self._files.get((root, os.getpid()))
            if entry is None:
                return
            _, fd, held, reserved = entry
            done = [s for s in dict.fromkeys(shas) if s in held]
            if done:  # appended, like everything here: a later line for a sha wins
                os.write(fd, "".join(f"{s} 0\n" for s in done).encode())
                reserved.update(dict.fromkeys(done, 0))


# Process-wide: a lease file belongs to a process (flock-held until it exits), not to a Project.
_REGISTRY = _Registry()


def held(root: Path) -> set[str]:
    """The blobs of store ``root`` that this process leases (do not modify)."""
    return _REGISTRY.held(root)


def take(root: Path, shas: Iterable[str], sizes: Mapping[str, int] | None = None) -> None:
    """Lease blobs ``shas`` of store ``root`` until this process exits (under the shared store lock).

    A sha in ``sizes`` is also a reservation of that many bytes (see the module docstring).
    """
    _REGISTRY.take(root, shas, sizes)


def unreserve(root: Path, shas: Iterable[str]) -> None:
    """Give back the room reserved for ``shas`` (downloads that failed); they stay leased."""
    _REGISTRY.unreserve(root, shas)


def live(root: Path, *, own: bool = True, tidy: bool = True) -> tuple[set[str], int]:
    """Blobs leased by live processes (this one too if ``own``) and how many processes hold leases.

    Deletes the lease files of processes that are gone on the way (unless not ``tidy``: a dry run).
    """
    leased, processes = _scan(root, own, tidy)
    return set(leased), processes


def live_with_sizes(root: Path, *, tidy: bool = True) -> dict[str, int | None]:
    """Every blob live processes (this one too) lease, with the bytes reserved for it while it
    is still being downloaded (None or 0: nothing reserved). One pass over the lease files."""
    return _scan(root, True, tidy)[0]


def _scan(root: Path, own: bool, tidy: bool) -> tuple[dict[str, int | None], int]:
    import fcntl

    folder = root / "leases"
    mine = _REGISTRY.path(root)
    leased: dict[str, int | None] = {**dict.fromkeys(_REGISTRY.held(root)), **_REGISTRY.sizes(root)} if own else {}
    processes = 0
    for path in folder.glob("*") if folder.is_dir() else ():
        if path == mine:
            processes += 1
            continue
        try:
            fd = safefs.open_regular(path)
        except (OSError, safefs.PlantedError):
            continue  # a link or a pipe planted among the leases: no lease, and not ours to delete
        if fd is None:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process is alive and holds it
            processes += 1
            with os.fdopen(os.dup(fd), "rb") as f:
                for line in f.read().decode("ascii", "replace").splitlines():
                    sha, _, size = line.partition(" ")
                    if len(sha) == 64:
                        leased[sha] = int(size) if size.isdigit() else leased.get(sha)
        except OSError:
            continue  # no flock on this filesystem: nothing can be told of it
        else:
            if tidy:
                with contextlib.suppress(OSError):  # a cache this process may read but not write
                    path.unlink(missing_ok=True)  # dead process: the lease died with it
        finally:
            os.close(fd)
    return leased, processes

"""The two hashes the store keeps for every blob, computed in one pass.

* **sha256** is the blob's address and what the lockfile pins (the Hub
  publishes it for LFS files, so pins need no download). Slow-ish: about
  1 GB/s on one core.
* **xxh3-128** is recorded next to it when the blob is committed; ``modelfix
  verify`` re-checks it at memory speed (about 5 GB/s). It catches bit rot
  and stray writes, not an attacker, which is all a check of our own bytes
  needs: the sha256 already vouched for them when they arrived.

:class:`Digest` feeds both from the same chunks (a download hashes while it
writes); :func:`hash_file` re-reads a file through ``mmap``, which skips the
copy into a read buffer and is the fastest way Python has to hash a
page-cached file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass

__all__ = [
    "Digest",
    "FileHash",
    "hash_file",
    "hash_fd",
    "file_identity",
    "identity_of",
    "Identity",
    "sha256_text",
    "EMPTY_SHA256",
]

_SLICE = 8 * 1024 * 1024  # big enough to amortise the call, small enough to stay in cache
EMPTY_SHA256 = hashlib.sha256().hexdigest()


@dataclass(frozen=True)
class FileHash:
    """What a file's bytes hash to. ``None`` where that hash was not asked for."""

    size: int
    sha256: str | None
    xxh3: str | None


class Digest:
    """sha256 and xxh3-128 of a stream, fed chunk by chunk in order."""

    def __init__(self, sha256: bool = True, xxh3: bool = True) -> None:
        import xxhash

        self._sha = hashlib.sha256() if sha256 else None
        self._xxh = xxhash.xxh3_128() if xxh3 else None
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        # Both hash functions release the GIL on large buffers, so a hashing
        # thread runs beside the thread that receives the bytes.
        if self._sha is not None:
            self._sha.update(data)
        if self._xxh is not None:
            self._xxh.update(data)
        self.size += len(data)

    def result(self) -> FileHash:
        return FileHash(
            size=self.size,
            sha256=self._sha.hexdigest() if self._sha is not None else None,
            xxh3=self._xxh.hexdigest() if self._xxh is not None else None,
        )


def hash_file(
    path: str | os.PathLike[str], *, sha256: bool = True, xxh3: bool = True, follow_symlinks: bool = True
) -> FileHash:
    """Hash a whole file; ask only for what you need (sha256 is 5x slower than xxh3).

    Without ``follow_symlinks`` a link at ``path`` is an OSError (ELOOP), never read through.
    """
    flags = os.O_RDONLY | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        return hash_fd(fd, sha256=sha256, xxh3=xxh3)
    finally:
        os.close(fd)


def hash_fd(fd: int, *, sha256: bool = True, xxh3: bool = True) -> FileHash:
    """Hash the whole file open at ``fd`` (whose :func:`identity_of` ``os.fstat(fd)`` names what was hashed)."""
    digest = Digest(sha256=sha256, xxh3=xxh3)
    size = os.fstat(fd).st_size
    if size == 0:  # mmap refuses empty files
        return digest.result()
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
        if hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(mapped)
        try:
            for start in range(0, size, _SLICE):
                digest.update(view[start : start + _SLICE])
        finally:
            view.release()  # mmap cannot close while a view is exported
    return digest.result()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


Identity = tuple[int, int, int, int, int]


def file_identity(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> Identity:
    """(device, inode, size, mtime_ns, ctime_ns): if it is unchanged, so are the bytes we hashed.

    The ctime is what makes that true against a file's owner, who can rewrite the bytes and set
    the mtime back, but not the ctime: any write, chmod, link or unlink moves it to now.
    """
    return identity_of(os.stat(path, follow_symlinks=follow_symlinks))


def identity_of(st: os.stat_result) -> Identity:
    """:func:`file_identity` from a stat result already at hand (an ``os.fstat`` of an open file)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

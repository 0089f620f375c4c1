"""Read-only caches: served in place, never written (models baked into images, read-only volumes, CI caches).

A cache this process cannot write is used in one of two ways::

    MODELFIX_CACHE_DIR=/models                   the store itself is read-only here: it serves what
                                                 it holds; a miss is an error naming the fix
    MODELFIX_READONLY_CACHES=/models:/mnt/team   layers in front of a writable store (also
                                                 --readonly-cache DIR, --modelfix-readonly-cache DIR)

    path(name) ─▶ /models ─▶ /mnt/team ─▶ MODELFIX_CACHE_DIR ─▶ remote tier ─▶ origin
                  a model whose view is whole in a layer is served from that view, in place;
                  what no layer holds whole is made in the writable store: a blob a layer
                  holds is copied from it, hashed (sha256) on the way, never hard-linked

Nothing is ever written there: no lease (this process cannot evict from it, and cannot record
one), no last-use time, no memo, no new identity in a manifest, no backend verdict; each cache
says so once, at debug level.

**Trust.** A read-only cache is trusted as it was built, by whoever could write it; what a copy
or a mount changes, and what another user could plant, is checked, and nothing more::

    each view file    a regular file (never a link) of its pinned size
    and either        the same inode as its blob in that cache: a hard link as built
                      (kept by `cp -a`, `rsync -aH`, tar, an image layer)
    or                its bytes hashed: xxh3 against that cache's memo, else sha256 against
                      the address; once per process and file identity, kept in memory

The identities that a view's manifest records (device, inode, times) are not compared: a
copied cache (``COPY --from=build /models /models``, a restored CI cache) has a new inode and
ctime for every file, a mount may show other device numbers, and a read-only cache cannot
record new ones. So the first look in a process costs what it costs in a writable store (one
small read, an lstat per file and per blob), and a warm call one stat per file, against the
identities seen at that first look. Only a copy that broke the hard links (``cp -r``,
``shutil.copytree``) is hashed, once per process.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import safefs
from .errors import CacheError
from .hashing import Identity, hash_fd, identity_of
from .views import MANIFEST, Snapshot, View

if TYPE_CHECKING:
    from .store import Store

__all__ = ["unwritable", "announce", "refusal", "check", "Expected"]

log = logging.getLogger("modelfix")

# view file name -> (the sha256 it must show, None for a joined file; its size in bytes)
Expected = Mapping[str, tuple[str | None, int]]

# Process-wide: each cache is announced once per process, and a file identity hashed once per
# process, whichever Project meets it (a read-only cache cannot record what was checked).
_ANNOUNCED: set[Path] = set()
_HASHED: dict[tuple[str, Identity, str], bool] = {}  # (view file, its identity, sha256) -> bytes match
_HASHED_LIMIT = 4096


def unwritable(root: Path) -> str | None:
    """Why this process may not write the cache at ``root`` (None if it may, or if it is not there yet)."""
    try:
        if os.access(root, os.W_OK):
            return None
        if not os.path.isdir(root):
            return None  # absent, or no folder: the first write says why
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return "a read-only file system"
    except OSError:
        return None
    return "not writable by this user"


def announce(root: Path, why: str) -> None:
    """Say once per process, at debug level, that the cache at ``root`` is used without writing."""
    if root not in _ANNOUNCED:
        _ANNOUNCED.add(root)
        log.debug(
            "modelfix: the cache %s is %s: its models are served in place, without leases, last-use times "
            "or memos, and nothing is written there",
            root,
            why,
        )


def refusal(root: Path, why: str, doing: str) -> CacheError:
    """The error for ``doing`` (a fetch, ``cache gc``...) in the cache at ``root``, which this process cannot write."""
    return CacheError(
        f"{doing}: cannot write the cache {root}: it is {why}. Run this where that cache can be written "
        "(where it was made: an image's build stage, the CI job that saves it), or set MODELFIX_CACHE_DIR "
        f"(or --cache-dir) to a folder you can write and pass {root} as a read-only cache "
        "(MODELFIX_READONLY_CACHES or --readonly-cache) to keep using what it holds."
    )


def check(store: Store, key: str, expect: Expected | None = None) -> Snapshot | None:
    """View ``key`` of read-only ``store`` if it is whole and may be served (see the module docstring).

    ``expect`` (from the lockfile's pins) names every file the view must show, with its sha256
    and size; without it the manifest's own record of each is taken. Writes nothing.
    """
    folder = store.view_path(key)
    view = View.read(folder)
    if not view.files:
        return None
    files = []
    try:
        if expect is not None and sorted(f["name"] for f in view.files) != sorted(expect):
            return None
        for item in view.files:
            name, sha = item["name"], item["sha256"]
            wanted, size = expect[name] if expect is not None else (sha, list(item.get("id") or (0, 0, -1))[2])
            path = folder / name
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size or wanted not in (None, sha):
                return None
            if not (_is_blob(store, sha, st) or _hashed(store, sha, path, identity_of(st))):
                return None
            files.append((str(path), identity_of(st)))
    except (OSError, KeyError, TypeError, ValueError, IndexError):
        return None
    return Snapshot(str(folder / MANIFEST), tuple(files), frozenset(f["sha256"] for f in view.files), leased=False)


def _is_blob(store: Store, sha: str, st: os.stat_result) -> bool:
    try:
        blob = os.lstat(store.blob_path(sha))
    except OSError:
        return False
    return stat.S_ISREG(blob.st_mode) and (blob.st_dev, blob.st_ino) == (st.st_dev, st.st_ino)


def _hashed(store: Store, sha: str, path: Path, identity: Identity) -> bool:
    """Are the bytes of ``path`` (identity ``identity``) blob ``sha``? Hashed once per process and identity."""
    key = (str(path), identity, sha)
    known = _HASHED.get(key)
    if known is not None:
        return known
    try:
        fd = safefs.open_regular(path)
    except (OSError, CacheError):
        return False
    if fd is None:
        return False
    try:
        if identity_of(os.fstat(fd)) != identity:
            return False  # it changed between the lstat and the open: not what was asked about
        record = store.memo(sha)
        if record and record.get("xxh3") and record.get("size") == identity[2]:
            ok = hash_fd(fd, sha256=False).xxh3 == record["xxh3"]
        else:
            ok = hash_fd(fd, xxh3=False).sha256 == sha
    finally:
        os.close(fd)
    log.info(
        "modelfix: %s in the read-only cache %s is not linked to its blob (a copy that broke hard links?): "
        "hashed it, %s; this process will not hash it again",
        path.name,
        store.root,
        "its bytes match" if ok else "its bytes DIFFER, not served",
    )
    if len(_HASHED) >= _HASHED_LIMIT:
        _HASHED.clear()
    _HASHED[key] = ok
    return ok

"""Legacy multi-part uploads (``x.gguf.part1of2`` + ``x.gguf.part2of2``), joined into the one file llama.cpp reads.

Each part is pinned and stored as a blob of its own; the view shows the joined file under the
pins' ``join`` name. Joining is done once and remembered under the cache root::

    joins/<key>     the sha256 of the blob joined from parts <key> (sha256 of their shas, in order)

The joined file is written to ``tmp/`` under the key's writer lock, hashed as it is written and
committed like any blob (:meth:`Store.commit`): readers see all of it or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Sequence

from . import safefs
from .errors import CacheError
from .hashing import Digest, sha256_text
from .safefs import writing
from .store import Store

__all__ = ["joined", "join"]


def joined(store: Store, parts: Sequence[str], *, check: bool = True) -> str | None:
    """The blob :func:`join` made from ``parts``, if it was made and is still in ``store`` (and,
    with ``check``, still the bytes verified; ``verify`` hashes it itself, to report it)."""
    with contextlib.suppress(OSError, ValueError, CacheError):
        sha = (safefs.read_small(store.root / "joins" / _key(parts), 256) or b"").decode().strip()
        return sha if sha and (store.check(sha) if check else store.has(sha)) else None
    return None


def join(store: Store, parts: Sequence[str], cancel: threading.Event | None = None) -> str:
    """The blob of ``parts`` (blobs of ``store``) concatenated in order (made once, then remembered)."""
    if sha := joined(store, parts):
        return sha
    key = _key(parts)
    record = store.root / "joins" / key
    with store.writer(key, cancel or threading.Event()):
        staged = store.staged(key, "join")
        try:
            digest = Digest()
            with writing(staged), os.fdopen(safefs.create(staged), "wb") as out:
                for part in parts:
                    fd = safefs.open_regular(store.blob_path(part))
                    if fd is None:
                        raise FileNotFoundError(errno.ENOENT, "a part is missing", str(store.blob_path(part)))
                    with os.fdopen(fd, "rb") as src:
                        while chunk := src.read(8 * 1024 * 1024):
                            out.write(chunk)
                            digest.update(chunk)
            result = digest.result()
            sha = str(result.sha256)
            if not store.has(sha):
                store.commit(sha, staged, result)
        finally:
            staged.unlink(missing_ok=True)
        store.folder("joins")
        with writing(record):
            safefs.replace(record, sha.encode())
        return sha


def _key(parts: Sequence[str]) -> str:
    return sha256_text("join\n" + "\n".join(parts))

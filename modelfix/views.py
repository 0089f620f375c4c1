"""Views: a model's files under their pinned names, each a link to a blob of the store.

Under the cache root::

    views/<content_key>/             one folder per distinct set of pins
        .modelfix.json               manifest: {"files": [{name, sha256, how, id}], "models": [...],
                                     "revision": "<commit>" | null}
        model-00001-of-00002.gguf    hard links (else symlinks, else copies) under
        model-00002-of-00002.gguf    the pinned names: split siblings side by side
    views/.tmp-<key>-<rand>/         a view being built, renamed into place once whole
    views/.old-<key>-<rand>/         a view being replaced (gc removes those a crash left)

``id`` is the (device, inode, size, mtime_ns, ctime_ns) of each file once the view was linked:
while every file still has it, the view is whole and shows the bytes that were verified,
which :meth:`View.snapshot` checks with one stat per file and no hashing. The ctime is in it
because a file's owner can rewrite its bytes and set the mtime back, but cannot set the ctime.
Linking or unlinking a blob elsewhere (another view, an eviction) moves its ctime too; a file
whose identity moved only by its ctime is re-hashed once against what the store verified and
its new identity recorded (:meth:`View.check`), never relinked, so views sharing a blob do not
rebuild each other. A manifest of an older modelfix (ids without a ctime) is re-checked the
same way, once.

The first look at a view in a process (:meth:`View.check`) also makes sure each file *is* its
blob: the same inode as ``blobs/…`` (a hard link), a link to it, or a copy with its bytes. A view
folder that another user planted, of files of their own with a manifest that matches them, is
not served. The :class:`Snapshot` it returns repeats the identity check with the stats alone
(no manifest to read and parse), which is what a warm ``path()`` costs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import safefs
from .hashing import Identity, file_identity, identity_of

__all__ = ["MANIFEST", "ViewFile", "View", "Snapshot", "Blobs", "build", "scan", "leftover_key"]

MANIFEST = ".modelfix.json"
_MANIFEST_LIMIT = 16 * 1024 * 1024  # a manifest lists a model's files: kilobytes


@dataclass(frozen=True)
class ViewFile:
    """A file of a view: its name there and the blob it shows."""

    name: str
    sha256: str


class Blobs(Protocol):
    """What checking a view needs of the store."""

    def blob_path(self, sha: str) -> Path: ...

    def rehash(self, sha: str, fd: int, *, is_blob: bool) -> bool:
        """Are the bytes open at ``fd`` those verified as blob ``sha``? (``is_blob``: the same
        inode as the blob, whose new identity the store then records.)"""

    def relink(self, sha: str, source: Path) -> Identity | None:
        """Put missing blob ``sha`` back from the view file ``source`` once its bytes are checked."""


@dataclass(frozen=True)
class View:
    """A folder under ``views/`` and what its manifest says (no files if it cannot be read)."""

    path: Path
    files: tuple[dict[str, Any], ...] = ()
    models: tuple[str, ...] = ()
    revision: str | None = None

    @classmethod
    def read(cls, path: Path) -> View:
        """The view at ``path``; one with no files if it is not a folder (a link is not followed)
        or its manifest cannot be read."""
        try:
            folder = safefs.open_folder(path)
        except OSError:
            return cls(path)
        try:
            manifest = json.loads(safefs.read_small(MANIFEST, _MANIFEST_LIMIT, dir_fd=folder) or b"")
            files = tuple(manifest["files"])
            if not all(isinstance(f, dict) and {"name", "sha256"} <= f.keys() for f in files):
                return cls(path)
            revision = manifest.get("revision")
            return cls(path, files, tuple(manifest.get("models", [])), revision if isinstance(revision, str) else None)
        except (OSError, ValueError, KeyError, TypeError):
            return cls(path)
        finally:
            os.close(folder)

    @property
    def shas(self) -> set[str]:
        return {f["sha256"] for f in self.files}

    def snapshot(self) -> Snapshot | None:
        """The view as it is now if it is whole (every file still the one linked); else None."""
        seen = self._snapshot([f.get("id") for f in self.files])
        return seen if seen is not None and seen.unchanged() else None

    def _snapshot(self, ids: Sequence[Any]) -> Snapshot | None:
        try:
            files = tuple((str(self.path / f["name"]), tuple(i)) for f, i in zip(self.files, ids, strict=True))
            shas = frozenset(f["sha256"] for f in self.files)
        except (KeyError, TypeError):
            return None
        return Snapshot(str(self.path / MANIFEST), files, shas) if files else None

    def check(self, blobs: Blobs) -> Snapshot | None:
        """The view as it is now if each file is still its blob's verified bytes; else None.

        A file whose identity moved by its ctime alone (or that an older modelfix recorded
        without one) is re-hashed and its new identity written back; a blob deleted from under a
        hard-linked view is put back from it (checked first). Anything else that differs makes
        the view not whole, to be rebuilt from the blobs.
        """
        ids: list[Identity] = []
        moved = False
        try:
            for item in self.files:
                path, how, sha = self.path / item["name"], item.get("how"), item["sha256"]
                st = os.stat(path) if how == "symlink" else os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    return None
                now = identity_of(st)
                recorded = list(item.get("id") or ())
                if list(now) != recorded or how == "copy":
                    if list(now[:4]) != recorded[:4] or not self._rehash(blobs, path, how, sha, now):
                        return None
                    moved = moved or list(now) != recorded
                shown = self._is_blob(blobs, path, how, sha, st, now)
                if shown is None:
                    return None
                moved = moved or shown != now
                ids.append(shown)
        except (OSError, KeyError, TypeError):
            return None
        if moved:
            self._record(ids)
        return self._snapshot(ids)

    @staticmethod
    def _rehash(blobs: Blobs, path: Path, how: Any, sha: str, now: Identity) -> bool:
        flags = os.O_RDONLY | (0 if how == "symlink" else getattr(os, "O_NOFOLLOW", 0))
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
        try:
            # A hard link or a symlink is the blob's own inode: its new identity is the blob's too.
            return identity_of(os.fstat(fd)) == now and blobs.rehash(sha, fd, is_blob=how != "copy")
        finally:
            os.close(fd)

    @staticmethod
    def _is_blob(blobs: Blobs, path: Path, how: Any, sha: str, st: os.stat_result, now: Identity) -> Identity | None:
        """The identity of the file at ``path`` (stat ``st``, identity ``now``) if it shows blob
        ``sha``: ``now``, or its new one if the blob was missing and is back. None if it does not."""
        blob = blobs.blob_path(sha)
        if how == "copy":
            return now  # its bytes were just hashed against the blob's
        if how == "symlink":
            return now if os.readlink(path) == str(blob) and stat.S_ISREG(os.lstat(blob).st_mode) else None
        if how != "hardlink":
            return None
        try:
            kept = os.lstat(blob)
        except FileNotFoundError:
            return blobs.relink(sha, path)
        return now if stat.S_ISREG(kept.st_mode) and (kept.st_dev, kept.st_ino) == (st.st_dev, st.st_ino) else None

    def _record(self, ids: Sequence[Identity]) -> None:
        """Write the files' new identities into the manifest (best effort: a read-only cache re-checks next time)."""
        files = [{**item, "id": list(i)} for item, i in zip(self.files, ids, strict=True)]
        data = json.dumps({"files": files, "models": list(self.models), "revision": self.revision}, indent=1)
        with contextlib.suppress(OSError):
            safefs.replace(self.path / MANIFEST, data.encode())

    def last_used(self) -> float | None:
        """When a process last used the view (its manifest's mtime); None if it is gone."""
        try:
            return os.lstat(self.path / MANIFEST).st_mtime
        except OSError:
            return None


@dataclass(frozen=True)
class Snapshot:
    """A whole view as :meth:`View.check` found it: each file's path and identity, the blobs shown.

    ``leased`` is False for a view of a cache this process cannot write (:mod:`modelfix.layers`):
    it takes no lease there, and its identities are those the files had when first checked.
    """

    manifest: str
    files: tuple[tuple[str, tuple[int, ...]], ...]
    shas: frozenset[str]
    leased: bool = True

    def unchanged(self) -> bool:
        """Does every file still have its identity? One stat each; no pathlib, no manifest."""
        try:
            for path, ident in self.files:
                if file_identity(path) != ident:
                    return False
        except OSError:
            return False
        return True


def scan(folder: Path) -> Iterator[View]:
    """Every view under ``folder`` (``<root>/views``), leaving out those being built or replaced
    and anything that is not a folder (a link planted there is not followed)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                yield View.read(Path(entry.path))


def leftover_key(name: str) -> str | None:
    """The view key in the name of a ``.tmp-``/``.old-`` folder under ``views/`` (None for older names)."""
    parts = name.split("-")
    return parts[1] if len(parts) == 3 and len(parts[1]) == 64 else None


def build(
    final: Path,
    files: Sequence[ViewFile],
    model: str,
    blob_path: Callable[[str], Path],
    revision: str | None = None,
) -> None:
    """Make view ``final`` show ``files`` (replacing what is there), used by ``model`` and those before.

    Built beside it from new links and renamed into place: a reader sees the old view or the
    new one, whole. Nothing is ever written through an existing file: a name already taken in
    the folder being built (which the lockfile's checks rule out) is an error, not a copy into
    it. The caller holds the view's writer lock; OSErrors are its to explain.
    """
    staging = final.with_name(f".tmp-{final.name}-{os.urandom(4).hex()}")
    try:
        staging.mkdir()
        hows = []
        for item in files:
            target = staging / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            hows.append(_link(blob_path(item.sha256), target))
        # Identities are taken once every link is made: a second link to one blob moves its ctime.
        entries = [
            {"name": item.name, "sha256": item.sha256, "how": how, "id": list(file_identity(staging / item.name))}
            for item, how in zip(files, hows, strict=True)
        ]
        models = sorted({model, *View.read(final).models})
        manifest = json.dumps({"files": entries, "models": models, "revision": revision}, indent=1).encode()
        with os.fdopen(safefs.create(staging / MANIFEST), "wb") as out:
            out.write(manifest)
        if os.path.lexists(final):
            old = final.with_name(f".old-{final.name}-{os.urandom(4).hex()}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, old)  # a link there is renamed itself, never followed
                remove_tree(old)
        os.rename(staging, final)
    finally:
        remove_tree(staging)


def remove_tree(path: Path) -> None:
    """Delete folder ``path`` and what is in it, or the link ``path`` is; never follows a link."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)  # removes links inside, never their targets
        else:
            os.unlink(path)


def _link(blob: Path, target: Path) -> str:
    """Show ``blob`` at the new name ``target``: hard link, else symlink, else copy. Returns which."""
    if not stat.S_ISREG(os.lstat(blob).st_mode):
        raise safefs.planted(blob, "not a regular file")
    try:
        os.link(blob, target)
        return "hardlink"
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
    try:
        os.symlink(blob, target)
        return "symlink"
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
    out = safefs.create(target)
    try:
        with open(blob, "rb") as src, os.fdopen(out, "wb", closefd=False) as dst:
            shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
        os.fchmod(out, 0o444 & ~safefs.umask())
    finally:
        os.close(out)
    return "copy"

"""Views: a model's files under their pinned names, each a link to a blob of the store.

Under the cache root::

    views/<content_key>/             one folder per distinct set of pins
        .modelfix.json               manifest: {"files": [{name, sha256, how, id}], "models": [...]}
        model-00001-of-00002.gguf    hard links (else symlinks, else copies) under
        model-00002-of-00002.gguf    the pinned names: split siblings side by side
    views/.tmp-<rand>/               a view being built, renamed into place once whole
    views/.old-<rand>/               a view being replaced

``id`` is the (device, inode, size, mtime_ns) of each file as it was linked:
while every file still has it, the view is whole and shows the bytes that were
verified, which :meth:`View.snapshot` checks with one stat per file and no
hashing. The :class:`Snapshot` it returns repeats that check with the stats
alone (no manifest to read and parse), which is what a warm ``path()`` costs.
The manifest's mtime is the view's last use, for eviction.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hashing import file_identity

__all__ = ["MANIFEST", "ViewFile", "View", "Snapshot", "build", "scan"]

MANIFEST = ".modelfix.json"


@dataclass(frozen=True)
class ViewFile:
    """A file of a view: its name there and the blob it shows."""

    name: str
    sha256: str


@dataclass(frozen=True)
class View:
    """A folder under ``views/`` and what its manifest says (no files if it cannot be read)."""

    path: Path
    files: tuple[dict[str, Any], ...] = ()
    models: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: Path) -> View:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            files = tuple(manifest["files"])
            if not all(isinstance(f, dict) and {"name", "sha256"} <= f.keys() for f in files):
                return cls(path)
            return cls(path, files, tuple(manifest.get("models", [])))
        except (OSError, ValueError, KeyError, TypeError):
            return cls(path)

    @property
    def shas(self) -> set[str]:
        return {f["sha256"] for f in self.files}

    def snapshot(self) -> Snapshot | None:
        """The view as it is now if it is whole (every file still the one linked); else None."""
        try:
            files = tuple((str(self.path / f["name"]), tuple(f["id"])) for f in self.files)
            shas = frozenset(f["sha256"] for f in self.files)
        except (KeyError, TypeError):
            return None
        seen = Snapshot(str(self.path / MANIFEST), files, shas)
        return seen if files and seen.unchanged() else None

    def last_used(self) -> float | None:
        """When a process last used the view (its manifest's mtime); None if it is gone."""
        try:
            return (self.path / MANIFEST).stat().st_mtime
        except OSError:
            return None


@dataclass(frozen=True)
class Snapshot:
    """A whole view as :meth:`View.snapshot` found it: each file's path and identity, the blobs shown."""

    manifest: str
    files: tuple[tuple[str, tuple[int, ...]], ...]
    shas: frozenset[str]

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
    """Every view under ``folder`` (``<root>/views``), leaving out those being built or replaced."""
    for path in folder.iterdir() if folder.is_dir() else ():
        if not path.name.startswith("."):
            yield View.read(path)


def build(final: Path, files: Sequence[ViewFile], model: str, blob_path: Callable[[str], Path]) -> None:
    """Make view ``final`` show ``files`` (replacing what is there), used by ``model`` and those before.

    Built beside it and renamed into place: a reader sees the old view or the
    new one, whole. The caller holds the view's writer lock; OSErrors are its to explain.
    """
    staging = final.with_name(f".tmp-{uuid.uuid4().hex}")
    try:
        staging.mkdir()
        entries = []
        for item in files:
            target = staging / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            how = _link(blob_path(item.sha256), target)
            entries.append({"name": item.name, "sha256": item.sha256, "how": how, "id": list(file_identity(target))})
        models = sorted({model, *View.read(final).models})
        (staging / MANIFEST).write_text(json.dumps({"files": entries, "models": models}, indent=1))
        if final.exists():
            old = final.with_name(f".old-{uuid.uuid4().hex}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _link(blob: Path, target: Path) -> str:
    """Show ``blob`` at ``target``: hard link, else symlink, else copy. Returns which."""
    try:
        os.link(blob, target)
        return "hardlink"
    except OSError:
        pass
    try:
        os.symlink(blob, target)
        return "symlink"
    except OSError:
        pass
    shutil.copyfile(blob, target)
    os.chmod(target, 0o444)
    return "copy"

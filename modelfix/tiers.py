"""Where bytes come from besides the store and the origin: read-only caches, other local caches, the remote tier.

* **Read-only caches** (``MODELFIX_READONLY_CACHES``, see :mod:`modelfix.layers`): a model
  whose view is whole in one is served from there; a blob one holds is copied into the store
  and verified (:func:`adopt` with ``link=False``). :func:`stores` lists them with the store.
* **Other caches**: huggingface_hub's and llama.cpp's downloads may already hold a
  pinned file; :func:`adoption_candidates` names where to look, and :func:`adopt`
  verifies what it finds and links it into the store (or copies it: another user's file).
* **The remote tier** (``MODELFIX_REMOTE``): content-addressed like the store,
  so any runner can fill it (:func:`upload`, what ``modelfix push`` does after a sync) and
  none has to trust it::

      <remote>/blobs/sha256/<sha256>

:mod:`modelfix.obtain` tries them in that order before the origin.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from . import safefs
from .errors import CacheError, OfflineError, redact
from .hashing import hash_fd
from .store import Store

if TYPE_CHECKING:
    from .config import CacheSettings
    from .lockfile import Entry

__all__ = ["stores", "adoption_candidates", "adopt", "remote_url", "Pushed", "check_pushable", "upload"]

log = logging.getLogger("modelfix")


def stores(cache: CacheSettings, *, writable: bool = True) -> list[Store]:
    """The read-only caches of ``cache`` in order, then (with ``writable``) its store: where a pinned file may be."""
    found = [Store(layer, layer=True) for layer in cache.layers]
    return [*found, Store(cache.root)] if writable else found


def adoption_candidates(
    sha: str, *, repo: str | None = None, filename: str | None = None, revision: str | None = None
) -> list[Path]:
    """Files in huggingface_hub's and llama.cpp's caches that may hold blob ``sha``.

    huggingface_hub keeps LFS files as ``models--ORG--REPO/blobs/<sha256>``,
    but small plain git files (``preset.ini``) under their git sha1, so those
    are found through ``snapshots/<revision>/<filename>``; llama.cpp names its
    downloads ``ORG_REPO_FILE`` (and newer builds use the Hub's layout too).
    Candidates are only guesses: the store verifies them (and links only its own user's files).
    """
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    roots = [Path(os.environ.get("HF_HUB_CACHE") or os.path.join(hf_home, "hub"))]
    llama = os.environ.get("LLAMA_CACHE")
    if not llama:
        import platformdirs

        llama = platformdirs.user_cache_dir("llama.cpp", appauthor=False)
    roots.append(Path(llama))
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        if repo:
            found.append(root / f"models--{repo.replace('/', '--')}" / "blobs" / sha)
            if revision and filename:
                found.append(root / f"models--{repo.replace('/', '--')}" / "snapshots" / revision / filename)
        else:
            found.extend(root.glob(f"models--*/blobs/{sha}"))
    if repo and filename:
        found.append(Path(llama) / f"{repo.replace('/', '_')}_{filename.replace('/', '_')}")
    # os.path.isfile, not Path.is_file: a flattened llama.cpp name may be too long for the file
    # system (ENAMETOOLONG), which is only "not there".
    return [p for p in dict.fromkeys(found) if os.path.isfile(p)]


def adopt(store: Store, sha: str, size: int, candidate: Path, *, link: bool = True) -> bool:
    """Take a verified copy of ``candidate`` (another cache's file) as blob ``sha`` of ``store``.

    A hard link costs no space; it also makes the other cache's file
    read-only, which neither huggingface_hub nor llama.cpp minds (they
    only ever replace files, never write into them). Only a file of this
    user (or root) is linked: another user could rewrite a linked file
    later, under the identity this store trusts. Anyone else's is copied,
    and so is every file when not ``link`` (a read-only cache's: a link
    would change its mode, a write there).
    """
    try:
        # A snapshot entry is a relative symlink to the other cache's blob; Linux's link()
        # would link the symlink itself, which points nowhere from here.
        candidate = candidate.resolve(strict=True)
        st = candidate.stat()
    except (OSError, RuntimeError):
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    staged = store.staged(sha, "adopt")
    try:
        linked = False
        if link and st.st_uid in (os.geteuid(), 0):
            with contextlib.suppress(OSError):
                os.link(candidate, staged)
                linked = True
        if not linked:
            _copy_new(candidate, staged)
        fd = safefs.open_regular(staged)
        assert fd is not None
        try:
            result = hash_fd(fd)
        finally:
            os.close(fd)
        if result.sha256 != sha:
            log.warning("%s looked like blob %s but its bytes differ; not adopting it", candidate, sha[:12])
            return False
        store.commit(sha, staged, result)
        log.info("adopted %s from %s (%s)", sha[:12], candidate, "linked" if linked else "copied")
        return True
    except (OSError, CacheError) as exc:
        log.info("could not adopt %s: %s", candidate, exc)
        return False
    finally:
        staged.unlink(missing_ok=True)


def _copy_new(source: Path, target: Path) -> None:
    """Copy ``source`` into the new file ``target`` (never into an existing one)."""
    with open(source, "rb") as src, os.fdopen(safefs.create(target), "wb") as out:
        shutil.copyfileobj(src, out, 8 * 1024 * 1024)


def remote_url(remote: str, sha: str) -> str:
    """Where blob ``sha`` lives in the remote tier at ``remote``."""
    return f"{remote.rstrip('/')}/blobs/sha256/{sha}"


class Pushed(NamedTuple):
    """One pinned file of a ``push``: ``uploaded``, or ``present`` (already in the remote tier)."""

    model: str
    file: str
    status: str


def check_pushable(cache: CacheSettings) -> str:
    """The remote tier of ``cache``, if ``push`` may write there; else the error that says why."""
    import fsspec

    if not cache.remote:
        raise CacheError(
            "no remote tier to push to: set MODELFIX_REMOTE to an fsspec URL "
            "(s3://bucket/models, /mnt/team/models, ...)."
        )
    if cache.offline:
        raise OfflineError("offline mode is on: `modelfix push` needs the network. Turn offline mode off.")
    if fsspec.utils.get_protocol(cache.remote) in ("http", "https"):
        raise CacheError(
            f"MODELFIX_REMOTE={cache.remote} is read-only over HTTP: `modelfix push` to the storage "
            "behind it instead (MODELFIX_REMOTE=s3://bucket/models, a mounted folder, ...)."
        )
    return cache.remote


def upload(entries: Sequence[Entry], cache: CacheSettings, *, force: bool = False) -> list[Pushed]:
    """Upload the pinned blobs of ``entries`` (all in the store or a read-only cache already) to the
    remote tier, skipping those already there.

    A copy of the right size is taken as present (checking its bytes means downloading it);
    ``force`` uploads every file again, which repairs a corrupt copy that ``sync`` reported.
    """
    import fsspec

    remote = check_pushable(cache)
    where = stores(cache)  # a model served from a read-only cache is uploaded from there
    fs, _ = fsspec.core.url_to_fs(remote)
    report: list[Pushed] = []
    done: set[str] = set()
    for entry in entries:
        for pin in entry.files:
            if pin.sha256 in done:
                report.append(Pushed(entry.name, pin.path, "present"))
                continue
            done.add(pin.sha256)
            _, target = fsspec.core.url_to_fs(remote_url(remote, pin.sha256))
            try:
                if not force and fs.exists(target) and fs.size(target) == pin.size:
                    report.append(Pushed(entry.name, pin.path, "present"))
                    continue
                # Upload beside, then rename: readers of the remote never see half a blob
                # (they would reject it by its hash anyway).
                staging = f"{target}.tmp-{os.urandom(4).hex()}"
                fs.makedirs(os.path.dirname(target), exist_ok=True)
                source = next((s.blob_path(pin.sha256) for s in where if s.has(pin.sha256)), None)
                fs.put_file(str(source or where[-1].blob_path(pin.sha256)), staging)
                fs.mv(staging, target)
            except Exception as exc:  # each fsspec backend raises its own kind (aiohttp, botocore, gcsfs ...)
                raise CacheError(
                    f"{entry.name}: cannot upload {pin.path} to {remote}: {type(exc).__name__}: "
                    f"{redact(str(exc))}. Check that "
                    "MODELFIX_REMOTE points where your credentials may write, then run `modelfix push` again.",
                    model=entry.name,
                    file=pin.path,
                ) from None
            report.append(Pushed(entry.name, pin.path, "uploaded"))
    return report

"""Where bytes come from besides the store and the origin: other local caches and the remote tier.

* **Other caches**: huggingface_hub's and llama.cpp's downloads may already hold a
  pinned file; :func:`adoption_candidates` names where to look, and the store
  verifies and links in what it finds (:meth:`~modelfix.store.Store.adopt`).
* **The remote tier** (``MODELFIX_REMOTE``): content-addressed like the store,
  so any runner can fill it (:func:`push`) and none has to trust it::

      <remote>/blobs/sha256/<sha256>

:mod:`modelfix.resolver` tries them in that order before the origin, and
re-exports these functions.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .config import CacheSettings
from .errors import CacheError, OfflineError, redact
from .store import Store

if TYPE_CHECKING:
    from .resolver import LockLike

__all__ = ["adoption_candidates", "remote_url", "push"]


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


def remote_url(remote: str, sha: str) -> str:
    """Where blob ``sha`` lives in the remote tier at ``remote``."""
    return f"{remote.rstrip('/')}/blobs/sha256/{sha}"


def push(
    names: Sequence[str] | None = None,
    lock: LockLike = None,
    *,
    settings: CacheSettings | None = None,
    force: bool = False,
) -> list[tuple[str, str, str]]:
    """Upload the pinned blobs of ``names`` to the remote tier, skipping those already there.

    Returns (model, file, "uploaded" | "present") per pinned file. Fetches
    into the local store first what it lacks. A copy of the right size is
    taken as present (checking its bytes means downloading it); ``force``
    uploads every file again, which repairs a corrupt copy that ``sync``
    reported.
    """
    import fsspec

    from .resolver import sync

    settings = settings or CacheSettings.resolve()
    if not settings.remote:
        raise CacheError(
            "no remote tier to push to: set MODELFIX_REMOTE to an fsspec URL (s3://bucket/models, /mnt/team/models, ...)."
        )
    if settings.offline:
        raise OfflineError("offline mode is on: `modelfix push` needs the network. Turn offline mode off.")
    if fsspec.utils.get_protocol(settings.remote) in ("http", "https"):
        raise CacheError(
            f"MODELFIX_REMOTE={settings.remote} is read-only over HTTP: `modelfix push` to the storage "
            "behind it instead (MODELFIX_REMOTE=s3://bucket/models, a mounted folder, ...)."
        )
    materialized = sync(names, lock, settings=settings)
    store = Store(settings.root)
    fs, _ = fsspec.core.url_to_fs(settings.remote)
    report, done = [], set()
    for item in materialized:
        for pin in item.entry.files:
            if pin.sha256 in done:
                report.append((item.name, pin.path, "present"))
                continue
            done.add(pin.sha256)
            _, target = fsspec.core.url_to_fs(remote_url(settings.remote, pin.sha256))
            try:
                if not force and fs.exists(target) and fs.size(target) == pin.size:
                    report.append((item.name, pin.path, "present"))
                    continue
                # Upload beside, then rename: readers of the remote never see half a blob
                # (they would reject it by its hash anyway).
                staging = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
                fs.makedirs(os.path.dirname(target), exist_ok=True)
                fs.put_file(str(store.blob_path(pin.sha256)), staging)
                fs.mv(staging, target)
            except Exception as exc:  # each fsspec backend raises its own kind (aiohttp, botocore, gcsfs ...)
                raise CacheError(
                    f"{item.name}: cannot upload {pin.path} to {settings.remote}: {type(exc).__name__}: "
                    f"{redact(str(exc))}. Check that "
                    "MODELFIX_REMOTE points where your credentials may write, then run `modelfix push` again."
                ) from None
            report.append((item.name, pin.path, "uploaded"))
    return report

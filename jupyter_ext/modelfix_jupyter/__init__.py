"""modelfix's notebook front end: ``%load_ext modelfix_jupyter`` (or ``modelfix``).

Modules: :mod:`.magics` (the magics and their load/unload), :mod:`.progress`
(event stream → widgets or text lines), :mod:`.render` (HTML tables for
handles, entries and ``%models``), :mod:`.errors` (one-line ModelfixError
display) and :mod:`.run` (execute a notebook headless:
``python -m modelfix_jupyter.run NOTEBOOK``).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension", "run_notebook"]


def load_ipython_extension(ipython: Any) -> None:
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload

    unload(ipython)


def run_notebook(path: str | os.PathLike[str], **options: Any) -> Any:
    """Execute a notebook in a fresh kernel; see :func:`modelfix_jupyter.run.run_notebook`."""
    from .run import run_notebook as run

    return run(path, **options)

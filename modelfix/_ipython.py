"""``%load_ext modelfix``: hands the notebook over to the modelfix-jupyter package.

The magics live in their own distribution (``modelfix-jupyter``, import ``modelfix_jupyter``),
which carries IPython and ipywidgets, so that test-suite users never install them. This shim
is what lets a notebook say ``%load_ext modelfix`` all the same, and names the package to
install where it is missing. ``modelfix`` names it lazily: the core never imports it.
"""

from __future__ import annotations

from typing import Any

from .errors import _NotebookPackageMissing

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext modelfix``: hands over to the modelfix-jupyter package."""
    try:
        import modelfix_jupyter
    except ImportError:
        raise _NotebookPackageMissing(
            "the notebook magics live in the modelfix-jupyter package: "
            "`pip install modelfix-jupyter` (or `pip install -e jupyter_ext` from a checkout), "
            "then `%load_ext modelfix` again."
        ) from None
    modelfix_jupyter.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext modelfix``."""
    try:
        import modelfix_jupyter
    except ImportError:
        return
    modelfix_jupyter.unload_ipython_extension(ipython)

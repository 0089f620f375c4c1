"""modelfix: the same llama.cpp model, byte for byte, on every machine, fast.

Public API (imported lazily, so ``import modelfix`` stays cheap)::

    modelfix.path(name, lock=None) -> Path            first model file, fetched if missing
    modelfix.files(name, lock=None) -> Materialized   every file of the entry, in its view
    modelfix.sync(names=None, lock=None)              fetch and verify what the lockfile pins
    modelfix.load(name, lock=None, **settings)        a ready llama_cpp.Llama from the shared pool
    modelfix.unload(name_or_handle), modelfix.loaded(), modelfix.preload(names)
    modelfix.use(name) -> context manager: the real Llama, never evicted inside the block
    modelfix.configure(strategy=, memory_budget=, keep_alive=, max_count=)
    modelfix.reset_handle(llm, seed)                  clear the KV cache and reseed (per test)
    modelfix.route(text, lock=None) -> name           pick a model by the lockfile's [routing]
    modelfix.pool_metrics() -> dict
    modelfix.snapshot(name_or_path, lock=None)        record or compare values against a snapshot file:
                                                      .check(name, llm, value) (see modelfix.snapshots)

Errors are :class:`modelfix.errors.ModelfixError` subclasses.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    AuthError,
    BackendError,
    CacheError,
    IntegrityError,
    LockError,
    MemoryBudgetError,
    ModelfixError,
    NetworkError,
    OfflineError,
    SettingsError,
    SnapshotError,
    SourceError,
)

__version__ = "0.1.0"

_LAZY = {
    "path": "modelfix.resolver",
    "files": "modelfix.resolver",
    "sync": "modelfix.resolver",
    "verify": "modelfix.resolver",
    "Materialized": "modelfix.resolver",
    "load": "modelfix.pool",
    "unload": "modelfix.pool",
    "loaded": "modelfix.pool",
    "preload": "modelfix.pool",
    "pool_metrics": "modelfix.pool",
    "use": "modelfix.pool",
    "configure": "modelfix.pool",
    "reset_handle": "modelfix.pool",
    "route": "modelfix.routing",
    "Lockfile": "modelfix.lockfile",
    "snapshot": "modelfix.snapshots",
    "SnapshotMismatch": "modelfix.snapshots",
}

__all__ = [
    *_LAZY,
    "ModelfixError",
    "LockError",
    "SourceError",
    "AuthError",
    "NetworkError",
    "IntegrityError",
    "CacheError",
    "OfflineError",
    "SettingsError",
    "MemoryBudgetError",
    "BackendError",
    "SnapshotError",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelfix' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(module), name)  # later lookups skip this hook
    return value


class _NotebookPackageMissing(ModelfixError):
    """Shown by IPython as one line (its ``_render_traceback_`` protocol), not a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"ModelfixError: {self}"]


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
    try:
        import modelfix_jupyter
    except ImportError:
        return
    modelfix_jupyter.unload_ipython_extension(ipython)

"""modelfix: the same llama.cpp model, byte for byte, on every machine, fast.

Public API (imported lazily, so ``import modelfix`` stays cheap)::

    modelfix.Project(lock=None, *, cache_dir=, offline=, max_size=, remote=, readonly_caches=,
                     pool=, load_options=)     a lockfile and where its models are cached and
                                                loaded: every call below is a method of one
    modelfix.path(name, lock=None) -> Path            first model file, fetched if missing
    modelfix.files(name, lock=None) -> Materialized   every file of the entry, in its view
    modelfix.sync(names=None, lock=None)              fetch and verify what the lockfile pins
    modelfix.verify(names=None, lock=None, full=False) -> [Problem]
    modelfix.push(names=None, lock=None)              upload the pinned files to the remote tier
    modelfix.load(name, lock=None, **settings)        a ready llama_cpp.Llama from the shared pool
    modelfix.unload(name_or_handle), modelfix.loaded(), modelfix.preload(names)
    modelfix.use(name) -> context manager: the real Llama, never evicted inside the block
    modelfix.configure(strategy=, memory_budget=, keep_alive=, max_count=)
    modelfix.reset_handle(llm, seed)                  clear the KV cache and reseed (per test)
    modelfix.route(text, lock=None) -> name           pick a model by the lockfile's [routing]
    modelfix.pool_metrics() -> PoolMetrics
    modelfix.snapshot(name_or_path, lock=None)        record or compare values against a snapshot file:
                                                      .check(name, llm, value) (see modelfix.snapshots)

The module-level calls use one default :class:`Project` per ``lock`` argument
(:func:`modelfix.project.default_project`). Errors are :class:`ModelfixError`
subclasses (the tree: :mod:`modelfix.errors`), all importable from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AuthError,
    BackendError,
    CacheError,
    Cancelled,
    IntegrityError,
    LockError,
    MemoryBudgetError,
    ModelfixError,
    NetworkError,
    OfflineError,
    PlantedError,
    SettingsError,
    SnapshotError,
    SnapshotMismatch,
    SourceError,
    SourceMissing,
)

if TYPE_CHECKING:  # what __getattr__ hands out, for type checkers and IDEs (tests check it matches _LAZY)
    from ._ipython import load_ipython_extension, unload_ipython_extension
    from .care import CachedView, GcReport, PruneReport, Removal, Usage
    from .config import CacheSettings
    from .handle import PooledLlama, reset_handle
    from .lockfile import Lockfile
    from .pool import PoolMetrics, Resident, configure, pool_metrics
    from .project import (
        Project,
        default_project,
        files,
        load,
        loaded,
        path,
        preload,
        push,
        route,
        sync,
        unload,
        use,
        verify,
    )
    from .resolver import Materialized, Problem
    from .settings import LoadSettings, PoolSettings
    from .snapshots import Snapshots, snapshot

__version__ = "0.1.0"

_LAZY = {
    "Project": "modelfix.project",
    "default_project": "modelfix.project",
    "path": "modelfix.project",
    "files": "modelfix.project",
    "sync": "modelfix.project",
    "verify": "modelfix.project",
    "push": "modelfix.project",
    "load": "modelfix.project",
    "use": "modelfix.project",
    "preload": "modelfix.project",
    "unload": "modelfix.project",
    "loaded": "modelfix.project",
    "route": "modelfix.project",
    "Materialized": "modelfix.resolver",
    "Problem": "modelfix.resolver",
    "configure": "modelfix.pool",
    "pool_metrics": "modelfix.pool",
    "Resident": "modelfix.pool",
    "PoolMetrics": "modelfix.pool",
    "PooledLlama": "modelfix.handle",
    "reset_handle": "modelfix.handle",
    "LoadSettings": "modelfix.settings",
    "PoolSettings": "modelfix.settings",
    "CacheSettings": "modelfix.config",
    "Usage": "modelfix.care",
    "CachedView": "modelfix.care",
    "GcReport": "modelfix.care",
    "PruneReport": "modelfix.care",
    "Removal": "modelfix.care",
    "Lockfile": "modelfix.lockfile",
    "snapshot": "modelfix.snapshots",
    "Snapshots": "modelfix.snapshots",
    # `%load_ext modelfix`: a front end of its own (the notebook package's), named here only
    "load_ipython_extension": "modelfix._ipython",
    "unload_ipython_extension": "modelfix._ipython",
}

__all__ = [
    # the API (lazy)
    "Project",
    "default_project",
    "path",
    "files",
    "sync",
    "verify",
    "push",
    "load",
    "use",
    "preload",
    "unload",
    "loaded",
    "route",
    "configure",
    "pool_metrics",
    "reset_handle",
    "snapshot",
    # what it returns and takes (lazy)
    "Materialized",
    "Problem",
    "Lockfile",
    "CacheSettings",
    "LoadSettings",
    "PoolSettings",
    "PooledLlama",
    "Resident",
    "PoolMetrics",
    "Usage",
    "CachedView",
    "GcReport",
    "PruneReport",
    "Removal",
    "Snapshots",
    # what it raises (see modelfix.errors)
    "ModelfixError",
    "LockError",
    "SourceError",
    "AuthError",
    "SourceMissing",
    "NetworkError",
    "IntegrityError",
    "CacheError",
    "PlantedError",
    "OfflineError",
    "Cancelled",
    "SettingsError",
    "MemoryBudgetError",
    "BackendError",
    "SnapshotError",
    "SnapshotMismatch",
    # `%load_ext modelfix` (lazy)
    "load_ipython_extension",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelfix' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(module), name)  # later lookups skip this hook
    return value

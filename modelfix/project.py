"""``modelfix.Project``: one lockfile, its cache settings, the store and the pool, as the front ends share them.

::

    Project(lock=None, *, cache_dir=None, offline=None, max_size=None, remote=None,
            readonly_caches=None, pool=None, load_options=None, load_defaults=None)
     ├── lockfile          the Lockfile; re-read when the file changes
     ├── cache_settings    CacheSettings: the arguments, then MODELFIX_* variables, then defaults
     ├── store, stores()   the writable store; the read-only caches in front of it, then the store
     ├── pool              the process-wide pool (one memory budget per process), or the one given
     │
     ├── path(name), files(name), sync(names), verify(names), push(names)      the files
     ├── missing(), cached_state(name)
     ├── load(name, **settings), use(name), preload(names), unload(x), loaded(), route(text)
     └── stats(), layer_stats(), prune(), drop_superseded(), gc(), remove(name)  cache care

``lock`` is a path, a :class:`~modelfix.lockfile.Lockfile`, or None: ``MODELFIX_LOCK``, else
the nearest ``model-lock.toml`` upward from the working folder, looked up at each call (so a
None project follows ``chdir``). ``load_options`` are the front end's layer of the load
settings (the pytest plugin's ``--modelfix-gpu-layers``, ``%load_model --n-ctx``): below a
``load()`` call's own settings, above the environment and the lockfile
(:mod:`modelfix.settings`). ``load_defaults`` are the front end's defaults, below the
lockfile: the pytest plugin gives each xdist worker its share of the cores as ``n_threads``.
Settings are read when used, never frozen at construction: what
the caller left None comes from the environment at each call.

What a Project remembers is its own (:meth:`derive` shares it with a variant)::

    lockfile reads    path -> (identity, text, Lockfile)            (modelfix.lockfile.LockfileMemo)
    warm paths        (cache root, read-only caches, lockfile, model)
                        -> (view snapshot, Materialized)              (modelfix.resolver.Resolver)

What is the process's, whatever the Project: the pool and its memory budget
(:func:`modelfix.pool.default_pool`), the leases, the event stream, the backend probe's verdict.

The module-level API wraps one Project per ``lock`` argument (:func:`default_project`), as
``pooch.retrieve()`` wraps ``Pooch.fetch()``: ``modelfix.path(name, lock)`` is
``default_project(lock).path(name)``, and keeps its warm memo from call to call.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, final

from .config import CacheSettings, cache_root, layer_roots
from .errors import LockError
from .lockfile import Entry, FilePin, Lockfile, LockfileMemo, nearest_lockfile
from .resolver import Materialized, Problem, Resolver, cached_state, missing, pinned
from .store import Store
from .tiers import Pushed, check_pushable, stores, upload

if TYPE_CHECKING:
    import llama_cpp

    from . import care
    from .handle import PooledLlama
    from .pool import Pool, Resident

__all__ = [
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
]

PathLike = str | os.PathLike[str]
LockLike = PathLike | Lockfile | None


@final
class Project:
    """A lockfile and where its models are cached and loaded: what the pytest plugin, the notebook
    magics and the CLI each hold one of (see the module docstring)."""

    def __init__(
        self,
        lock: LockLike = None,
        *,
        cache_dir: PathLike | None = None,
        offline: bool | None = None,
        max_size: str | int | float | None = None,
        remote: str | None = None,
        readonly_caches: Sequence[PathLike] | str | None = None,
        pool: Pool | None = None,
        load_options: Mapping[str, Any] | None = None,
        load_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self._args: dict[str, Any] = {
            "lock": lock,
            "cache_dir": cache_dir,
            "offline": offline,
            "max_size": max_size,
            "remote": remote,
            "readonly_caches": readonly_caches,
            "pool": pool,
            "load_options": load_options,
            "load_defaults": load_defaults,
        }
        self._given: Lockfile | None = None
        self._lock: str | None = None
        if isinstance(lock, Lockfile):
            self._given = lock
        elif lock is not None:
            self._lock = os.fspath(lock)
        self._cache_dir = cache_dir
        self._readonly = (
            readonly_caches
            if readonly_caches is None or isinstance(readonly_caches, str)
            else tuple(os.fspath(cache) for cache in readonly_caches)
        )
        self._pool = pool
        self.load_options: Mapping[str, Any] = MappingProxyType(dict(load_options or {}))
        self.load_defaults: Mapping[str, Any] = MappingProxyType(dict(load_defaults or {}))
        self._locks = LockfileMemo()
        self._resolver = Resolver()

    def derive(self, **changes: Any) -> Project:
        """A Project like this one with some constructor arguments changed (``offline=True``,
        ``load_options={...}``), sharing this one's memos: its lockfile reads and warm paths."""
        derived = Project(**{**self._args, **changes})
        derived._locks, derived._resolver = self._locks, self._resolver
        return derived

    def __repr__(self) -> str:
        lock = self._given.path if self._given is not None else self._lock or "nearest model-lock.toml"
        return f"<modelfix.Project {lock}>"  # reads nothing: a repr must not raise

    # --- the parts -----------------------------------------------------------------------------

    @property
    def lockfile(self) -> Lockfile:
        """The lockfile as it is now (parsed again only when the file changed)."""
        if self._given is not None:
            return self._given
        chosen = self._lock or os.environ.get("MODELFIX_LOCK")
        return self._locks.read(os.path.abspath(chosen) if chosen else nearest_lockfile())

    @property
    def cache_settings(self) -> CacheSettings:
        """Where and how files are cached: this Project's arguments, then the environment, then defaults."""
        a = self._args
        return CacheSettings.resolve(
            cache_dir=self._cache_dir,
            offline=a["offline"],
            max_size=a["max_size"],
            remote=a["remote"],
            readonly_caches=self._readonly,
        )

    @property
    def store(self) -> Store:
        """The writable store (which may still be read-only for this process: see :mod:`modelfix.layers`)."""
        return Store(self.cache_settings.root)

    def stores(self) -> list[Store]:
        """The read-only caches in front of the store, in order, then the store: where a pinned file may be."""
        return stores(self.cache_settings)

    @property
    def pool(self) -> Pool:
        """The pool handles come from: the process-wide one unless this Project was given its own."""
        from .pool import default_pool  # the pool (and llama.cpp's glue) loads with the first handle

        return self._pool or default_pool()

    def _where(self) -> tuple[Path, tuple[Path, ...]]:
        """The cache root and the read-only caches: all a warm call needs, read from the environment each time."""
        root = cache_root(self._cache_dir)
        return root, layer_roots(root, self._readonly)

    def _lockfile_if_any(self) -> Lockfile | None:
        """The lockfile, or None where there is none and none was named (cache care works without a project)."""
        try:
            return self.lockfile
        except LockError:
            if self._given is not None or self._lock is not None:
                raise
            return None

    # --- files ---------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """The first model file of ``name`` (split siblings and the mmproj beside it), fetched if missing."""
        return self.files(name).model_path

    def files(self, name: str) -> Materialized:
        """Every file of model ``name``, verified, in its view; fetches what is missing."""
        return self._files(name)

    def _files(self, name: str, before_fetch: Callable[[Entry], None] | None = None) -> Materialized:
        """:meth:`files`; ``before_fetch(entry)`` runs only when something must be fetched, and may refuse."""
        # The warm path (modelfix.path() in a loop): self.lockfile and self._where() written out,
        # then straight to the resolver's memo; a few stats, no settings resolved.
        lockfile = self._given
        if lockfile is None:
            chosen = self._lock or os.environ.get("MODELFIX_LOCK")
            lockfile = self._locks.read(os.path.abspath(chosen) if chosen else nearest_lockfile())
        root = cache_root(self._cache_dir)
        entry = pinned(lockfile, name)
        found = self._resolver.warm(root, layer_roots(root, self._readonly), lockfile, entry)
        if found is not None:
            return found
        if before_fetch is not None:
            before_fetch(entry)
        return self._resolver.make([entry], lockfile, self.cache_settings)[0]

    def sync(
        self, names: Sequence[str] | None = None, *, workers: int = 4, cancel: threading.Event | None = None
    ) -> list[Materialized]:
        """Fetch and verify ``names`` (default: every model of the lockfile), ``workers`` files at a time.

        ``cancel`` (or Ctrl-C) stops every transfer at its next chunk; partial
        downloads stay and resume on the next call (:class:`~modelfix.errors.Cancelled`).
        """
        lockfile = self.lockfile
        entries = [pinned(lockfile, n) for n in (names or list(lockfile.entries))]
        root, layers = self._where()
        ready = {e.name: found for e in entries if (found := self._resolver.warm(root, layers, lockfile, e))}
        cold = [e for e in entries if e.name not in ready]
        if cold:
            made = self._resolver.make(cold, lockfile, self.cache_settings, workers=max(1, workers), cancel=cancel)
            ready.update((m.name, m) for m in made)
        return [ready[e.name] for e in entries]

    def verify(self, names: Sequence[str] | None = None, *, full: bool = False) -> list[Problem]:
        """Re-hash the cached files of ``names`` (xxh3, or sha256 with ``full``) where each model is served
        from; a bad blob is removed from the store (a read-only cache is only reported on)."""
        lockfile = self.lockfile
        entries = [pinned(lockfile, n) for n in (names or list(lockfile.entries))]
        return self._resolver.verify(entries, lockfile, self.cache_settings, full=full)

    def push(self, names: Sequence[str] | None = None, *, force: bool = False) -> list[Pushed]:
        """Upload the pinned files of ``names`` to the remote tier (``MODELFIX_REMOTE``), syncing them first;
        ``force`` uploads those already there too (repairs a corrupt copy)."""
        settings = self.cache_settings
        check_pushable(settings)  # before anything is fetched
        return upload([m.entry for m in self.sync(names)], settings, force=force)

    def missing(self) -> list[tuple[str, FilePin]]:
        """(model, pin) for every pinned file that neither the store nor a read-only cache holds."""
        return missing(self.lockfile, self.cache_settings)

    def cached_state(self, model: str | Entry) -> str:
        """``"cached"``, ``"partial"`` or ``"missing"`` for a model (a name, or a lockfile entry)."""
        entry = self.lockfile.entry(model) if isinstance(model, str) else model
        return cached_state(entry, self.cache_settings)

    # --- handles -------------------------------------------------------------------------------

    def load(self, name: str, **settings: Any) -> PooledLlama:
        """A ready handle for model ``name`` from the pool: the same one for the same files and settings.

        ``settings`` are the call's layer, above this Project's ``load_options``, the environment,
        the lockfile entry and the defaults.
        """
        # A model that cannot fit is refused before its files are fetched.
        m = self._files(name, lambda entry: self.pool.check_weights(name, sum(p.size for p in entry.model_files)))
        root, layers = self._where()
        return self.pool.acquire(
            m.model_path,
            m.content_key,
            name,
            m.entry.settings,
            mmproj_path=m.mmproj_path,
            load_options=self.load_options,
            load_defaults=self.load_defaults,
            probe_root=root,
            probe_layers=layers,
            **settings,
        )

    @contextlib.contextmanager
    def use(self, target: PooledLlama | str, **settings: Any) -> Iterator[llama_cpp.Llama]:
        """``with project.use("chat") as llm:`` the real ``llama_cpp.Llama``, never evicted inside the block."""
        from .handle import PooledLlama, slot_of

        handle = target if type(target) is PooledLlama else self.load(str(target), **settings)
        with slot_of(handle).pool.use(handle) as llm:
            yield llm

    def preload(self, names: str | Iterable[str], **settings: Any) -> list[PooledLlama]:
        """Load each model now, so that the first real call does not wait."""
        return [self.load(n, **settings) for n in ([names] if isinstance(names, str) else names)]

    def unload(self, target: PooledLlama | llama_cpp.Llama | str) -> int:
        """Close the handles of model ``target`` (a name), or that one handle; returns how many."""
        return self.pool.unload(target)

    def loaded(self) -> list[Resident]:
        """What the pool holds now, most recently used first."""
        return self.pool.loaded()

    def route(self, text: str) -> str:
        """The model that should answer ``text``, by the lockfile's ``[routing]`` rules."""
        from .routing import route

        return route(text, self.lockfile)

    # --- cache care (care.py is imported by these methods only: no warm path needs it) ----------

    def stats(self) -> care.Usage:
        """What the store holds, each view with every lockfile model sharing it and its state."""
        from . import care

        return care.describe(self.store, self._lockfile_if_any())

    def layer_stats(self) -> list[care.Usage]:
        """What each read-only cache in front of the store holds, in order."""
        lockfile = self._lockfile_if_any()
        from . import care

        return [care.describe(layer, lockfile) for layer in stores(self.cache_settings, writable=False)]

    def prune(self, max_size: str | int | float | None = None, *, dry_run: bool = False) -> care.PruneReport:
        """Evict least recently used files down to ``max_size`` (default: this Project's cap), keeping
        what the lockfile pins and what live processes use."""
        settings = self.cache_settings if max_size is None else self.derive(max_size=max_size).cache_settings
        from . import care

        return care.prune(Store(settings.root), settings.max_size, self._lockfile_if_any(), dry_run=dry_run)

    def drop_superseded(self, *, dry_run: bool = False) -> care.GcReport:
        """Remove the revisions the lockfile pins no more (those ``modelfix lock --upgrade`` replaced)."""
        from . import care

        return care.drop_superseded(self.store, self._lockfile_if_any(), dry_run=dry_run)

    def gc(self, *, dry_run: bool = False) -> care.GcReport:
        """Delete what nothing needs: unused files, superseded revisions, broken and half-built views,
        idle partial downloads."""
        from . import care

        return care.gc(self.store, self._lockfile_if_any(), dry_run=dry_run)

    def remove(self, name: str, *, dry_run: bool = False) -> care.Removal:
        """Remove every cached revision of model ``name`` (``modelfix cache rm``)."""
        from . import care

        return care.remove(self.store, name, self._lockfile_if_any(), dry_run=dry_run)


# --- the module-level API --------------------------------------------------------------------

# The default Projects, one per lock argument (and explicit CacheSettings), so that each keeps
# its warm memo; bounded like any memo: a test run names a lockfile per test.
_DEFAULTS: dict[Any, Project] = {}
_DEFAULTS_LIMIT = 64


def default_project(lock: LockLike = None, cache_settings: CacheSettings | None = None) -> Project:
    """The Project behind ``modelfix.path(name, lock)`` and the other module-level calls.

    One per distinct ``lock`` (a path as a str or a PathLike, the same Lockfile object, or None)
    and ``cache_settings``.
    """
    if cache_settings is None:
        try:  # the warm path: one lookup, by the argument as given (a str, a Path, None)
            if (project := _DEFAULTS.get(lock)) is not None:
                return project
        except TypeError:  # a Lockfile does not hash: its Project is found by its id below
            pass
    if isinstance(lock, Lockfile):
        key: Any = ("lockfile", id(lock), cache_settings)
    else:
        path = None if lock is None else os.fspath(lock)
        key = path if cache_settings is None else (path, cache_settings)
    project = _DEFAULTS.get(key)
    if project is None:
        if len(_DEFAULTS) >= _DEFAULTS_LIMIT:
            _DEFAULTS.clear()
        project = _DEFAULTS[key] = _project(lock, cache_settings)
    if cache_settings is None and lock is not None and not isinstance(lock, (str, Lockfile)):
        _DEFAULTS[lock] = project  # the same Project by the PathLike itself too: the next call's one lookup
    return project


def _project(lock: LockLike, settings: CacheSettings | None) -> Project:
    if settings is None:
        return Project(lock)
    return Project(
        lock,
        cache_dir=settings.root,
        offline=settings.offline,
        max_size=settings.max_size,
        remote=settings.remote or "",
        readonly_caches=settings.layers,
    )


def _renamed(cache_settings: CacheSettings | None, settings: CacheSettings | None, call: str) -> CacheSettings | None:
    """``settings=`` is the old name of ``cache_settings=`` (now kept for load settings alone)."""
    if settings is None:
        return cache_settings
    warnings.warn(
        f"modelfix.{call}(settings=...) is deprecated: pass cache_settings=... (or use modelfix.Project)",
        DeprecationWarning,
        stacklevel=3,
    )
    return settings


def path(
    name: str,
    lock: LockLike = None,
    *,
    cache_settings: CacheSettings | None = None,
    settings: CacheSettings | None = None,
) -> Path:
    """The first model file of ``name``, fetched and verified if missing (see :meth:`Project.path`)."""
    if settings is None and cache_settings is None:
        # default_project()'s first lookup, written out: this is the call a test or notebook makes in a loop.
        try:
            if (project := _DEFAULTS.get(lock)) is not None:
                return project.files(name).model_path
        except TypeError:
            pass
    elif settings is not None:
        cache_settings = _renamed(cache_settings, settings, "path")
    return default_project(lock, cache_settings).files(name).model_path


def files(
    name: str,
    lock: LockLike = None,
    *,
    cache_settings: CacheSettings | None = None,
    settings: CacheSettings | None = None,
) -> Materialized:
    """Every file of model ``name`` in its view (see :meth:`Project.files`)."""
    if settings is not None:
        cache_settings = _renamed(cache_settings, settings, "files")
    return default_project(lock, cache_settings).files(name)


def sync(
    names: Sequence[str] | None = None,
    lock: LockLike = None,
    *,
    cache_settings: CacheSettings | None = None,
    workers: int = 4,
    cancel: threading.Event | None = None,
    settings: CacheSettings | None = None,
) -> list[Materialized]:
    """Fetch and verify ``names`` (default: all) (see :meth:`Project.sync`)."""
    cache_settings = _renamed(cache_settings, settings, "sync")
    return default_project(lock, cache_settings).sync(names, workers=workers, cancel=cancel)


def verify(
    names: Sequence[str] | None = None,
    lock: LockLike = None,
    *,
    full: bool = False,
    cache_settings: CacheSettings | None = None,
    settings: CacheSettings | None = None,
) -> list[Problem]:
    """Re-hash the cached files of ``names`` (see :meth:`Project.verify`)."""
    cache_settings = _renamed(cache_settings, settings, "verify")
    return default_project(lock, cache_settings).verify(names, full=full)


def push(
    names: Sequence[str] | None = None,
    lock: LockLike = None,
    *,
    force: bool = False,
    cache_settings: CacheSettings | None = None,
) -> list[Pushed]:
    """Upload the pinned files of ``names`` to the remote tier (see :meth:`Project.push`)."""
    return default_project(lock, cache_settings).push(names, force=force)


def load(
    name: str, lock: LockLike = None, *, cache_settings: CacheSettings | None = None, **settings: Any
) -> PooledLlama:
    """A ready handle for model ``name`` from the shared pool (see :meth:`Project.load`)."""
    return default_project(lock, cache_settings).load(name, **settings)


def use(
    target: PooledLlama | str, lock: LockLike = None, **settings: Any
) -> contextlib.AbstractContextManager[llama_cpp.Llama]:
    """``with modelfix.use("chat") as llm:`` the real ``Llama``, never evicted inside the block."""
    return default_project(lock).use(target, **settings)


def preload(names: str | Iterable[str], lock: LockLike = None, **settings: Any) -> list[PooledLlama]:
    """Load each model now, so that the first real call does not wait."""
    return default_project(lock).preload(names, **settings)


def unload(target: PooledLlama | llama_cpp.Llama | str) -> int:
    """Close the shared pool's handles of model ``target`` (a name), or that one handle; returns how many."""
    from .pool import default_pool

    return default_pool().unload(target)


def loaded() -> list[Resident]:
    """What the shared pool holds now, most recently used first."""
    from .pool import default_pool

    return default_pool().loaded()


def route(text: str, lock: LockLike = None) -> str:
    """The model that should answer ``text``, by the lockfile's ``[routing]`` rules."""
    return default_project(lock).route(text)

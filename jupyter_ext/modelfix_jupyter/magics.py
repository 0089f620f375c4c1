"""The notebook magics: ``%load_model``, ``%models``, ``%unload_model``, ``%modelfix_cache``.

They are a thin front end over the same pool, store and settings layers as
the pytest plugin and the CLI; nothing here decides what to fetch, what to
keep resident or which setting wins. The magic flags are the *front-end*
layer of :mod:`modelfix.settings`::

    call kwargs  >  %load_model flags  >  MODELFIX_* env  >  lockfile  >  defaults

:func:`load` (``%load_ext``) registers the magics, the HTML formatters and
the one-line error display; :func:`unload` (``%unload_ext``, and the first
half of ``%reload_ext``) releases every handle these magics handed out and
undoes the rest, so a reload starts clean.
"""

from __future__ import annotations

import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from . import errors, render
from .progress import reporter_for

__all__ = ["ModelfixMagics", "load", "unload"]


@magics_class
class ModelfixMagics(Magics):
    """The magics, plus what they handed out (released again on unload)."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.handed_out: dict[int, Any] = {}
        self.entries: dict[int, tuple[Any, Any]] = {}  # handle id -> (lock entry, lockfile path)
        self.released: dict[str, tuple[float, str]] = {}
        self._unsubscribe = _events().subscribe(self._on_event)

    # -- %load_model -----------------------------------------------------------

    @magic_arguments()
    @argument("name", help="model name: a [models.NAME] table of model-lock.toml")
    @argument("--n-ctx", type=int, metavar="N", help="context length (default: the lockfile's n_ctx)")
    @argument("--gpu-layers", type=int, metavar="N",
              help="layers to offload to the GPU (-1 = all; default: all where the build can offload)")
    @argument("--lock", metavar="PATH", help="lockfile (default: MODELFIX_LOCK or the nearest model-lock.toml)")
    @argument("--offline", action="store_true", help="never touch the network: fail if a file is not cached")
    @argument("--keep-alive", metavar="T",
              help="release idle handles after T (30s, 5m, 1h; 0 = after each call, -1 = never); "
                   "applies to the whole pool of this kernel")
    @line_magic
    def load_model(self, line: str) -> Any:
        """Fetch (if needed), verify and load a pinned model; returns its pooled llama_cpp.Llama.

        ``llm = %load_model chat --n-ctx 2048``. The same name and settings give
        back the same handle at once; other settings load a second handle.
        """
        args = parse_argstring(self.load_model, line)
        from modelfix import pool
        from modelfix.config import CacheSettings

        keep_alive = _keep_alive(args.keep_alive)
        if keep_alive is not None:
            pool.configure(keep_alive=keep_alive)  # the pool's keep-alive is per process
        frontend = {"n_ctx": args.n_ctx, "n_gpu_layers": args.gpu_layers}
        cache = CacheSettings.resolve(offline=True if args.offline else None)
        reporter = reporter_for(self.shell, args.name)
        try:
            with _events().listening(reporter):
                handle = pool.load(args.name, lock=args.lock, frontend=frontend, cache_settings=cache)
        finally:
            reporter.close()
        from modelfix.lockfile import Lockfile

        lockfile = Lockfile.find(args.lock)
        self.handed_out[id(handle)] = handle
        self.entries[id(handle)] = (lockfile.entry(args.name), lockfile.path)
        return handle

    # -- %models ---------------------------------------------------------------

    @magic_arguments()
    @argument("--lock", metavar="PATH", help="lockfile (default: MODELFIX_LOCK or the nearest model-lock.toml)")
    @line_magic
    def models(self, line: str) -> render.Table:
        """The lockfile's models: pins, whether cached, whether resident, memory, last use."""
        args = parse_argstring(self.models, line)
        from modelfix import pool
        from modelfix.config import CacheSettings
        from modelfix.lockfile import Lockfile
        from modelfix.resolver import cached_state

        lockfile = Lockfile.find(args.lock)
        cache = CacheSettings.resolve()
        records = list(pool.loaded())
        rows = []
        for entry in lockfile.entries.values():
            info = render._describe_source(entry, lockfile.path)
            mine = [r for r in records if _name(r) == entry.name]
            rows.append((
                entry.name,
                info.get("repo") or info.get("url") or entry.source,
                info.get("tag"),
                (entry.revision or "")[:10] or None,
                _size(entry.size),
                cached_state(entry, cache) if entry.files else "not pinned",
                self._resident(entry.name, mine),
                _size(sum(_cost(r) for r in mine)) if mine else None,
                render.ago(max((_last_used(r) for r in mine), default=None)),
            ))
        header = ("name", "repo", "tag", "revision", "size", "cached", "resident", "est. memory", "last used")
        return render.Table(header, rows, caption=str(lockfile.path), footer=_pool_footer())

    def _resident(self, name: str, records: list[Any]) -> str:
        if records:
            n = len(records)
            return "yes" if n == 1 else f"yes ({n} handles)"
        if name in self.released:
            when, why = self.released[name]
            return f"released {render.ago(when)}" + (f" ({why})" if why else "")
        return "no"

    # -- %unload_model ---------------------------------------------------------

    @magic_arguments()
    @argument("name", nargs="?", help="model name whose handles to release")
    @argument("--all", action="store_true", help="release every resident handle")
    @line_magic
    def unload_model(self, line: str) -> None:
        """Release a model's resident handles (``--all``: every handle in the pool)."""
        args = parse_argstring(self.unload_model, line)
        if bool(args.name) == bool(args.all):
            raise UsageError("%unload_model: give a model NAME or --all (not both).")
        from modelfix import pool

        names = sorted({_name(r) for r in pool.loaded()}) if args.all else [args.name]
        for name in names:
            pool.unload(name)
        print(f"released: {', '.join(names)}" if names else "nothing was resident")

    # -- %modelfix_cache -------------------------------------------------------

    @magic_arguments()
    @argument("--prune", action="store_true",
              help="delete cached files that no lockfile entry pins, then trim to MODELFIX_CACHE_MAX_SIZE")
    @argument("--lock", metavar="PATH", help="lockfile whose pins to keep when pruning")
    @line_magic
    def modelfix_cache(self, line: str) -> render.Table:
        """The cache: where it is, how big, what it holds; ``--prune`` frees space."""
        args = parse_argstring(self.modelfix_cache, line)
        from modelfix import store
        from modelfix.config import CacheSettings

        cache = CacheSettings.resolve()
        note = ""
        if args.prune:
            freed = store.prune(cache, lock=args.lock)
            note = f"pruned: {_describe_pruned(freed)}"
        stats = store.stats(cache)
        rows = [(k, _stat_value(k, v)) for k, v in _stat_items(stats)]
        return render.Table(("", ""), rows, caption=f"modelfix cache · {cache.root}", footer=note)

    # -- lifecycle ---------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        if event.kind == "evict":
            self.released[event.model] = (time.time(), event.message)

    def close(self) -> None:
        """Release what these magics handed out and stop listening."""
        self._unsubscribe()
        from modelfix import pool

        for handle in self.handed_out.values():
            pool.unload(handle)  # a handle that is not resident any more counts 0
        self.handed_out.clear()
        self.entries.clear()


# --- helpers over the pool's records ------------------------------------------------


def _events() -> Any:
    from modelfix.events import events

    return events


def _name(record: Any) -> str:
    return record.name


def _cost(record: Any) -> int:
    return record.cost


def _last_used(record: Any) -> float | None:
    return record.last_used


def _size(value: int | float) -> str:
    from modelfix.eviction import format_size

    return format_size(value)


def _keep_alive(text: str | None) -> float | None:
    if text is None:
        return None
    from modelfix.settings import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"%load_model --keep-alive: {exc}") from None


def _pool_footer() -> str:
    from modelfix import pool

    metrics = pool.pool_metrics()
    parts = [f"{k.replace('_', ' ')}: {_stat_value(k, v)}" for k, v in metrics.items() if not isinstance(v, (dict, list))]
    return " · ".join(parts)


def _stat_items(stats: Any) -> list[tuple[str, Any]]:
    import dataclasses

    if dataclasses.is_dataclass(stats):
        return list(dataclasses.asdict(stats).items())
    return list(dict(stats).items())


def _stat_value(key: str, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and ("size" in key or "bytes" in key):
        return _size(value)
    return value


def _describe_pruned(freed: Any) -> str:
    return str(freed)


# --- %load_ext / %unload_ext ------------------------------------------------------------


def load(shell: Any) -> None:
    """Register everything on ``shell``; loading twice is harmless."""
    if getattr(shell, "_modelfix_magics", None) is not None:
        return
    magics = ModelfixMagics(shell)
    shell.register_magics(magics)
    render.register_formatters(shell, _entry_for(shell))
    errors.install(shell)
    shell._modelfix_magics = magics


def unload(shell: Any) -> None:
    """Release the handles the magics handed out and remove what :func:`load` added."""
    magics = getattr(shell, "_modelfix_magics", None)
    if magics is None:
        return
    try:
        magics.close()
    finally:
        for name in ("load_model", "models", "unload_model", "modelfix_cache"):
            shell.magics_manager.magics["line"].pop(name, None)
        shell.magics_manager.registry.pop(type(magics).__name__, None)
        render.unregister_formatters(shell)
        errors.uninstall(shell)
        shell._modelfix_magics = None


def _entry_for(shell: Any) -> Any:
    def entry_for(handle: Any) -> tuple[Any, Any]:
        magics = getattr(shell, "_modelfix_magics", None)
        return magics.entries.get(id(handle), (None, None)) if magics is not None else (None, None)

    return entry_for

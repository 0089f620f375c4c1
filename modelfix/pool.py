"""The shared pool of resident ``llama_cpp.Llama`` handles.

:meth:`Pool.acquire` (which :meth:`modelfix.Project.load` calls once the model's files are
verified) returns a :class:`~modelfix.handle.PooledLlama`: a handle that
behaves as the ``llama_cpp.Llama`` it wraps and that the pool may *hot-swap*:
when it is evicted (budget, max count, keep-alive, ``unload``) the real
``Llama`` is closed and its memory returned, and the handle's next call loads
it again. So eviction never leaves a caller with a closed ``Llama`` (which
would crash the process), and an idle keep-alive really frees memory in a
long-lived notebook.

::

    Pool
     ├── slots: {(content_key, LoadSettings): _Slot}     one per key, ever seen
     │     _Slot: llama (None when not resident), estimate, leases, last use
     │            handle: the one PooledLlama for this key (acquire() returns it)
     └── reaper: daemon thread closing handles idle longer than the keep-alive (reap())

*In use* means leased (:meth:`Pool.enter` ... :meth:`Pool.release`, or :meth:`Pool.lease`
around a block): during every call made through a handle (a streaming
generator holds its lease until exhausted or dropped), and inside
``with use(...) as llm:``. A leased handle is never evicted; anything else is
idle and evicted least recently used first by :func:`modelfix.eviction.plan`,
the same policy the disk store uses.

The pool's budgets count *estimated* bytes (:mod:`modelfix.estimate`), known
before loading, so a load that cannot fit is refused before it starts (:mod:`modelfix.placement`
puts an estimate in each budget's terms and words the refusal). Two kinds, one
policy (:func:`modelfix.eviction.plan` with several budgets)::

    memory_budget       RAM: what a handle keeps on the CPU (all of it on a CPU build)
    gpu_memory_budget   per GPU ("gpu0", ...): its layers, their KV cache, the compute buffer,
                        plus CUDA_OVERHEAD once per device (the process's CUDA context);
                        auto = 90% of the GPU's free memory when the pool first looks

``n_gpu_layers="auto"`` (the default where the build offloads) picks the number of layers at
load, as Ollama's scheduler does (:func:`modelfix.placement.place`): all of them if they fit after
evicting idle handles, else as many as fit. The chosen number is the handle's ``gpu_layers``.

The pool reads no lockfile and fetches nothing: it loads files it is given. One process-wide
pool (:func:`default_pool`) serves every Project and front end in the process, so they share
one memory budget.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .config import cache_root, layer_roots
from .errors import MemoryBudgetError, SettingsError
from .estimate import Estimate, GpuDevice, gpu_devices, offload_supported
from .events import Event, events
from .handle import PooledLlama, Turns, build_llama, close_llama, reset_handle, slot_of
from .placement import candidate, check_weights, handle_estimate, layer_tries, place, ram_budget
from .probe import use_repack
from .settings import (
    LoadSettings,
    PoolSettings,
    ResolvedSettings,
    resolve_pool_settings,
    resolve_settings,
)

if TYPE_CHECKING:
    import llama_cpp

__all__ = [
    "Pool",
    "PooledLlama",
    "PoolSettings",
    "Resident",
    "PoolMetrics",
    "default_pool",
    "configure",
    "unload",
    "loaded",
    "record",
    "pool_metrics",
    "reset_handle",
]

Key = tuple[str, LoadSettings]


@dataclass(frozen=True)
class Resident:
    """One handle, as ``loaded()`` (the resident ones) and ``record(handle)`` report it."""

    name: str
    model_path: Path
    content_key: str
    settings: LoadSettings
    estimate: Estimate
    last_used: float  # seconds since the epoch
    hits: int
    loads: int
    in_use: bool
    resident: bool = True  # False once evicted or unloaded: the handle reloads on its next call
    origins: Mapping[str, str] = field(default_factory=dict)  # setting -> layer it came from
    gpu_layers: int = 0  # layers offloaded (what n_gpu_layers="auto" chose); 0 on a CPU build

    @property
    def cost(self) -> int:
        return self.estimate.total


@dataclass(frozen=True)
class PoolMetrics:
    """A pool's counters since it started (``modelfix.pool_metrics()``), and what is resident now.

    ``hits`` and ``misses``: load requests that found their handle resident, or not;
    ``reloads``: evicted handles loaded again by their next call; ``load_seconds``: per model
    name, the total time its loads took.
    """

    hits: int
    misses: int
    loads: int
    reloads: int
    evictions: int
    load_seconds: Mapping[str, float]
    resident: int
    resident_bytes: int


@dataclass(eq=False)
class _Slot:
    pool: Pool
    key: Key
    name: str
    model_path: Path
    mmproj_path: Path | None
    resolved: ResolvedSettings
    estimate: Estimate
    llama: llama_cpp.Llama | None = None
    leases: int = 0
    loading: bool = False
    used: bool = False  # a call went through since the last load (keep_alive=0 waits for it)
    unload_requested: bool = False
    last_used: float = 0.0  # the pool's clock (time.monotonic), for LRU and keep-alive
    last_used_wall: float = 0.0
    hits: int = 0
    loads: int = 0
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    turns: Turns = field(default_factory=Turns)  # calls on this Llama, one thread at a time
    handle: PooledLlama | None = None
    probe_root: Path | None = None  # where the backend probe's verdict is cached
    probe_layers: tuple[Path, ...] = ()  # read-only caches where a verdict may be found too
    mmproj_used: Path | None = None  # the mmproj counted in the estimate (settings.mmproj)

    @property
    def settings(self) -> LoadSettings:
        return self.resolved.settings

    def touch(self) -> None:
        self.last_used, self.last_used_wall = self.pool.clock(), time.time()


class Pool:
    """Resident handles under a memory budget, a max count and a keep-alive.

    Pool settings given here win over ``MODELFIX_*`` variables, which win over
    the strategy's preset (see :func:`modelfix.settings.resolve_pool_settings`);
    they are resolved again at every call. ``clock`` (seconds, monotonic) times the
    keep-alive and the LRU order; a test passes a fake one and calls :meth:`reap`.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, **pool_settings: Any) -> None:
        self.clock = clock
        self._explicit: dict[str, Any] = {}
        # Re-entrant: a dropped stream's __del__ may release its lease while
        # this thread already holds the lock (garbage collection runs anywhere).
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._slots: dict[Key, _Slot] = {}
        self._counts = {"hits": 0, "misses": 0, "loads": 0, "reloads": 0, "evictions": 0}
        self._load_seconds: dict[str, float] = {}
        self._reaper: threading.Thread | None = None
        self._closed = False
        self._gpus: list[GpuDevice] | None = None  # the GPUs as first seen (auto budget: their free memory then)
        self.configure(**pool_settings)

    # --- configuration ---------------------------------------------------------

    def configure(self, **pool_settings: Any) -> PoolSettings:
        """Set (or, with ``None``, unset) strategy, memory_budget, gpu_memory_budget, keep_alive, max_count."""
        merged = {**self._explicit, **pool_settings}
        settings = resolve_pool_settings(merged)  # validates before anything changes
        with self._cond:
            self._explicit = {k: v for k, v in merged.items() if v is not None}
            self._cond.notify_all()
        return settings

    def settings(self) -> PoolSettings:
        return resolve_pool_settings(self._explicit)

    # --- handing out handles -----------------------------------------------------

    def acquire(
        self,
        model_path: str | os.PathLike[str],
        content_key: str,
        name: str,
        entry_settings: Mapping[str, Any] | None = None,
        *,
        mmproj_path: str | os.PathLike[str] | None = None,
        load_options: Mapping[str, Any] | None = None,
        load_defaults: Mapping[str, Any] | None = None,
        probe_root: str | os.PathLike[str] | None = None,
        probe_layers: Sequence[Path] = (),
        frontend: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> PooledLlama:
        """A loaded handle for these files and settings; the resident one if the key matches.

        ``settings`` are the call's layer of the load settings, ``load_options`` the front
        end's, ``entry_settings`` the lockfile's, ``load_defaults`` the front end's defaults below
        the lockfile (see :mod:`modelfix.settings`).
        ``probe_root`` is the cache root that keeps the backend probe's verdict
        (default: the cache root of the environment), for ``repack = "auto"``;
        ``probe_layers`` the read-only caches where a verdict is read too.
        ``frontend`` is the old name of ``load_options`` (deprecated).
        """
        if frontend is not None:
            warnings.warn("Pool.acquire(frontend=...) is deprecated: pass load_options=...", DeprecationWarning, 2)
            load_options = {**frontend, **(load_options or {})}
        resolved = resolve_settings(name, settings, frontend=load_options, entry=entry_settings, defaults=load_defaults)
        if resolved.settings.mmproj and mmproj_path is None:
            raise SettingsError(
                f"model {name!r} has no mmproj file, so mmproj=True cannot be honoured. "
                'Pin one (a file with role = "mmproj") or drop the setting.'
            )
        key: Key = (content_key, resolved.settings)
        slot = self._slots.get(key)
        if slot is None:
            mmproj = Path(mmproj_path) if mmproj_path and resolved.settings.mmproj else None
            cost = handle_estimate(Path(model_path), resolved.settings, mmproj, offload=bool(self.gpus()))
            with self._lock:
                slot = self._slots.get(key)
                if slot is None:
                    slot = _Slot(
                        self,
                        key,
                        name,
                        Path(model_path),
                        Path(mmproj_path) if mmproj_path else None,
                        resolved,
                        cost,
                        turns=Turns(name),
                        mmproj_used=mmproj,
                    )
                    slot.handle = PooledLlama(slot)
                    self._slots[key] = slot
        if probe_root is not None:
            slot.probe_root = Path(probe_root)  # the latest caller's cache, for its next (re)load
            slot.probe_layers = tuple(probe_layers)
        self.enter(slot, lookup=True)
        self.release(slot, used=False)
        assert slot.handle is not None
        return slot.handle

    @contextmanager
    def use(self, handle: PooledLlama) -> Iterator[llama_cpp.Llama]:
        """``with pool.use(handle) as llm:`` the real ``Llama``, never evicted inside the block."""
        with self.lease(slot_of(handle), used=True) as llm:
            yield llm

    # --- releasing ---------------------------------------------------------------

    def unload(self, target: PooledLlama | llama_cpp.Llama | str) -> int:
        """Close the handles of model ``target`` (a name) or that one handle; returns how many.

        A handle in use is closed when its lease ends. Handles stay usable: the
        next call through one loads it again.
        """
        with self._lock:
            if type(target) is PooledLlama:
                chosen = [slot_of(target)]
            elif isinstance(target, str):
                chosen = [s for s in self._slots.values() if s.name == target]
            else:
                chosen = [s for s in self._slots.values() if s.llama is target]
            chosen = [s for s in chosen if s.llama is not None or s.loading]
            victims = []
            for slot in chosen:
                if slot.leases:
                    slot.unload_requested = True
                else:
                    victims.append(self._detach(slot, evicted=False))
        self._close(victims, "unload")
        return len(chosen)

    def close(self) -> None:
        """Unload every idle handle and stop the keep-alive thread (handles still reload on use)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            idle = [s for s in self._slots.values() if s.llama is not None and not s.leases]
            victims = [self._detach(s, evicted=False) for s in idle]
        self._close(victims, "unload")
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(timeout=5)
        with self._lock:
            self._closed, self._reaper = False, None

    # --- reporting ---------------------------------------------------------------

    def loaded(self) -> list[Resident]:
        """What is resident now, most recently used first."""
        with self._lock:
            slots = [s for s in self._slots.values() if s.llama is not None]
            return [_record(s) for s in sorted(slots, key=lambda s: s.last_used, reverse=True)]

    def record(self, handle: PooledLlama) -> Resident:
        """What the pool knows of ``handle``, resident or not; never loads it (front ends draw this)."""
        with self._lock:
            return _record(slot_of(handle))

    def metrics(self) -> PoolMetrics:
        """Counters since start: hits, misses, loads, reloads, evictions, load seconds per model."""
        with self._lock:
            resident = [s for s in self._slots.values() if s.llama is not None]
            return PoolMetrics(
                **self._counts,
                load_seconds=dict(self._load_seconds),
                resident=len(resident),
                resident_bytes=sum(s.estimate.total for s in resident),
            )

    # --- leases (what a handle's calls hold) and loading ------------------------------

    @contextmanager
    def lease(self, slot: _Slot, *, used: bool = False) -> Iterator[llama_cpp.Llama]:
        """The real Llama of ``slot``, with its turn, for a block (``used``: it runs a generation)."""
        slot.turns.take()  # before the pool's lock: waiting for another thread's call must not block the pool
        try:
            llm = self.enter(slot)
            try:
                yield llm
            finally:
                self.release(slot, used=used)
        finally:
            slot.turns.give_back()

    def enter(self, slot: _Slot, *, lookup: bool = False) -> llama_cpp.Llama:
        """Lease ``slot``, loading it if it is not resident; :meth:`release` ends the lease.

        A handle's call holds the slot's turn around both (:class:`~modelfix.handle.Turns`);
        ``lookup`` counts it as a load request (a hit or a miss) rather than a reload.
        """
        with self._lock:
            slot.leases += 1
            if slot.llama is not None:
                if lookup:
                    slot.hits += 1
                    self._counts["hits"] += 1
                return slot.llama
            self._counts["misses" if lookup else "reloads"] += 1
        try:
            return self._load(slot)
        except BaseException:
            with self._cond:
                slot.leases -= 1
                self._cond.notify_all()
            raise

    def release(self, slot: _Slot, *, used: bool) -> None:
        """End a lease of ``slot`` (``used``: a generation ran); an unload waiting for it happens now."""
        with self._cond:
            slot.leases -= 1
            slot.used = slot.used or used
            slot.touch()
            victims, reason = [], "unload" if slot.unload_requested else "keep-alive"
            idle = not slot.leases and slot.llama is not None
            if idle and (slot.unload_requested or (slot.used and self._keep_alive() == 0)):
                victims.append(self._detach(slot, evicted=not slot.unload_requested))
            self._cond.notify_all()
        self._close(victims, reason)

    def _load(self, slot: _Slot) -> llama_cpp.Llama:
        with slot.load_lock:  # one load per slot; other callers wait here for its result
            with self._lock:
                if slot.llama is not None:
                    return slot.llama
                victims = self._make_room(slot)
                slot.loading = True
            self._close(victims, f"room for {slot.name}")
            self._start_reaper()
            try:
                # Before the first load of the process: may probe the backend in a child (not load time).
                root = slot.probe_root or cache_root()
                repack = use_repack(
                    slot.settings.repack, root, slot.probe_layers if slot.probe_root else layer_roots(root)
                )
            except BaseException:
                with self._lock:
                    slot.loading = False
                raise
            events.emit(Event("load", slot.name, slot.model_path.name, "loading", total=slot.estimate.total))
            started = time.perf_counter()
            try:
                settings = slot.settings
                if settings.n_gpu_layers == "auto":
                    settings = dataclasses.replace(settings, n_gpu_layers=slot.estimate.gpu_layers)
                llm = build_llama(slot.name, slot.model_path, settings, slot.mmproj_path, repack=repack)
            except BaseException as exc:
                events.emit(Event("load", slot.name, slot.model_path.name, "failed", message=str(exc)))
                raise
            finally:
                with self._lock:
                    slot.loading = False
            seconds = time.perf_counter() - started
            with self._cond:
                slot.llama, slot.used, slot.unload_requested = llm, False, False
                slot.loads += 1
                slot.touch()
                self._counts["loads"] += 1
                self._load_seconds[slot.name] = self._load_seconds.get(slot.name, 0.0) + seconds
                self._cond.notify_all()
            events.emit(
                Event(
                    "load",
                    slot.name,
                    slot.model_path.name,
                    "loaded",
                    done=slot.estimate.total,
                    total=slot.estimate.total,
                    seconds=seconds,
                )
            )
            return llm

    # --- budgets -----------------------------------------------------------------------

    def gpus(self) -> list[GpuDevice]:
        """The GPUs this pool loads onto, as it first saw them; empty where the build cannot offload."""
        if self._gpus is None:
            self._gpus = gpu_devices() if offload_supported() else []
        return self._gpus

    def fit(
        self, model_path: str | os.PathLike[str], settings: LoadSettings, mmproj_path: Path | None = None
    ) -> Estimate:
        """The estimate of a handle with these settings on an otherwise idle pool: for "auto", the
        layers that would be offloaded (``gpu_layers``); nothing is loaded or evicted (``modelfix inspect``)."""
        path, mmproj = Path(model_path), mmproj_path if settings.mmproj else None
        try:
            est, _ = place("", path, settings, mmproj, pool=self.settings(), gpus=self.gpus(), ram_budget=math.inf)
        except MemoryBudgetError:  # not even zero layers fit: inspect shows the CPU-only estimate
            return layer_tries(path, settings, mmproj, bool(self.gpus()))[-1]
        return est

    def check_weights(self, name: str, weights: int) -> None:
        """Before fetching model ``name``: refuse it if its ``weights`` alone exceed the RAM budget (CPU builds)."""
        if not self.gpus():  # with offload, RAM holds only what stays on the CPU: the estimate decides
            check_weights(name, weights, self.settings())

    def _make_room(self, slot: _Slot) -> list[tuple[_Slot, llama_cpp.Llama]]:
        """Under the lock: choose ``slot``'s GPU layers, detach what must go for it to fit, or refuse."""
        settings, gpus = self.settings(), self.gpus()
        budget = ram_budget(settings)
        others = [x for x in self._slots.values() if x is not slot and (x.llama is not None or x.loading)]
        held = [x for x in others if x.leases or x.loading]
        slot.estimate, keys = place(
            slot.name,
            slot.model_path,
            slot.settings,
            slot.mmproj_used,
            pool=settings,
            gpus=gpus,
            residents=[
                candidate(x.key, x.estimate, x.settings, x.last_used, held=x in held, gpus=gpus) for x in others
            ],
            ram_budget=budget,
            held_names=[x.name for x in held],
        )
        return [self._detach(self._slots[cast(Key, k)]) for k in keys]  # place() hands back the keys it was given

    def _detach(self, slot: _Slot, *, evicted: bool = True) -> tuple[_Slot, llama_cpp.Llama]:
        """Under the lock: make ``slot`` non-resident; the caller closes the Llama.

        ``evicted`` is False for an explicit unload, which the metrics do not count.
        """
        llm, slot.llama = slot.llama, None
        assert llm is not None, "only a resident slot is detached"
        slot.unload_requested = False
        self._counts["evictions"] += evicted
        return slot, llm

    def _close(self, victims: list[tuple[_Slot, llama_cpp.Llama]], reason: str) -> None:
        # Outside the pool lock: nobody can reach a detached Llama any more.
        for slot, llm in victims:
            close_llama(llm)
            events.emit(
                Event(
                    "evict", slot.name, slot.model_path.name, total=slot.estimate.total, source="pool", message=reason
                )
            )

    # --- keep-alive --------------------------------------------------------------

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is None or not self._reaper.is_alive():  # also after a fork
                self._reaper = threading.Thread(target=self._reap_forever, name="modelfix-pool-keepalive", daemon=True)
                self._reaper.start()

    def _keep_alive(self) -> float:
        try:
            return self.settings().keep_alive
        except SettingsError:  # a bad MODELFIX_KEEP_ALIVE: the next load reports it; keep handles meanwhile
            return math.inf

    def reap(self) -> int:
        """Close, now, the idle handles whose keep-alive ran out; returns how many.

        The keep-alive thread does this at each deadline; a test with a fake ``clock`` calls it
        after advancing the clock.
        """
        with self._cond:
            victims, _ = self._expired()
        self._close(victims, "keep-alive")
        return len(victims)

    def _expired(self) -> tuple[list[tuple[_Slot, llama_cpp.Llama]], float | None]:
        """Under the lock: detach the handles idle past the keep-alive; and the seconds to the next deadline."""
        keep_alive = self._keep_alive()
        now = self.clock()
        idle = [s for s in self._slots.values() if s.llama is not None and not s.leases]
        # keep_alive=0 closes a handle after its first use, not right after loading.
        due = [s for s in idle if keep_alive > 0 or s.used] if keep_alive != math.inf else []
        victims = [self._detach(s) for s in due if s.last_used + keep_alive <= now]
        deadlines = [s.last_used + keep_alive for s in due if s.llama is not None]
        return victims, (max(0.0, min(deadlines) - now) if deadlines else None)

    def _reap_forever(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                victims, wait = self._expired()
                if not victims:
                    self._cond.wait(wait)
                    continue
            self._close(victims, "keep-alive")


def _record(s: _Slot) -> Resident:
    return Resident(
        s.name,
        s.model_path,
        s.key[0],
        s.settings,
        s.estimate,
        s.last_used_wall,
        s.hits,
        s.loads,
        s.leases > 0,
        s.llama is not None,
        s.resolved.origins,
        s.estimate.gpu_layers,
    )


# --- the process-wide pool ---------------------------------------------------------

# Process-wide: one memory budget per process, shared by every Project and front end in it.
_default_lock = threading.Lock()
_default: list[Pool] = []  # made on first use


def default_pool() -> Pool:
    """The pool that ``modelfix.load``, every :class:`~modelfix.Project` and every front end share."""
    with _default_lock:
        if not _default:
            _default.append(Pool())
        return _default[0]


def configure(**pool_settings: Any) -> PoolSettings:
    """Set the shared pool's strategy, memory_budget, gpu_memory_budget, keep_alive or max_count (``None`` unsets)."""
    return default_pool().configure(**pool_settings)


def unload(target: PooledLlama | llama_cpp.Llama | str) -> int:
    """Close the shared pool's handles of model ``target`` (a name), or that one handle; returns how many."""
    return default_pool().unload(target)


def loaded() -> list[Resident]:
    """What the shared pool holds now, most recently used first."""
    return default_pool().loaded()


def record(handle: PooledLlama) -> Resident:
    """The record of ``handle`` in the pool that handed it out (see :meth:`Pool.record`)."""
    return slot_of(handle).pool.record(handle)


def pool_metrics() -> PoolMetrics:
    """The shared pool's counters (see :class:`PoolMetrics`)."""
    return default_pool().metrics()

"""Where a handle's bytes go, and what the pool says when they do not fit.

The pool (:mod:`modelfix.pool`) budgets RAM and each GPU apart, with one eviction policy
(:func:`modelfix.eviction.plan`). This module turns an :class:`~modelfix.estimate.Estimate`
into those budgets' terms::

    handle_estimate(path, settings, ...)     the Estimate of one handle with k layers offloaded
    layer_tries(path, settings, ...)         n_gpu_layers="auto" on a GPU: all layers, then fewer
    Estimate (weights, KV cache, compute; what stays on the CPU, what goes to the GPUs)
      └─ device_costs(est, settings, gpus)   {"gpu0": bytes, ...}: the offloaded layers and their KV
                                              as split_mode / tensor_split share them, the compute
                                              buffer on main_gpu
    PoolSettings + the GPUs seen
      └─ gpu_budgets(settings, gpus)         {"gpu0": bytes for handles, ...}: gpu_memory_budget
                                              (auto: 90% of free memory) less CUDA_OVERHEAD
    NoRoom from plan()
      └─ refusal(...)                        the MemoryBudgetError a user reads: the model, the
                                              sizes, the budget and where it was set, the fix

    check_weights(name, weights, settings)   before a CPU load's files are fetched: refuse a model whose
                                              pinned weights alone exceed the RAM budget
    place(name, path, settings, ...)         all of the above for one load: the first layer count
                                              that fits (evicting idle handles, least recently used
                                              first), the handles to evict for it, or the refusal
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

from .errors import MemoryBudgetError, NoRoom, SettingsError
from .estimate import CUDA_OVERHEAD, Estimate, GpuDevice, estimate, memory_capacity
from .eviction import Candidate, format_size, plan
from .settings import LoadSettings, PoolSettings

__all__ = [
    "candidate",
    "check_weights",
    "device_costs",
    "gpu_budgets",
    "handle_estimate",
    "layer_tries",
    "place",
    "ram_budget",
    "refusal",
]


def handle_estimate(
    model_path: Path, s: LoadSettings, mmproj: Path | None, *, offload: bool, layers: int | None = None
) -> Estimate:
    """The cost of a handle with ``layers`` offloaded (default: what ``s`` asks; "auto" asks all)."""
    k = layers if layers is not None else (-1 if s.n_gpu_layers == "auto" else int(s.n_gpu_layers))
    return estimate(
        model_path,
        n_ctx=s.n_ctx,
        n_ubatch=min(s.n_batch, s.n_ubatch),
        flash_attn=s.flash_attn,
        mmproj_path=mmproj,
        n_gpu_layers=k,
        offload=offload,
        offload_kqv=s.offload_kqv,
    )


def layer_tries(model_path: Path, s: LoadSettings, mmproj: Path | None, offload: bool) -> list[Estimate]:
    """The estimates to try, best first: "auto" on a GPU tries every layer count from all down to none."""
    full = handle_estimate(model_path, s, mmproj, offload=offload)
    if s.n_gpu_layers != "auto" or not offload:
        return [full]
    lower = range(full.gpu_layers - 1, -1, -1)
    return [full] + [handle_estimate(model_path, s, mmproj, offload=offload, layers=k) for k in lower]


def device_costs(est: Estimate, s: LoadSettings, gpus: Sequence[GpuDevice]) -> dict[str, int]:
    """Bytes on each GPU ("gpu0", ...): layers and KV as ``split_mode`` and ``tensor_split`` share them."""
    if not gpus or not est.gpu:
        return {}
    main = min(s.main_gpu, len(gpus) - 1)
    if s.split_mode == "none" or len(gpus) == 1:
        shares = [1.0 if d.index == main else 0.0 for d in gpus]
    else:  # llama.cpp splits by tensor_split, else by each device's free memory
        weights = list(s.tensor_split or ()) + [0.0] * len(gpus) if s.tensor_split else [d.free for d in gpus]
        total = sum(weights[: len(gpus)]) or 1
        shares = [w / total for w in weights[: len(gpus)]]
    spread = est.gpu_weights + est.gpu_kv
    costs = {f"gpu{d.index}": int(spread * share) for d, share in zip(gpus, shares, strict=True)}
    costs[f"gpu{main}"] += est.gpu_compute
    return costs


def gpu_budgets(settings: PoolSettings, gpus: Sequence[GpuDevice]) -> dict[str, float]:
    """Each GPU's budget for handles: gpu_memory_budget (auto: 90% of its free memory) less the CUDA overhead."""
    budgets = {}
    for d in gpus:
        budget = settings.gpu_memory_budget if settings.gpu_memory_budget is not None else 0.9 * d.free
        budgets[f"gpu{d.index}"] = budget - CUDA_OVERHEAD
    return budgets


def refusal(name: str, est: Estimate, exc: NoRoom, settings: PoolSettings, held: Sequence[str]) -> MemoryBudgetError:
    """Why model ``name`` (estimated ``est``) cannot load, and what to change; ``held`` names the
    models of handles in use, which no budget may evict."""
    in_use_names = ", ".join(sorted(set(held))) or "none"
    if exc.needed + exc.held <= exc.budget:  # the sizes fit: it is the count that does not
        return MemoryBudgetError(
            f"cannot load model {name!r}: the pool holds at most {settings.max_count} handle(s) "
            f"and those resident are in use ({in_use_names}). Raise MODELFIX_MAX_LOADED or finish using one."
        )
    in_use = f", of which {format_size(exc.held)} is held by handles in use ({in_use_names})" if held else ""
    if exc.budget_name:  # a GPU's budget
        origin = settings.gpu_budget_origin
        where = {"auto": "auto: 90% of the GPU's free memory", "configure": "set by a front-end option or configure()"}
        return MemoryBudgetError(
            f"cannot load model {name!r} onto {exc.budget_name}: its layers, KV cache and compute buffer "
            f"need about {format_size(exc.needed)} of VRAM but the GPU memory budget leaves "
            f"{format_size(max(exc.budget, 0))} for handles ({where.get(origin, origin)}; "
            f"{format_size(CUDA_OVERHEAD)} go to the CUDA context){in_use}. To load it, raise the budget "
            f"(MODELFIX_GPU_MEMORY_BUDGET, --modelfix-gpu-memory-budget, configure(gpu_memory_budget=...)), "
            f'use n_gpu_layers="auto" or fewer layers, lower n_ctx, or release a model.'
        )
    budget_source, raise_it = _budget_words(settings)
    ram = f" in RAM ({format_size(exc.needed)} of it stays on the CPU)" if est.gpu else ""
    return MemoryBudgetError(
        f"cannot load model {name!r}: it needs about {format_size(est.total)}{ram} (weights "
        f"{format_size(est.weights)} + KV cache {format_size(est.kv_cache)} for n_ctx={est.n_ctx} + compute "
        f"{format_size(est.compute)}) but the memory budget is {format_size(exc.budget)} ({budget_source}){in_use}. "
        f"To load it, {raise_it}, lower n_ctx, or release a model."
    )


def candidate(
    key: Hashable, est: Estimate, s: LoadSettings, last_used: float, *, held: bool, gpus: Sequence[GpuDevice]
) -> Candidate:
    """A resident handle as the eviction plan sees it: its RAM cost (all of it without GPUs) and each GPU's."""
    return Candidate(key, est.ram if gpus else est.total, last_used, held=held, costs=device_costs(est, s, gpus))


def place(
    name: str,
    model_path: Path,
    s: LoadSettings,
    mmproj: Path | None,
    *,
    pool: PoolSettings,
    gpus: Sequence[GpuDevice],
    residents: Sequence[Candidate] = (),
    ram_budget: float,
    held_names: Sequence[str] = (),
) -> tuple[Estimate, list[Hashable]]:
    """The estimate model ``name`` loads with and the keys of ``residents`` to evict first.

    ``n_gpu_layers="auto"`` takes the first layer count that fits, all of them first; fewer layers
    only need more RAM, so a refusal by the RAM budget or the count ends the search. Layers go
    last to first, as llama.cpp offloads them; the compute buffer and the CUDA overhead are
    counted whatever the layer count (:func:`device_costs`, :func:`gpu_budgets`). Raises the
    :func:`refusal` of the first try when none fits (``held_names``: the models of handles in use).
    """
    if s.main_gpu and s.main_gpu >= max(len(gpus), 1):
        raise SettingsError(
            f"main_gpu={s.main_gpu} for model {name!r}, but llama.cpp sees {len(gpus)} GPU(s) "
            f"(numbered from 0). Use a smaller main_gpu."
        )
    budgets = gpu_budgets(pool, gpus)
    tries = layer_tries(model_path, s, mmproj, bool(gpus))
    first_refusal: NoRoom | None = None
    for est in tries:
        try:
            keys = plan(
                residents,
                ram_budget,
                incoming=est.ram if gpus else est.total,
                max_count=pool.max_count,
                budgets=budgets,
                incomings=device_costs(est, s, gpus),
            )
        except NoRoom as exc:
            first_refusal = first_refusal or exc
            if exc.budget_name == "":
                break
            continue
        return est, keys
    assert first_refusal is not None
    raise refusal(name, tries[0], first_refusal, pool, held_names) from None


def _budget_words(settings: PoolSettings) -> tuple[str, str]:
    """Where the RAM budget was set, and how to raise it there."""
    return {
        "auto": ("auto: 80% of memory", "set a larger MODELFIX_MEMORY_BUDGET"),
        "configure": (
            "set by a front-end option or modelfix.configure()",
            "raise it where it was set (--modelfix-memory-budget, modelfix_memory_budget, "
            "modelfix.configure(memory_budget=...))",
        ),
    }.get(settings.budget_origin, (settings.budget_origin, f"raise {settings.budget_origin}"))


def ram_budget(settings: PoolSettings) -> float:
    """The RAM budget in bytes: memory_budget, else (auto) 80% of the machine's memory."""
    return settings.memory_budget if settings.memory_budget is not None else 0.8 * memory_capacity(False)


def check_weights(name: str, weights: int, settings: PoolSettings) -> None:
    """Refuse model ``name`` if its pinned ``weights`` alone exceed the RAM budget of a build that
    keeps them all in RAM: known from the lockfile's sizes, before any byte is fetched."""
    budget = ram_budget(settings)
    if weights > budget:
        source, raise_it = _budget_words(settings)
        raise MemoryBudgetError(
            f"cannot load model {name!r}: its weights alone are {format_size(weights)} but the memory budget "
            f"is {format_size(budget)} ({source}), so nothing was fetched for it. To load it, {raise_it}, "
            "or pin a smaller quantization."
        )

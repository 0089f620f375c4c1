"""Load settings and pool settings: what they are, and which layer each value came from.

A handle's *load settings* are the keyword arguments of ``llama_cpp.Llama``
that modelfix exposes. Each is taken from the first layer that sets it::

    1. call        modelfix.load("chat", n_ctx=4096)
    2. frontend    options a front end passes (pytest --modelfix-gpu-layers, %load_model --n-ctx):
                   the ``load_options`` of its :class:`~modelfix.Project`
    3. env         MODELFIX_GPU_LAYERS, MODELFIX_N_CTX, MODELFIX_REPACK, ... (read at every load)
    4. lockfile    [models.chat] n_ctx = 2048 (reproducibility settings only)
    5. default     llama_cpp.Llama's own defaults, except n_gpu_layers ("auto" when
                   the build can offload: as many layers as the GPU budget holds, chosen
                   by the pool at load; else 0), verbose (off) and repack ("auto": on
                   unless the backend probe found it crashes)

then the ``modelfix_adjust_settings`` plugin hook may edit the result (origin
``plugin``). Unknown names and ill-typed values are a :class:`SettingsError`
that names the layer at fault and the valid names.

*Pool settings* (strategy, memory budget, keep-alive, max count) describe the
process, not a handle: explicit arguments (``modelfix.pool.configure``) win
over ``MODELFIX_*`` variables, which win over the strategy's preset.

Everything is read when used, never at import, so a test can set a variable
and the next load sees it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import SettingsError
from .eviction import parse_size
from .hooks import plugin_manager
from .setting_values import CONVERTERS, LLAMA_DEFAULT_SEED, MAX_TOKENS, SPLIT_MODES, check_setting

__all__ = [
    "LoadSettings",
    "ResolvedSettings",
    "PoolSettings",
    "STRATEGIES",
    "LLAMA_DEFAULT_SEED",
    "repeatable_seed",
    "setting_names",
    "env_var",
    "resolve_settings",
    "resolve_pool_settings",
    "parse_duration",
    "parse_memory_budget",
    "check_setting",
    "check_settings",
    "MAX_TOKENS",
]


def repeatable_seed(seed: int) -> int:
    """The seed a test runs with: ``seed``, or 0 where it is llama.cpp's "random" (so that outputs repeat)."""
    return 0 if seed in (LLAMA_DEFAULT_SEED, -1) else seed


@dataclass(frozen=True)
class LoadSettings:
    """The effective settings a handle is built with (part of its pool key)."""

    n_gpu_layers: int | str = 0  # or "auto": the pool chooses at load (Estimate.gpu_layers)
    main_gpu: int = 0
    tensor_split: tuple[float, ...] | None = None
    split_mode: str = "layer"  # "none", "layer", "row": llama_cpp.LLAMA_SPLIT_MODE_*
    flash_attn: bool = False
    offload_kqv: bool = True
    n_ctx: int = 512
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int | None = None
    n_threads_batch: int | None = None
    use_mmap: bool = True
    use_mlock: bool = False
    seed: int = LLAMA_DEFAULT_SEED
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    chat_format: str | None = None
    embedding: bool = False
    mmproj: bool = False
    verbose: bool = False
    # llama.cpp's weight repacking (use_extra_bufts): "auto" follows modelfix.probe's verdict
    repack: str = "auto"

    def llama_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``llama_cpp.Llama`` (``mmproj`` becomes a chat handler in the pool,
        ``repack`` a field of llama.cpp's model parameters)."""
        if self.n_gpu_layers == "auto":
            raise ValueError('n_gpu_layers="auto" is chosen by the pool at load time: replace it with the count')
        kwargs = dataclasses.asdict(self)
        del kwargs["mmproj"], kwargs["repack"]
        if self.tensor_split is not None:
            kwargs["tensor_split"] = list(self.tensor_split)
        kwargs["split_mode"] = SPLIT_MODES.index(self.split_mode)
        return kwargs


@dataclass(frozen=True)
class ResolvedSettings:
    """Effective settings plus, for each name, the layer it came from.

    Origins are ``call``, ``frontend``, ``env:MODELFIX_X``, ``lockfile``,
    ``default`` or ``plugin``; :meth:`rows` feeds a front end's table.
    """

    settings: LoadSettings
    origins: Mapping[str, str]

    def rows(self) -> list[tuple[str, Any, str]]:
        return [(name, getattr(self.settings, name), self.origins[name]) for name in setting_names()]


# Hardware settings read best without the "n_" (MODELFIX_GPU_LAYERS, the name
# users know from the docs), while the lockfile's error for a misplaced
# setting suggests MODELFIX_<NAME>: both spellings work, the first is the one shown.
_ENV_ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "n_gpu_layers": ("MODELFIX_GPU_LAYERS", "MODELFIX_N_GPU_LAYERS"),
        "n_threads": ("MODELFIX_THREADS", "MODELFIX_N_THREADS"),
        "n_threads_batch": ("MODELFIX_THREADS_BATCH", "MODELFIX_N_THREADS_BATCH"),
    }
)


@functools.cache
def setting_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(LoadSettings))


@functools.cache
def _field_defaults() -> Mapping[str, Any]:
    return MappingProxyType({f.name: f.default for f in dataclasses.fields(LoadSettings)})


def env_var(name: str) -> str:
    """The environment variable for setting ``name`` (``n_ctx`` → ``MODELFIX_N_CTX``)."""
    return _ENV_ALIASES.get(name, (f"MODELFIX_{name.upper()}",))[0]


def _check(name: str, value: Any, where: str) -> Any:
    convert = CONVERTERS.get(name)
    if convert is None:
        raise SettingsError(f"unknown setting {name!r} ({where}). Valid settings: {', '.join(setting_names())}.")
    try:
        return convert(value)
    except ValueError as exc:
        raise SettingsError(f"setting {name} = {value!r} ({where}) is invalid: expected {exc}.") from None


def check_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``settings`` checked as a load checks them, an error naming ``where`` they were written
    (a pytest marker), which a front end knows and the load's ``argument of load(...)`` does not."""
    return {k: _check(k, v, where) for k, v in settings.items() if v is not None}


def _from_env() -> dict[str, tuple[Any, str]]:
    found = {}
    for name in setting_names():
        for var in _ENV_ALIASES.get(name, (f"MODELFIX_{name.upper()}",)):
            raw = os.environ.get(var)
            if raw is not None and raw.strip() != "":
                found[name] = (_check(name, raw, f"environment variable {var}"), f"env:{var}")
                break
    return found


def _default(name: str) -> Any:
    if name == "n_gpu_layers":
        import llama_cpp

        # "auto": as many layers as the GPU budget holds (the pool decides at load); where the
        # build cannot offload, 0 keeps llama.cpp from pretending (and the pool budgets RAM only).
        return "auto" if llama_cpp.llama_supports_gpu_offload() else 0
    return _field_defaults()[name]


def resolve_settings(
    name: str,
    call: Mapping[str, Any] | None = None,
    *,
    frontend: Mapping[str, Any] | None = None,
    entry: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> ResolvedSettings:
    """Merge the layers for model ``name`` (highest first), run the plugin hook, check types.

    ``None`` in ``call`` or ``frontend`` means "not set here": a front end can
    pass every option it has without overriding lower layers. ``defaults`` are a
    front end's defaults, below the lockfile (origin ``"frontend default"``): the
    pytest plugin's share of the cores for each xdist worker.
    """
    layers: list[dict[str, tuple[Any, str]]] = [
        {k: (_check(k, v, f"argument of load({name!r})"), "call") for k, v in (call or {}).items() if v is not None},
        {k: (_check(k, v, "front-end option"), "frontend") for k, v in (frontend or {}).items() if v is not None},
        _from_env(),
        {k: (_check(k, v, f"[models.{name}] in the lockfile"), "lockfile") for k, v in (entry or {}).items()},
        {k: (_check(k, v, "front-end default"), "frontend default") for k, v in (defaults or {}).items()},
    ]
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for setting in setting_names():
        value, origin = next((layer[setting] for layer in layers if setting in layer), (None, "default"))
        values[setting] = _default(setting) if origin == "default" else value
        origins[setting] = origin

    adjusted = dict(values)
    plugin_manager().hook.modelfix_adjust_settings(name=name, settings=adjusted)
    for setting, value in adjusted.items():
        if setting not in values or value != values[setting]:
            values[setting] = _check(setting, value, "set by a modelfix_adjust_settings plugin")
            origins[setting] = "plugin"
    return ResolvedSettings(LoadSettings(**values), MappingProxyType(origins))


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``30``, ``"30s"``, ``"5m"``, ``"1h30m"``; negative or ``"inf"`` = forever.

    The same spelling local model servers use for their keep-alive.
    """
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}")
    if isinstance(value, (int, float)):
        return math.inf if value < 0 else float(value)
    text = value.strip().lower().replace(" ", "")
    if text in ("inf", "forever", "never"):
        return math.inf
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return math.inf if number < 0 else number
    negative = text.startswith("-")
    body = text.lstrip("-")
    parts = _DURATION_PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"bad duration {value!r}: use seconds or e.g. 30s, 5m, 1h30m, 0 (after use), -1 (forever)")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return math.inf if negative else seconds


# --- pool settings -------------------------------------------------------------


@dataclass(frozen=True)
class PoolSettings:
    """How the pool keeps handles: see :data:`STRATEGIES` for the presets.

    ``memory_budget`` is bytes of RAM, ``math.inf``, or ``None`` for *auto* (80% of RAM).
    ``gpu_memory_budget`` is bytes of VRAM per GPU, ``math.inf``, or ``None`` for *auto*
    (90% of each GPU's free memory when the pool first loads onto it).
    ``keep_alive`` is idle seconds before a handle is closed: ``0`` closes it
    when a call through it returns, ``math.inf`` never.
    """

    strategy: str = "ram"
    memory_budget: float | None = None
    keep_alive: float = 1800.0
    max_count: int | None = None
    # where memory_budget came from, for the refusal message: "configure", an env var, or "auto"
    budget_origin: str = "auto"
    gpu_memory_budget: float | None = None
    gpu_budget_origin: str = "auto"


STRATEGIES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "ram": MappingProxyType({"keep_alive": 1800.0, "max_count": None}),
        "ssd": MappingProxyType({"keep_alive": 60.0, "max_count": 1}),
        "none": MappingProxyType({"keep_alive": 0.0, "max_count": None}),
    }
)
_POOL_ENV = MappingProxyType(
    {
        "strategy": "MODELFIX_POOL_STRATEGY",
        "memory_budget": "MODELFIX_MEMORY_BUDGET",
        "keep_alive": "MODELFIX_KEEP_ALIVE",
        "max_count": "MODELFIX_MAX_LOADED",
        "gpu_memory_budget": "MODELFIX_GPU_MEMORY_BUDGET",
    }
)


def parse_memory_budget(value: Any) -> float | None:
    """Bytes for a memory budget (``8GB``, ``2GiB``, a number), ``None`` for ``auto``; ``inf`` allowed."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        size = parse_size(value, "memory budget")
    except ValueError:  # also zero, negative and NaN budgets
        raise ValueError(
            f"bad memory budget {value!r}: use bytes (more than zero), a size like 8GB or 2GiB, auto or inf"
        ) from None
    return size


def _max_count(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "inf", "unlimited")):
        return None
    count = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"bad max count {value!r}: a positive integer or 'none'")
    return count


def _strategy(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in STRATEGIES:
        raise ValueError(f"unknown pool strategy {value!r}: use one of {', '.join(STRATEGIES)}")
    return text


_POOL_CONVERTERS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
    {
        "strategy": _strategy,
        "memory_budget": parse_memory_budget,
        "keep_alive": parse_duration,
        "max_count": _max_count,
        "gpu_memory_budget": parse_memory_budget,
    }
)


def resolve_pool_settings(explicit: Mapping[str, Any] | None = None) -> PoolSettings:
    """Explicit values (``None`` = unset) > ``MODELFIX_*`` variables > the strategy's preset."""
    chosen: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for field, var in _POOL_ENV.items():
        value = (explicit or {}).get(field)
        where = "pool argument"
        if value is None and os.environ.get(var, "").strip():
            value, where = os.environ[var], f"environment variable {var}"
        if value is not None:
            try:
                chosen[field] = _POOL_CONVERTERS[field](value)
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"{field} ({where}): {exc}.") from None
            origins[field] = var if where.startswith("environment") else "configure"
    unknown = set(explicit or {}) - set(_POOL_ENV)
    if unknown:
        raise SettingsError(f"unknown pool setting {sorted(unknown)[0]!r}. Valid: {', '.join(_POOL_ENV)}.")
    strategy = chosen.get("strategy", PoolSettings.strategy)
    preset = STRATEGIES[strategy]
    return PoolSettings(
        strategy=strategy,
        memory_budget=chosen.get("memory_budget"),
        keep_alive=chosen.get("keep_alive", preset["keep_alive"]),
        max_count=chosen["max_count"] if "max_count" in chosen else preset["max_count"],
        budget_origin=origins.get("memory_budget", "auto") if chosen.get("memory_budget") is not None else "auto",
        gpu_memory_budget=chosen.get("gpu_memory_budget"),
        gpu_budget_origin=origins.get("gpu_memory_budget", "auto")
        if chosen.get("gpu_memory_budget") is not None
        else "auto",
    )

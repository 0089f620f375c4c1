"""The pytest plugin's options: ``--modelfix-*`` on the command line, ``modelfix_*`` in the ini file.

::

    --modelfix-lock PATH            modelfix_lock             the lockfile (default: nearest upward)
    --modelfix-cache-dir DIR        modelfix_cache_dir        the store root
    --modelfix-readonly-cache DIR   modelfix_readonly_cache   read-only caches in front (repeatable)
    --modelfix-offline              modelfix_offline          never touch the network
    --modelfix-gpu-layers auto|N    modelfix_gpu_layers       n_gpu_layers for every handle
    --modelfix-gpu-memory-budget S  modelfix_gpu_memory_budget  the pool's VRAM budget per GPU
    --modelfix-memory-budget SIZE   modelfix_memory_budget    the pool's budget per process
    --modelfix-preload              modelfix_preload          load the marked models before the tests
    --modelfix-strict               modelfix_strict           require_gpu=True fails rather than skips

They are read once, into :class:`PluginOptions` (command line > ini > the core's environment
variables and defaults, which the core reads when it is used), which builds the run's
:class:`~modelfix.Project`. A memory budget that, times the xdist workers, exceeds the RAM is a
warning pointing at the line that set it (:func:`warn_budget`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, final

import pytest

if TYPE_CHECKING:
    from .project import Project

__all__ = ["ModelfixWarning", "PluginOptions", "add_options", "cores", "thread_share", "warn_budget"]


class ModelfixWarning(pytest.PytestWarning):
    """A modelfix configuration that will likely misbehave (e.g. budget × workers > RAM)."""


_OPTIONS: tuple[tuple[str, Literal["string", "linelist", "bool"], str, dict[str, Any]], ...] = (
    # (name, ini type, help, extra argparse keywords)
    (
        "lock",
        "string",
        "model-lock.toml to use (default: nearest upward from the invocation folder)",
        {"metavar": "PATH"},
    ),
    ("cache_dir", "string", "store root (default: $MODELFIX_CACHE_DIR or the user cache folder)", {"metavar": "DIR"}),
    (
        "readonly_cache",
        "linelist",
        "a read-only cache served in place in front of the store, never written (repeatable; the ini key "
        "takes one per line; default: $MODELFIX_READONLY_CACHES)",
        {"metavar": "DIR", "action": "append"},
    ),
    (
        "offline",
        "bool",
        "never touch the network: a model missing from the cache fails its tests",
        {"action": "store_true", "default": None},
    ),
    (
        "gpu_layers",
        "string",
        "n_gpu_layers for every handle: auto (as many as the GPU budget holds; the default where "
        "the build offloads), -1 (all) or a number",
        {"metavar": "auto|N"},
    ),
    ("memory_budget", "string", "pool memory budget per process: bytes, 8GB, auto or inf", {"metavar": "SIZE"}),
    (
        "gpu_memory_budget",
        "string",
        "pool VRAM budget per GPU: bytes, 8GB, auto (90% of free VRAM) or inf",
        {"metavar": "SIZE"},
    ),
    (
        "preload",
        "bool",
        "load every model the collected tests mark before the first test runs",
        {"action": "store_true", "default": None},
    ),
    (
        "strict",
        "bool",
        "make require_gpu=True an error (not a skip) on builds without GPU offload",
        {"action": "store_true", "default": None},
    ),
)


def add_options(parser: pytest.Parser) -> None:
    """The ``--modelfix-*`` options and their ``modelfix_*`` ini keys."""
    group = parser.getgroup("modelfix", "modelfix: pinned llama.cpp models")
    for name, ini_type, text, extra in _OPTIONS:
        flag = "--modelfix-" + name.replace("_", "-")
        # argparse %-formats help texts when it prints them (--help): a literal % must be doubled
        group.addoption(flag, dest=f"modelfix_{name}", help=text.replace("%", "%%"), **extra)
        parser.addini(f"modelfix_{name}", f"{text} ({flag})", type=ini_type, default=None)


@final
@dataclass(frozen=True)
class PluginOptions:
    """The plugin's options, resolved once: command line > ini > (the core's env and defaults).

    ``None`` means "not set here": the core then reads its ``MODELFIX_*``
    variables and defaults when it is used.
    """

    lock: Path | None = None
    cache_dir: Path | None = None
    readonly_caches: tuple[Path, ...] | None = None
    offline: bool | None = None
    gpu_layers: int | str | None = None
    memory_budget: str | None = None
    gpu_memory_budget: str | None = None
    preload: bool = False
    strict: bool = False

    @classmethod
    def from_config(cls, config: pytest.Config) -> PluginOptions:
        def get(name: str) -> tuple[Any, Path]:
            # A relative path is relative to where it was written: the invocation
            # folder for the command line, the ini file's folder for the ini.
            value = config.getoption(f"modelfix_{name}")
            if value is not None:
                return value, config.invocation_params.dir
            base = config.inipath.parent if config.inipath else config.rootpath
            value = config.getini(f"modelfix_{name}")
            return (value if value not in ("", None) else None), base

        def path(name: str) -> Path | None:
            value, base = get(name)
            return None if value is None else base / Path(os.path.expanduser(value))

        def paths(name: str) -> tuple[Path, ...] | None:
            values, base = get(name)
            return None if not values else tuple(base / Path(os.path.expanduser(v)) for v in values)

        layers, _ = get("gpu_layers")
        gpu_layers = None
        if layers is not None:
            from .setting_values import check_setting

            try:
                gpu_layers = check_setting("n_gpu_layers", layers)
            except ValueError as exc:
                raise pytest.UsageError(
                    f"--modelfix-gpu-layers / modelfix_gpu_layers: expected {exc}, got {layers!r}"
                ) from None
        budgets: dict[str, str | None] = {}
        for name in ("memory_budget", "gpu_memory_budget"):
            budgets[name], _ = get(name)
            if budgets[name] is not None:
                from .settings import parse_memory_budget

                try:
                    parse_memory_budget(budgets[name])
                except ValueError as exc:
                    flag = "--modelfix-" + name.replace("_", "-")
                    raise pytest.UsageError(f"{flag} / modelfix_{name}: {exc}") from None
        return cls(
            lock=path("lock"),
            cache_dir=path("cache_dir"),
            readonly_caches=paths("readonly_cache"),
            offline=get("offline")[0],
            gpu_layers=gpu_layers,
            memory_budget=budgets["memory_budget"],
            gpu_memory_budget=budgets["gpu_memory_budget"],
            preload=bool(get("preload")[0]),
            strict=bool(get("strict")[0]),
        )

    def project(self, lock: Path, workers: int | None = None) -> Project:
        """The run's :class:`~modelfix.Project` on ``lock``: these cache options, and the load
        settings this front end contributes (its layer in the settings precedence); in one of
        ``workers`` xdist workers, its share of the cores as the default thread counts."""
        from .project import Project

        threads = thread_share(workers or 1)
        return Project(
            lock,
            cache_dir=self.cache_dir,
            offline=self.offline,
            readonly_caches=self.readonly_caches,
            load_options={"n_gpu_layers": self.gpu_layers},
            load_defaults={"n_threads": threads, "n_threads_batch": threads} if threads else None,
        )


def thread_share(workers: int) -> int | None:
    """Each of ``workers`` xdist workers' share of this machine's cores (at least 1): the default
    ``n_threads`` and ``n_threads_batch`` of its handles; None for one process (llama.cpp's own).

    llama.cpp's threads spin while they wait for work, so N workers each running as many threads
    as there are cores take turns on every operation: on 2 cores, 2 workers decoding with 2
    threads each made every completion of a 270M model 5x slower (150 ms instead of 30 ms).
    A value set anywhere (marker, ``MODELFIX_THREADS``, lockfile, hook) still wins.
    """
    if workers < 2:
        return None
    return max(1, cores() // workers)


def cores() -> int:
    """The cores this process may run on (its affinity: a container's CPU set, ``taskset``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def warn_budget(config: pytest.Config, options: PluginOptions, workers: int) -> None:
    """Warn (at the setting's own line) when the memory budget times the xdist workers exceeds the RAM."""
    from .eviction import format_size, parse_size

    raw = options.memory_budget or os.environ.get("MODELFIX_MEMORY_BUDGET")
    # `auto` is sized by each worker against what it sees, `inf` asks for no
    # limit: only a fixed number can be multiplied out here.
    if not raw or raw.strip().lower() == "auto":
        return
    try:
        budget = parse_size(raw, "memory budget")
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return  # a bad budget is reported by the pool, at the first load
    if not math.isinf(budget) and budget * workers > ram:
        setting, (filename, line) = _budget_origin(config, raw)
        warning = ModelfixWarning(
            f"modelfix memory budget {format_size(budget)} ({setting}) × {workers} xdist workers = "
            f"{format_size(budget * workers)}, more than this machine's {format_size(ram)} of RAM: "
            f"lower it to {format_size(ram // workers)} or use fewer workers."
        )
        _warn_at(config, warning, filename, line)


def _budget_origin(config: pytest.Config, raw: str) -> tuple[str, tuple[str, int]]:
    """Where the budget was set: (the setting as the user wrote it, (file, line) for the warning's location)."""
    if config.getoption("modelfix_memory_budget") is not None:
        return f"--modelfix-memory-budget {raw}", ("<command line>", 1)
    if config.inipath is not None and config.getini("modelfix_memory_budget") not in ("", None):
        lines = config.inipath.read_text(encoding="utf-8", errors="replace").splitlines()
        line = next((i for i, text in enumerate(lines, 1) if text.strip().startswith("modelfix_memory_budget")), 1)
        return f"modelfix_memory_budget in {config.inipath.name}", (str(config.inipath), line)
    return f"MODELFIX_MEMORY_BUDGET={raw}", ("<environment>", 1)


def _warn_at(config: pytest.Config, warning: Warning, filename: str, line: int) -> None:
    """``config.issue_config_time_warning(warning)``, located at ``filename:line`` rather than in this plugin.

    pytest takes a configuration warning's location from the frame that issues it, and shows
    that frame's file, line and source text. So the call is made from code compiled under the
    user's file name and line: the summary then points at their setting (an ini line, or
    ``<command line>``), and the warnings filters (-W, filterwarnings) apply as to any warning.
    """
    call = compile("\n" * (line - 1) + "issue(warning, stacklevel=2)", filename, "exec")
    exec(call, {"issue": config.issue_config_time_warning, "warning": warning})

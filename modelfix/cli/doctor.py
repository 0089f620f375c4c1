"""``modelfix doctor``: one screen about this machine's llama.cpp, cache, lockfile and Hub, for a bug report.

::

    $ modelfix doctor
    modelfix 0.1.0 · llama-cpp-python 0.3.36 · huggingface_hub 1.2.0 · Python 3.11.7 · Linux 6.8.0 x86_64
    llama.cpp   CPU : SSE3 = 1 | ... | AVX512 = 1 | ... | REPACK = 1 |
    cpu         avx2 avx512bw avx512f ... (no AMX)
    gpu         no offload (this llama.cpp build has no GPU backend)
    backend     repack on (the backend probe's quantized decode ran)
                verdict ~/.cache/modelfix/probe/9f3c….json, probed in 0.75 s
    read-only   /opt/models · 3 blobs, 520.1 MB · served in place: chat   (each read-only cache, if any)
    cache       ~/.cache/modelfix · 7 blobs, 1.2 GB · cap unlimited
    lockfile    ./model-lock.toml · 2 models: chat (cached), split (missing)
    hub         https://huggingface.co (default) · token absent · offline no
    settings    MODELFIX_REPACK=off
    ok: nothing found that would stop a load

``--json`` prints the same as one object. The exit status is 0 when nothing
found would stop a load, 1 otherwise (each problem is listed with its fix).
The doctor runs the backend probe if this host has no verdict yet. A Hub token
is reported as present or absent, never shown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelfixError, redact

if TYPE_CHECKING:
    from ..config import CacheSettings
    from ..project import Project

__all__ = ["register", "report"]

_OFFLINE_VARS = ("MODELFIX_OFFLINE", "HF_HUB_OFFLINE")
_CPU_FLAGS = ("avx", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "doctor", help="versions, llama.cpp build and backend verdict, GPU, cache, lockfile, Hub: for a bug report"
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from . import project

    found = report(project(args), lock=args.lock, offline=args.offline)
    print(json.dumps(found, indent=1) if args.json else _text(found))
    return 1 if found["problems"] else 0


def report(project: Project, *, lock: str | None = None, offline: bool | None = None) -> dict[str, Any]:
    """Everything ``doctor`` shows about ``project`` (``lock`` and ``offline``: as given on the command
    line, if they were), as plain data; ``problems`` lists what would stop a load."""
    problems: list[str] = []
    data: dict[str, Any] = {"versions": _versions(), "platform": _platform()}
    data["llama_cpp"] = _llama_cpp(problems)
    try:
        settings = project.cache_settings
    except ModelfixError as exc:
        problems.append(str(exc))
        settings = None
    data["cache"] = cache = _cache(project, settings, bool(offline), problems)
    layers = [Path(layer["root"]) for layer in cache["readonly"]]
    data["backend"] = _backend(cache["root"], layers, problems) if data["llama_cpp"] and cache["root"] else None
    data["lockfile"] = _lockfile(project, lock, settings is not None, problems)
    data["hub"] = _hub()
    data["settings"] = _settings(problems)
    data["problems"] = [redact(p) for p in problems]
    return data


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str | None]:
    import platform  # here, not at the top: every `modelfix` command imports this module (1.5 ms)

    from .. import __version__

    return {
        "modelfix": __version__,
        "llama-cpp-python": _version("llama_cpp_python"),
        "huggingface_hub": _version("huggingface_hub"),
        "python": platform.python_version(),
    }


def _platform() -> dict[str, Any]:
    import platform

    from ..probe import _cpu_flags

    flags = set(_cpu_flags().split())
    return {
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": sys.executable,
        "cpu_flags": [f for f in _CPU_FLAGS if f in flags],
    }


def _llama_cpp(problems: list[str]) -> dict[str, Any] | None:
    try:
        import llama_cpp
    except Exception as exc:  # a broken build fails at import, with anything from OSError to a ctypes error
        problems.append(f"llama_cpp does not import ({type(exc).__name__}: {exc}): reinstall llama-cpp-python")
        return None
    return {
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip(),
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "devices": _devices(),
        "library": str(getattr(getattr(llama_cpp.llama_cpp, "_lib", None), "_name", "") or ""),
    }


def _devices() -> list[dict[str, Any]]:
    """ggml's devices (CPU, GPUs...) with their memory; llama-cpp-python binds no wrapper for this API."""
    import ctypes  # here: ctypes costs every `modelfix` command 2 ms otherwise

    try:
        from llama_cpp._ggml import libggml as lib

        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes, lib.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
        for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(lib, name).argtypes, getattr(lib, name).restype = [ctypes.c_void_p], ctypes.c_char_p
        lib.ggml_backend_dev_type.argtypes, lib.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
        size_p = ctypes.POINTER(ctypes.c_size_t)
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, size_p, size_p]
        found = []
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            free, total = ctypes.c_size_t(), ctypes.c_size_t()
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            found.append(
                {
                    "name": (lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                    "description": (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                    "type": {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}.get(lib.ggml_backend_dev_type(dev), "other"),
                    "memory": total.value,
                }
            )
        return found
    except Exception:  # an older or unusual build: no device list, the rest of the report still stands
        return []


def _backend(root: str, layers: list[Path], problems: list[str]) -> dict[str, Any]:
    from .. import probe
    from ..errors import BackendError

    text = probe.describe(Path(root), probe_now=True, layers=layers)
    try:
        found = probe.verdict(Path(root), layers=layers)
    except BackendError as exc:
        problems.append(str(exc))
        return {"text": text, "verdict": None}
    if not found.usable and os.environ.get("MODELFIX_REPACK", "").strip().lower() not in ("on", "off"):
        problems.append(
            f"{found.build} fails on this CPU even without repacking ({found.crashed}): loads refuse to start. "
            f"Rebuild llama-cpp-python: {probe.PORTABLE_BUILD}"
        )
    return {"text": text, "verdict": found.as_dict()}


def _cache(project: Project, settings: CacheSettings | None, offline: bool, problems: list[str]) -> dict[str, Any]:
    from ..care import usage

    if settings is None:
        return {"root": None, "blobs": 0, "bytes": 0, "max_size": None, "offline": offline, "readonly": []}
    *layers, store = project.stores()
    found = usage(store)
    shown = []
    for layer in layers:
        if not os.path.isdir(layer.root):
            problems.append(
                f"the read-only cache {layer.root} is not a folder here: check MODELFIX_READONLY_CACHES (or "
                "--readonly-cache, --modelfix-readonly-cache) and the mount"
            )
        held = usage(layer)
        models = sorted({m for view in held.views for m in view.models})
        shown.append({"root": str(layer.root), "blobs": held.blobs, "bytes": held.blob_bytes, "models": models})
    return {
        "root": str(settings.root),
        "blobs": found.blobs,
        "bytes": found.blob_bytes,
        "max_size": None if settings.max_size == float("inf") else settings.max_size,
        "offline": settings.offline,
        "writable": found.readonly is None,
        "why_readonly": found.readonly,
        "readonly": shown,
    }


def _lockfile(project: Project, lock: str | None, cached: bool, problems: list[str]) -> dict[str, Any] | None:
    """The lockfile and its models' cache states (``cached``: the cache settings could be resolved)."""
    from ..errors import LockError
    from ..lockfile import find_lockfile

    try:
        path = find_lockfile(lock)
    except LockError:
        return None  # outside a project: nothing to load by name, nothing wrong
    try:
        lockfile = project.lockfile
    except ModelfixError as exc:
        problems.append(str(exc))
        return {"path": str(path), "models": {}}
    if not cached:
        return {"path": str(lockfile.path), "models": {}}
    offline = project.cache_settings.offline
    models = {}
    for name, entry in lockfile.entries.items():
        state = project.cached_state(entry) if entry.is_pinned else "not pinned"
        models[name] = {"source": entry.source, "state": state}
        if state == "not pinned":
            problems.append(f"model {name!r} is not pinned ({lockfile.where(name)}): run `modelfix lock`")
        elif state != "cached" and offline:
            problems.append(f"model {name!r} is not cached and offline mode is on: run `modelfix sync {name}` online")
    return {"path": str(lockfile.path), "models": models}


def _hub() -> dict[str, Any]:
    from ..config import env_flag
    from ..sources import hub_token

    endpoint = os.environ.get("HF_ENDPOINT")
    if not endpoint:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    try:
        token = "present" if hub_token() else "absent"
    except Exception:  # a broken token file: say so, never what is in it
        token = "unreadable"
    return {
        "endpoint": redact(endpoint),  # a mirror's URL may carry user:password@
        "endpoint_from": "HF_ENDPOINT" if os.environ.get("HF_ENDPOINT") else "default",
        "token": token,
        "offline": {var: env_flag(var) for var in _OFFLINE_VARS},
    }


def _settings(problems: list[str]) -> dict[str, str]:
    """The ``MODELFIX_*`` variables set (load settings checked as a load checks them; no URL credentials)."""
    from ..settings import resolve_settings

    chosen = {name: redact(raw) for name, raw in sorted(os.environ.items()) if name.startswith("MODELFIX_")}
    try:
        resolve_settings("doctor")
    except ModelfixError as exc:
        problems.append(str(exc))
    return chosen


def _size(n: float | None) -> str:
    from ..eviction import format_size

    return "unlimited" if n is None else format_size(n)


def _text(r: dict[str, Any]) -> str:
    v, p = r["versions"], r["platform"]
    lines = [
        f"modelfix {v['modelfix']} · llama-cpp-python {v['llama-cpp-python']} · huggingface_hub "
        f"{v['huggingface_hub']} · Python {v['python']} · {p['system']}"
    ]
    llama = r["llama_cpp"]
    flags = " ".join(p["cpu_flags"]) or "none of the wide ones"
    amx = "" if "amx_int8" in p["cpu_flags"] else " (no AMX)"
    lines.append(f"llama.cpp   {llama['system_info'] if llama else 'does not import'}")
    lines.append(f"cpu         {flags}{amx}")
    if llama:
        gpus = [d for d in llama["devices"] if d["type"] != "cpu"]
        if not llama["gpu_offload"]:
            lines.append("gpu         no offload (this llama.cpp build has no GPU backend)")
        else:
            names = ", ".join(f"{d['name']} {d['description']} ({_size(d['memory'])})" for d in gpus) or "none found"
            lines.append(f"gpu         offload supported · devices: {names}")
    backend = r["backend"]
    if backend:
        lines.append(f"backend     {backend['text']}")
        verdict = backend["verdict"]
        if verdict:
            where = verdict["path"] or "kept in memory (the cache cannot be written)"
            lines.append(f"            verdict {where}, probed in {verdict['seconds']:.2f} s")
    c = r["cache"]
    for layer in c["readonly"]:
        models = ", ".join(layer["models"]) or "no models"
        held = f"{layer['blobs']} blobs, {_size(layer['bytes'])}"
        lines.append(f"read-only   {layer['root']} · {held} · served in place: {models}")
    if c["root"]:
        readonly = (
            f" · read-only here ({c['why_readonly']}): served in place, nothing written" if c["why_readonly"] else ""
        )
        held = f"{c['blobs']} blobs, {_size(c['bytes'])}"
        lines.append(f"cache       {c['root']} · {held} · cap {_size(c['max_size'])}{readonly}")
    lock = r["lockfile"]
    if lock is None:
        lines.append("lockfile    none found (searched upward from here; --lock or MODELFIX_LOCK name one)")
    else:
        models = ", ".join(f"{n} ({m['state']})" for n, m in lock["models"].items()) or "no models"
        lines.append(f"lockfile    {lock['path']} · {models}")
    h = r["hub"]
    offline = ", ".join(f"{k}=1" for k, on in h["offline"].items() if on) or "no"
    lines.append(f"hub         {h['endpoint']} ({h['endpoint_from']}) · token {h['token']} · offline {offline}")
    if r["settings"]:
        lines.append(f"settings    {' '.join(f'{k}={v}' for k, v in r['settings'].items())}")
    if r["problems"]:
        lines += ["problems:", *(f"  - {p}" for p in r["problems"])]
    else:
        lines.append("ok: nothing found that would stop a load")
    return "\n".join(lines)

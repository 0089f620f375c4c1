"""``modelfix inspect NAME``: everything about one pinned model, without touching the network.

What the lockfile pins, which of those files the cache holds, what the GGUF
header says (read from the cached first model file), the settings a load would
use with the layer each comes from, and the memory the pool would budget::

    $ modelfix inspect tiny --n-ctx 4096
    tiny  model-lock.toml:5
      source    modelfix-demo/tiny-GGUF:Q4_0 @ d0693e3c77da…
      files     3 files, 236.3 KB, cached
                model   tiny-Q4_0.gguf      218.9 KB  sha256:97d76f6252ef…  cached
      view      ~/.cache/modelfix/views/cf55…/tiny-Q4_0.gguf
      gguf      llama "tiny" · Q4_0 · 2 layers · 64 embd · 4 heads (4 kv) · ctx 512 trained · vocab 317
      memory    ≈ 36.5 MB at n_ctx 4096: weights 218.9 KB + KV cache 2.1 MB + compute 34.2 MB
      settings  n_ctx 4096 (call) · seed 42 (lockfile) · n_gpu_layers 0 (default) · …
      backend   repack on (the backend probe's quantized decode ran)

``--json`` prints the same as one JSON object per model, for scripts. The
header, the view and the estimate need the files cached (``modelfix sync``);
until then inspect says so instead of downloading. ``backend`` is how a load
would repack the weights: with ``repack = "auto"`` the backend probe's verdict
(probed first, once per machine, if this host has none; see :mod:`modelfix.probe`).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..eviction import format_size
from . import count

if TYPE_CHECKING:
    from ..config import CacheSettings
    from ..lockfile import Entry
    from ..project import Project

__all__ = ["register", "describe"]


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("inspect", help="show a model's pins, cache state, GGUF header, settings and memory")
    p.add_argument("names", nargs="*", metavar="NAME", help="models to show (default: all)")
    p.add_argument(
        "--n-ctx",
        type=int,
        default=None,
        metavar="N",
        help="context size for the settings and memory estimate (default: lockfile, then 512)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per model instead of text")
    p.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from . import project

    # Inspecting never downloads: offline whatever the environment says.
    chosen = project(args, offline=True)
    lockfile = chosen.lockfile
    names = args.names or list(lockfile.entries)
    reports = [describe(chosen, lockfile.entry(n), n_ctx=args.n_ctx) for n in names]
    if args.json:
        for report in reports:
            print(json.dumps(report))
    else:
        print("\n\n".join(_text(r) for r in reports) if reports else f"{lockfile.path}: no models yet")
    return 0


def describe(project: Project, entry: Entry, *, n_ctx: int | None = None) -> dict[str, Any]:
    """What ``inspect`` shows for ``entry`` of ``project``'s lockfile, as plain data (the ``--json`` output)."""
    from ..settings import resolve_settings

    lockfile, cache = project.lockfile, project.cache_settings
    where = project.stores()  # the read-only caches, then the store
    report: dict[str, Any] = {
        "name": entry.name,
        "where": lockfile.where(entry.name),
        "source": entry.source,
        "revision": entry.revision,
        "pinned": entry.is_pinned,
        "files": [{**pin.as_toml(), "cached": any(s.has(pin.sha256) for s in where)} for pin in entry.files],
        "size": entry.size,
        "cache": project.cached_state(entry) if entry.files else "unpinned",
        "view": None,
        "gguf": None,
        "memory": None,
    }
    resolved = resolve_settings(entry.name, {"n_ctx": n_ctx}, entry=entry.settings)
    report["settings"] = {
        name: {"value": _plain(value), "from": "--n-ctx" if origin == "call" else origin}
        for name, value, origin in resolved.rows()
    }
    report["backend"] = _backend(resolved.settings.repack, cache)
    if report["cache"] != "cached" or not entry.is_pinned:
        return report

    from ..estimate import CUDA_OVERHEAD, read_header

    m = project.files(entry.name)  # offline: links the cached blobs, fetches nothing
    header = read_header(m.model_path)
    s = resolved.settings
    cost = project.pool.fit(m.model_path, s, m.mmproj_path)  # on a GPU: the layers "auto" would offload
    report["view"] = str(m.model_path)
    report["gguf"] = {
        "architecture": header.architecture,
        "name": header.model_name,
        "file_type": _file_type(header.file_type),
        "n_layer": header.n_layer,
        "n_embd": header.n_embd,
        "n_head": header.n_head,
        "n_head_kv": max(header.n_head_kv, default=0),
        "n_ctx_train": header.n_ctx_train,
        "n_vocab": header.n_vocab,
        "split_count": header.split_count,
    }
    report["memory"] = {
        "n_ctx": cost.n_ctx,
        "weights": cost.weights,
        "kv_cache": cost.kv_cache,
        "compute": cost.compute,
        "total": cost.total,
        "gpu_layers": cost.gpu_layers,
        "of_layers": header.n_layer + 1,  # llama.cpp counts the output layer
        "vram": cost.gpu + (CUDA_OVERHEAD if cost.gpu else 0),
        "ram": cost.ram,
    }
    return report


def _backend(setting: str, cache: CacheSettings) -> dict[str, Any]:
    """How a load of this entry would repack: the setting, the verdict it follows, in words."""
    from ..errors import BackendError
    from ..probe import repack_text, verdict

    if setting != "auto":
        return {"repack": setting, "verdict": None, "text": repack_text(setting, None)}
    try:
        found = verdict(cache.root, layers=cache.layers)
    except BackendError as exc:
        return {"repack": None, "verdict": None, "text": f"backend probe failed: {exc}"}
    effective = None if found.repack == "broken" else found.repack
    return {"repack": effective, "verdict": found.as_dict(), "text": repack_text(setting, found)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _file_type(code: int | None) -> str | None:
    """llama.cpp's name for ``general.file_type`` (15 → ``Q4_K_M``)."""
    if code is None:
        return None
    import gguf

    try:
        return gguf.LlamaFileType(code).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"type {code}"


def _shown(name: str, value: Any) -> str:
    from ..settings import LLAMA_DEFAULT_SEED

    if value is None:
        return "auto"
    if name == "seed" and value == LLAMA_DEFAULT_SEED:
        return "random"
    if name == "n_gpu_layers" and value == -1:
        return "all"
    return str(value)


def _text(r: dict[str, Any]) -> str:
    lines = [f"{r['name']}  {r['where']}"]
    revision = f" @ {r['revision'][:12]}…" if r["revision"] and len(r["revision"]) > 12 else ""
    stale = "" if r["pinned"] or not r["files"] else "  (source changed since it was pinned: run `modelfix lock`)"
    lines.append(f"  source    {r['source']}{revision}{stale}")
    if not r["files"]:
        lines.append(f"  files     none pinned yet: run `modelfix lock --model {r['name']}`")
    else:
        lines.append(f"  files     {count(len(r['files']), 'file')}, {format_size(r['size'])}, {r['cache']}")
        width = max(len(f["path"]) for f in r["files"])
        for f in r["files"]:
            state = "cached" if f["cached"] else "missing"
            lines.append(
                f"            {f['role']:<7} {f['path']:<{width}}  {format_size(f['size']):>9}  "
                f"sha256:{f['sha256'][:12]}…  {state}"
            )
    if r["gguf"] is None:
        if r["files"] and r["cache"] != "cached":
            lines.append(
                f"  gguf      not cached: `modelfix sync {r['name']}` fetches it, then inspect reads the header"
            )
    else:
        g, mem = r["gguf"], r["memory"]
        lines.append(f"  view      {r['view']}")
        quant = f" · {g['file_type']}" if g["file_type"] else ""
        split = f" · {g['split_count']} parts" if g["split_count"] > 1 else ""
        lines.append(
            f'  gguf      {g["architecture"]} "{g["name"]}"{quant}{split} · {g["n_layer"]} layers · '
            f"{g['n_embd']} embd · {g['n_head']} heads ({g['n_head_kv']} kv) · "
            f"ctx {g['n_ctx_train']} trained · vocab {g['n_vocab']}"
        )
        lines.append(
            f"  memory    ≈ {format_size(mem['total'])} at n_ctx {mem['n_ctx']}: weights "
            f"{format_size(mem['weights'])} + KV cache {format_size(mem['kv_cache'])} + "
            f"compute {format_size(mem['compute'])}"
        )
        if mem["vram"]:
            asked = r["settings"]["n_gpu_layers"]["value"]
            how = (
                "auto: what fits in the GPU budget now"
                if asked == "auto"
                else f"n_gpu_layers {_shown('n_gpu_layers', asked)}"
            )
            lines.append(
                f"  gpu       {mem['gpu_layers']} of {mem['of_layers']} layers offloaded ({how}) · "
                f"VRAM ≈ {format_size(mem['vram'])} with the CUDA context · RAM ≈ {format_size(mem['ram'])}"
            )
    chosen = [f"{k} {_shown(k, v['value'])} ({v['from']})" for k, v in r["settings"].items() if v["from"] != "default"]
    defaults = [
        f"{k} {_shown(k, v['value'])}"
        for k, v in r["settings"].items()
        if v["from"] == "default" and k in ("n_ctx", "n_gpu_layers", "seed", "n_threads")
    ]
    lines.append(f"  settings  {' · '.join(chosen + defaults)}")
    lines.append(f"  backend   {r['backend']['text']}")
    return "\n".join(lines)

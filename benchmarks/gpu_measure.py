"""modelfix's GPU path, measured through its own pool: VRAM against the estimate, speed, swaps, unload.

Run on a GPU machine (``benchmarks/gpu_check.sh measure`` does; on a CPU build it runs with
n_gpu_layers 0 only, as a rehearsal)::

    python benchmarks/gpu_measure.py MODEL.gguf [MODEL.gguf ...] --out measure.json

For each model, n_gpu_layers 0 and all, in this one process (so the CUDA context is paid once,
as in a test session): load time, prompt and generation tokens/s, the process's GPU memory
(NVML) against modelfix's estimate (handle + CUDA_OVERHEAD; target within 15%). Then, with the
first two models: two models swapping under a GPU budget that holds one; the memory after
``unload``; ``n_gpu_layers="auto"`` under a budget that holds about half of a model.
Everything is a measurement printed with its ratio; nothing here fails on a value.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_survey import vram_used  # the scripts run from benchmarks/: NVML read the same way

from modelfix.estimate import CUDA_OVERHEAD, offload_supported
from modelfix.pool import Pool

MIB = 1 << 20
PROMPT = "The history of the river valley begins with the first settlers, who " * 8


def speed(llm: Any) -> dict[str, float]:
    tokens = llm.tokenize(PROMPT.encode())
    started = time.perf_counter()
    llm.eval(tokens)
    prompt_s = time.perf_counter() - started
    started = time.perf_counter()
    out = llm(PROMPT, max_tokens=64, temperature=0)
    gen_s = time.perf_counter() - started
    made = out["usage"]["completion_tokens"]
    return {"prompt_tps": len(tokens) / prompt_s, "gen_tps": made / gen_s if gen_s else 0.0}


def one(pool: Pool, path: Path, layers: int | str, name: str) -> dict[str, Any]:
    timed = pool.metrics().load_seconds.get(name, 0.0)  # the pool sums load times per name
    llm = pool.acquire(path, f"sha-{name}-{layers}", name, n_gpu_layers=layers, n_ctx=2048)
    llm.tokenize(b"x")  # acquire loaded it: the pool timed that load
    record = pool.record(llm)
    row: dict[str, Any] = {"model": name, "asked": layers, "gpu_layers": record.gpu_layers}
    row["load_s"] = pool.metrics().load_seconds.get(name, 0.0) - timed
    row.update(speed(llm))
    used = vram_used()
    est = record.estimate
    row["estimate_mib"] = (est.gpu + (CUDA_OVERHEAD if est.gpu else 0)) / MIB
    row["nvml_process_mib"] = used.get("process", 0) / MIB
    row["ratio"] = row["nvml_process_mib"] / row["estimate_mib"] if row["estimate_mib"] else None
    row["parts_mib"] = {
        k: v / MIB for k, v in [("weights", est.gpu_weights), ("kv", est.gpu_kv), ("compute", est.gpu_compute)]
    }
    pool.unload(llm)
    gc.collect()
    row["after_unload_mib"] = vram_used().get("process", 0) / MIB
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("measure.json"))
    args = parser.parse_args(argv)
    gpu = offload_supported()
    results: dict[str, Any] = {"offload": gpu, "cuda_overhead_mib": CUDA_OVERHEAD / MIB, "runs": []}
    pool = Pool(memory_budget="inf", gpu_memory_budget="inf", keep_alive=-1)
    for path in args.models:
        for layers in [0, -1] if gpu else [0]:
            try:
                row = one(pool, path, layers, path.stem)
            except Exception as exc:  # one failure must not hide the rest
                row = {"model": path.stem, "asked": layers, "error": f"{type(exc).__name__}: {exc}"}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    if gpu and len(args.models) >= 2:
        results["swap"] = swap(args.models[0], args.models[1])
        results["auto_partial"] = auto_partial(args.models[0])
    args.out.write_text(json.dumps(results, indent=1))
    return 0


def swap(a: Path, b: Path) -> dict[str, Any]:
    """Two models under a GPU budget that holds the larger one only: each call evicts the other."""
    from modelfix.estimate import estimate

    need = max(estimate(p, n_ctx=2048, n_gpu_layers=-1, offload=True).gpu for p in (a, b))
    pool = Pool(memory_budget="inf", gpu_memory_budget=CUDA_OVERHEAD + int(need * 1.2), keep_alive=-1)
    steps = []
    for path in (a, b, a, b):
        llm = pool.acquire(path, f"sha-{path.stem}", path.stem, n_gpu_layers=-1, n_ctx=2048)
        llm("Hello", max_tokens=4)
        steps.append(
            {
                "used": path.stem,
                "resident": [r.name for r in pool.loaded()],
                "vram_mib": vram_used().get("process", 0) / MIB,
            }
        )
    out = {"budget_mib": (CUDA_OVERHEAD + need * 1.2) / MIB, "steps": steps, "evictions": pool.metrics().evictions}
    pool.close()
    gc.collect()
    out["after_close_mib"] = vram_used().get("process", 0) / MIB
    print(json.dumps({"swap": out}), flush=True)
    return out


def auto_partial(path: Path) -> dict[str, Any]:
    """n_gpu_layers="auto" under a budget for about half the model: the layers chosen and the VRAM used."""
    from modelfix.estimate import estimate

    full = estimate(path, n_ctx=2048, n_gpu_layers=-1, offload=True)
    budget = CUDA_OVERHEAD + full.gpu_compute + (full.gpu_weights + full.gpu_kv) // 2
    pool = Pool(memory_budget="inf", gpu_memory_budget=budget, keep_alive=-1)
    llm = pool.acquire(path, f"sha-{path.stem}", path.stem, n_gpu_layers="auto", n_ctx=2048)
    llm("Hello", max_tokens=4)
    record = pool.record(llm)
    out = {
        "budget_mib": budget / MIB,
        "gpu_layers": record.gpu_layers,
        "of": full.gpu_layers,
        "estimate_mib": (record.estimate.gpu + CUDA_OVERHEAD) / MIB,
        "nvml_process_mib": vram_used().get("process", 0) / MIB,
    }
    pool.close()
    print(json.dumps({"auto_partial": out}), flush=True)
    return out


if __name__ == "__main__":
    raise SystemExit(main())

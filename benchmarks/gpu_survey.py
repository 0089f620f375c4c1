"""Raw GPU facts for modelfix's VRAM model, measured with plain llama-cpp-python (no modelfix in the loop).

Run on a machine with a CUDA build of llama-cpp-python (``benchmarks/gpu_check.sh survey`` does)::

    python benchmarks/gpu_survey.py MODEL.gguf [--out survey.jsonl] [--layers 0,12,-1] [--ctx 512,4096]

For each (n_gpu_layers, n_ctx, flash_attn) a fresh child process loads MODEL,
reads the GPU's memory through NVML at each step, processes a prompt,
generates, closes the ``Llama`` and reads the memory again; a second load and
close checks that nothing leaks. llama.cpp's own log (``verbose=True``) gives
the buffer sizes it allocated, per device::

    step            what is read
    before          NVML used, before llama_cpp is imported (no CUDA context yet)
    imported        after ``import llama_cpp``
    loaded          after ``Llama(...)``               + load seconds, llama.cpp's buffer sizes
    generated       after a prompt and a generation    + prompt and generation tokens/s
    closed          after ``llm.close()`` and ``gc.collect()``
    reloaded        after a second load
    reclosed        after the second close

One JSON object per configuration goes to ``--out``; a table goes to stdout.
Everything here is a measurement, not a test: it never fails on a value.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output|RS) buffer size =\s+([\d.]+) MiB")


def vram_used() -> dict[str, int]:
    """GPU memory in use (bytes): the device's total and, where NVML can see it, this process's."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML (a CPU machine rehearsing the script): nothing to read
        return {"device": 0}
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    found = {"device": int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)}
    try:
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                found["process"] = int(proc.usedGpuMemory)
    except pynvml.NVMLError:
        pass
    return found


def _child(config: dict) -> dict:
    result: dict = {"config": config, "memory": {"before": vram_used()}}
    started = time.perf_counter()
    import llama_cpp

    result["import_seconds"] = time.perf_counter() - started
    result["memory"]["imported"] = vram_used()
    result["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())

    def load() -> llama_cpp.Llama:
        return llama_cpp.Llama(
            model_path=config["model"],
            n_gpu_layers=config["n_gpu_layers"],
            n_ctx=config["n_ctx"],
            flash_attn=config["flash_attn"],
            verbose=True,
            seed=0,
        )

    started = time.perf_counter()
    llm = load()
    result["load_seconds"] = time.perf_counter() - started
    result["memory"]["loaded"] = vram_used()
    result["n_ctx"] = llm.n_ctx()

    prompt = llm.tokenize(b" hello world" * 400)[: max(16, min(512, config["n_ctx"] - 160))]
    started = time.perf_counter()
    llm.eval(prompt)
    seconds = time.perf_counter() - started
    result["prompt_tokens"], result["prompt_tokens_per_s"] = len(prompt), len(prompt) / seconds
    llm.reset()
    started = time.perf_counter()
    out = llm.create_completion("Hello", max_tokens=128, temperature=0)
    seconds = time.perf_counter() - started
    tokens = out["usage"]["completion_tokens"]
    result["generated_tokens"], result["generation_tokens_per_s"] = tokens, tokens / seconds
    result["memory"]["generated"] = vram_used()

    llm.close()
    del llm
    gc.collect()
    result["memory"]["closed"] = vram_used()
    llm = load()
    result["memory"]["reloaded"] = vram_used()
    llm.close()
    del llm
    gc.collect()
    result["memory"]["reclosed"] = vram_used()
    return result


def _run(config: dict, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    buffers: dict[str, float] = {}
    for device, kind, mib in _BUFFER.findall(proc.stderr):
        key = f"{device} {kind}"
        buffers[key] = buffers.get(key, 0.0) + float(mib)  # the second load repeats the first: halved below
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"config": config, "error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
    result = json.loads(lines[-1])
    result["buffers_mib"] = {k: v / 2 for k, v in buffers.items()}
    result["log_lines"] = [line for line in proc.stderr.splitlines() if "buffer size" in line or "offload" in line][:40]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="GGUF file to measure")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="survey.jsonl", help="JSON lines written here (default: survey.jsonl)")
    ap.add_argument("--layers", default="0,-1", help="n_gpu_layers values, comma-separated (default: 0,-1)")
    ap.add_argument("--ctx", default="512,4096", help="n_ctx values, comma-separated (default: 512,4096)")
    ap.add_argument("--flash-attn", default="0", help="flash_attn values (0/1), comma-separated (default: 0)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per configuration (default: 180)")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(json.loads(a.child))), flush=True)
        return 0
    if not a.model:
        ap.error("MODEL is required")
    out = Path(a.out)
    with out.open("a", encoding="utf-8") as sink:
        for fa in (bool(int(x)) for x in a.flash_attn.split(",")):
            for ctx in (int(x) for x in a.ctx.split(",")):
                for layers in (int(x) for x in a.layers.split(",")):
                    config = {"model": a.model, "n_gpu_layers": layers, "n_ctx": ctx, "flash_attn": fa}
                    try:
                        result = _run(config, a.timeout)
                    except subprocess.TimeoutExpired:
                        result = {"config": config, "error": "timeout"}
                    sink.write(json.dumps(result) + "\n")
                    sink.flush()
                    _print(result)
    return 0


def _print(result: dict) -> None:
    c = result["config"]
    head = f"{Path(c['model']).name} ngl={c['n_gpu_layers']:>3} ctx={c['n_ctx']:>5} fa={int(c['flash_attn'])}"
    if "error" in result:
        print(f"{head}  ERROR {result['error']}", flush=True)
        return
    mem = {k: v.get("process", v["device"]) / 2**20 for k, v in result["memory"].items()}
    gpu = sum(v for k, v in result["buffers_mib"].items() if k.startswith("CUDA"))
    print(
        f"{head}  load {result['load_seconds']:.2f} s  pp {result['prompt_tokens_per_s']:.0f} t/s  "
        f"tg {result['generation_tokens_per_s']:.1f} t/s  llama.cpp GPU buffers {gpu:.0f} MiB  "
        f"NVML MiB: imported {mem['imported']:.0f} loaded {mem['loaded']:.0f} closed {mem['closed']:.0f} "
        f"reclosed {mem['reclosed']:.0f}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

"""Claim: asking the pool for a resident handle costs a tiny fraction of loading the model.

Anchor: ``llama_cpp.Llama(path, ...)`` — what a test or notebook does without
modelfix, on every call. Measured in the same run on the same files: a fresh
load, a pool miss (estimate + load), and a pool hit (settings resolved,
key found, handle returned). Models: the default tiny model and a wider one
(``--mb``, default 64 MB), memory-mapped and, as when weights are copied
(``use_mmap=False``, or uploaded to a GPU), read into memory.

    python benchmarks/bench_pool.py [--mb 64] [--repeat 5] [--hits 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import llama_cpp

from modelfix.pool import Pool
from modelfix.testing.gguf import write_tiny_model


def fresh_load(path: Path, repeat: int, mmap: bool) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        llm = llama_cpp.Llama(str(path), n_ctx=512, use_mmap=mmap, verbose=False)
        times.append(time.perf_counter() - started)
        llm.close()
    return statistics.median(times)


def pool_miss(path: Path, repeat: int, mmap: bool) -> float:
    times = []
    for i in range(repeat):
        pool = Pool(memory_budget="inf", keep_alive=-1)
        started = time.perf_counter()
        pool.acquire(path, f"sha-{i}", "bench", n_ctx=512, use_mmap=mmap)
        times.append(time.perf_counter() - started)
        pool.close()
    return statistics.median(times)


def pool_hit(path: Path, hits: int, mmap: bool) -> float:
    pool = Pool(memory_budget="inf", keep_alive=-1)
    pool.acquire(path, "sha", "bench", n_ctx=512, use_mmap=mmap)
    started = time.perf_counter()
    for _ in range(hits):
        pool.acquire(path, "sha", "bench", n_ctx=512, use_mmap=mmap)
    seconds = (time.perf_counter() - started) / hits
    pool.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64, help="size of the wider model in MB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hits", type=int, default=2000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The pool's first load probes the backend once and keeps the verdict in the cache: not yours.
        os.environ["MODELFIX_CACHE_DIR"] = str(Path(tmp) / "cache")
        # F32, as when docs/benchmarks.md was measured: the claim is about the pool, not the kernels
        tiny = write_tiny_model(Path(tmp) / "tiny.gguf", qtype="F32")[0]
        wide = write_tiny_model(Path(tmp) / "wide.gguf", target_bytes=a.mb * 1_000_000, qtype="F32")[0]
        cases = [("tiny", tiny, True), (f"{a.mb}MB", wide, True), (f"{a.mb}MB", wide, False)]
        print(f"{'model':>6} {'mmap':>5} {'fresh Llama()':>14} {'pool miss':>10} {'pool hit':>10} {'fresh/hit':>10}")
        for label, path, mmap in cases:
            fresh_load(path, 1, mmap)  # warm the page cache and llama.cpp's backend init
            fresh = fresh_load(path, a.repeat, mmap)
            miss = pool_miss(path, a.repeat, mmap)
            hit = pool_hit(path, a.hits, mmap)
            print(
                f"{label:>6} {mmap!s:>5} {fresh * 1e3:>11.2f} ms {miss * 1e3:>7.2f} ms "
                f"{hit * 1e6:>7.1f} µs {fresh / hit:>9.0f}x"
            )


if __name__ == "__main__":
    main()

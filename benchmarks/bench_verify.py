"""Claim: ``modelfix verify`` re-checks a cached model at >= 5 GB/s (xxh3), and ``--full`` (sha256) at >= 0.9x hashlib.

A 1 GiB model is synced into a fresh cache, its file read once so that it sits
in the page cache, then hashed by each way in turn, ``--rounds`` times round
robin (median reported):

* ``modelfix.verify([name], lock)`` and ``modelfix.verify([name], lock, full=True)``
  in this process, and the ``modelfix verify [--full] NAME`` commands (process wall
  time, start-up included);
* ``hashlib.file_digest(f, "sha256")`` and ``hashlib.file_digest(f, xxhash.xxh3_128)``
  over the same file (the standard library's way to hash a file);
* coreutils ``sha256sum``.

    python benchmarks/bench_verify.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from _common import PYTHON, Hub, Summary, add_model, big_file, load, machine, point_at, scratch, table

XXH3_TARGET = 5e9  # bytes per second, page-cached
FULL_TARGET = 0.9  # of hashlib's sha256 throughput


def digest_of(path: Path, algorithm: str | Callable[[], object]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def command(argv: list[str]) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per way (default: 5)")
    args = parser.parse_args()
    print(machine(), flush=True)
    big = big_file()
    size = big.stat().st_size

    with scratch("verify-") as home, Hub({"bench/big": big.parent}) as hub:
        point_at(hub, home)
        lock = home / "project" / "model-lock.toml"
        add_model(lock, "big", "bench/big:Q4_K_M")
        import xxhash

        import modelfix

        model = modelfix.path("big", lock)  # the cold fetch, untimed
        sha = digest_of(model, "sha256")  # also pulls the file into the page cache

        def verify(full: bool) -> Callable[[], None]:
            def run() -> None:
                if problems := modelfix.verify(["big"], lock, full=full):
                    raise SystemExit(f"verify found problems: {problems}")

            return run

        def sha256() -> None:
            assert digest_of(model, "sha256") == sha

        cli = [PYTHON, "-m", "modelfix", "--lock", str(lock), "verify", "big"]
        ways: dict[str, Callable[[], None]] = {
            "modelfix.verify (xxh3)": verify(full=False),
            "modelfix.verify(full=True) (sha256)": verify(full=True),
            "`modelfix verify big` (xxh3, process)": command(cli),
            "`modelfix verify --full big` (sha256, process)": command([*cli, "--full"]),
            "hashlib.file_digest(f, xxhash.xxh3_128)": lambda: digest_of(model, xxhash.xxh3_128),
            "hashlib.file_digest(f, 'sha256')": sha256,
            "sha256sum (coreutils)": command(["sha256sum", str(model)]),
        }
        samples: dict[str, list[float]] = {label: [] for label in ways}
        for way in ways.values():
            way()  # warm: imports, page cache
        for _ in range(args.rounds):
            for label, way in ways.items():
                samples[label].append(seconds(way))

    speed = {label: size / Summary.of(s).median for label, s in samples.items()}
    hashlib_speed = speed["hashlib.file_digest(f, 'sha256')"]
    rows = [
        (label, f"{Summary.of(samples[label]).median * 1e3:.0f} ms", f"{s / 1e9:.2f} GB/s", f"{s / hashlib_speed:.2f}x")
        for label, s in speed.items()
    ]
    print(f"\nhashing a page-cached {size / 2**30:.0f} GiB file, median of {args.rounds} runs")
    table(("way", "time", "throughput", "throughput / hashlib sha256"), rows)
    fast, full = speed["modelfix.verify (xxh3)"], speed["modelfix.verify(full=True) (sha256)"]
    print(f"target: xxh3 >= 5 GB/s -> {fast / 1e9:.2f} GB/s ({'met' if fast >= XXH3_TARGET else 'MISSED'})")
    print(
        f"target: --full >= 0.9x hashlib -> {full / hashlib_speed:.2f}x "
        f"({'met' if full >= FULL_TARGET * hashlib_speed else 'MISSED'})"
    )
    print(load())


def seconds(way: Callable[[], None]) -> float:
    started = time.perf_counter()
    way()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()

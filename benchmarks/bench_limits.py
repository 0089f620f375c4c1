"""The machine's own limits for a cold fetch: what no client can beat on it, measured the way the fetch works.

``bench_cold.py`` prints these beside its results; run alone, this script starts its own hub.

* the disk's write speed: ``dd if=/dev/zero bs=16M count=64`` into the benchmarks' scratch folder
  (the disk the caches are on), with ``oflag=direct`` (the device) and without (the page cache,
  which is where a download's writes land), and in 1 MiB writes;
* page-cache writes from Python, 1 GiB in ``os.pwrite`` calls from 8 rotating 1 MiB buffers: in
  64 KiB calls, as the fetcher writes, and in 1 MiB calls (on a VM whose balloon hands free memory
  back to the host, the large page-cache folios of large writes fault in page by page);
* sha256 and xxh3-128 on one core (``hashlib``, ``xxhash``), in 1 MiB updates as a download
  hashes, over 256 MiB of random bytes already in memory;
* the local hub's own serving speed: ``curl -L -o /dev/null`` of the 1 GiB file, no disk involved.

A fetch that verifies sha256 as the bytes arrive cannot go faster than the slowest of receiving
+ writing (one thread) and hashing (another), with two cores for both and the hub.

    python benchmarks/bench_limits.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import Hub, Summary, big_file, load, machine, scratch, table

__all__ = ["Limit", "curl_version", "limits", "print_limits"]

_DD_BYTES = 16 * 2**20 * 64


@dataclass(frozen=True)
class Limit:
    what: str
    how: str
    speed: Summary  # bytes per second


def _dd(folder: Path, block: str, direct: bool = False) -> float:
    """Bytes per second of one ``dd`` of 1 GiB of zeros into ``folder`` in ``block`` writes (synced after, untimed)."""
    target = folder / "dd.bin"
    count = _DD_BYTES // (int(block.rstrip("M")) * 2**20)
    argv = ["dd", "if=/dev/zero", f"of={target}", f"bs={block}", f"count={count}"] + (
        ["oflag=direct"] if direct else []
    )
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    target.unlink()
    os.sync()  # the next measure should not share the disk with this one's writeback
    return _DD_BYTES / seconds


def _pwrite(folder: Path, piece: int) -> float:
    """Bytes per second of 1 GiB written with ``os.pwrite`` in ``piece``-byte calls from 8 rotating buffers."""
    buffers = [memoryview(bytearray(os.urandom(2**20))) for _ in range(8)]
    target = folder / "pwrite.bin"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        started = time.perf_counter()
        for offset in range(0, _DD_BYTES, piece):
            start = offset % 2**20
            os.pwrite(fd, buffers[offset // 2**20 % 8][start : start + piece], offset)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    target.unlink()
    os.sync()
    return _DD_BYTES / seconds


def _hash(new: Callable[[], object]) -> float:
    """Bytes per second of ``new()`` fed 256 MiB of random bytes in 1 MiB updates, on this thread."""
    data = memoryview(os.urandom(256 * 2**20))
    digest = new()
    started = time.perf_counter()
    for start in range(0, len(data), 2**20):
        digest.update(data[start : start + 2**20])  # type: ignore[attr-defined]
    return len(data) / (time.perf_counter() - started)


def _curl_null(url: str, size: int) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-L", "-o", "/dev/null", url], check=True)
    return size / (time.perf_counter() - started)


def curl_version() -> str:
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed: `apt-get install curl` (it is the anchor of the cold fetch)")
    out = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True).stdout
    return " ".join(out.split()[:2])


def limits(hub_url: str, size: int, rounds: int) -> list[Limit]:
    """Each limit ``rounds`` times, round robin (the machine's speed drifts: each gets the same drift)."""
    import xxhash

    samples: dict[tuple[str, str], list[float]] = {}
    with scratch("limits-") as folder:
        ways: list[tuple[str, str, Callable[[], float]]] = [
            ("disk write, page cache", "dd bs=16M count=64", lambda: _dd(folder, "16M")),
            ("disk write, page cache", "dd bs=1M count=1024", lambda: _dd(folder, "1M")),
            ("disk write, device", "dd bs=16M count=64 oflag=direct", lambda: _dd(folder, "16M", direct=True)),
            ("disk write, page cache", "os.pwrite, 64 KiB calls (the fetcher's)", lambda: _pwrite(folder, 2**16)),
            ("disk write, page cache", "os.pwrite, 1 MiB calls", lambda: _pwrite(folder, 2**20)),
            ("sha256, one core", "hashlib, 1 MiB updates", lambda: _hash(hashlib.sha256)),
            ("xxh3-128, one core", "xxhash, 1 MiB updates", lambda: _hash(xxhash.xxh3_128)),
            ("hub serving, no disk", "curl -L -o /dev/null", lambda: _curl_null(hub_url, size)),
        ]
        for _ in range(rounds):
            for what, how, measure in ways:
                samples.setdefault((what, how), []).append(measure())
    return [Limit(what, how, Summary.of(values)) for (what, how), values in samples.items()]


def print_limits(found: list[Limit]) -> None:
    print(f"\nthis machine's limits, median of {found[0].speed.runs} (1 GiB = {2**30 / 1e9:.2f} GB)")
    table(
        ("limit", "measured with", "speed (range)", "time for 1 GiB"),
        [
            (
                limit.what,
                limit.how,
                f"{limit.speed.median / 1e9:.2f} GB/s ({limit.speed.low / 1e9:.2f}–{limit.speed.high / 1e9:.2f})",
                f"{2**30 / limit.speed.median:.2f} s",
            )
            for limit in found
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="samples of each limit (default: 3)")
    args = parser.parse_args()
    print(f"{machine()}; {curl_version()}", flush=True)
    big = big_file()
    with Hub({"bench/big": big.parent}) as hub:
        url = f"{hub.endpoint}/bench/big/resolve/main/{big.name}"
        found = limits(url, big.stat().st_size, args.rounds)
    print_limits(found)
    print(load())


if __name__ == "__main__":
    main()

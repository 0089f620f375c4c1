"""Claim: a cold ``modelfix sync``, sha256 checked as the bytes arrive, runs at ≥ 0.8× ``curl -o`` to the same disk
and ≥ 1.5× huggingface_hub.

From a local hub in its own process, into fresh, empty caches each run:

* one 1 GiB file: ``modelfix sync big`` against ``hf_hub_download(repo, file, revision=<commit>)``
  and ``curl -L -o FILE <resolve URL>``;
* a 4-part split set (1 GiB in all): ``modelfix sync split`` against
  ``snapshot_download(repo, revision=<commit>, allow_patterns=...)`` (8 workers, its default) and
  ``curl -L -Z --parallel-max 4 -o FILE URL ...`` (the 4 parts at once, as modelfix fetches them).

curl checks nothing and writes each byte once: the speed of moving the bytes to this disk. Each
run is a fresh process that imports its library first and times only the fetch (curl's side
times the curl process, start-up included: a few ms in its disfavour). The process's wall time
is reported too. The runs rotate between the sides (each goes first equally often), ``--rounds`` times; the median is
reported. The page cache cannot be dropped here: the hub serves page-cached files to every side
alike. The machine's own limits (:mod:`bench_limits`: disk write, sha256 on one core, the hub's
serving speed) are measured in the same run, after the fetches. ``BENCH_BIG_MIB`` /
``BENCH_SPLIT_MIB`` shrink the files.

    python benchmarks/bench_cold.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import (
    PYTHON,
    Child,
    Hub,
    Summary,
    add_model,
    big_file,
    clean_env,
    load,
    machine,
    point_at,
    ratio,
    run_child,
    scratch,
    split_files,
    table,
)
from bench_limits import curl_version, limits, print_limits

# Each child imports what its side needs, then times the fetch alone and prints {"seconds": ...}.
MODELFIX = """
import json, time
import httpx2, huggingface_hub.utils, tqdm, xxhash, filelock
from modelfix.cli import main
import modelfix.cli.cache, modelfix.project
started = time.perf_counter()
code = main(["--lock", {lock!r}, "sync", {name!r}])
print(json.dumps({{"seconds": time.perf_counter() - started, "code": code}}))
"""
HF_FILE = """
import json, time
from huggingface_hub import hf_hub_download
started = time.perf_counter()
hf_hub_download({repo!r}, {file!r}, revision={rev!r})
print(json.dumps({{"seconds": time.perf_counter() - started}}))
"""
CURL = """
import json, os, subprocess, time
folder = os.path.join(os.path.dirname(os.environ["HF_HOME"]), "curl")  # in this run's fresh caches
os.mkdir(folder)
argv = ["curl", "-sS", "-f", "-L"] + (["-Z", "--parallel-max", "4"] if len({urls!r}) > 1 else [])
for url in {urls!r}:
    argv += ["-o", os.path.join(folder, url.rsplit("/", 1)[1]), url]
started = time.perf_counter()
subprocess.run(argv, check=True)
print(json.dumps({{"seconds": time.perf_counter() - started}}))
"""
HF_SNAPSHOT = """
import json, time
from huggingface_hub import snapshot_download
started = time.perf_counter()
snapshot_download({repo!r}, revision={rev!r}, allow_patterns=["*Q4_K_M-*-of-*.gguf"])
print(json.dumps({{"seconds": time.perf_counter() - started}}))
"""


def fetched_bytes(folder: Path) -> int:
    """Bytes of the big files under ``folder``, each inode once (views hard-link the blobs; small
    bookkeeping files such as manifests, memos and locks are left out)."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        st = path.lstat()
        if path.is_file() and not path.is_symlink() and st.st_size >= 2**20 and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size
    return total


@dataclass(frozen=True)
class Run:
    child: Child
    requests: int  # HTTP requests the hub answered
    hub_cpu: float  # seconds of CPU the hub used serving them


def fetch_once(hub: Hub, code: str, size: int) -> Run:
    """One cold fetch in a fresh process with fresh, empty caches."""
    with scratch("cold-run-") as caches:
        env = clean_env(
            HF_ENDPOINT=hub.endpoint,
            HF_HOME=str(caches / "hf"),
            LLAMA_CACHE=str(caches / "llama.cpp"),
            MODELFIX_CACHE_DIR=str(caches / "modelfix"),
        )
        hub.clear()
        hub_cpu = hub.cpu_seconds()
        child = run_child([PYTHON, "-c", code], env)
        hub_cpu = hub.cpu_seconds() - hub_cpu
        got = fetched_bytes(caches)
    os.sync()  # the next run should not share the disk with this one's writeback
    if got != size or child.output.get("code", 0) != 0:
        raise SystemExit(f"fetched {got} bytes, expected {size}:\n{code}")
    return Run(child, len(hub.requests()), hub_cpu)


def rotate(hub: Hub, name: str, size: int, sides: dict[str, str], rounds: int) -> dict[str, list[Run]]:
    """``rounds`` runs of each side, the order rotated each round so that every side goes first
    equally often (given a multiple of the number of sides): on this VM the first write after a
    pause can cost several times more (memory the host took back is backed again on first touch)."""
    runs: dict[str, list[Run]] = {side: [] for side in sides}
    names = list(sides)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for side in names[shift:] + names[:shift]:
            runs[side].append(fetch_once(hub, sides[side], size))
            print(f"  {name} round {round_ + 1}: {side} {runs[side][-1].child.output['seconds']:.2f} s", flush=True)
    return runs


def median(runs: list[Run], value: Callable[[Run], float]) -> float:
    return Summary.of([value(r) for r in runs]).median


MODELFIX_SIDE, CURL_SIDE = "modelfix sync", "curl -L -o (to disk)"
TARGET_CURL, TARGET_HF = 0.8, 1.5  # modelfix's throughput over each anchor's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="runs per side and case (default: 6)")
    args = parser.parse_args()
    print(f"{machine()}; {curl_version()}", flush=True)
    big, parts = big_file(), split_files()
    cases = {"big": (big.parent, big.stat().st_size), "split": (parts[0].parent, sum(p.stat().st_size for p in parts))}
    names = {"big": [big.name], "split": [p.name for p in parts]}

    rows, verdicts = [], []
    with scratch("cold-") as home, Hub({f"bench/{name}": folder for name, (folder, _) in cases.items()}) as hub:
        point_at(hub, home)
        lock = home / "project" / "model-lock.toml"
        for name in cases:
            add_model(lock, name, f"bench/{name}:Q4_K_M")
        from modelfix.lockfile import Lockfile

        pins = Lockfile.load(lock)
        for name, (_, size) in cases.items():
            rev = pins.entry(name).revision
            hf, hf_code = ("hf_hub_download", HF_FILE) if name == "big" else ("snapshot_download", HF_SNAPSHOT)
            urls = [f"{hub.endpoint}/bench/{name}/resolve/{rev}/{file}" for file in names[name]]
            sides = {
                MODELFIX_SIDE: MODELFIX.format(lock=str(lock), name=name),
                hf: hf_code.format(repo=f"bench/{name}", file=big.name, rev=rev),
                CURL_SIDE: CURL.format(urls=urls),
            }
            runs = rotate(hub, name, size, sides, args.rounds)
            fetch = {side: Summary.of([r.child.output["seconds"] for r in done]) for side, done in runs.items()}
            label = f"{name} ({size / 2**20:.0f} MiB{', 4 parts' if name == 'split' else ''})"
            for side, t in fetch.items():
                rows.append(
                    (
                        label,
                        side,
                        f"{t.median:.2f} s ({t.low:.2f}–{t.high:.2f})",
                        f"{size / t.median / 1e9:.2f} GB/s",
                        *(
                            f"{median(runs[side], value):.2f} s"
                            for value in (lambda r: r.child.cpu, lambda r: r.hub_cpu, lambda r: r.child.wall)
                        ),
                        runs[side][-1].requests,
                        ratio(fetch[CURL_SIDE].median, t.median),
                        ratio(fetch[hf].median, t.median),
                        "yes" if side == MODELFIX_SIDE else "no",
                    )
                )
            for anchor, target in ((CURL_SIDE, TARGET_CURL), (hf, TARGET_HF)):
                speed = fetch[anchor].median / fetch[MODELFIX_SIDE].median
                verdicts.append(
                    f"target: >= {target}x {anchor} throughput on {label} -> {speed:.2f}x "
                    f"({'met' if speed >= target else 'MISSED'})"
                )
        end_load = load()
        found = limits(f"{hub.endpoint}/bench/big/resolve/main/{big.name}", cases["big"][1], min(args.rounds, 3))
    print(f"\ncold fetch, median of {args.rounds} runs per side (rotating), fresh caches each run")
    table(
        (
            "case",
            "side",
            "fetch time (range)",
            "throughput",
            "client CPU",
            "hub CPU",
            "process wall",
            "HTTP requests",
            "throughput / curl",
            "throughput / huggingface_hub",
            "checks sha256",
        ),
        rows,
    )
    print("\n".join(verdicts))
    print(f"{end_load} (after the fetches)")
    print_limits(found)
    print(load())


if __name__ == "__main__":
    main()

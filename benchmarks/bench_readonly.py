"""Claim: a warm ``modelfix.path()`` from a read-only cache makes no request and is within 2x of the writable store's.

A tiny model (one GGUF file, 0.5 MB) is locked and synced into a writable store; that store is
then copied as an image build copies it: ``cp -a`` (new inodes and ctimes, hard links kept) and
``cp -r`` (hard links broken, times reset). In the same process, ``modelfix.path(name)`` is timed
(median over samples, taken round robin, each sample after an untimed call) with:

* the writable store (``MODELFIX_CACHE_DIR``): today's warm path, the anchor;
* the ``cp -a`` copy as a read-only layer (``MODELFIX_READONLY_CACHES``) in front of an empty store;
* the ``cp -r`` copy as a read-only layer (each view file hashed once by the process's first look);
* where root may mount a tmpfs: the ``cp -a`` copy on a tmpfs remounted read-only, as the store itself
  (``MODELFIX_CACHE_DIR``, nothing else).

Each way's HTTP requests are counted at the local hub. A second table times the first call in a
fresh process, import included (what a container pays at start), for the tiny model and for a
``--big-mib`` file of random bytes pinned as a second model ("big"): there a copy that broke the
hard links shows what hashing its view files once per process costs, and one that kept them
that nothing is hashed.

    python benchmarks/bench_readonly.py [--runs 15] [--calls 2000] [--fresh 5] [--big-mib 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from _common import (
    PYTHON,
    WORK,
    Hub,
    Summary,
    add_model,
    load,
    machine,
    measure,
    point_at,
    random_file,
    ratio,
    run_child,
    scratch,
    table,
)

REPO, NAME = "org/tiny", "tiny"
ANCHOR = "writable store"
FRESH = """\
import time, json
started = time.perf_counter()
import modelfix
modelfix.path({name!r})
print(json.dumps({{"seconds": time.perf_counter() - started}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed samples per way (default: 15)")
    parser.add_argument("--calls", type=int, default=2000, help="modelfix.path calls per sample (default: 2000)")
    parser.add_argument("--fresh", type=int, default=5, help="fresh processes per way (default: 5)")
    parser.add_argument("--big-mib", type=int, default=256, help="size of the big model in MiB (default: 256; 0: none)")
    args = parser.parse_args()
    print(machine(), flush=True)

    from modelfix.testing.gguf import tiny_repo_files  # gguf + numpy: no huggingface_hub yet

    with scratch("readonly-") as home:
        tiny_repo_files(home / "repo", tags=("F32",), mmproj=False, preset=False)
        repos = {REPO: home / "repo"}
        if args.big_mib:
            big = WORK / "files" / f"big-{args.big_mib}MiB" / "big-Q4_K_M.gguf"  # bench_cold's, when sizes match
            repos["org/big"] = random_file(big, args.big_mib * 2**20).parent
        with Hub(repos) as hub:
            point_at(hub, home)  # before huggingface_hub is imported: it reads HF_ENDPOINT once
            lock = home / "project" / "model-lock.toml"
            add_model(lock, NAME, f"{REPO}:F32")
            if args.big_mib:
                add_model(lock, "big", "org/big:Q4_K_M")
            mount = _mount(home / "mnt", 3 * args.big_mib + 64)
            try:
                run(hub, home, lock, mount, args)
            finally:
                if mount is not None:
                    subprocess.run(["umount", "-l", str(mount)], check=False)


def _mount(folder: Path, mib: int) -> Path | None:
    """A tmpfs of ``mib`` MiB at ``folder`` (root only); None where mounting is not permitted."""
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)], capture_output=True, check=False
    )
    return folder if done.returncode == 0 else None


def run(hub: Hub, home: Path, lock: Path, mount: Path | None, args: argparse.Namespace) -> None:
    import modelfix

    store = Path(os.environ["MODELFIX_CACHE_DIR"])
    os.chdir(lock.parent)  # the project folder: modelfix.path(name) finds its lockfile from here
    modelfix.sync(lock=lock)  # the cold fetches happen here, untimed
    (home / "image").mkdir()
    subprocess.run(["cp", "-a", str(store), str(home / "image" / "linked")], check=True)
    subprocess.run(["cp", "-r", str(store), str(home / "image" / "unlinked")], check=True)
    empty = str(home / "empty-store")
    ways = {  # label -> (MODELFIX_CACHE_DIR, MODELFIX_READONLY_CACHES)
        ANCHOR: (str(store), ""),
        "read-only layer, cp -a": (empty, str(home / "image" / "linked")),
        "read-only layer, cp -r": (empty, str(home / "image" / "unlinked")),
    }
    if mount is not None:
        subprocess.run(["cp", "-a", str(store), str(mount / "models")], check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        ways["read-only store (ro mount), cp -a"] = (str(mount / "models"), "")
    else:
        print("\n(no tmpfs could be mounted here: the read-only store itself is not measured)")
    # modelfix compares the text of a lockfile written in the last 2 s on every call; a project's is older.
    time.sleep(max(0.0, 2.1 - (time.time() - lock.stat().st_mtime)))

    def use(label: str) -> None:
        os.environ["MODELFIX_CACHE_DIR"], os.environ["MODELFIX_READONLY_CACHES"] = ways[label]

    requests, paths = {}, {}
    for label in ways:
        use(label)
        paths[label] = modelfix.path(NAME)  # warm: caches filled, imports done
        hub.clear()
        modelfix.path(NAME)
        requests[label] = len(hub.requests())
    # Round robin, one sample of each way in turn (this VM's speed moves in steps lasting seconds).
    samples: dict[str, list[float]] = {label: [] for label in ways}
    for _ in range(args.runs):
        for label in ways:
            use(label)
            samples[label].append(measure(lambda: modelfix.path(NAME), runs=1, number=args.calls, warmup=1).median)
    results = {label: Summary.of(times) for label, times in samples.items()}
    base = results[ANCHOR].median
    print(f"\nwarm modelfix.path(name), same process (median of {args.runs} samples of {args.calls} calls)")
    table(
        ("way", "median", "range (µs)", "HTTP requests per call", "served from", f"time / {ANCHOR}"),
        [
            (
                label,
                f"{s.median * 1e6:,.1f} µs",
                f"{s.low * 1e6:,.1f}–{s.high * 1e6:,.1f}",
                requests[label],
                os.path.relpath(paths[label], home).split("/views/")[0],
                ratio(s.median, base),
            )
            for label, s in results.items()
        ],
    )

    models = [NAME, "big"] if args.big_mib else [NAME]
    fresh: dict[tuple[str, str], tuple[float, int]] = {}
    for label, (root, layers) in ways.items():
        env = {**os.environ, "MODELFIX_CACHE_DIR": root, "MODELFIX_READONLY_CACHES": layers}
        for model in models:
            hub.clear()
            seconds = [
                run_child([PYTHON, "-c", FRESH.format(name=model)], env=env).output["seconds"]
                for _ in range(args.fresh)
            ]
            fresh[label, model] = (Summary.of(seconds).median, len(hub.requests()))
    print(f"\nfirst call in a fresh process, import included (median of {args.fresh} processes)")
    table(
        ("way", "model", "median", "HTTP requests", f"time / {ANCHOR}"),
        [
            (label, model, f"{s * 1e3:.1f} ms", n, ratio(s, fresh[ANCHOR, model][0]))
            for (label, model), (s, n) in fresh.items()
        ],
    )

    print()
    for label in list(ways)[1:]:
        slower = results[label].median / base
        made = requests[label] + sum(fresh[label, model][1] for model in models)
        met = made == 0 and slower <= 2.0
        print(
            f"target: {label}: 0 requests and <= 2x the writable store's warm call -> "
            f"{made} requests, {slower:.2f}x ({'met' if met else 'MISSED'})"
        )
    print(load())


if __name__ == "__main__":
    main()

"""Claim: a warm ``modelfix.path()`` makes no HTTP request and is at least 100x faster than ``Llama.from_pretrained``.

A tiny model (one GGUF file, 0.5 MB) is locked, synced, and its huggingface_hub
cache warmed; then, in the same process, each way of getting its path is timed
(median over samples, taken round robin) and its HTTP requests counted at the
local hub:

* ``modelfix.path(name)``, the lockfile found upward from the working folder
  (what a test or a notebook calls), and ``modelfix.path(name, lock)``;
* ``hf_hub_download(repo, file, revision=<commit sha>)``, and with the branch ``main``;
* ``Llama.from_pretrained(repo, file)`` without its final model load (a
  ``Llama`` subclass whose constructor only keeps the path: the listing and
  download steps exactly as llama-cpp-python runs them), and as called, load
  included, next to ``Llama(modelfix.path(name))``.

A second table times the first call in a fresh process, the import included
(what a test session or a notebook kernel pays once).

    python benchmarks/bench_warm.py [--runs 15] [--calls 2000] [--fresh 5]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from _common import PYTHON, Hub, Summary, add_model, load, machine, measure, point_at, ratio, run_child, scratch, table

REPO, FILE, NAME = "org/tiny", "tiny-F32.gguf", "tiny"

# First call in a fresh process, import included; each prints {"seconds": ...}.
FRESH = {
    "modelfix.path": "import modelfix; modelfix.path({name!r}, {lock!r})",
    "hf_hub_download(revision=sha)": (
        "from huggingface_hub import hf_hub_download; hf_hub_download({repo!r}, {file!r}, revision={sha!r})"
    ),
    "from_pretrained, load skipped": (  # resolve_only(), inline: the child imports nothing else
        "import llama_cpp\n"
        "class R(llama_cpp.Llama):\n"
        "    def __init__(self, model_path, **kw): self.model_path = model_path\n"
        "    def __del__(self): pass\n"
        "R.from_pretrained({repo!r}, {file!r})"
    ),
}
FRESH_WRAPPER = """\
import time, json
started = time.perf_counter()
{body}
print(json.dumps({{"seconds": time.perf_counter() - started}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed samples per way (default: 15)")
    parser.add_argument("--calls", type=int, default=2000, help="modelfix.path calls per sample (default: 2000)")
    parser.add_argument("--fresh", type=int, default=5, help="fresh processes per way (default: 5)")
    args = parser.parse_args()
    # llama-cpp-python passes huggingface_hub a deprecated argument on every call; the noise hides nothing here.
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks")
    print(machine(), flush=True)

    from modelfix.testing.gguf import tiny_repo_files  # gguf + numpy: no huggingface_hub yet

    with scratch("warm-") as home:
        tiny_repo_files(home / "repo", tags=("F32",), mmproj=False, preset=False)
        with Hub({REPO: home / "repo"}) as hub:
            point_at(hub, home)  # before huggingface_hub is imported: it reads HF_ENDPOINT once
            lock = home / "project" / "model-lock.toml"
            add_model(lock, NAME, f"{REPO}:F32")
            warm(hub, lock, args)


def resolve_only() -> type:
    """``Llama`` whose constructor only keeps the path: ``from_pretrained`` minus its last step, the load."""
    import llama_cpp

    class ResolveOnly(llama_cpp.Llama):
        def __init__(self, model_path: str, **_: object) -> None:
            self.model_path = model_path

        def __del__(self) -> None:
            pass

    return ResolveOnly


def warm(hub: Hub, lock: Path, args: argparse.Namespace) -> None:
    import llama_cpp
    from huggingface_hub import HfFileSystem, hf_hub_download

    import modelfix
    from modelfix.lockfile import Lockfile

    sha = Lockfile.load(lock).entry(NAME).revision
    lookup_only = resolve_only()

    def load_with_modelfix() -> None:
        llama_cpp.Llama(str(modelfix.path(NAME, lock)), n_ctx=512, verbose=False).close()

    def from_pretrained() -> None:
        llama_cpp.Llama.from_pretrained(REPO, FILE, n_ctx=512, verbose=False).close()

    # from_pretrained lists the repo through an HfFileSystem, which fsspec caches per process with
    # its listing: repeated calls skip the listing, the first call of every process makes it.
    def first_in_process(call: Callable[[], object]) -> Callable[[], None]:
        def fresh_listing() -> None:
            HfFileSystem.clear_instance_cache()
            call()

        return fresh_listing

    path_label, load_label = "modelfix.path(name)", "Llama(modelfix.path(name))"
    ways = [  # (label, call, calls per sample, what modelfix does instead)
        (path_label, lambda: modelfix.path(NAME), args.calls, path_label),
        ("modelfix.path(name, lock)", lambda: modelfix.path(NAME, lock), args.calls, path_label),
        ("hf_hub_download(revision=sha)", lambda: hf_hub_download(REPO, FILE, revision=sha), 50, path_label),
        ("hf_hub_download(revision='main')", lambda: hf_hub_download(REPO, FILE), 10, path_label),
        (
            "from_pretrained, load skipped, listing cached",
            lambda: lookup_only.from_pretrained(REPO, FILE),
            3,
            path_label,
        ),
        (
            "from_pretrained, load skipped, first in process",
            first_in_process(lambda: lookup_only.from_pretrained(REPO, FILE)),
            3,
            path_label,
        ),
        ("from_pretrained, listing cached", from_pretrained, 1, load_label),
        ("from_pretrained, first in process", first_in_process(from_pretrained), 1, load_label),
        (load_label, load_with_modelfix, 1, load_label),
    ]
    os.chdir(lock.parent)  # the project folder: modelfix.path(name) finds its lockfile from here
    modelfix.sync([NAME], lock)  # the cold fetches happen here, untimed
    hf_hub_download(REPO, FILE)
    # modelfix compares the text of a lockfile written in the last 2 s on every call (its stat could
    # miss a same-size rewrite within the filesystem's clock tick); a project's lockfile is older.
    time.sleep(max(0.0, 2.1 - (time.time() - lock.stat().st_mtime)))
    requests: dict[str, int] = {}
    for label, call, _, _ in ways:
        call()  # warm: caches filled, imports done
        hub.clear()
        call()
        requests[label] = len(hub.requests())
    # Round robin, one sample of each way in turn: this VM's speed moves in steps that last seconds,
    # which would skew the ratio of two ways timed one after the other. Each sample starts with an
    # untimed call, so that a way's caches are as its label says whatever ran before it.
    samples: dict[str, list[float]] = {label: [] for label, *_ in ways}
    for _ in range(args.runs):
        for label, call, number, _ in ways:
            samples[label].append(measure(call, runs=1, number=number, warmup=1).median)
    results = {label: (Summary.of(times), requests[label]) for label, times in samples.items()}

    rows = []
    for label, _, _, equivalent in ways:
        timing, requests = results[label]
        base = results[equivalent][0].median
        rows.append(
            (
                label,
                f"{timing.median * 1e6:,.1f} µs",
                f"{timing.low * 1e6:,.1f}–{timing.high * 1e6:,.1f}",
                requests,
                f"{ratio(timing.median, base)} {equivalent}",
            )
        )
    print(f"\nwarm calls, same process (median of {args.runs} samples)")
    table(("way", "median", "range (µs)", "HTTP requests per call", "time / modelfix's way"), rows)

    fresh: dict[str, tuple[float, int]] = {}
    for label, body in FRESH.items():
        code = FRESH_WRAPPER.format(body=body.format(name=NAME, lock=str(lock), repo=REPO, file=FILE, sha=sha))
        samples = []
        for _ in range(args.fresh):
            hub.clear()
            samples.append(run_child([PYTHON, "-c", code]).output["seconds"])
        fresh[label] = (Summary.of(samples).median, len(hub.requests()))
    print(f"\nfirst call in a fresh process, import included (median of {args.fresh} processes)")
    base = fresh["modelfix.path"][0]
    table(
        ("way", "median", "HTTP requests", "time / modelfix.path"),
        [(label, f"{s * 1e3:.1f} ms", n, ratio(s, base)) for label, (s, n) in fresh.items()],
    )

    ours, requests = results[path_label]
    print(f"\ntarget: 0 requests -> {requests} ({'met' if requests == 0 else 'MISSED'})")
    for label in [w[0] for w in ways if w[0].startswith("from_pretrained")]:
        speedup = results[label][0].median / ours.median
        print(f"target: >= 100x faster than {label} -> {speedup:,.0f}x ({'met' if speedup >= 100 else 'missed'})")
    print(load())


if __name__ == "__main__":
    main()

"""Claim: fetching a 1 GiB file (or a 1 GiB 4-part split set) with ``modelfix sync`` peaks at less than 64 MB
above the baseline.

Every way runs in its own Python process, which prints its own peak RSS
(``VmHWM`` in ``/proc/self/status``) as it exits; ``ru_maxrss`` from
``wait4``/``RUSAGE_CHILDREN`` would not do: Linux counts the parent's RSS at
fork in it. ``--rounds`` times round robin, fresh caches each run;
the median is reported. Baselines: the same interpreter importing ``modelfix``
and exiting (the target's baseline), and the same command fetching a 0.5 MB
model (same code path: what remains above it is the transfer's own memory).
``hf_hub_download`` of the same files is shown beside it, with ``import
huggingface_hub`` as its baseline.

    python benchmarks/bench_memory.py [--rounds 3]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from _common import (
    PYTHON,
    Hub,
    Summary,
    add_model,
    big_file,
    clean_env,
    load,
    machine,
    point_at,
    run_child,
    scratch,
    split_files,
    table,
)

TARGET = 64 * 10**6  # bytes above the baseline

# Prefixed to each child's code: print the process's high-water RSS on the way out.
REPORT_PEAK = """\
import atexit, json
@atexit.register
def _report_peak():
    kib = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
    print(json.dumps({"peak_rss": kib * 1024}), flush=True)
"""


@dataclass(frozen=True)
class Way:
    label: str
    code: str  # what the child runs
    baseline: str | None = None  # label of the import-only way of its library
    small: str | None = None  # label of the same call on the tiny model
    target: bool = False  # the claim is about this one


def ways(lock: Path, big_name: str) -> list[Way]:
    from modelfix.lockfile import Lockfile

    pins = Lockfile.load(lock)

    def hf(name: str, filename: str) -> str:
        rev = pins.entry(name).revision
        return (
            f"from huggingface_hub import hf_hub_download\n"
            f"hf_hub_download('bench/{name}', {filename!r}, revision={rev!r})"
        )

    def cli(name: str) -> str:  # what `python -m modelfix --lock LOCK sync NAME` runs
        return f"import sys\nfrom modelfix.cli import main\nsys.exit(main(['--lock', {str(lock)!r}, 'sync', {name!r}]))"

    def api(name: str) -> str:
        return f"import modelfix\nmodelfix.sync([{name!r}], {str(lock)!r})"

    mf, hh = "import modelfix", "import huggingface_hub"
    return [
        Way(mf, mf),
        Way("`modelfix sync tiny`", cli("tiny"), mf),
        Way("`modelfix sync big`", cli("big"), mf, "`modelfix sync tiny`", target=True),
        Way("`modelfix sync split` (4 files at once)", cli("split"), mf, "`modelfix sync tiny`", target=True),
        Way("modelfix.sync(['tiny'])", api("tiny"), mf),
        Way("modelfix.sync(['big'])", api("big"), mf, "modelfix.sync(['tiny'])", target=True),
        Way(hh, hh),
        Way("hf_hub_download tiny", hf("tiny", "tiny-F32.gguf"), hh),
        Way("hf_hub_download big", hf("big", big_name), hh, "hf_hub_download tiny"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per way (default: 3)")
    args = parser.parse_args()
    print(machine(), flush=True)
    big, parts = big_file(), split_files()
    from modelfix.testing.gguf import tiny_repo_files

    with scratch("memory-") as home:
        tiny_repo_files(home / "tiny", tags=("F32",), mmproj=False, preset=False)
        with Hub({"bench/big": big.parent, "bench/split": parts[0].parent, "bench/tiny": home / "tiny"}) as hub:
            point_at(hub, home)
            lock = home / "project" / "model-lock.toml"
            add_model(lock, "big", "bench/big:Q4_K_M")
            add_model(lock, "split", "bench/split:Q4_K_M")
            add_model(lock, "tiny", "bench/tiny:F32")
            measured = ways(lock, big.name)
            peaks = measure_peaks(hub, measured, args.rounds)

    peak = {label: Summary.of(values) for label, values in peaks.items()}
    rows = []
    for way in measured:
        t = peak[way.label]

        def above(other: str | None, t: Summary = t) -> str:
            return f"{(t.median - peak[other].median) / 1e6:+.1f} MB" if other else ""

        rows.append(
            (
                way.label,
                f"{t.median / 1e6:.1f} MB ({t.low / 1e6:.1f}–{t.high / 1e6:.1f})",
                above(way.baseline),
                above(way.small),
            )
        )
    print(f"\npeak RSS fetching a {big.stat().st_size / 2**30:.0f} GiB file or split set, median of {args.rounds} runs")
    table(
        ("process", "peak RSS (range)", "above `import` of its library", "above the same call on the 0.5 MB model"),
        rows,
    )
    for way in (w for w in measured if w.target):
        base = peak[way.baseline].median
        above, worst = peak[way.label].median - base, peak[way.label].high - base
        print(
            f"target: {way.label} < 64 MB above `{way.baseline}` -> {above / 1e6:.1f} MB, worst run "
            f"{worst / 1e6:.1f} MB ({'met' if worst < TARGET else 'MISSED'})"
        )
    print(load())


def measure_peaks(hub: Hub, measured: list[Way], rounds: int) -> dict[str, list[int]]:
    """Peak RSS of each way, ``rounds`` times round robin, each run with fresh caches."""
    peaks: dict[str, list[int]] = {way.label: [] for way in measured}
    for _ in range(rounds):
        for way in measured:
            with scratch("memory-run-") as caches:
                env = clean_env(
                    HF_ENDPOINT=hub.endpoint,
                    HF_HOME=str(caches / "hf"),
                    LLAMA_CACHE=str(caches / "llama.cpp"),
                    MODELFIX_CACHE_DIR=str(caches / "modelfix"),
                )
                peaks[way.label].append(run_child([PYTHON, "-c", REPORT_PEAK + way.code], env).output["peak_rss"])
            if way.small:
                print(f"  {way.label}: peak {peaks[way.label][-1] / 1e6:.1f} MB", flush=True)
    return peaks


if __name__ == "__main__":
    main()

"""Claim: a warm ``modelfix sync`` of a 20-model lockfile takes under 100 ms in all, with 0 requests.

Twenty repos (a tiny Q4_0 model, an mmproj and a preset each: 60 files) are
locked and synced once; then, everything cached, each way of making sure all
60 files are there is timed in a fresh process (start-up and imports included,
what a CI step pays), the sides interleaved, and the requests counted at the
local hub:

* ``modelfix sync`` (the CLI, every model of the lockfile);
* ``modelfix.sync()`` from Python (``import modelfix`` included);
* the anchor, ``hf_hub_download(repo, file, revision=<commit sha>)`` for the 60
  files, each already in huggingface_hub's cache (``import huggingface_hub``
  included);
* ``python -c pass``: the interpreter's own start, the floor under every row.

    python benchmarks/bench_warm_sync.py [--models 20] [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import tomllib
from _common import PYTHON, Hub, add_model, load, machine, point_at, ratio, run_child, scratch, table

SIDES = {
    "modelfix sync (CLI)": lambda lock: [PYTHON, "-m", "modelfix", "--lock", str(lock), "sync"],
    "modelfix.sync()": lambda lock: [PYTHON, "-c", f"import modelfix; modelfix.sync(lock={str(lock)!r})"],
    "hf_hub_download x files (anchor)": lambda lock: [PYTHON, "-c", _anchor(lock)],
    "python -c pass (floor)": lambda lock: [PYTHON, "-c", "pass"],
}


def _anchor(lock: Path) -> str:
    pins = tomllib.loads(lock.read_text())["models"].values()
    calls = [(m["source"].split(":")[0], f["path"], m["revision"]) for m in pins for f in m["files"]]
    return (
        "from huggingface_hub import hf_hub_download\n"
        f"for repo, file, sha in {calls!r}:\n"
        "    hf_hub_download(repo, file, revision=sha)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--runs", type=int, default=9, help="fresh processes per side (9)")
    args = parser.parse_args()

    with scratch("warm-sync-") as home:
        from modelfix.testing.gguf import tiny_repo_files

        repos = {}
        for i in range(args.models):
            folder = home / "repos" / f"m{i:02d}"
            tiny_repo_files(folder, tags=("Q4_0",), seed=i, name=f"m{i:02d}")
            repos[f"org/m{i:02d}"] = folder
        with Hub(repos) as hub:
            point_at(hub, home)
            lock = home / "project" / "model-lock.toml"
            for repo in repos:
                add_model(lock, repo.split("/")[1], f"{repo}:Q4_0")
            files = sum(len(m["files"]) for m in tomllib.loads(lock.read_text())["models"].values())
            for side in SIDES.values():  # cold: fills modelfix's cache and huggingface_hub's
                run_child(side(lock))

            samples: dict[str, list[float]] = {name: [] for name in SIDES}
            requests: dict[str, int] = dict.fromkeys(SIDES, 0)
            for _ in range(args.runs):  # interleaved: the sides share the machine's drift
                for name, side in SIDES.items():
                    hub.clear()
                    samples[name].append(run_child(side(lock)).wall)
                    requests[name] += len(hub.requests())

    print(f"\n{machine()}\n")
    print(f"Warm: {args.models} models, {files} files, all cached; a fresh process each, median of {args.runs}\n")
    ours = statistics.median(samples["modelfix sync (CLI)"])
    table(
        ["way", "median", "lowest", "requests per run", "this / modelfix sync (CLI)"],
        [
            (
                name,
                f"{statistics.median(s) * 1000:.0f} ms",
                f"{min(s) * 1000:.0f} ms",
                f"{requests[name] / args.runs:g}",
                "—" if name.startswith("modelfix sync") else ratio(statistics.median(s), ours),
            )
            for name, s in samples.items()
        ],
    )
    print(f"\n{load()}")


if __name__ == "__main__":
    main()

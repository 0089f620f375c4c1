"""Claim: ``modelfix lock --check`` is linear in the lockfile's entries: 16,000 entries in under 2 s.

Lockfiles of 1,000 to 16,000 pinned entries (three files each: a model, an mmproj, a preset,
as ``modelfix add`` writes them for a Hub model) are written to a scratch folder, then read
``--rounds`` times round robin (median reported) by:

* ``modelfix lock --check --lock FILE``: the whole command, process start-up included;
* ``Lockfile.load(FILE)`` in this process: reading and validating every entry;
* the anchor, ``tomllib.loads`` of the same text: the standard library's TOML parser, which
  only parses (no validation); Python has no faster way that ships with it.

The per-entry time of each way shows whether it stays flat as the file grows (linear) or grows
with it (quadratic: the reader once looked up each entry's line from the top of the file, 60 s
for 16,000 entries).

    python benchmarks/bench_lock_check.py [--rounds 3] [--sizes 1000,2000,4000,8000,16000]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import time

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

from _common import PYTHON, Summary, load, machine, ratio, scratch, table

TARGET_ENTRIES, TARGET_SECONDS = 16_000, 2.0


def lockfile_text(entries: int) -> str:
    """A pinned lockfile of ``entries`` Hub models, three files each."""
    lines = ["# Models pinned by modelfix.", "version = 1", ""]
    for i in range(entries):
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        source = f"org/repo-{i}:Q4_K_M"
        lines += [
            f"[models.m{i}]",
            f'source = "{source}"',
            "n_ctx = 2048",
            f'revision = "{digest[:40]}"',
            f'pinned_from = "{source}"',
            "files = [",
            f'    {{path = "repo-{i}-Q4_K_M.gguf", size = 4683073248, sha256 = "{digest}", role = "model"}},',
            f'    {{path = "mmproj-repo-{i}-f16.gguf", size = 876508928, sha256 = "{digest[::-1]}", role = "mmproj"}},',
            f'    {{path = "preset.ini", size = 97, sha256 = "{digest[32:] + digest[:32]}", role = "preset"}},',
            "]",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="samples per way and size (default: 3)")
    parser.add_argument("--sizes", default="1000,2000,4000,8000,16000", help="entries per lockfile, comma-separated")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(machine(), flush=True)

    from modelfix.lockfile import Lockfile

    with scratch("lock-check-") as home:
        files, mib = {}, {}
        for n in sizes:
            files[n] = home / f"{n}" / "model-lock.toml"
            files[n].parent.mkdir()
            files[n].write_text(lockfile_text(n))
            mib[n] = files[n].stat().st_size / 2**20

        def command(path: Path) -> None:
            subprocess.run(
                [PYTHON, "-m", "modelfix", "lock", "--check", "--lock", str(path)], check=True, capture_output=True
            )

        ways = {
            "modelfix lock --check": command,
            "Lockfile.load": Lockfile.load,
            "tomllib.loads (anchor)": lambda path: tomllib.loads(path.read_text()),
        }
        samples: dict[tuple[str, int], list[float]] = {(w, n): [] for w in ways for n in sizes}
        for _ in range(args.rounds):
            for n in sizes:
                for way, run in ways.items():
                    started = time.perf_counter()
                    run(files[n])
                    samples[way, n].append(time.perf_counter() - started)
        results = {key: Summary.of(times) for key, times in samples.items()}

    rows = []
    for n in sizes:
        anchor = results["tomllib.loads (anchor)", n].median
        for way in ways:
            timing = results[way, n]
            rows.append(
                (
                    f"{n:,}",
                    f"{mib[n]:.1f} MiB" if way == next(iter(ways)) else "",
                    way,
                    f"{timing.median:.3f} s",
                    f"{timing.median / n * 1e6:.1f} µs",
                    ratio(timing.median, anchor),
                )
            )
    print(f"\nreading a lockfile (median of {args.rounds} samples)")
    table(("entries", "file", "way", "median", "per entry", "time / tomllib.loads"), rows)

    first, last = sizes[0], sizes[-1]
    growth = (results["modelfix lock --check", last].median / last) / (
        results["modelfix lock --check", first].median / first
    )
    print(
        f"\nper-entry time of `lock --check`, {last:,} vs {first:,} entries: {growth:.2f}x (linear: about 1x or less)"
    )
    if TARGET_ENTRIES in sizes:
        took = results["modelfix lock --check", TARGET_ENTRIES].median
        verdict = "met" if took < TARGET_SECONDS else "MISSED"
        print(f"target: {TARGET_ENTRIES:,} entries in < {TARGET_SECONDS:.0f} s -> {took:.2f} s ({verdict})")
    print(load())


if __name__ == "__main__":
    main()

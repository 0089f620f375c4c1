"""Claim: ``import modelfix`` and ``modelfix --help`` take under 100 ms; the pytest plugin adds under 30 ms to a
pytest start-up.

Each row is a fresh process, timed from start to exit (median of ``--runs``, the rows interleaved
so that they share the machine's drift), with bytecode caching on as in a user's environment:

* ``python -c pass``: the interpreter's own start, the floor under every row;
* ``import modelfix`` (the API: ``modelfix.path()``, ``load()`` ...), against ``import huggingface_hub``;
* ``modelfix --help``, against ``hf --help`` (huggingface_hub's CLI);
* ``pytest`` on an empty suite, with the plugin and with ``-p no:modelfix``: the difference is the
  plugin's cost. ``python -X importtime`` also gives the plugin module's own import time.

What a suite gains from the plugin's shared handles is measured by ``bench_fixture.py``.

    python benchmarks/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PYTHON, clean_env, load, machine, table

HF = shutil.which("hf", path=str(Path(PYTHON).parent)) or "hf"
PYTEST = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"]

ROWS = {
    "python -c pass (floor)": [PYTHON, "-c", "pass"],
    "import modelfix": [PYTHON, "-c", "import modelfix"],
    "import huggingface_hub (anchor)": [PYTHON, "-c", "import huggingface_hub"],
    "modelfix --help": [PYTHON, "-m", "modelfix", "--help"],
    "hf --help (anchor)": [HF, "--help"],
    "pytest, empty suite, with the plugin": PYTEST,
    "pytest, empty suite, -p no:modelfix": [*PYTEST, "-p", "no:modelfix"],
}


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=clean_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 5):  # 5: pytest collected no tests (the empty suite)
        sys.exit(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds


def plugin_import_ms() -> float:
    """The plugin module's cumulative import time, pytest already imported (``-X importtime``)."""
    out = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import pytest; import modelfix.pytest_plugin"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stderr
    line = next(row for row in out.splitlines() if row.rstrip().endswith("| modelfix.pytest_plugin"))
    return int(line.split("|")[1]) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per row (15)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pytest.ini").write_text("[pytest]\n")
        for argv in ROWS.values():  # warm-up: bytecode written, files in the page cache
            timed(argv, folder)
        samples: dict[str, list[float]] = {name: [] for name in ROWS}
        for _ in range(args.runs):
            for name, argv in ROWS.items():
                samples[name].append(timed(argv, folder))
    median = {name: statistics.median(s) * 1000 for name, s in samples.items()}

    print(f"\n{machine()}\n")
    print(f"A fresh process per row, median of {args.runs} (interleaved)\n")
    table(
        ["process", "median", "lowest", "highest", "above python -c pass"],
        [
            (
                name,
                f"{median[name]:.0f} ms",
                f"{min(s) * 1000:.0f} ms",
                f"{max(s) * 1000:.0f} ms",
                f"{median[name] - median['python -c pass (floor)']:.0f} ms",
            )
            for name, s in samples.items()
        ],
    )
    cost = median["pytest, empty suite, with the plugin"] - median["pytest, empty suite, -p no:modelfix"]
    imports = statistics.median(plugin_import_ms() for _ in range(5))
    print()
    for claim, value, limit in (
        ("import modelfix", median["import modelfix"], 100),
        ("modelfix --help", median["modelfix --help"], 100),
        ("the plugin's cost on pytest start-up", cost, 30),
    ):
        print(f"target: {claim} < {limit} ms -> {value:.0f} ms ({'met' if value < limit else 'MISSED'})")
    print(f"import modelfix.pytest_plugin (pytest already imported): {imports:.1f} ms")
    print(f"{load()}")


if __name__ == "__main__":
    main()

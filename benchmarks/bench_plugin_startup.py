"""What the pytest plugin costs, and what its shared handles save.

1. Start-up: ``pytest`` on an empty suite with the plugin and with ``-p no:modelfix``
   (median of N runs each, interleaved), plus the plugin module's own import time
   from ``python -X importtime``.
2. A 200-test session under ``pytest -n 2`` against the tiny model from a local hub:
   the ``llama`` fixture (the pool loads the model once per worker) against the
   anchor a suite without modelfix would write: a function-scoped fixture that
   builds its own ``llama_cpp.Llama`` for every test.

    python benchmarks/bench_plugin_startup.py [--runs 15] [--tests 200]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]

MODELFIX_SUITE = """
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_complete(llama, i):
    assert llama("Hello", max_tokens=2, temperature=0)["choices"]
"""

ANCHOR_SUITE = """
import llama_cpp
import pytest

@pytest.fixture
def llm():
    handle = llama_cpp.Llama(model_path={path!r}, n_ctx=512, seed=42, verbose=False)
    yield handle
    handle.close()

@pytest.mark.parametrize("i", range({n}))
def test_complete(llm, i):
    assert llm("Hello", max_tokens=2, temperature=0)["choices"]
"""


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 5):  # 5: no tests collected (the empty suite)
        sys.exit(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def import_ms() -> float:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pytest; import modelfix.pytest_plugin"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    # Cumulative microseconds of the plugin module itself, pytest already imported.
    line = next(row for row in out.splitlines() if row.rstrip().endswith("| modelfix.pytest_plugin"))
    return int(line.split("|")[1]) / 1000


def startup(runs: int, env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pytest.ini").write_text("[pytest]\n")
        with_plugin, without = [], []
        for _ in range(runs):
            with_plugin.append(timed(PYTEST, folder, env)[0])
            without.append(timed([*PYTEST, "-p", "no:modelfix"], folder, env)[0])
    a, b = statistics.median(with_plugin), statistics.median(without)
    imports = statistics.median(import_ms() for _ in range(5))
    print(
        f"empty suite, median of {runs}: with plugin {a * 1000:.0f} ms, -p no:modelfix {b * 1000:.0f} ms, "
        f"cost {max(a - b, 0) * 1000:.0f} ms ({a / b:.3f}x)"
    )
    print(f"import modelfix.pytest_plugin (pytest already imported): {imports:.1f} ms")


def session(tests: int, env: dict[str, str]) -> None:
    from modelfix.cli import main as modelfix_cli
    from modelfix.testing.gguf import tiny_repo_files
    from modelfix.testing.hub import LocalHub

    with tempfile.TemporaryDirectory() as tmp, LocalHub() as hub:
        root = Path(tmp)
        hub.create_repo("org/tiny")
        hub.commit("org/tiny", dict(tiny_repo_files(root / "repo", tags=("F32",), split_tags=())), message="tiny")
        env = dict(env, HF_ENDPOINT=hub.endpoint, MODELFIX_CACHE_DIR=str(root / "cache"), HF_HUB_DISABLE_XET="1")
        os.environ.update(env)
        project = root / "project"
        anchor = root / "anchor"
        project.mkdir()
        anchor.mkdir()
        lock = project / "model-lock.toml"
        modelfix_cli(["--lock", str(lock), "add", "tiny", "org/tiny:F32", "--n-ctx", "512", "--seed", "42"])
        from modelfix import path

        model = path("tiny", lock)  # warm the store: both sides time loads, not the download
        (project / "test_suite.py").write_text(MODELFIX_SUITE.format(n=tests))
        (anchor / "test_suite.py").write_text(ANCHOR_SUITE.format(n=tests, path=str(model)))
        ours, out = timed([*PYTEST, "-n", "2"], project, env)
        theirs, _ = timed([*PYTEST, "-n", "2", "-p", "no:modelfix"], anchor, env)
    loads = re.search(r"load times: (.*)", out)
    print(
        f"{tests} tests, -n 2: modelfix llama fixture {ours:.2f} s, a Llama per test {theirs:.2f} s "
        f"({theirs / ours:.2f}x faster); {loads.group(0) if loads else 'no load line'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--tests", type=int, default=200)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFIX_", "PYTEST_"))}
    startup(args.runs, env)
    session(args.tests, env)


if __name__ == "__main__":
    main()

"""What the ``llama`` fixture costs per test, and what its shared handle saves over a ``Llama`` per test.

1. Per-test cost (one process, the model already loaded): ``--tests`` tests that take the ``llama``
   fixture and do nothing, against the same tests taking only the session-scoped ``modelfix``
   fixture. The difference divided by the number of tests is everything the fixture adds to a test
   (pytest's fixture machinery for ``llama`` and ``modelfix_model``, the marker, the pool lookup,
   the reset and reseed). A ``pytest_fixture_setup`` hook also times the ``llama`` fixture's own
   setup, which is the part modelfix controls. Goal: under 1 ms.
2. A 200-test session under ``pytest -n 2``: the ``llama`` fixture against the anchor a suite
   without modelfix would write (a function-scoped fixture that builds its own ``llama_cpp.Llama``
   for each test), on the tiny Q4_0 model and on Gemma 3 270M Q4_K_M (the dev extra's real model).
   Goal: never slower; at least 20x faster on a model that takes 0.5 s or more to load.

    python benchmarks/bench_fixture.py [--tests 2000] [--session-tests 200] [--rounds 3]
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

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]

# Both suites load the model once, before the first test: the difference is the per-test cost.
PRELOAD = """
import json, statistics, time
import pytest

@pytest.fixture(scope="session", autouse=True)
def _loaded(modelfix):
    modelfix.load("{name}")

SETUP = []

@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    started = time.perf_counter()
    yield
    if fixturedef.argname == "llama":
        SETUP.append(time.perf_counter() - started)

def pytest_sessionfinish(session):
    if SETUP:
        print("\\nLLAMA_SETUP_US", json.dumps([statistics.median(SETUP) * 1e6, len(SETUP)]))
"""

WITH_FIXTURE = """
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_nothing(llama, i):
    pass
"""

WITHOUT_FIXTURE = """
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_nothing(modelfix, i):
    pass
"""

# The test bodies of the -n 2 sessions: nothing (what the fixture and a load cost), and a
# one-token completion (what a real test adds on top).
BODIES = {
    "empty": "pass",
    "1-token completion": 'assert {handle}("Hello", max_tokens=1, temperature=0)["choices"]',
}

MODELFIX_SUITE = """
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_complete(llama, i):
    {body}
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
    {body}
"""


def timed(argv: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def suite(folder: Path, lock: Path, conftest: str, tests: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text(f"[pytest]\nmodelfix_lock = {lock}\n")
    (folder / "conftest.py").write_text(conftest)
    (folder / "test_suite.py").write_text(tests)
    return folder


def per_test_cost(root: Path, lock: Path, name: str, tests: int, rounds: int) -> None:
    conftest = PRELOAD.format(name=name)
    with_fixture = suite(root / f"{name}-with", lock, conftest, WITH_FIXTURE.format(n=tests))
    without = suite(root / f"{name}-without", lock, conftest, WITHOUT_FIXTURE.format(n=tests))
    ours, base, setups = [], [], []
    for _ in range(rounds):  # interleaved: both sides share the machine's drift
        seconds, out = timed(PYTEST, with_fixture)
        ours.append(seconds)
        found = re.search(r"LLAMA_SETUP_US (\[.*\])", out)
        setups.append(float(found.group(1).strip("[]").split(",")[0]) if found else float("nan"))
        base.append(timed(PYTEST, without)[0])
    a, b = statistics.median(ours), statistics.median(base)
    per_test_ms = (a - b) / tests * 1000
    print(
        f"| {name} | {tests} | {b:.2f} s | {a:.2f} s | {per_test_ms:.3f} ms | {statistics.median(setups):.0f} µs |",
        flush=True,
    )


def session(root: Path, lock: Path, name: str, model: Path, tests: int) -> None:
    load = _load_seconds(model)
    for label, body in BODIES.items():
        folder = f"{name}-{label.split()[0]}"
        ours = suite(
            root / f"{folder}-session", lock, "", MODELFIX_SUITE.format(n=tests, body=body.format(handle="llama"))
        )
        anchor = suite(
            root / f"{folder}-anchor",
            lock,
            "",
            ANCHOR_SUITE.format(n=tests, path=str(model), body=body.format(handle="llm")),
        )
        for folder_, plugin in ((ours, []), (anchor, ["-p", "no:modelfix"])):  # warm-up: bytecode, page cache
            timed([*PYTEST, "-n", "2", *plugin, "-k", "test_complete[0] or test_complete[1]"], folder_)
        a, out = timed([*PYTEST, "-n", "2"], ours)
        b, _ = timed([*PYTEST, "-n", "2", "-p", "no:modelfix"], anchor)
        loads = re.search(r"load times: (.*)", out)
        print(
            f"| {name} | {load:.2f} s | {label} | {tests} | {a:.2f} s | {b:.2f} s | **{b / a:.1f}x** | "
            f"{loads.group(1) if loads else '?'} |",
            flush=True,
        )


def _load_seconds(model: Path) -> float:
    code = (
        "import time, llama_cpp\n"
        f"t = time.perf_counter(); llama_cpp.Llama(model_path={str(model)!r}, n_ctx=512, verbose=False)\n"
        "print(time.perf_counter() - t)\n"
    )
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout) for _ in range(3)
    ]
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000, help="tests per per-test-cost session (2000)")
    parser.add_argument("--session-tests", type=int, default=200, help="tests per -n 2 session (200)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the per-test cost (3)")
    parser.add_argument("--sessions-only", action="store_true", help="only part 2, the -n 2 sessions")
    args = parser.parse_args()

    for key in [k for k in os.environ if k.startswith(("MODELFIX_", "PYTEST_", "HF_"))]:
        del os.environ[key]
    from modelfix.cli import main as modelfix_cli
    from modelfix.testing import pretrained
    from modelfix.testing.gguf import tiny_repo_files
    from modelfix.testing.hub import LocalHub

    with tempfile.TemporaryDirectory() as tmp, LocalHub() as hub:
        root = Path(tmp)
        os.environ.update(HF_ENDPOINT=hub.endpoint, MODELFIX_CACHE_DIR=str(root / "cache"), HF_HUB_DISABLE_XET="1")
        hub.create_repo("org/tiny")
        hub.commit("org/tiny", dict(tiny_repo_files(root / "repo", tags=("Q4_0",), split_tags=())), message="tiny")
        models = {"tiny": "org/tiny:Q4_0"}
        if pretrained.available():
            pretrained.serve_pretrained(hub, root / "pretrained")
            models["gemma"] = pretrained.PRETRAINED_SOURCE
        locks = {name: root / f"{name}-lock" / "model-lock.toml" for name in models}  # one model each: no marker
        for name, source in models.items():
            locks[name].parent.mkdir()
            modelfix_cli(["--lock", str(locks[name]), "add", name, source, "--n-ctx", "512", "--seed", "42"])
        from modelfix import load, path, unload

        # Warm the store (both sides time loads, not downloads) and the backend probe's verdict
        # (once per machine: a later session reads it from the cache in 0.5 ms).
        paths = {name: path(name, locks[name]) for name in models}
        for name in models:
            unload(load(name, locks[name]))

        print(f"\n1. The `llama` fixture's cost per test (one process, model loaded; median of {args.rounds})\n")
        print("| model | tests | tests taking `modelfix` | tests taking `llama` | cost per test | `llama` setup |")
        print("|---|---|---|---|---|---|")
        for name in [] if args.sessions_only else models:
            per_test_cost(root, locks[name], name, args.tests, args.rounds)

        print(f"\n2. {args.session_tests} tests under -n 2: the `llama` fixture against a `Llama` per test\n")
        print(
            "| model | one load | test body | tests | `llama` fixture | a `Llama` per test | faster "
            "| modelfix's load line |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in models:
            session(root, locks[name], name, paths[name], args.session_tests)


if __name__ == "__main__":
    main()

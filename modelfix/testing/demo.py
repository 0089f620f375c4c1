"""The README's demo: the whole modelfix flow on an embedded tiny model.

``make demo`` (or ``python -m modelfix.testing.demo``) writes a tiny GGUF
repository, serves it from a :class:`~modelfix.testing.hub.LocalHub` as
``modelfix-demo/tiny-GGUF``, then runs what a user runs, against the
repository's own ``model-lock.toml``::

    modelfix lock --upgrade   re-resolves the pins: byte-identical to the committed file
    modelfix list / sync / verify / inspect
    modelfix run tiny "..."   a completion from the tiny model
    pytest examples/          the fixtures, in a test suite
    a snapshot test           examples/test_snapshot.py, copied into .demo/snapshots/: it fails
                              unrecorded, `pytest --modelfix-snapshot-update` records it, then it passes
    the example notebook      %load_model, executed headless

Everything happens under ``.demo/`` (cache, repository files); nothing
leaves this machine. It needs a modelfix checkout (the lockfile, ``examples/`` and the
notebook are the repository's, not the package's): the one this module lives in (an editable
install), else the current folder. From an installed wheel outside a checkout it says so in
one line and writes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .gguf import tiny_repo_files
from .hub import LocalHub

__all__ = ["main", "DEMO_REPO", "CHECKOUT_FILES", "find_checkout"]

DEMO_REPO = "modelfix-demo/tiny-GGUF"
# What the demo reads from the repository; a folder holding all of them is a checkout.
CHECKOUT_FILES = (
    "model-lock.toml",
    "examples/test_tiny_model.py",
    "examples/test_snapshot.py",
    "jupyter_ext/example.ipynb",
)


def find_checkout(*candidates: Path) -> Path | None:
    """The first folder among ``candidates`` that holds every file of :data:`CHECKOUT_FILES`."""
    for folder in candidates:
        if all((folder / name).is_file() for name in CHECKOUT_FILES):
            return folder.resolve()
    return None


def _step(title: str, argv: list[str], env: dict[str, str], root: Path, *, expect: int = 0) -> None:
    print(f"\n\033[1m== {title}\033[0m\n$ {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=root, check=False)  # the exit status is checked below
    if result.returncode != expect:
        sys.exit(f"demo step failed ({title}): exit {result.returncode}")
    print(f"({time.perf_counter() - started:.1f} s)", flush=True)


def main() -> int:
    # An installed wheel lives in site-packages: its parents[2] is no checkout, and nothing may be written there.
    root = find_checkout(Path(__file__).resolve().parents[2], Path.cwd())
    if root is None:
        print(
            "error: the demo runs in a modelfix checkout (it uses the repository's model-lock.toml, examples/ "
            f"and jupyter_ext/example.ipynb) and {Path.cwd()} is none: run `make demo` in a clone of the repository",
            file=sys.stderr,
        )
        return 2
    work = root / ".demo"
    # A cold cache each time, so the demo shows a real (verified) download.
    shutil.rmtree(work / "cache", ignore_errors=True)
    repo_files = tiny_repo_files(work / "repo", tags=("Q4_0", "Q8_0"), split_tags=("Q4_1",), split_parts=3)
    lock = root / "model-lock.toml"
    committed = lock.read_bytes()
    modelfix = [sys.executable, "-m", "modelfix"]
    with LocalHub() as hub:
        hub.create_repo(DEMO_REPO)
        hub.commit(DEMO_REPO, dict(repo_files), message="tiny demo model")
        env = dict(
            os.environ,
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_TELEMETRY="1",
            MODELFIX_CACHE_DIR=str(work / "cache"),
            MODELFIX_LOCK=str(lock),
        )
        env.pop("HF_TOKEN", None)
        print(f"local hub serving {DEMO_REPO} at {hub.endpoint}")
        _step("lock: resolve the pins from the hub's metadata", [*modelfix, "lock", "--upgrade"], env, root)
        same = lock.read_bytes() == committed
        print(lock.read_text().split("[models.", 1)[-1].join(["[models.", ""]))
        print("pins are byte-identical to the committed lockfile" if same else "pins CHANGED")
        _step("lock --check: is every entry pinned? (no network)", [*modelfix, "lock", "--check"], env, root)
        _step("sync: fetch into the content-addressed cache, verified", [*modelfix, "sync"], env, root)
        _step("verify --full: re-hash every cached file", [*modelfix, "verify", "--full"], env, root)
        _step("list", [*modelfix, "list"], env, root)
        _step(
            "inspect: header, settings and memory at n_ctx 4096 (no network)",
            [*modelfix, "inspect", "tiny", "--n-ctx", "4096"],
            env,
            root,
        )
        _step(
            "run: load the pinned model and complete a prompt",
            [*modelfix, "run", "tiny", "Hello", "--max-tokens", "16"],
            env,
            root,
        )
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        _step("pytest: fixtures hand out ready handles", [*pytest, "examples/test_tiny_model.py"], env, root)
        _snapshot_steps(work / "snapshots", pytest, env, root)
        _step(
            "notebook: %load_model in a real kernel",
            [sys.executable, "-m", "modelfix_jupyter.run", "jupyter_ext/example.ipynb"],
            env,
            root,
        )
        print(f"\nhub requests served: {len(hub.requests)}")
    if not same:
        print("error: the committed model-lock.toml does not match what the hub serves", file=sys.stderr)
        return 1
    print("demo complete")
    return 0


def _snapshot_steps(folder: Path, pytest: list[str], env: dict[str, str], root: Path) -> None:
    """The snapshot example in a fresh copy: a recording made here must not land in examples/."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    test = folder / "test_snapshot.py"
    shutil.copyfile(root / "examples" / "test_snapshot.py", test)
    where = str(test.relative_to(root))
    _step("snapshot test, unrecorded: fails, saying how to record", [*pytest, "--tb=short", where], env, root, expect=1)
    _step("snapshot test: record", [*pytest, "--modelfix-snapshot-update", where], env, root)
    recorded = folder / "__snapshots__" / "test_snapshot.modelfix.toml"
    print(f"\n{recorded.relative_to(root)}:\n{recorded.read_text()}")
    _step("snapshot test: compared with the recording", [*pytest, where], env, root)


if __name__ == "__main__":
    sys.exit(main())

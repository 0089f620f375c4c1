"""What the store benchmarks share: big files, a local hub in its own process, lockfiles, timing, tables.

The hub runs as a subprocess (``python -m modelfix.testing.hub``) so that its
threads never share a GIL with the code being timed; its request log is read
over HTTP (``/_modelfix/requests``). Big "models" are random bytes, written
once and reused between runs::

    .benchmarks/                       (git-ignored; ``rm -rf .benchmarks`` reclaims it)
      files/big-1024MiB/big-Q4_K_M.gguf                     1 GiB, one file   (BENCH_BIG_MIB)
      files/split-1024MiB/big-Q4_K_M-0000K-of-00004.gguf    4 x 256 MiB       (BENCH_SPLIT_MIB in all)
      tmp/                                           caches of a run, deleted when it ends

Every script imports this module before ``huggingface_hub``: the client reads
``HF_ENDPOINT`` once, at import (see shared/HUB-NOTES.md), so the scripts
start the hub, call :func:`point_at`, and only then import the client.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROOT",
    "WORK",
    "GIB",
    "PYTHON",
    "random_file",
    "big_file",
    "split_files",
    "scratch",
    "Hub",
    "clean_env",
    "point_at",
    "add_model",
    "Summary",
    "measure",
    "Child",
    "run_child",
    "machine",
    "load",
    "table",
    "ratio",
]

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".benchmarks"
PYTHON = sys.executable
GIB = 1024**3
SPLIT_PARTS = 4


def _mib(variable: str) -> int:
    return int(os.environ.get(variable, "1024"))


# --- big files ------------------------------------------------------------------------


def random_file(path: Path, size: int) -> Path:
    """``path`` holding ``size`` random bytes; kept and reused when it already has that size.

    Random, so that no layer (filesystem, HTTP, hash) gets an easy ride on repeated bytes.
    """
    if path.is_file() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    (WORK / "tmp").mkdir(parents=True, exist_ok=True)
    # Written outside the repo folder: the hub serves whatever that folder holds.
    staged = WORK / "tmp" / f"{path.parent.name}-{path.name}.partial"
    block = 16 * 1024 * 1024
    with open(staged, "wb") as f:
        for start in range(0, size, block):
            f.write(os.urandom(min(block, size - start)))
    os.replace(staged, path)
    return path


def big_file() -> Path:
    """The single big model file (``BENCH_BIG_MIB`` MiB, 1024 by default) in its own repo folder."""
    mib = _mib("BENCH_BIG_MIB")
    return random_file(WORK / "files" / f"big-{mib}MiB" / "big-Q4_K_M.gguf", mib * 2**20)


def split_files() -> list[Path]:
    """A 4-part split set, ``BENCH_SPLIT_MIB`` MiB in all (1024 by default), in its own repo folder."""
    mib = _mib("BENCH_SPLIT_MIB")
    part = mib * 2**20 // SPLIT_PARTS
    folder = WORK / "files" / f"split-{mib}MiB"
    return [
        random_file(folder / f"big-Q4_K_M-{i:05d}-of-{SPLIT_PARTS:05d}.gguf", part) for i in range(1, SPLIT_PARTS + 1)
    ]


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A fresh folder on the same disk as the big files (so no tmpfs flatters a run), removed after."""
    (WORK / "tmp").mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=WORK / "tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the local hub, in its own process -------------------------------------------------------


class Hub:
    """``python -m modelfix.testing.hub --repo ORG/NAME=DIR ...`` for the length of a ``with``."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.endpoint = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Hub:
        argv = [PYTHON, "-m", "modelfix.testing.hub"]
        for repo, folder in self.repos.items():
            argv += ["--repo", f"{repo}={folder}"]
        # Its stderr goes nowhere: http.server prints a traceback for every client that
        # resets a keep-alive connection, which is how the clients being measured exit.
        self._process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=clean_env()
        )
        line = self._process.stdout.readline().strip()  # after it hashed every file it serves
        if not line.startswith("HF_ENDPOINT="):
            self.__exit__()
            sys.exit(f"the local hub did not start ({' '.join(argv)}); run that command to see why")
        self.endpoint = line.split("=", 1)[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def cpu_seconds(self) -> float:
        """User + system CPU the hub process has used so far."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def requests(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.endpoint}/_modelfix/requests") as answer:
            return json.load(answer)

    def clear(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/_modelfix/requests", method="DELETE")).close()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without settings that would steer a run (tokens, caches, offline)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODELFIX_", "HF_", "HUGGING_FACE_", "LLAMA_", "PYTEST_"))
    }
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    # A user's interpreter keeps compiled bytecode; without it every start compiles each module again
    # (60 ms of a warm `modelfix sync`), which measures the sandbox, not modelfix.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def point_at(hub: Hub, home: Path) -> None:
    """Point this process (and its children) at ``hub``, with every cache under ``home``.

    Separate, empty huggingface_hub and llama.cpp caches matter: modelfix adopts
    blobs it finds there, which would turn a measured download into a hard link.
    """
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("huggingface_hub was imported before HF_ENDPOINT was set: it would talk to the real Hub")
    env = clean_env(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home / "hf"),
        LLAMA_CACHE=str(home / "llama.cpp"),
        MODELFIX_CACHE_DIR=str(home / "modelfix"),
    )
    os.environ.clear()
    os.environ.update(env)


def add_model(lock: Path, name: str, source: str) -> None:
    """``modelfix --lock LOCK add NAME SOURCE`` in a subprocess with this process's environment."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [PYTHON, "-m", "modelfix", "--lock", str(lock), "add", name, source], capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"modelfix add {name} {source} failed:\n{result.stderr}")


# --- timing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """The median, lowest and highest of ``runs`` samples (seconds, bytes, ...)."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))


def measure(fn: Callable[[], object], *, runs: int, number: int = 1, warmup: int = 1) -> Summary:
    """Call ``fn`` ``warmup`` times untimed, then time ``runs`` samples of ``number`` calls each."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - started) / number)
    return Summary.of(samples)


@dataclass(frozen=True)
class Child:
    """A finished child process: the JSON object it printed last, and what it cost."""

    output: dict
    wall: float  # seconds, start to exit
    cpu: float  # user + system seconds


def run_child(argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
    """Run ``argv`` to its end; exits naming it if it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), env=env, stdout=out, stderr=err, text=True)
        # wait4, not Popen.wait: it hands back this one child's CPU times. (Not its peak
        # RSS: Linux counts the parent's RSS at fork in a child's ru_maxrss.)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({process.returncode}):\n{stdout}\n{stderr}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return Child(json.loads(lines[-1]) if lines else {}, wall, usage.ru_utime + usage.ru_stime)


# --- reporting ------------------------------------------------------------------------------


def machine() -> str:
    """One line naming what the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    from importlib.metadata import version

    versions = ", ".join(f"{p} {version(p)}" for p in ("huggingface_hub", "llama_cpp_python", "xxhash"))
    return (
        f"{os.cpu_count()} cores ({cpu}), {ram:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {versions}; {load()}"
    )


def load() -> str:
    """The 1-minute load average: other work on these 2 cores skews every timing, so it is printed."""
    return f"load average {os.getloadavg()[0]:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (readable as is, pasteable into docs/benchmarks.md)."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines), flush=True)


def ratio(x: float, y: float) -> str:
    """``x / y`` as ``12.3x`` (or ``1234x`` once it is large)."""
    value = x / y if y else float("inf")
    return f"{value:.0f}x" if value >= 100 else f"{value:.2f}x"

"""Backend safety: does this llama.cpp build's CPU code run on this host? Learnt once, in a child.

At load, llama.cpp repacks quantized weights into buffers laid out for the CPU's
widest kernels (``CPU_REPACK``; ``AMX`` where the build has AMX). On some hosts
those kernels kill the process: llama.cpp's AMX matmul dies with SIGSEGV at
``ldtilecfg`` on VMs that do not grant AMX tile state to every thread
(ggml-org/llama.cpp#20824). A crash cannot be caught, so before a process's
first real load with ``repack = "auto"`` modelfix tries a short quantized
decode in a child process::

    verdict(root, layers) ── memo (this process) ── <root or a layer>/probe/<key>.json ── else probe:
        child: python -m modelfix.probe --child MODEL --repack on    (Q4_0, repacked at load)
            exits 0                          → "on"
            killed by a signal / hangs  ──▶ child again with --repack off
                exits 0                      → "off"     loads use use_extra_bufts = False
                killed / hangs               → "broken"  loads raise BackendError
            fails otherwise (exit status)    → BackendError naming the child's error, not cached

The verdict is cached per *key*: the llama.cpp build (llama-cpp-python's
version and its shared libraries' names, sizes and mtimes), the CPU flags and
the kernel release, so a machine pays once, and a rebuild or an upgrade is
probed again. (``llama_print_system_info`` follows from the library and the
CPU flags; it is recorded in the verdict, not hashed into the key, because
its first call costs milliseconds.) The file is written atomically; a cache
that cannot be written keeps the verdict in memory for the process (debug log).
A verdict is also read from the read-only caches in front of the store (``layers``, see
:mod:`modelfix.layers`: an image that ran the probe in its build stage on a host like this one),
never written there.
A verdict involving a timeout is kept in memory only: a loaded machine is no
proof. Later starts read the file: no request, well under a millisecond.

``MODELFIX_PROBE_TIMEOUT`` (seconds, default 30) bounds each child.
``MODELFIX_PROBE_FAULT`` is read by the child only, for tests on hosts where
nothing crashes: ``crash-with-repack`` (die by SIGSEGV where the decode would
run, when repacking is on), ``crash-always``, ``hang``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BackendError

__all__ = [
    "Verdict",
    "PORTABLE_BUILD",
    "PORTABLE_CMAKE_ARGS",
    "build_identity",
    "build_description",
    "probe_key",
    "known_verdict",
    "verdict",
    "use_repack",
    "repack_text",
    "describe",
    "write_probe_model",
    "main",
]

log = logging.getLogger("modelfix")

PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
# --no-cache-dir: pip's wheel cache would hand back the old, native build.
PORTABLE_BUILD = (
    f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python '
    "--no-deps llama-cpp-python"
)
_DEFAULT_TIMEOUT = 30.0
_MAX_VERDICT_BYTES = 64 * 1024
_PROMPT = "Hello world, the tiny model is and the"  # several tokens: the prompt runs the batched (gemm) kernels too


@dataclass(frozen=True)
class Verdict:
    """What the probe found for one build on one host.

    ``repack`` is ``"on"`` (the kernels run), ``"off"`` (they die with repacked
    weights, run without) or ``"broken"`` (they die either way). ``crashed``
    says what died, ``build`` names llama-cpp-python and its system info.
    """

    repack: str
    key: str
    build: str
    crashed: str = ""
    seconds: float = 0.0
    cached: bool = False  # read from the cache file, not probed by this process
    path: str | None = None  # the cache file, where one was read or written

    @property
    def usable(self) -> bool:
        return self.repack != "broken"

    def summary(self) -> str:
        """One line for a header, a table or ``modelfix doctor``."""
        if self.repack == "on":
            return "repack on (the backend probe's quantized decode ran)"
        if self.repack == "off":
            return f"repack off: llama.cpp's repacked kernels crash on this CPU ({self.crashed}); loads run without"
        return f"broken: llama.cpp fails on this CPU even without repacking ({self.crashed}); loads refuse to start"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the key -------------------------------------------------------------------------------


def _cpu_flags() -> str:
    """The first CPU's feature flags (Linux: ``flags`` on x86, ``Features`` on ARM), else the machine name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    import platform

    return f"{platform.machine()} {platform.processor()}"


def _libraries(llama_cpp: Any) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the shared libraries beside the loaded libllama: the build's identity."""
    loaded = getattr(getattr(llama_cpp, "llama_cpp", None), "_lib", None)
    folder = Path(getattr(loaded, "_name", "") or Path(llama_cpp.__file__).parent / "lib" / "x").parent
    found = []
    with contextlib.suppress(OSError):
        for item in os.scandir(folder):
            if item.is_file() and (".so" in item.name or item.name.endswith((".dylib", ".dll"))):
                st = item.stat()
                found.append((item.name, st.st_size, st.st_mtime_ns))
    return sorted(found)


def build_identity() -> dict[str, Any]:
    """Everything the verdict depends on: llama.cpp build, CPU flags, kernel release."""
    import llama_cpp

    return {
        "llama_cpp_python": llama_cpp.__version__,
        "libraries": _libraries(llama_cpp),
        "cpu_flags": _cpu_flags(),
        "kernel": os.uname().release if hasattr(os, "uname") else sys.platform,
    }


def build_description() -> str:
    """``llama-cpp-python 0.3.36 (CPU : SSE3 = 1 | ... | REPACK = 1 |)``."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    return f"llama-cpp-python {llama_cpp.__version__} ({info})"


_KEY: list[str] = []  # computed once per process: the build and the host do not change under it


def probe_key() -> str:
    """The verdict's key for this process's llama.cpp build on this host."""
    if not _KEY:
        identity = json.dumps(build_identity(), sort_keys=True)
        _KEY.append(hashlib.sha256(identity.encode()).hexdigest()[:32])
    return _KEY[0]


# --- the verdict ---------------------------------------------------------------------------

# Process-wide: the verdict is a fact of this build on this host, learnt once per process and
# shared by every Project and pool in it; one probe at a time; the warning said once.
_MEMO: dict[str, tuple[Verdict, bool]] = {}  # key -> (verdict, definite: not a timeout)
_KEPT: dict[tuple[str, Path], Verdict] = {}  # (key, cache root) -> the verdict as that cache holds it
_LOCK = threading.Lock()
_ANNOUNCED: set[str] = set()


def _verdict_file(root: Path, key: str) -> Path:
    return root / "probe" / f"{key}.json"


def _read(root: Path, key: str) -> Verdict | None:
    path = _verdict_file(root, key)
    try:
        # Never through a link, never blocked by a FIFO: the cache may be shared.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ValueError("not a regular file")
            data = json.loads(f.read(_MAX_VERDICT_BYTES))
        found = Verdict(**{k: data[k] for k in ("repack", "key", "build", "crashed", "seconds")})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("ignoring the unreadable probe verdict %s: %s", path, exc)
        return None
    if found.key != key or found.repack not in ("on", "off", "broken"):
        return None
    return dataclasses.replace(found, cached=True, path=str(path))


def _write(root: Path, found: Verdict) -> Verdict:
    import tempfile

    path = _verdict_file(root, found.key)
    data = {k: v for k, v in found.as_dict().items() if k not in ("cached", "path")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verdict-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from the other users of a shared cache
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("cannot keep the probe verdict in %s (%s): this process remembers it", path, exc)
        return found
    return dataclasses.replace(found, path=str(path))


def _read_any(roots: Iterable[Path], key: str) -> Verdict | None:
    return next((found for root in roots if (found := _read(root, key)) is not None), None)


def known_verdict(root: Path | None = None, layers: Sequence[Path] = ()) -> Verdict | None:
    """The verdict this process, the cache under ``root`` or a read-only cache in ``layers`` already has;
    never probes."""
    key = probe_key()
    memo = _MEMO.get(key)
    if memo is not None:
        return memo[0]
    return _read_any([*layers, *([root] if root is not None else [])], key)


def verdict(root: Path, *, timeout: float | None = None, layers: Sequence[Path] = ()) -> Verdict:
    """This host's verdict: from memory, from ``<root>/probe/`` or a read-only cache's, else by probing
    (then kept in ``root``, or in memory where it cannot be written).

    A process that uses several caches probes once: a definite verdict it already holds is written
    into each further cache it is asked about, so ``modelfix doctor`` shows this cache's file.
    """
    key = probe_key()
    kept = _KEPT.get((key, root))
    if kept is not None and key in _MEMO:
        return kept
    with _LOCK:
        memo = _MEMO.get(key)
        found = _read_any([*layers, root], key)
        definite = True
        if found is None and memo is not None:
            found, definite = memo
            if definite:
                found = _write(root, found)
        elif found is None:
            with _probe_lock(root, key):
                found = _read(root, key)  # another process may have probed meanwhile
                if found is None:
                    found, definite = _probe(key, _timeout(timeout))
                    if definite:
                        found = _write(root, found)
        _MEMO[key] = (found, definite)
        _KEPT[key, root] = found
    return found


def use_repack(setting: str, root: Path, layers: Sequence[Path] = ()) -> bool:
    """Whether a load with ``repack = setting`` repacks its weights; ``auto`` follows the verdict.

    Raises :class:`~modelfix.errors.BackendError` where the probe found that
    llama.cpp crashes either way, rather than letting the load kill the process.
    """
    if setting != "auto":
        return setting == "on"
    found = verdict(root, layers=layers)
    if found.repack == "broken":
        slow = " If this machine is only slow, raise MODELFIX_PROBE_TIMEOUT." if "no answer" in found.crashed else ""
        raise BackendError(
            f"{found.build} fails on this CPU: a short quantized decode in a child process {found.crashed}. "
            f"Loading a model would kill this process, so modelfix stops here. Rebuild llama-cpp-python without "
            f"the host-specific kernels: {PORTABLE_BUILD} (from a modelfix checkout: "
            f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" make rebuild-llama), or use a GPU build. `modelfix doctor` '
            f"shows the build and the verdict.{slow}"
        )
    if found.repack == "off" and found.key not in _ANNOUNCED:
        _ANNOUNCED.add(found.key)
        log.warning(
            "modelfix: llama.cpp's repacked CPU kernels crash on this host (%s); loading with repack off "
            "(use_extra_bufts = False). Set MODELFIX_REPACK=on or off to choose; `modelfix doctor` has the details.",
            found.crashed,
        )
    return found.repack == "on"


def repack_text(setting: str, found: Verdict | None) -> str:
    """How loads with ``repack = setting`` go, in words: what every front end shows."""
    if setting != "auto":
        return f"repack {setting} (set explicitly; the backend probe is not consulted)"
    if found is None:
        return "repack auto (not probed yet: the first load probes this host)"
    return found.summary()


def describe(root: Path, *, probe_now: bool = False, layers: Sequence[Path] = ()) -> str:
    """How loads in this environment repack, in words: ``MODELFIX_REPACK``, else the verdict.

    ``probe_now`` probes a host that has no verdict yet (once per machine);
    else such a host reads "not probed yet". Never raises: a failed probe is
    described. (A lockfile entry or a call may still choose for one model.)
    """
    setting = os.environ.get("MODELFIX_REPACK", "").strip().lower()
    setting = setting if setting in ("on", "off") else "auto"  # a bad value fails the first load, by name
    if setting != "auto":
        return repack_text(setting, None)
    try:
        return repack_text("auto", verdict(root, layers=layers) if probe_now else known_verdict(root, layers))
    except BackendError as exc:
        return f"backend probe failed: {exc}"


def _timeout(timeout: float | None) -> float:
    if timeout is not None:
        return timeout
    raw = os.environ.get("MODELFIX_PROBE_TIMEOUT", "").strip()
    try:
        return float(raw) if raw else _DEFAULT_TIMEOUT
    except ValueError:
        raise BackendError(
            f"MODELFIX_PROBE_TIMEOUT={raw!r} is not a number of seconds; unset it or use e.g. 30."
        ) from None


@contextlib.contextmanager
def _probe_lock(root: Path, key: str) -> Iterator[None]:
    """One prober per key across processes (xdist workers starting together); none if the cache is read-only."""
    import filelock

    try:
        (root / "probe").mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(root / "probe" / f"{key}.lock"), timeout=2 * _DEFAULT_TIMEOUT + 10)
        lock.acquire()
    except (OSError, filelock.Timeout) as exc:
        log.debug("probing without the cache's lock (%s)", exc)
        yield
        return
    try:
        yield
    finally:
        lock.release()


# --- probing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    kind: str  # ok | signal | timeout | error
    detail: str

    def describe(self, repack: bool) -> str:
        return f"{self.detail} with repacking {'on' if repack else 'off'}"


def write_probe_model(path: Path) -> Path:
    """The probe's model: Q4_0 layers at n_embd 256, which llama.cpp repacks (CPU_REPACK, or AMX where present)."""
    from .testing.gguf import write_tiny_model

    writer_log = logging.getLogger("gguf.gguf_writer")  # its INFO lines are not the user's business here
    level = writer_log.level
    writer_log.setLevel(logging.WARNING)
    try:
        (written,) = write_tiny_model(path, n_layer=1, n_embd=256, n_head=4, n_ff=512, qtype="Q4_0", name="probe")
    finally:
        writer_log.setLevel(level)
    return written


def _probe(key: str, timeout: float) -> tuple[Verdict, bool]:
    """(verdict, definite): ``definite`` is False when a child timed out (then the verdict is not cached)."""
    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelfix-probe-") as folder:
        model = write_probe_model(Path(folder) / "probe-Q4_0.gguf")
        on = _run_child(model, repack=True, timeout=timeout)
        outcomes = [on]
        if on.kind not in {"ok", "error"}:
            outcomes.append(_run_child(model, repack=False, timeout=timeout))
    seconds = round(time.perf_counter() - started, 3)
    last = outcomes[-1]
    if last.kind == "error":
        raise BackendError(
            f"the backend probe (a short decode of a tiny Q4_0 model in a child process, {sys.executable} -m "
            f"modelfix.probe) failed: {last.detail}. Set MODELFIX_REPACK=on (llama.cpp's default) or off to load "
            f"without probing, and report this with the output of `modelfix doctor`."
        )
    crashed = "; ".join(o.describe(r) for o, r in zip(outcomes, (True, False), strict=False) if o.kind != "ok")
    repack = "on" if on.kind == "ok" else "off" if last.kind == "ok" else "broken"
    definite = all(o.kind != "timeout" for o in outcomes)
    log.debug("backend probe: %s in %.2f s (%s)", repack, seconds, crashed or "no crash")
    return Verdict(repack, key, build_description(), crashed, seconds), definite


def _run_child(model: Path, *, repack: bool, timeout: float) -> _Outcome:
    import subprocess

    argv = [sys.executable, "-m", "modelfix.probe", "--child", str(model), "--repack", "on" if repack else "off"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return _Outcome("timeout", f"no answer within {timeout:g} s (MODELFIX_PROBE_TIMEOUT)")
    except OSError as exc:
        return _Outcome("error", f"cannot start {sys.executable}: {exc}")
    if done.returncode == 0:
        return _Outcome("ok", done.stdout.decode(errors="replace").strip())
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return _Outcome("signal", f"died by {name}")
    tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return _Outcome("error", f"exit status {done.returncode}: {tail[0]}")


# --- the child -------------------------------------------------------------------------------


def _child(model: str, repack: bool, verbose: bool) -> int:
    from .handle import open_llama

    fault = os.environ.get("MODELFIX_PROBE_FAULT", "")
    started = time.perf_counter()
    llm = open_llama(Path(model), {"n_ctx": 64, "n_gpu_layers": 0, "seed": 0, "verbose": verbose}, repack=repack)
    # Stand-ins for the AMX crash on hosts where it cannot happen: die where the decode would run.
    if fault == "crash-always" or (fault == "crash-with-repack" and repack):
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "hang":
        while True:
            time.sleep(3600)
    out = llm.create_completion(_PROMPT, max_tokens=4, temperature=0, stream=False)
    assert isinstance(out, dict)
    seconds = time.perf_counter() - started
    print(json.dumps({"text": out["choices"][0]["text"], "tokens": out["usage"]["completion_tokens"], "s": seconds}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m modelfix.probe``: print this host's verdict (probing if needed), or run as the child."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m modelfix.probe", description=main.__doc__)
    ap.add_argument("--child", metavar="MODEL", help="run one decode of MODEL (what the probe runs in its child)")
    ap.add_argument("--repack", choices=("on", "off"), default="on", help="with --child: repack weights or not")
    ap.add_argument("--verbose", action="store_true", help="with --child: llama.cpp's log on stderr")
    ap.add_argument("--cache-dir", metavar="DIR", help="cache root of the verdict (default: modelfix's)")
    a = ap.parse_args(argv)
    if a.child:
        return _child(a.child, a.repack == "on", a.verbose)
    from .config import cache_root

    found = verdict(cache_root(a.cache_dir))
    print(json.dumps(found.as_dict(), indent=1))
    return 0 if found.usable else 1


if __name__ == "__main__":
    sys.exit(main())

"""Many real processes on one store: one download per blob, and a killed download resumes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import modelfix
from modelfix.config import CacheSettings
from modelfix.lockfile import Lockfile
from modelfix.locking import add
from modelfix.store import Store
from modelfix.testing.gguf import write_tiny_model
from modelfix.testing.hub import Fault

REPO = "org/tiny"

_SYNC = """
import json, sys, modelfix
done = modelfix.sync(lock=sys.argv[1])
problems = modelfix.verify(lock=sys.argv[1], full=True)
print(json.dumps({"files": [str(f) for m in done for f in m.files], "problems": [p.message for p in problems]}))
"""


def _byte_downloads(hub, name: str) -> int:
    return sum(1 for r in hub.requests if r.filename == name and r.method == "GET" and r.status in (200, 206))


def test_eight_processes_syncing_one_cold_model_download_each_blob_once(hub, workdir):
    lock = workdir / "model-lock.toml"
    add("chat", f"{REPO}:Q4_0", lock)
    add("split", f"{REPO}:Q4_1", lock)
    # Slow the first download down so that the others arrive while it is in flight.
    hub.inject(REPO, "tiny-Q4_0.gguf", Fault.stall(1.0, after_bytes=100_000))
    hub.clear_log()

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SYNC, str(lock)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    results = [p.communicate(timeout=120) for p in procs]

    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in results if err]
    reports = [json.loads(out) for out, _ in results]
    assert all(r["problems"] == [] for r in reports)
    assert len({tuple(r["files"]) for r in reports}) == 1  # everyone got the same view
    pins = {p.path: p.sha256 for e in Lockfile.load(lock).entries.values() for p in e.files}
    for name in pins:
        assert _byte_downloads(hub, name) == 1, name
    for file in reports[0]["files"]:
        assert hashlib.sha256(Path(file).read_bytes()).hexdigest() == pins[Path(file).name]


def test_a_download_killed_mid_file_resumes_from_its_partial(hub_env, workdir, tmp_path):
    files = write_tiny_model(tmp_path / "repo" / "big-Q4_0.gguf", target_bytes=3_000_000)
    hub_env.create_repo("org/big")
    hub_env.commit("org/big", {"big-Q4_0.gguf": files[0]})
    lock = workdir / "model-lock.toml"
    add("big", "org/big:Q4_0", lock)
    pin = Lockfile.load(lock).entry("big").files[0]
    partial = Store(CacheSettings.resolve().root).partial_path(pin.sha256)
    hub_env.inject("org/big", "big-Q4_0.gguf", Fault.stall(60, after_bytes=2_500_000))

    victim = subprocess.Popen(
        [sys.executable, "-m", "modelfix", "sync", "big"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= 2_000_000):
        assert victim.poll() is None and time.monotonic() < deadline, "the download never got going"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    kept = partial.stat().st_size
    hub_env.clear_log()

    path = modelfix.path("big", lock)

    resumed = [r for r in hub_env.requests if r.filename == "big-Q4_0.gguf" and r.status == 206]
    assert [r.range for r in resumed] == [f"bytes={kept}-{pin.size - 1}"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pin.sha256
    assert not partial.exists()


def test_a_sync_waiting_on_a_stopped_writer_says_which_process_holds_the_file(hub, workdir, monkeypatch, caplog):
    import threading

    import modelfix.store

    lock = workdir / "model-lock.toml"
    add("chat", f"{REPO}:Q4_0", lock)
    pin = next(p for p in Lockfile.load(lock).entry("chat").files if p.path == "tiny-Q4_0.gguf")
    partial = Store(CacheSettings.resolve().root).partial_path(pin.sha256)
    hub.inject(REPO, pin.path, Fault.stall(60, after_bytes=100_000))
    holder = subprocess.Popen(
        [sys.executable, "-m", "modelfix", "sync", "chat"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    waiter = None
    try:
        deadline = time.monotonic() + 60
        # The partial is made under the blob's lock; the stalled request shows the holder is in it.
        while not (partial.exists() and any(r.filename == pin.path and r.origin == "cdn" for r in hub.requests)):
            assert holder.poll() is None and time.monotonic() < deadline, holder.stdout.read()
            time.sleep(0.05)
        os.kill(holder.pid, signal.SIGSTOP)  # Ctrl-Z in the terminal that runs it
        monkeypatch.setattr(modelfix.store, "WAIT_NOTICE_S", 0.5)
        done: list[object] = []
        waiter = threading.Thread(target=lambda: done.append(modelfix.sync(["chat"], lock=lock)), daemon=True)
        with caplog.at_level("WARNING", logger="modelfix"):
            waiter.start()
            deadline = time.monotonic() + 30
            while not (
                notices := [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"chat: {pin.path}: ")]
            ):
                assert time.monotonic() < deadline, "nothing said why the sync waits"
                time.sleep(0.05)
        notice = notices[0]
        assert notice.startswith(f"chat: {pin.path}: waiting for another process (pid {holder.pid})"), notice
        assert "resume it (fg) or end it" in notice and not done
    finally:
        holder.kill()  # a dead writer's lock goes with it: the waiter takes over and resumes
        holder.wait(timeout=30)
        hub.release_stalls()
    waiter.join(timeout=60)
    assert done, "the waiter did not take over once the writer died"
    path = modelfix.path("chat", lock)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pin.sha256

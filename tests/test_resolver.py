"""The Python API: files/path/sync/verify on a real lockfile against the local Hub.

What a user checks: the files are right and beside each other, a warm call costs
nothing, faults end either recovered or in one clear error with nothing bad cached,
offline mode says exactly what to sync, and a cancel leaves a resumable partial.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import modelfix
import modelfix.lockfile
import modelfix.store
import modelfix.views
from modelfix.config import CacheSettings
from modelfix.errors import Cancelled, IntegrityError, LockError, NetworkError, OfflineError
from modelfix.jobs import jobs
from modelfix.lockfile import Lockfile
from modelfix.locking import add, add_entry
from modelfix.resolver import cached_state, missing
from modelfix.store import Store
from modelfix.testing.hub import Fault

REPO, MODEL = "org/tiny", "tiny-Q4_0.gguf"


def _store() -> Store:
    return Store(CacheSettings.resolve().root)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(*args: str, cwd: Path) -> None:
    """``modelfix ARGS`` in another process, as a second terminal would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "modelfix", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert done.returncode in (0, 1), done.stderr  # 1: `verify` found a problem


def _byte_gets(hub, name=MODEL):
    """GETs that carried bytes, of file ``name`` (every file if None)."""
    return [r for r in hub.requests if name in (None, r.filename) and r.method == "GET" and r.status in (200, 206)]


def test_files_names_every_file_of_the_entry_in_its_view(lock, tiny_files):
    m = modelfix.files("split", lock)

    assert m.name == "split" and m.model_path == m.files[0]
    assert m.model_path.name == "tiny-Q4_1-00001-of-00003.gguf"
    assert m.mmproj_path == m.view / "mmproj-tiny-f16.gguf"
    assert m.preset_path == m.view / "preset.ini"
    for pin, file in zip(m.entry.files, m.files, strict=True):
        assert (
            hashlib.sha256(file.read_bytes()).hexdigest()
            == pin.sha256
            == hashlib.sha256(tiny_files[pin.path].read_bytes()).hexdigest()
        )
    assert modelfix.path("split", lock) == m.model_path


def test_entries_pinning_the_same_bytes_share_one_view(lock):
    add("chat-again", f"hf://{REPO}:Q4_0", lock)

    assert modelfix.files("chat-again", lock).view == modelfix.files("chat", lock).view


@pytest.mark.parametrize("lock_arg", ["given", "found upward"])
def test_a_warm_path_makes_no_request_hashes_and_parses_nothing(lock, hub, monkeypatch, lock_arg):
    """How fast it is, is benchmarks/bench_warm.py's claim (docs/benchmarks.md), not a timed test."""
    given = lock if lock_arg == "given" else None
    an_hour_ago = time.time() - 3600  # as a project's lockfile is: its stat alone is trusted
    os.utime(lock, (an_hour_ago, an_hour_ago))
    first = modelfix.path("chat", given)
    hub.clear_log()

    def forbidden(*args, **kwargs):
        raise AssertionError("a warm path() must not hash, read a view's manifest or parse the lockfile")

    monkeypatch.setattr(modelfix.store, "hash_fd", forbidden)
    monkeypatch.setattr(modelfix.views.View, "read", forbidden)
    monkeypatch.setattr(modelfix.lockfile.Lockfile, "parse", forbidden)
    for _ in range(200):
        assert modelfix.path("chat", given) == first

    assert hub.requests == []


def _cache_rm(m, lock) -> None:
    _cli("cache", "rm", "chat", cwd=lock.parent)


def _verify_after_bit_rot(m, lock) -> None:
    blob = _store().blob_path(m.entry.files[0].sha256)
    before = blob.stat()
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:  # one bit flipped, same size, same mtime: only a hash can tell
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
    _cli("verify", "chat", cwd=lock.parent)


def _one_file_deleted(m, lock) -> None:
    m.files[1].unlink()


@pytest.mark.parametrize(
    ("change", "downloads"),
    [
        (_cache_rm, []),  # the blobs stay: this process leases them
        (_verify_after_bit_rot, [MODEL]),
        (_one_file_deleted, []),
    ],
    ids=["cache rm in another process", "verify in another process removes a rotten blob", "a view file deleted"],
)
def test_a_warm_path_notices_a_view_changed_under_it(lock, hub, change, downloads):
    m = modelfix.files("chat", lock)
    modelfix.files("chat", lock)  # warm
    change(m, lock)
    hub.clear_log()

    again = modelfix.files("chat", lock)

    assert again.files == m.files
    assert [_sha(f) for f in again.files] == [p.sha256 for p in m.entry.files]
    assert [r.filename for r in _byte_gets(hub, None)] == downloads


def _repinned(lock: Path) -> None:
    add("chat", f"{REPO}:Q8_0", lock)


def _swapped_in_place(lock: Path) -> None:
    """``chat`` and ``talk`` trade tables: same size, same inode, and the mtime put back."""
    before = lock.stat()
    text = lock.read_text().replace("[models.chat]", "[models.tmp_]").replace("[models.talk]", "[models.chat]")
    with open(lock, "r+", encoding="utf-8") as f:
        f.write(text.replace("[models.tmp_]", "[models.talk]"))
    os.utime(lock, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (lock.stat().st_ino, lock.stat().st_size) == (before.st_ino, before.st_size)


@pytest.mark.parametrize("edit", [_repinned, _swapped_in_place], ids=["re-pinned", "rewritten in place"])
def test_a_warm_path_follows_an_edited_lockfile(lock, edit):
    add("talk", f"{REPO}:Q8_0", lock)
    assert modelfix.path("chat", lock).name == MODEL
    assert modelfix.path("chat", lock).name == MODEL  # warm

    edit(lock)

    assert modelfix.path("chat", lock).name == "tiny-Q8_0.gguf"


def test_a_warm_path_follows_the_cache_dir_of_the_moment(lock, hub, monkeypatch, tmp_path):
    first = modelfix.path("chat", lock)
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(tmp_path / "other-cache"))
    hub.clear_log()

    moved = modelfix.path("chat", lock)

    assert moved.is_relative_to(tmp_path / "other-cache") and not first.is_relative_to(tmp_path / "other-cache")
    assert sorted(r.filename for r in _byte_gets(hub, None)) == ["mmproj-tiny-f16.gguf", "preset.ini", MODEL]
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(tmp_path / "cache"))
    assert modelfix.path("chat", lock) == first


def test_unpinned_and_stale_entries_ask_for_modelfix_lock(lock):
    add_entry(lock, "new", f"{REPO}:Q8_0")
    with pytest.raises(LockError, match="not pinned yet: run `modelfix lock`"):
        modelfix.path("new", lock)
    add_entry(lock, "chat", f"{REPO}:Q8_0")  # source edited, pins not refreshed
    with pytest.raises(LockError, match=r"stale.*Run `modelfix lock`"):
        modelfix.path("chat", lock)


@pytest.mark.parametrize("switch", ["MODELFIX_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_names_every_missing_model_and_the_sync_that_fixes_it(lock, hub, monkeypatch, switch):
    modelfix.files("chat", lock)
    hub.clear_log()
    monkeypatch.setenv(switch, "1")

    assert modelfix.files("chat", lock).model_path.exists()  # cached: offline is no obstacle
    with pytest.raises(OfflineError) as info:
        modelfix.sync(lock=lock)

    message = str(info.value)
    assert "split: tiny-Q4_1-00001-of-00003.gguf" in message and "modelfix sync split" in message
    assert "modelfix sync chat" not in message
    assert hub.requests == []


def test_offline_lists_for_each_model_every_file_it_lacks_shared_ones_too(lock, monkeypatch):
    monkeypatch.setenv("MODELFIX_OFFLINE", "1")
    lockfile = Lockfile.load(lock)

    with pytest.raises(OfflineError) as info:
        modelfix.sync(lock=lock)

    listed = {line.split(":")[0].strip(): line for line in str(info.value).splitlines() if "->" in line}
    assert listed.keys() == {"chat", "split"}
    for name, line in listed.items():
        lacking = [p.path for model, p in missing(lockfile, CacheSettings.resolve()) if model == name]
        assert lacking == [p.path for p in lockfile.entry(name).files]  # mmproj and preset.ini included
        assert all(f" {path} (" in line for path in lacking), line


def test_corrupt_bytes_once_are_fetched_again_cleanly(lock, hub):
    hub.inject(REPO, MODEL, Fault.corrupt(offset=123_456))

    path = modelfix.path("chat", lock)

    pin = Lockfile.load(lock).entry("chat").files[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pin.sha256
    assert [r.range for r in _byte_gets(hub)] == [f"bytes=0-{pin.size - 1}"] * 2


def test_corrupt_bytes_every_time_end_in_an_integrity_error_and_nothing_cached(lock, hub):
    hub.inject(REPO, MODEL, Fault.corrupt(offset=10), times=None)
    pin = Lockfile.load(lock).entry("chat").files[0]

    with pytest.raises(IntegrityError) as info:
        modelfix.path("chat", lock)

    message = str(info.value)
    assert f"chat: {MODEL}" in message and f"expected sha256 {pin.sha256}" in message and "got " in message
    store = _store()
    assert not store.has(pin.sha256)
    assert not store.partial_path(pin.sha256).exists()
    assert not (store.root / "views").exists() or not any((store.root / "views").iterdir())


def test_a_network_that_keeps_failing_is_reported_with_the_model_and_file(lock, hub, monkeypatch):
    monkeypatch.setenv("MODELFIX_RETRIES", "2")
    others = [p.path for p in Lockfile.load(lock).entry("chat").files if p.path != MODEL]
    for path in (MODEL, *others):
        hub.inject(REPO, path, Fault.status(500), times=None)

    with pytest.raises(NetworkError, match=f"chat: {MODEL}: giving up after 2 failed attempts.*HTTP 500") as info:
        modelfix.sync(["chat"], lock)

    assert "retry with `modelfix sync chat`" in str(info.value)
    # The other files failed the same way: named once, not each with the whole message again.
    assert str(info.value).count("giving up") == 1 and f"{', '.join(others)} failed the same way" in str(info.value)

    assert not _store().has(Lockfile.load(lock).entry("chat").files[0].sha256)


def test_a_cancelled_sync_leaves_a_resumable_partial_and_nothing_half_written(lock, hub):
    hub.inject(REPO, MODEL, Fault.stall(30, after_bytes=150_000))
    pin = Lockfile.load(lock).entry("chat").files[0]
    store = _store()
    cancel = threading.Event()
    threading.Timer(0.7, cancel.set).start()

    with pytest.raises(Cancelled):
        modelfix.sync(["chat"], lock, cancel=cancel)

    assert not store.has(pin.sha256) and not (store.root / "views").exists()
    assert store.partial_path(pin.sha256).stat().st_size == 150_000
    assert cached_state(Lockfile.load(lock).entry("chat"), CacheSettings.resolve()) == "partial"
    hub.clear_faults()
    hub.clear_log()

    modelfix.sync(["chat"], lock)

    assert [r.range for r in _byte_gets(hub)] == [f"bytes=150000-{pin.size - 1}"]


def test_jobs_can_be_watched_from_another_thread_while_sync_runs(lock, hub):
    hub.inject(REPO, MODEL, Fault.stall(60, after_bytes=100_000))  # until this thread has seen it downloading
    worker = threading.Thread(target=modelfix.sync, args=(["chat"], lock))
    worker.start()
    statuses: set[str] = set()
    deadline = time.monotonic() + 60
    while "downloading" not in statuses and worker.is_alive() and time.monotonic() < deadline:
        statuses |= {j.status for j in jobs() if j.file == MODEL}
        time.sleep(0.05)
    hub.release_stalls()
    worker.join()

    assert "downloading" in statuses
    assert [j for j in jobs() if j.file == MODEL][-1].status == "completed"


def test_missing_and_cached_state_follow_the_store(lock):
    lockfile = Lockfile.load(lock)
    settings = CacheSettings.resolve()
    assert cached_state(lockfile.entry("chat"), settings) == "missing"
    assert len(missing(lockfile, settings)) == 3 + 5  # shared mmproj and preset count once per model

    modelfix.sync(["chat"], lock)

    assert cached_state(lockfile.entry("chat"), settings) == "cached"
    assert cached_state(lockfile.entry("split"), settings) == "partial"  # mmproj and preset are shared
    assert {p.path for _, p in missing(lockfile, settings)} == {
        "tiny-Q4_1-00001-of-00003.gguf",
        "tiny-Q4_1-00002-of-00003.gguf",
        "tiny-Q4_1-00003-of-00003.gguf",
    }


def test_a_pin_the_origin_no_longer_has_says_how_to_re_pin(lock, hub, workdir):
    from modelfix.errors import SourceError

    hub.commit(REPO, {}, delete=["tiny-Q4_0.gguf"])
    hub._repos[REPO].lfs.clear()  # the CDN forgets the bytes too, as after a force-push
    with pytest.raises(SourceError, match=r"404.*`modelfix lock --upgrade --model chat`") as info:
        modelfix.path("chat", lock)
    # Every file of the entry is gone from the CDN: the first in pin order leads the message, the
    # others follow in its "(also: ...)".
    assert "tiny-Q4_0.gguf" in str(info.value)


@pytest.mark.parametrize("command", ["verify", "sync"])
def test_a_blob_deleted_from_under_its_view_is_put_back_from_it_without_a_download(lock, hub, command):
    m = modelfix.files("chat", lock)
    pin = m.entry.files[0]
    blob = _store().blob_path(pin.sha256)
    blob.unlink()  # the view's hard link keeps the bytes
    hub.clear_log()

    done = subprocess.run(
        [sys.executable, "-m", "modelfix", command, "chat"],
        capture_output=True,
        text=True,
        cwd=lock.parent,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert os.path.samefile(blob, m.model_path)
    assert cached_state(m.entry, CacheSettings.resolve()) == "cached"
    assert modelfix.verify(["chat"], lock, full=True) == []
    assert hub.requests == []

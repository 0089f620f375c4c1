"""The store on disk: read-only blobs, views, verification, adoption, joins, eviction, gc.

Eviction is exercised with real processes: one holds a lease (it called ``path()``
and is still alive), others run ``modelfix`` under a cap.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelfix
import modelfix.store
from modelfix import joins
from modelfix.care import usage
from modelfix.config import CacheSettings
from modelfix.errors import CacheError
from modelfix.events import events
from modelfix.lockfile import Lockfile
from modelfix.locking import add
from modelfix.safefs import cache_error
from modelfix.store import Store

REPO = "org/tiny"


@pytest.fixture
def lock(hub, workdir) -> Path:
    """A lockfile pinning a (Q4_0), b (Q8_0) and c (3-part Q4_1 split); all share mmproj and preset."""
    path = workdir / "model-lock.toml"
    for name, tag in (("a", "Q4_0"), ("b", "Q8_0"), ("c", "Q4_1")):
        add(name, f"{REPO}:{tag}", path)
    return path


def _store() -> Store:
    return Store(CacheSettings.resolve().root)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources(fn) -> dict[str, str]:
    """Run ``fn``; where each file it needed came from (its jobs' final events)."""
    seen = []
    with events.listening(seen.append):
        fn()
    return {e.file: e.source for e in seen if e.kind == "job" and e.status == "completed"}


def _byte_downloads(hub) -> int:
    return sum(1 for r in hub.requests if r.method == "GET" and r.status in (200, 206))


def test_blobs_are_read_only_and_views_link_them_under_the_pinned_names(lock, tiny_files):
    m = modelfix.files("c", lock)
    store = _store()

    assert [p.name for p in m.files] == [
        "tiny-Q4_1-00001-of-00003.gguf",
        "tiny-Q4_1-00002-of-00003.gguf",
        "tiny-Q4_1-00003-of-00003.gguf",
        "mmproj-tiny-f16.gguf",
        "preset.ini",
    ]
    assert {p.parent for p in m.files} == {m.view}  # llama.cpp finds the split siblings beside part 1
    for pin, file in zip(m.entry.files, m.files, strict=True):
        blob = store.blob_path(pin.sha256)
        assert os.path.samefile(blob, file)  # a hard link: no second copy on disk
        assert not blob.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        assert file.read_bytes() == tiny_files[pin.path].read_bytes()


def _rot(blob: Path, offset: int = 1000) -> None:
    """Bit rot: one bit flipped, same size, same mtime."""
    before = blob.stat()
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    os.chmod(blob, 0o444)
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("full", [False, True], ids=["xxh3", "sha256"])
def test_a_flipped_byte_in_a_committed_blob_is_caught_and_removed(lock, hub, full):
    m = modelfix.files("a", lock)
    blob = _store().blob_path(m.entry.files[0].sha256)
    _rot(blob)

    problems = modelfix.verify(["a"], lock, full=full)

    assert [(p.model, p.file) for p in problems] == [("a", "tiny-Q4_0.gguf")]
    assert problems[0].expected.startswith("sha256:" if full else "xxh3:")
    assert problems[0].expected != problems[0].got
    assert "modelfix sync a" in problems[0].message
    assert not blob.exists() and not m.view.exists()
    hub.clear_log()
    assert _sha(modelfix.path("a", lock)) == m.entry.files[0].sha256  # fetched again
    assert _byte_downloads(hub) == 1
    assert modelfix.verify(["a"], lock, full=True) == []


def test_a_warm_use_records_the_views_last_use_at_most_once_a_minute(lock, monkeypatch, clock):
    monkeypatch.setattr(modelfix.store._used, "clock", clock)
    manifest = modelfix.files("a", lock).view / ".modelfix.json"
    os.utime(manifest, (1000, 1000))

    modelfix.files("a", lock)
    clock.advance(59)
    modelfix.files("a", lock)
    assert manifest.stat().st_mtime == 1000  # recorded less than a minute ago: a warm call writes nothing

    clock.advance(1)
    modelfix.files("a", lock)
    assert manifest.stat().st_mtime > time.time() - 60
    assert usage(_store()).views[0].last_used == manifest.stat().st_mtime


def test_a_blob_whose_identity_moved_is_rehashed_and_kept_if_good(lock):
    m = modelfix.files("a", lock)
    store = _store()
    sha = m.entry.files[0].sha256
    os.utime(store.blob_path(sha), ns=(1, 1))  # e.g. restored from a backup

    assert store.check(sha)
    assert store.memo(sha)["id"][3] == 1


def _fake_hf_cache(tmp_path: Path, sha: str, data: bytes) -> Path:
    blob = tmp_path / "hf" / "hub" / "models--org--tiny" / "blobs" / sha
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    return blob


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_a_blob_already_in_the_huggingface_cache_is_adopted_not_downloaded(
    lock, hub, tiny_files, tmp_path, monkeypatch, offline
):
    entry = modelfix.Lockfile.load(lock).entry("a")
    for pin in entry.files:
        _fake_hf_cache(tmp_path, pin.sha256, tiny_files[pin.path].read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    if offline:
        monkeypatch.setenv("MODELFIX_OFFLINE", "1")
    hub.clear_log()

    sources = _sources(lambda: modelfix.files("a", lock))

    assert _byte_downloads(hub) == 0
    assert set(sources.values()) == {"adopted"}
    assert _sha(modelfix.path("a", lock)) == entry.files[0].sha256


def test_a_real_huggingface_hub_download_is_adopted_offline_plain_git_files_too(lock, hub, tmp_path, monkeypatch):
    from huggingface_hub import hf_hub_download

    entry = modelfix.Lockfile.load(lock).entry("a")
    cache = tmp_path / "hf" / "hub"
    for pin in entry.files:  # the model and mmproj are LFS blobs; preset.ini is a plain git file
        hf_hub_download(REPO, pin.path, revision=entry.revision, cache_dir=cache, endpoint=hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("MODELFIX_OFFLINE", "1")
    hub.clear_log()

    sources = _sources(lambda: modelfix.files("a", lock))

    assert hub.requests == []
    assert sources == {pin.path: "adopted" for pin in entry.files}


def test_a_llama_cpp_download_is_adopted_and_a_wrong_candidate_is_not(lock, hub, tiny_files, tmp_path, monkeypatch):
    llama = tmp_path / "llama-cache"
    llama.mkdir()
    (llama / "org_tiny_tiny-Q4_0.gguf").write_bytes(tiny_files["tiny-Q4_0.gguf"].read_bytes())
    good = tiny_files["mmproj-tiny-f16.gguf"].read_bytes()
    (llama / "org_tiny_mmproj-tiny-f16.gguf").write_bytes(bytes([good[0] ^ 1]) + good[1:])  # same size, wrong bytes
    monkeypatch.setenv("LLAMA_CACHE", str(llama))
    hub.clear_log()

    sources = _sources(lambda: modelfix.files("a", lock))

    assert sources == {"tiny-Q4_0.gguf": "adopted", "mmproj-tiny-f16.gguf": "origin", "preset.ini": "origin"}
    assert modelfix.files("a", lock).mmproj_path.read_bytes() == good


def test_legacy_multi_part_uploads_are_joined_into_one_file_in_the_view(hub_env, workdir):
    parts = [os.urandom(70_000), os.urandom(50_000)]
    hub_env.create_repo("org/legacy")
    hub_env.commit("org/legacy", {"old.gguf.part1of2": parts[0], "old.gguf.part2of2": parts[1]})
    lock = workdir / "model-lock.toml"
    add("old", "org/legacy", lock)

    m = modelfix.files("old", lock)

    assert m.files == (m.view / "old.gguf",) and m.model_path == m.view / "old.gguf"
    assert m.model_path.read_bytes() == parts[0] + parts[1]
    assert modelfix.verify(["old"], lock, full=True) == []
    assert modelfix.files("old", lock) == m  # warm: the joined blob is remembered

    store = _store()
    _rot(store.blob_path(joins.joined(store, [p.sha256 for p in m.entry.files])))
    assert [p.file for p in modelfix.verify(["old"], lock)] == ["old.gguf"]
    assert modelfix.files("old", lock).model_path.read_bytes() == parts[0] + parts[1]  # joined again


def test_a_legacy_part_deleted_from_the_store_is_fetched_again_by_the_sync_verify_asks_for(hub_env, workdir):
    hub_env.create_repo("org/legacy")
    hub_env.commit("org/legacy", {"old.gguf.part1of2": os.urandom(70_000), "old.gguf.part2of2": os.urandom(50_000)})
    lock = workdir / "model-lock.toml"
    add("old", "org/legacy", lock)
    m = modelfix.files("old", lock)
    part = m.entry.files[1]
    _store().blob_path(part.sha256).unlink()  # no view shows a part: only the origin has it now

    problems = modelfix.verify(["old"], lock)
    assert [(p.file, p.message) for p in problems] == [(part.path, "not in the cache: run `modelfix sync old`")]
    hub_env.clear_log()

    modelfix.sync(["old"], lock)

    assert [r.filename for r in hub_env.requests if r.method == "GET" and r.status in (200, 206)] == [part.path]
    assert modelfix.verify(["old"], lock, full=True) == []


def _python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modelfix", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=120,
    )


def test_eviction_under_a_cap_keeps_leased_and_locked_blobs(lock, tmp_path):
    store = _store()
    lockfile = modelfix.Lockfile.load(lock)
    blob = {name: store.blob_path(lockfile.entry(name).files[0].sha256) for name in "abc"}
    shared = [store.blob_path(p.sha256) for p in lockfile.entry("a").files[1:]]  # mmproj, preset
    assert _cli("sync", "a", "b", cwd=lock.parent).returncode == 0
    holder = _python(
        f"import modelfix, sys; modelfix.path('a', {str(lock)!r}); print('ready', flush=True); sys.stdin.read()",
        stdin=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"

        # a (leased) + mmproj and preset (pinned by c) + c itself (460 kB) cannot fit in 400 kB: refused,
        # nothing evicted.
        too_small = _cli("sync", "c", cwd=lock.parent, MODELFIX_CACHE_MAX_SIZE="400000")
        assert too_small.returncode == 1
        assert "MODELFIX_CACHE_MAX_SIZE" in too_small.stderr and "held" in too_small.stderr
        assert blob["b"].exists()

        # c needs room: b is the only blob that is neither leased (a) nor pinned by c (mmproj, preset).
        synced = _cli("sync", "c", cwd=lock.parent, MODELFIX_CACHE_MAX_SIZE="500000")
        assert synced.returncode == 0, synced.stderr
        assert blob["a"].exists() and blob["c"].exists() and all(p.exists() for p in shared)
        assert not blob["b"].exists()
        assert usage(store).blob_bytes <= 500_000

        # Outside the project no lockfile pins anything: only the lease protects a (and its mmproj, preset).
        pruned = _cli("cache", "prune", "--max-size", "1", cwd=tmp_path)
        assert pruned.returncode == 0 and "in use by running processes" in pruned.stderr
        assert blob["a"].exists() and all(p.exists() for p in shared) and not blob["c"].exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)

    assert _cli("cache", "prune", "--max-size", "1", cwd=tmp_path).returncode == 0  # the lease died with its process
    assert usage(store).blobs == 0 and not blob["a"].exists()


def test_processes_syncing_at_once_under_one_cap_do_not_count_on_the_same_room(lock, hub):
    from modelfix.testing.hub import Fault

    store, lockfile = _store(), modelfix.Lockfile.load(lock)
    a_file = lockfile.entry("a").files[0]
    cap = "300000"  # a with the shared mmproj and preset fits (236 kB); b beside them does not (496 kB)
    hub.inject(REPO, a_file.path, Fault.stall(60, after_bytes=100_000))  # a is still downloading when b asks
    first = subprocess.Popen(
        [sys.executable, "-m", "modelfix", "sync", "a"],
        cwd=lock.parent,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MODELFIX_CACHE_MAX_SIZE": cap},
    )
    try:
        deadline = time.monotonic() + 60
        while not store.partial_path(a_file.sha256).exists():
            assert first.poll() is None and time.monotonic() < deadline, "a's download never started"
            time.sleep(0.05)

        second = _cli("sync", "b", cwd=lock.parent, MODELFIX_CACHE_MAX_SIZE=cap)

        assert second.returncode == 1 and "not enough room under the cache cap" in second.stderr
    finally:
        hub.release_stalls()  # a's download goes on only now: b asked while it was surely in flight
        _out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert usage(store).blob_bytes <= int(cap)


def test_a_failed_download_gives_its_reserved_room_back_at_once(lock, hub, monkeypatch):
    from modelfix.testing.hub import Fault

    # b with mmproj and preset (277 kB) fits, but not beside room still reserved for a (219 kB)
    monkeypatch.setenv("MODELFIX_CACHE_MAX_SIZE", "300000")
    monkeypatch.setenv("MODELFIX_RETRIES", "1")
    a_file = modelfix.Lockfile.load(lock).entry("a").files[0]
    hub.inject(REPO, a_file.path, Fault.status(500), times=None)
    with pytest.raises(modelfix.NetworkError):
        modelfix.sync(["a"], lock)  # this process lives on, as a notebook would
    hub.clear_faults()

    other = _cli("sync", "b", cwd=lock.parent, MODELFIX_CACHE_MAX_SIZE="300000")

    assert other.returncode == 0, other.stderr


def test_gc_keeps_what_views_and_the_lockfile_need_and_drops_the_rest(lock, tmp_path):
    store = _store()
    m = modelfix.files("a", lock)
    orphan_sha = "0" * 64
    orphan = store.blob_path(orphan_sha)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"nobody needs me")
    (store.root / "tmp" / f"{'1' * 64}.partial").write_bytes(b"abandoned")

    report = modelfix.Project(lock).gc()

    assert report.blobs == 1 and report.partials == 1
    assert not orphan.exists() and all(f.exists() for f in m.files)
    assert not list((store.root / "tmp").glob("*.partial"))


def test_rm_removes_one_model_and_keeps_what_another_view_shows(lock):
    a, b = modelfix.files("a", lock), modelfix.files("b", lock)
    store = _store()

    removal = modelfix.Project(lock).remove("a")

    assert removal.freed == a.entry.files[0].size  # mmproj and preset are shown by b's view too
    assert set(removal.kept) == {p.sha256 for p in a.entry.files[1:]}
    assert not a.view.exists() and not store.has(a.entry.files[0].sha256)
    assert all(f.exists() for f in b.files)


def test_rm_keeps_the_view_a_running_process_loads_from(lock):
    # Only the holder process uses the model: this test process never touches it.
    holder = _python(
        f"import modelfix, sys; print(modelfix.path('a', {str(lock)!r}), flush=True); sys.stdin.read()",
        stdin=subprocess.PIPE,
    )
    try:
        model = Path(holder.stdout.readline().strip())
        removed = _cli("cache", "rm", "a", cwd=lock.parent)
        assert removed.returncode == 0, removed.stderr
        assert removed.stderr.splitlines() == [
            "a: kept 1 revision that running processes use",
            "a: kept 3 files that other models or running processes use",
        ]
        # The holder reloads from this path after an eviction: it must still be there.
        assert model.is_file() and len(list(model.parent.iterdir())) == 4  # 3 files + manifest
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)

    assert _cli("cache", "rm", "a", cwd=lock.parent).returncode == 0  # the lease died with its process
    assert not model.parent.exists()


@pytest.mark.parametrize("how", ["a-file", "under-a-file", "read-only"])
def test_a_cache_dir_that_cannot_be_written_says_where_and_what_to_do(lock, tmp_path, monkeypatch, how):
    if how in ("a-file", "under-a-file"):
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("")
        cache = blocker if how == "a-file" else blocker / "cache"  # ENOTDIR: stops root too
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        parent = tmp_path / "read-only"
        parent.mkdir(mode=0o500)
        cache = parent / "cache"
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(cache))

    with pytest.raises(CacheError) as info:
        modelfix.path("a", lock)

    message = str(info.value)
    assert str(cache) in message and "MODELFIX_CACHE_DIR" in message
    if how != "read-only":  # the cache folder named as such, not a view inside it called a link
        assert message.startswith(f"cannot use {cache} as the cache folder: it (or a folder above it) is a file")


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "modelfix cache prune"),
        (errno.EDQUOT, "modelfix cache prune"),
        (errno.EROFS, "a folder you can write to"),
    ],
)
def test_a_full_disk_asks_for_room_and_a_read_only_one_for_another_folder(tmp_path, code, fix):
    partial = tmp_path / "cache" / "tmp" / "x.partial"

    message = str(cache_error(OSError(code, os.strerror(code)), partial, label="chat: model.gguf"))

    assert message.startswith(f"chat: model.gguf: cannot write {partial}")
    assert os.strerror(code) in message and fix in message and "MODELFIX_CACHE_DIR" in message


def test_a_full_disk_fails_in_one_line_leaves_no_blob_and_a_sync_with_room_completes(lock, hub, small_disk):
    cache = small_disk / "cache"
    pins = Lockfile.load(lock).entry("a").files

    full = _cli("sync", "a", cwd=lock.parent, MODELFIX_CACHE_DIR=str(cache), MODELFIX_PARALLEL_MIN="65536")

    assert full.returncode == 1
    error = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "Traceback" not in full.stderr, full.stderr
    assert (
        "No space left on device" in error[0]
        and "modelfix cache prune" in error[0]
        and "MODELFIX_CACHE_DIR" in error[0]
    )
    store = Store(cache)
    assert not store.has(max(pins, key=lambda p: p.size).sha256) and not (cache / "views").exists()
    left = os.listdir(cache / "tmp")
    assert all(name.endswith((".partial", ".partial.ranges")) for name in left), left  # what resumes, nothing else

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    assert _cli("sync", "a", cwd=lock.parent, MODELFIX_CACHE_DIR=str(cache)).returncode == 0
    assert _cli("verify", "--full", "a", cwd=lock.parent, MODELFIX_CACHE_DIR=str(cache)).returncode == 0
    assert os.listdir(cache / "tmp") == []


def test_threads_syncing_at_once_under_one_cap_do_not_count_on_the_same_room(lock, hub, monkeypatch):
    import threading

    from modelfix.testing.hub import Fault

    monkeypatch.setenv("MODELFIX_CACHE_MAX_SIZE", "300000")  # a (with mmproj and preset) fits; b beside it does not
    store, a_file = _store(), modelfix.Lockfile.load(lock).entry("a").files[0]
    hub.inject(REPO, a_file.path, Fault.stall(60, after_bytes=100_000))  # until b has asked
    errors: list[BaseException] = []

    def sync(name: str) -> None:
        try:
            modelfix.sync([name], lock)
        except modelfix.CacheError as exc:
            errors.append(exc)

    first = threading.Thread(target=sync, args=("a",))
    first.start()
    deadline = time.monotonic() + 60
    while not store.partial_path(a_file.sha256).exists():
        assert time.monotonic() < deadline, "a's download never started"
        time.sleep(0.05)
    try:
        sync("b")
    finally:
        hub.release_stalls()
        first.join()

    assert [str(e) for e in errors if "not enough room under the cache cap" in str(e)] != []
    assert usage(store).blob_bytes <= 300_000


def test_gc_collects_views_left_half_built_or_half_replaced_unless_in_use(lock):
    m = modelfix.files("a", lock)
    store = _store()
    key, blob = m.view.name, store.blob_path(m.entry.files[0].sha256)

    def leftover(name: str, age: float = 0.0) -> Path:
        folder = store.root / "views" / name
        folder.mkdir()
        os.link(blob, folder / "x.gguf")
        if age:
            os.utime(folder, (time.time() - age,) * 2)
        return folder

    crashed_build = leftover(f".tmp-{key}-1234abcd")  # its builder died: the view's lock is free
    crashed_swap = leftover(f".old-{key}-1234abcd")
    old_style = leftover(".tmp-" + "f" * 32, age=2 * 3600)  # named before leftovers carried their key: by age
    recent = leftover(".tmp-" + "e" * 32)  # may be a build in progress
    busy_key = "b" * 64
    building = leftover(f".tmp-{busy_key}-5678abcd")
    (store.root / "locks").mkdir(exist_ok=True)
    holder = _python(
        "import fcntl, os, sys\n"
        f"fd = os.open({str(store.root / 'locks' / f'view-{busy_key}.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()\n",
        stdin=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        report = modelfix.Project(lock).gc()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)

    assert report.leftovers == 3
    assert not crashed_build.exists() and not crashed_swap.exists() and not old_style.exists()
    assert recent.exists() and building.exists()
    assert all(f.exists() for f in m.files)


def test_rm_counts_only_the_bytes_it_really_frees(lock, tmp_path):
    m = modelfix.files("a", lock)
    store = _store()
    model = m.entry.files[0]
    elsewhere = tmp_path / "elsewhere.gguf"  # e.g. the huggingface_hub file it was adopted from
    os.link(store.blob_path(model.sha256), elsewhere)

    removal = modelfix.Project(lock).remove("a")

    assert removal.freed == sum(p.size for p in m.entry.files[1:])  # the model's bytes stay on disk, under elsewhere
    assert elsewhere.read_bytes() and not store.has(model.sha256) and removal.kept == ()

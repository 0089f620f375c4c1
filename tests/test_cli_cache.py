"""``modelfix sync``, ``verify``, ``push`` and ``cache ...`` as a user types them (in-process ``main``)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from modelfix.care import usage
from modelfix.config import CacheSettings
from modelfix.eviction import format_size
from modelfix.lockfile import Lockfile
from modelfix.store import Store
from modelfix.testing.hub import Fault

REPO = "org/tiny"


def _flip_a_byte(path: Path) -> None:
    before = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(77)
        byte = f.read(1)
        f.seek(77)
        f.write(bytes([byte[0] ^ 0x40]))
    os.chmod(path, 0o444)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_sync_fetches_every_model_and_prints_where_it_is(run_cli, lock):
    code, out, err = run_cli("sync")

    assert code == 0, err
    assert out.splitlines()[0].startswith("chat: 3 files")
    assert "split: 5 files" in out and "tiny-Q4_1-00001-of-00003.gguf" in out
    assert "2 models ready" in err


def test_sync_honours_the_global_cache_dir_option(run_cli, lock, tmp_path):
    code, _, err = run_cli("--cache-dir", str(tmp_path / "elsewhere"), "sync", "chat")

    assert code == 0, err
    assert usage(Store(tmp_path / "elsewhere")).blobs == 3


@pytest.mark.parametrize("jobs", ["0", "-1", "many"])
def test_sync_jobs_below_one_is_a_usage_error(run_cli, lock, jobs):
    code, out, err = run_cli("sync", "-j", jobs)

    assert code == 2 and out == ""
    assert "argument -j/--jobs:" in err and "Traceback" not in err


@pytest.mark.parametrize("full", [False, True], ids=["xxh3", "full"])
def test_verify_exits_1_naming_each_bad_file(run_cli, lock, full):
    assert run_cli("sync")[0] == 0
    assert run_cli("verify")[:2] == (0, "all files match (xxh3)\n")
    pin = Lockfile.load(lock).entry("split").files[1]
    _flip_a_byte(Store(CacheSettings.resolve().root).blob_path(pin.sha256))

    code, _, err = run_cli("verify", *(["--full"] if full else []))

    assert code == 1
    assert f"split: {pin.path}: corrupt" in err and "modelfix sync split" in err
    assert run_cli("sync", "split")[0] == 0
    assert run_cli("verify", "--full")[:2] == (0, "all files match (sha256)\n")


def test_verify_reports_files_not_yet_synced(run_cli, lock):
    code, _, err = run_cli("verify", "chat")

    assert code == 1
    assert "chat: tiny-Q4_0.gguf: not in the cache: run `modelfix sync chat`" in err


def test_a_pinned_commit_gone_from_the_hub_is_named_with_the_fix(run_cli, lock):
    chat = Lockfile.load(lock).entry("chat")
    lock.write_text(lock.read_text().replace(chat.revision, "0" * 40))  # as after a history rewrite

    code, _, err = run_cli("sync", "chat")

    assert code == 1
    assert "the pinned commit is not on the Hub any more" in err and "RevisionNotFound" in err, err
    assert "modelfix lock --upgrade --model chat" in err
    assert err.count("RevisionNotFound") == 1 and "failed the same way" in err  # one reason, said once


def test_offline_sync_lists_what_is_missing(run_cli, lock):
    code, _, err = run_cli("--offline", "sync")

    assert code == 1
    assert "offline mode is on" in err and "modelfix sync chat" in err and "modelfix sync split" in err


def test_push_uploads_once(run_cli, lock, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELFIX_REMOTE", str(tmp_path / "team"))

    code, out, _ = run_cli("push", "chat")
    assert code == 0 and out.count(": uploaded") == 3
    code, out, _ = run_cli("push", "chat")
    assert code == 0 and out.count(": present") == 3


def _size(tiny_files: dict[str, Path], *names: str) -> str:
    return format_size(sum(tiny_files[n].stat().st_size for n in names))


SPLIT_PARTS = [f"tiny-Q4_1-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
EVERY_FILE = ["tiny-Q4_0.gguf", *SPLIT_PARTS, "mmproj-tiny-f16.gguf", "preset.ini"]


def test_cache_stats_shows_sizes_and_models(run_cli, lock, tiny_files):
    run_cli("sync")

    code, out, _ = run_cli("cache", "stats")

    assert code == 0
    assert f"cache     {CacheSettings.resolve().root}" in out
    assert f"blobs     6 ({_size(tiny_files, *EVERY_FILE)})" in out
    assert "chat" in out and "split" in out


def test_cache_stats_names_every_model_sharing_a_view(run_cli, lock):
    from modelfix.locking import add

    run_cli("sync")
    add("chat2", f"{REPO}:Q4_0", lock)  # the same pins as chat: one view for both
    assert run_cli("sync", "chat2")[0] == 0

    code, out, _ = run_cli("cache", "stats")

    assert code == 0
    rows = [line.split("  ")[0] for line in out.split("MODELS", 1)[1].splitlines()[1:]]
    assert sorted(rows) == ["chat, chat2", "split"]


def test_a_failed_download_prints_its_reason_once(run_cli, lock, hub, monkeypatch):
    monkeypatch.setenv("MODELFIX_RETRIES", "1")
    hub.inject(REPO, "tiny-Q4_0.gguf", Fault.status(502), times=None)

    code, _, err = run_cli("sync", "chat")

    assert code == 1
    assert "chat: tiny-Q4_0.gguf  failed\n" in err
    reason = next(line for line in err.splitlines() if line.startswith("error: "))[len("error: ") :]
    assert err.count(reason) == 1, err


def test_cache_prune_needs_a_size_and_keeps_the_lockfile_pins(run_cli, lock, tiny_files):
    run_cli("sync")

    code, _, err = run_cli("cache", "prune")
    assert code == 1 and "--max-size" in err

    code, out, err = run_cli("cache", "prune", "--max-size", "1")
    assert code == 0 and out.startswith(f"evicted 0 files; the cache holds {_size(tiny_files, *EVERY_FILE)}")
    assert "pinned by the lockfile" in err


def test_cache_gc_rm_and_path(run_cli, lock, tiny_files):
    run_cli("sync")
    root = CacheSettings.resolve().root

    assert run_cli("cache", "path")[1] == f"{root}\n"
    code, out, _ = run_cli("cache", "path", "chat")
    assert code == 0 and out.strip().endswith("tiny-Q4_0.gguf") and Path(out.strip()).exists()

    code, out, _ = run_cli("cache", "rm", "split")
    assert code == 0 and out.startswith(f"split: {_size(tiny_files, *SPLIT_PARTS)} freed")
    code, out, _ = run_cli("cache", "gc")
    assert code == 0 and out.startswith("removed 0 unused files")
    assert usage(Store(root)).blobs == 3


def test_an_unknown_model_is_one_line_on_stderr(run_cli, lock):
    code, _, err = run_cli("sync", "nope")

    assert code == 1 and err.startswith("error: no model named 'nope'") and "Traceback" not in err


def test_local_files_with_spaces_and_accents_add_sync_and_verify(run_cli, workdir, tiny_files):
    names = {"spaced": "a b/x.gguf", "accent": "uu/ü.gguf"}
    for name, rel in names.items():
        (workdir / rel).parent.mkdir()
        (workdir / rel).write_bytes(tiny_files["tiny-Q8_0.gguf"].read_bytes())
        assert run_cli("add", name, f"./{rel}")[0] == 0
    assert run_cli("add", "absolute", str(workdir / "a b" / "x.gguf"))[0] == 0

    code, out, err = run_cli("sync")

    assert code == 0, err
    for name, rel in names.items():
        shown = Path(next(line for line in out.splitlines() if line.startswith(f"{name}:")).split("  ")[-1])
        assert shown.name == Path(rel).name and shown.read_bytes() == (workdir / rel).read_bytes()
    assert run_cli("verify", "--full")[:2] == (0, "all files match (sha256)\n")


def test_a_local_file_gone_since_it_was_pinned_leaves_no_partial_download(run_cli, workdir, tiny_files):
    model = workdir / "m.gguf"
    model.write_bytes(tiny_files["tiny-Q8_0.gguf"].read_bytes())
    assert run_cli("add", "m", "./m.gguf")[0] == 0
    model.unlink()

    code, _, err = run_cli("sync", "m")

    assert code == 1 and "m: m.gguf" in err and "not where its source says" in err
    assert list((CacheSettings.resolve().root / "tmp").glob("*")) == []
    assert run_cli("list")[1].splitlines()[-1].split()[-1] == "missing"


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("default", "modelfix sync chat"),
        ("--cache-dir", "modelfix sync chat --cache-dir {cache}"),
        ("--lock", "modelfix sync chat --lock {lock}"),
    ],
)
def test_offline_names_the_sync_that_fixes_it_with_the_options_in_use(
    run_cli, lock, tmp_path, monkeypatch, how, expected
):
    cache = tmp_path / "other cache"
    options = {"default": [], "--cache-dir": ["--cache-dir", str(cache)], "--lock": ["--lock", str(lock)]}[how]
    if how == "--lock":
        monkeypatch.chdir(tmp_path)  # no lockfile here or above: a plain `modelfix sync` would find none
    expected = expected.format(cache=shlex.quote(str(cache)), lock=lock)

    code, _, err = run_cli(*options, "--offline", "sync", "chat")

    assert code == 1
    assert err.startswith(
        "error: offline mode is on (an offline option such as --offline / --modelfix-offline, "
        "MODELFIX_OFFLINE=1 or HF_HUB_OFFLINE=1)"
    )
    line = next(line for line in err.splitlines() if line.startswith("  chat: "))
    assert line.endswith(f"  ->  {expected}")
    assert run_cli(*shlex.split(expected)[1:])[0] == 0  # the fix, as printed, fixes it
    assert run_cli(*options, "--offline", "sync", "chat")[0] == 0


@pytest.mark.parametrize("args", [("cache", "prune", "--max-size", "-1"), ("cache", "prune", "--max-size", "nan")])
def test_a_size_below_one_byte_is_refused(run_cli, lock, args):
    code, out, err = run_cli(*args)

    assert code == 1 and out == ""
    assert (
        err == f"error: bad --max-size '{args[-1]}': use bytes or a size like 500MB, 50GB, 2GiB, inf (more than zero)\n"
    )


def test_cache_stats_on_a_file_is_an_error_not_an_empty_cache(run_cli, tmp_path):
    file = tmp_path / "cache.txt"
    file.write_text("")

    code, out, err = run_cli("cache", "stats", "--cache-dir", str(file))

    assert (code, out) == (1, "")
    assert err.startswith(f"error: cannot use {file} as the cache folder") and len(err.splitlines()) == 1


def _fetch_lines(err: str, name: str, lock: Path) -> list[str]:
    """The stderr lines about fetching model ``name``'s files (one per file, without a terminal)."""
    paths = [pin.path for pin in Lockfile.load(lock).entry(name).files]
    return [line for line in err.splitlines() if any(line.startswith(f"{name}: {p}  ") for p in paths)]


def test_cache_path_on_a_cold_cache_shows_the_download_on_stderr(run_cli, lock):
    code, out, err = run_cli("cache", "path", "chat")

    assert code == 0 and Path(out.strip()).is_file() and out.count("\n") == 1  # stdout: the path only
    fetched = _fetch_lines(err, "chat", lock)
    assert len(fetched) == len(Lockfile.load(lock).entry("chat").files) and all(
        line.endswith("  origin") for line in fetched
    ), err
    assert run_cli("cache", "path", "chat")[1:] == (out, ""), "warm: nothing to show"


def test_a_sync_that_evicts_to_make_room_says_what_it_evicted(run_cli, lock, monkeypatch):
    chat, split = (Lockfile.load(lock).entry(n) for n in ("chat", "split"))
    # Another process fetched chat (its lease ended with it), so its files may be evicted.
    subprocess.run([sys.executable, "-m", "modelfix", "sync", "chat"], check=True, capture_output=True)
    # Room for split and nothing more: chat's files that split does not share must go.
    monkeypatch.setenv("MODELFIX_CACHE_MAX_SIZE", str(split.size))
    gone = sorted(p.path for p in chat.files if p.sha256 not in {q.sha256 for q in split.files})

    code, _, err = run_cli("sync", "split")

    assert code == 0, err
    evicted = sorted(line for line in err.splitlines() if line.startswith("evicted "))
    assert evicted == [f"evicted chat: {path} from the cache" for path in gone]


# --- dry runs, stats --json, superseded revisions ----------------------------------------------------


def _sync_in_another_process(*names: str) -> None:
    """``modelfix sync`` in a process that has ended: it leaves no lease behind (this test process,
    which would hold one for as long as it runs, protects what it used from every eviction)."""
    done = subprocess.run(
        [sys.executable, "-m", "modelfix", "sync", *names], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def _tree(root: Path) -> dict[str, int]:
    """Every file and link under ``root`` with its size: what a dry run must leave as it was."""
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


def _only_chat(tmp_path: Path) -> Path:
    from modelfix.locking import add

    other = tmp_path / "only-chat" / "model-lock.toml"
    other.parent.mkdir()
    add("chat", f"{REPO}:Q4_0", other)
    return other


@pytest.mark.parametrize(
    ("args", "would", "named"),
    [
        (("cache", "prune", "--max-size", "1", "--lock", "{only_chat}"), "would evict", "split"),
        (("cache", "gc"), "would remove", "1 partial download"),
        (("cache", "rm", "split"), "would free", "split"),
    ],
    ids=["prune", "gc", "rm"],
)
def test_dry_run_prints_what_would_go_and_frees_nothing(run_cli, lock, tmp_path, args, would, named):
    _sync_in_another_process()
    root = CacheSettings.resolve().root
    (root / "tmp" / f"{'1' * 64}.partial").write_bytes(b"abandoned")
    before = _tree(root)
    only_chat = _only_chat(tmp_path)
    args = tuple(a.format(only_chat=only_chat) for a in args)

    code, out, err = run_cli(*args, "--dry-run")

    assert code == 0, err
    assert would in out and named in out
    assert _tree(root) == before
    assert run_cli(*args)[0] == 0 and _tree(root) != before  # the same command without --dry-run does it


def test_a_dry_run_prune_with_nothing_to_evict_says_so_in_one_line(run_cli, lock):
    assert run_cli("sync")[0] == 0

    code, out, err = run_cli("cache", "prune", "--max-size", "1TB", "--dry-run")

    assert code == 0, err
    assert re.fullmatch(r"would evict 0 files; the cache holds [\d.]+ KB\n", out), out


def test_cache_stats_json(run_cli, lock):
    assert run_cli("sync")[0] == 0

    code, out, _ = run_cli("cache", "stats", "--json")

    assert code == 0
    stats = json.loads(out)
    assert stats["cache"] == str(CacheSettings.resolve().root)
    assert stats["blobs"] == 6 and stats["blob_bytes"] == usage(Store(CacheSettings.resolve().root)).blob_bytes
    assert (
        stats["cap"] is None and stats["partial_bytes"] == 0 and stats["live_processes"] == 1
    )  # this one, which synced
    entries = Lockfile.load(lock).entries
    rows = {tuple(m["models"]): m for m in stats["models"]}
    assert set(rows) == {("chat",), ("split",)}
    assert rows[("chat",)]["revision"] == entries["chat"].revision
    assert rows[("chat",)]["state"] == "pinned" and isinstance(rows[("chat",)]["last_used"], float)
    assert rows[("split",)]["bytes"] == entries["split"].size


def _upgrade_chat(run_cli, hub, lock, tiny_files) -> tuple:
    """Sync, publish new bytes for chat's model file, `lock --upgrade`, sync again: (old, new) entries."""
    _sync_in_another_process()
    old = Lockfile.load(lock).entry("chat")
    hub.commit(REPO, {old.files[0].path: b"GGUF" + os.urandom(50_000)}, message="new weights")
    assert run_cli("lock", "--upgrade", "--model", "chat")[0] == 0
    _sync_in_another_process("chat")
    return old, Lockfile.load(lock).entry("chat")


def test_cache_stats_tells_the_revisions_of_one_model_apart(run_cli, hub, lock, tiny_files):
    old, new = _upgrade_chat(run_cli, hub, lock, tiny_files)

    code, out, _ = run_cli("cache", "stats")

    assert code == 0
    rows = [line for line in out.split("MODELS", 1)[1].splitlines()[1:] if line.startswith("chat")]
    assert len(rows) == 2
    assert any(new.revision[:12] in r and "pinned" in r for r in rows)
    assert any(old.revision[:12] in r and "superseded" in r for r in rows)


@pytest.mark.parametrize("how", [("cache", "gc"), ("cache", "prune", "--superseded")], ids=["gc", "prune"])
def test_superseded_revisions_are_dropped_and_the_pinned_ones_kept(run_cli, hub, lock, tiny_files, how):
    old, new = _upgrade_chat(run_cli, hub, lock, tiny_files)
    store = Store(CacheSettings.resolve().root)

    code, out, err = run_cli(*how)

    assert code == 0, err
    assert "1 superseded" in out
    assert not store.has(old.files[0].sha256) and store.has(new.files[0].sha256)
    assert run_cli("verify", "--full")[0] == 0
    rows = [m["models"] for m in json.loads(run_cli("cache", "stats", "--json")[1])["models"]]
    assert sorted(rows) == [["chat"], ["split"]]


def test_cache_rm_removes_every_cached_revision_of_the_model(run_cli, hub, lock, tiny_files):
    old, new = _upgrade_chat(run_cli, hub, lock, tiny_files)
    store = Store(CacheSettings.resolve().root)

    code, out, err = run_cli("cache", "rm", "chat")

    assert code == 0, err
    assert "2 revisions" in out
    assert not store.has(old.files[0].sha256) and not store.has(new.files[0].sha256)
    assert [m["models"] for m in json.loads(run_cli("cache", "stats", "--json")[1])["models"]] == [["split"]]


def test_cache_rm_of_a_model_gone_from_the_lockfile_removes_its_cached_files(run_cli, lock, tmp_path):
    assert run_cli("sync")[0] == 0
    store = Store(CacheSettings.resolve().root)
    split = Lockfile.load(lock).entry("split")

    code, _out, err = run_cli("cache", "rm", "split", "--lock", str(_only_chat(tmp_path)))

    assert code == 0, err
    assert not store.has(split.files[0].sha256)
    code, _, err = run_cli("cache", "rm", "nope")
    assert code == 1 and err.startswith("error: no cached model named 'nope'") and "chat" in err

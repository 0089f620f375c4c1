"""Reading, validating and rewriting model-lock.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfix.errors import LockError
from modelfix.lockfile import FilePin, Lockfile, Pins, add_entry, find_lockfile, write_pins

SHA = "a" * 64
PINNED = f"""\
# team models
version = 1

[models.chat]   # the default chat model
source = "org/tiny:Q4_K_M"
n_ctx = 512
revision = "{'1' * 40}"
pinned_from = "org/tiny:Q4_K_M"
files = [
    {{path = "tiny-Q4_K_M.gguf", size = 10, sha256 = "{SHA}", role = "model"}},
]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model-lock.toml"
    path.write_text(text)
    return path


def test_reads_entries_settings_and_pins(tmp_path):
    lock = Lockfile.load(write(tmp_path, PINNED))
    entry = lock.entry("chat")
    assert entry.source == "org/tiny:Q4_K_M"
    assert entry.settings == {"n_ctx": 512}
    assert entry.is_pinned and entry.revision == "1" * 40
    assert entry.files == (FilePin("tiny-Q4_K_M.gguf", 10, SHA, "model"),)


def test_edited_source_makes_the_entry_stale(tmp_path):
    lock = Lockfile.load(write(tmp_path, PINNED.replace('source = "org/tiny:Q4_K_M"', 'source = "org/tiny:Q8_0"')))
    assert not lock.entry("chat").is_pinned


BAD = [
    ("[models.chat\nsource = 1", r"model-lock.toml:1:\d+: invalid TOML"),
    ('version = 1\nfoo = 2\n', r"model-lock.toml:2: unknown top-level key 'foo'"),
    ('version = 2\n', r"lockfile version 2 is not supported"),
    ('version = "1"\n', r"model-lock.toml:1: `version` must be an integer: version = 1, not '1'"),
    ('[models.chat]\nn_ctx = 5\n', r"model-lock.toml:1: \[models.chat\] has no `source`"),
    ('[models.chat]\nsource = "a/b"\ncolour = "red"\n', r"model-lock.toml:3: unknown key 'colour'.*Valid keys: source, n_ctx"),
    ('[models.chat]\nsource = "a/b"\nn_gpu_layers = 99\n', r"model-lock.toml:3: 'n_gpu_layers' is a machine setting.*MODELFIX_GPU_LAYERS"),
    ('[models.chat]\nsource = "a/b"\nn_ctx = "big"\n', r"model-lock.toml:3: n_ctx must be int, got 'big'"),
    ('[models.chat]\nsource = "a/b"\nfiles = [{path = "m.gguf", size = 1, sha256 = "xyz"}]\n', r"sha256 must be 64 lowercase hex.*modelfix lock --upgrade --model chat"),
    ('[models.chat]\nsource = "a/b"\nfiles = [{path = "../m.gguf", size = 1, sha256 = "' + SHA + '"}]\n', r"unsafe file path '../m.gguf'"),
    ('[models.chat]\nsource = "a/b"\nfiles = [{path = "/etc/m.gguf", size = 1, sha256 = "' + SHA + '"}]\n', r"unsafe file path '/etc/m.gguf'"),
    ('[models.chat]\nsource = "a/b"\nfiles = [{path = "m.gguf", size = -1, sha256 = "' + SHA + '"}]\n', r"size must be a non-negative integer"),
    ('[models."bad name"]\nsource = "a/b"\n', r"model name 'bad name' must be letters"),
    ('[models.a]\nsource = "a/b"\n[routing]\ndefault = "zzz"\n', r"routing names model 'zzz'"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[-1][:40] for _, m in BAD])
def test_bad_input_names_the_line_and_the_fix(tmp_path, text, message):
    with pytest.raises(LockError, match=message):
        Lockfile.load(write(tmp_path, text))


def test_unknown_model_lists_the_known_ones(tmp_path):
    with pytest.raises(LockError, match=r"no model named 'nope'.*\(models: chat\)"):
        Lockfile.load(write(tmp_path, PINNED)).entry("nope")


def test_found_by_searching_upward(tmp_path, monkeypatch):
    path = write(tmp_path, PINNED)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_lockfile() == path
    monkeypatch.setenv("MODELFIX_LOCK", "/elsewhere.toml")
    assert find_lockfile() == Path("/elsewhere.toml")
    assert find_lockfile("explicit.toml") == Path("explicit.toml")


def test_missing_lockfile_says_how_to_create_one(tmp_path):
    with pytest.raises(LockError, match=r"no model-lock.toml in .* `modelfix add NAME SOURCE`"):
        find_lockfile(start=tmp_path)


def test_writing_pins_keeps_comments_and_layout(tmp_path):
    path = write(tmp_path, PINNED)
    new = Pins("2" * 40, (FilePin("tiny-Q4_K_M.gguf", 11, "b" * 64),), "org/tiny:Q4_K_M")
    assert write_pins(path, {"chat": new}) is True
    text = path.read_text()
    assert text.startswith("# team models\nversion = 1\n")
    assert "[models.chat]   # the default chat model" in text
    assert "n_ctx = 512" in text
    assert Lockfile.load(path).entry("chat").pins == new


def test_same_pins_leave_the_file_byte_identical(tmp_path):
    path = write(tmp_path, PINNED)
    before = path.stat().st_mtime_ns
    assert write_pins(path, {"chat": Lockfile.load(path).entry("chat").pins}) is False
    assert path.read_text() == PINNED and path.stat().st_mtime_ns == before


def test_add_creates_a_valid_file(tmp_path):
    path = tmp_path / "model-lock.toml"
    add_entry(path, "chat", "org/tiny:Q4_K_M", {"n_ctx": 256})
    entry = Lockfile.load(path).entry("chat")
    assert (entry.source, entry.settings["n_ctx"], entry.is_pinned) == ("org/tiny:Q4_K_M", 256, False)
    assert "version = 1" in path.read_text()


def test_a_failed_write_leaves_no_trace(tmp_path, monkeypatch):
    path = write(tmp_path, PINNED)
    import os

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_pins(path, {"chat": Pins(None, (FilePin("x.gguf", 1, SHA),), "org/tiny:Q4_K_M")})
    assert path.read_text() == PINNED
    assert [p.name for p in tmp_path.iterdir()] == ["model-lock.toml"]


def test_routing_errors_point_at_the_routing_table(tmp_path):
    text = '[models.a]\nsource = "a/b"\n\n[routing]\nrules = [{pattern = "(", model = "a"}]\n'
    with pytest.raises(LockError, match=r"model-lock.toml:4: routing.rules\[0\] pattern is not a valid regex"):
        Lockfile.load(write(tmp_path, text))

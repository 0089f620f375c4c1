"""Reading, validating and rewriting model-lock.toml."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from modelfix.errors import LockError
from modelfix.lockfile import FilePin, Lockfile, Pins, find_lockfile
from modelfix.locking import add_entry, write_pins

SHA = "a" * 64
PINNED = f"""\
# team models
version = 1

[models.chat]   # the default chat model
source = "org/tiny:Q4_K_M"
n_ctx = 512
revision = "{"1" * 40}"
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
    ("version = 1\nfoo = 2\n", r"model-lock.toml:2: unknown top-level key 'foo'"),
    ("version = 2\n", r"lockfile version 2 is not supported"),
    ('version = "1"\n', r"model-lock.toml:1: `version` must be an integer: version = 1, not '1'"),
    ("[models.chat]\nn_ctx = 5\n", r"model-lock.toml:1: \[models.chat\] has no `source`"),
    (
        '[models.chat]\nsource = "a/b"\ncolour = "red"\n',
        r"model-lock.toml:3: unknown key 'colour'.*Valid keys: source, n_ctx",
    ),
    (
        '[models.chat]\nsource = "a/b"\nn_gpu_layers = 99\n',
        r"model-lock.toml:3: 'n_gpu_layers' is a machine setting.*MODELFIX_GPU_LAYERS",
    ),
    ('[models.chat]\nsource = "a/b"\nn_ctx = "big"\n', r"model-lock.toml:3: n_ctx must be int, got 'big'"),
    (
        '[models.chat]\nsource = "a/b"\nfiles = [{path = "m.gguf", size = 1, sha256 = "xyz"}]\n',
        r"sha256 must be 64 lowercase hex.*modelfix lock --upgrade --model chat",
    ),
    (
        '[models.chat]\nsource = "a/b"\nfiles = [{path = "../m.gguf", size = 1, sha256 = "' + SHA + '"}]\n',
        r"unsafe file path '../m.gguf'",
    ),
    (
        '[models.chat]\nsource = "a/b"\nfiles = [{path = "/etc/m.gguf", size = 1, sha256 = "' + SHA + '"}]\n',
        r"unsafe file path '/etc/m.gguf'",
    ),
    (
        '[models.chat]\nsource = "a/b"\nfiles = [{path = "m.gguf", size = -1, sha256 = "' + SHA + '"}]\n',
        r"size must be a non-negative integer",
    ),
    (
        '[models."bad name"]\nsource = "a/b"\n',
        r"model name 'bad name' must start with a letter or digit, followed by letters",
    ),
    ('[models._chat]\nsource = "a/b"\n', r"model-lock.toml:1: model name '_chat' must start with a letter or digit"),
    (
        '[models.chat]\nsource = "a/b"\nrevision = "../../x"\n',
        r"model-lock.toml:3: revision must be a full commit sha \(40 lowercase hex characters\), got '../../x'. Run `modelfix lock --upgrade --model chat`",
    ),
    ('[models.chat]\nsource = "a/b"\nrevision = "main"\n', r"model-lock.toml:3: revision must be a full commit sha"),
    (
        '[models.chat]\nsource = "a/b"\nfiles = [{path = "m.gguf", size = 9223372036854775807, sha256 = "'
        + SHA
        + '"}]\n',
        r"model-lock.toml:3: files\[0\] of \[models.chat\] \(m.gguf\): size must be a non-negative integer of at most 2\*\*50 bytes",
    ),
    (
        '[models.a]\nsource = "a/b"\n[models.a]\nsource = "c/d"\n',
        r'model-lock.toml:4:\d+: invalid TOML: Key "a" already exists. Fix the syntax there.$',
    ),
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


COMMENTED = """\
version = 1

# the chat model
[models.chat]
source = "org/a"

# the coder, for tests
[models.coder]
source = "org/b"

# rules
[routing]
default = "chat"
"""


def test_pins_and_settings_go_above_the_comment_that_heads_the_next_table(tmp_path):
    path = write(tmp_path, COMMENTED)
    pin = FilePin("x.gguf", 1, SHA)
    assert write_pins(path, {"chat": Pins(None, (pin,), "org/a"), "coder": Pins(None, (pin,), "org/b")}) is True
    add_entry(path, "chat", "org/a", {"n_ctx": 256})

    files = f'files = [\n    {{path = "x.gguf", size = 1, sha256 = "{SHA}", role = "model"}},\n]\n'
    assert path.read_text() == COMMENTED.replace(
        'source = "org/a"\n', f'source = "org/a"\npinned_from = "org/a"\n{files}n_ctx = 256\n'
    ).replace('source = "org/b"\n', f'source = "org/b"\npinned_from = "org/b"\n{files}')


def test_same_pins_leave_the_file_byte_identical(tmp_path):
    path = write(tmp_path, PINNED)
    before = path.stat().st_mtime_ns
    assert write_pins(path, {"chat": Lockfile.load(path).entry("chat").pins}) is False
    assert path.read_text() == PINNED and path.stat().st_mtime_ns == before


def test_add_creates_a_valid_file(tmp_path):
    path = tmp_path / "model-lock.toml"
    assert add_entry(path, "chat", "org/tiny:Q4_K_M", {"n_ctx": 256}) == (None, True)
    entry = Lockfile.load(path).entry("chat")
    assert (entry.source, entry.settings["n_ctx"], entry.is_pinned) == ("org/tiny:Q4_K_M", 256, False)
    assert "version = 1" in path.read_text()


NEW_PINS = {"chat": Pins(None, (FilePin("x.gguf", 1, SHA),), "org/tiny:Q4_K_M")}


def test_a_failed_write_leaves_no_trace(tmp_path, monkeypatch):
    path = write(tmp_path, PINNED)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(
        LockError, match=r"model-lock.toml: cannot write the lockfile \(disk full\); it was left as it was"
    ):
        write_pins(path, NEW_PINS)
    assert path.read_text() == PINNED
    assert [p.name for p in tmp_path.iterdir()] == ["model-lock.toml"]


@pytest.mark.parametrize("step", ["mkstemp", "replace"])
def test_a_folder_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch, step):
    path = write(tmp_path, PINNED)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile if step == "mkstemp" else os, step, denied)
    with pytest.raises(
        LockError,
        match=rf"{path}: permission denied writing the lockfile; it was left as it was. Make {tmp_path} writable",
    ):
        write_pins(path, NEW_PINS)
    assert path.read_text() == PINNED
    assert [p.name for p in tmp_path.iterdir()] == ["model-lock.toml"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only files and folders")
def test_read_only_file_or_folder_is_left_alone(tmp_path):
    path = write(tmp_path, PINNED)
    path.chmod(0o444)
    with pytest.raises(LockError, match=r"is read-only. Make it writable \(chmod u\+w\)"):
        write_pins(path, NEW_PINS)
    path.chmod(0o644)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(LockError, match=r"permission denied writing the lockfile.*Make .* writable"):
            write_pins(path, NEW_PINS)
    finally:
        tmp_path.chmod(0o755)
    assert path.read_text() == PINNED


def test_a_folder_is_not_a_lockfile(tmp_path):
    with pytest.raises(
        LockError, match=rf"{tmp_path} is a folder, not a lockfile. Pass the file: --lock {tmp_path}/model-lock.toml"
    ):
        Lockfile.load(tmp_path)


def test_a_lockfile_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "model-lock.toml"
    path.write_bytes(b"version = 1\n# caf\xe9\n")
    with pytest.raises(
        LockError, match=r"model-lock.toml:2: the lockfile is not UTF-8 text \(byte 0xe9\). Save it as UTF-8"
    ):
        Lockfile.load(path)
    with pytest.raises(LockError, match="not UTF-8"):
        write_pins(path, NEW_PINS)
    assert path.read_bytes() == b"version = 1\n# caf\xe9\n"


def test_crlf_line_endings_and_a_bom_are_kept(tmp_path):
    path = tmp_path / "model-lock.toml"
    path.write_bytes(b"\xef\xbb\xbf" + PINNED.replace("\n", "\r\n").encode())
    assert Lockfile.load(path).entry("chat").is_pinned
    new = Pins("2" * 40, (FilePin("a.gguf", 1, SHA), FilePin("b.gguf", 2, SHA, "mmproj")), "org/tiny:Q4_K_M")
    assert write_pins(path, {"chat": new}) is True
    add_entry(path, "other", "org/other:Q8_0", {"seed": 1})
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf# team models\r\n")
    assert data.count(b"\n") == data.count(b"\r\n") > PINNED.count("\n"), "new lines end in CRLF too"
    assert Lockfile.load(path).entry("chat").pins == new


def test_a_symlinked_lockfile_is_written_through(tmp_path):
    real = tmp_path / "shared" / "model-lock.toml"
    real.parent.mkdir()
    real.write_text(PINNED)
    link = tmp_path / "model-lock.toml"
    link.symlink_to(real)
    assert write_pins(link, NEW_PINS) is True
    assert link.is_symlink() and Lockfile.load(real).entry("chat").pins == NEW_PINS["chat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-lock.toml", "shared"]


def test_an_error_in_a_file_pin_names_its_own_line(tmp_path):
    bad = PINNED.replace("]\n", '    {path = "b.gguf", size = 1, sha256 = "nope", role = "model"},\n]\n')
    with pytest.raises(
        LockError, match=r"model-lock.toml:11: files\[1\] of \[models.chat\] \(b.gguf\): sha256 must be"
    ):
        Lockfile.load(write(tmp_path, bad))


def test_pins_for_a_source_edited_meanwhile_are_not_written(tmp_path):
    path = write(tmp_path, PINNED.replace('source = "org/tiny:Q4_K_M"', 'source = "org/tiny:Q8_0"'))
    before = path.read_text()
    assert write_pins(path, NEW_PINS) is False, "the pins were resolved for the old source"
    assert path.read_text() == before


def test_routing_errors_point_at_the_routing_table(tmp_path):
    text = '[models.a]\nsource = "a/b"\n\n[routing]\nrules = [{pattern = "(", model = "a"}]\n'
    with pytest.raises(LockError, match=r"model-lock.toml:4: routing.rules\[0\] pattern is not a valid regex"):
        Lockfile.load(write(tmp_path, text))

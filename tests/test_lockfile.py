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
        r"model-lock.toml:3: revision must be a full commit sha \(40 lowercase hex characters\), got '../../x'. "
        r"Run `modelfix lock --upgrade --model chat`",
    ),
    ('[models.chat]\nsource = "a/b"\nrevision = "main"\n', r"model-lock.toml:3: revision must be a full commit sha"),
    (
        '[models.chat]\nsource = "a/b"\nfiles = [{path = "m.gguf", size = 9223372036854775807, sha256 = "'
        + SHA
        + '"}]\n',
        r"model-lock.toml:3: files\[0\] of \[models.chat\] \(m.gguf\): "
        r"size must be a non-negative integer of at most 2\*\*50 bytes",
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


@pytest.mark.parametrize(
    ("name", "fix"),
    [("nope", "modelfix add nope ORG/REPO:TAG"), ("org/repo:Q4_K_M", "modelfix add NAME org/repo:Q4_K_M")],
    ids=["name", "a-source-where-a-name-goes"],
)
def test_unknown_model_lists_the_known_ones_and_the_add_that_fixes_it(tmp_path, name, fix):
    with pytest.raises(LockError) as info:
        Lockfile.load(write(tmp_path, PINNED)).entry(name)
    assert f"no model named {name!r}" in str(info.value) and "(models: chat)" in str(info.value)
    assert str(info.value).endswith(f"Add it with `{fix}`.")


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


# --- pinned paths, settings and the file itself: what an attacker or a bad merge writes -------------


def _with_pins(*pins: str) -> str:
    """PINNED with its `files` replaced by these inline tables."""
    start, end = PINNED.index("files = [") + len("files = [\n"), PINNED.rindex("]")
    return PINNED[:start] + "".join(f"    {p},\n" for p in pins) + PINNED[end:]


def _pin(path: str, extra: str = "") -> str:
    return f'{{path = "{path}", size = 1, sha256 = "{SHA}", role = "model"{extra}}}'


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("./x.gguf", r"'\./x\.gguf'.*'\.'"),
        (".", r"'\.'"),
        ("a/./x.gguf", r"'a/\./x\.gguf'"),
        ("a//x.gguf", r"'a//x\.gguf'.*empty"),
        ("a/", r"'a/'.*empty"),
        ("x\\u0000.gguf", r"'x\\x00\.gguf'.*control character"),
        ("x\\u001b[2J.gguf", r"'x\\x1b\[2J\.gguf'.*control character"),
        ("x\\n.gguf", r"'x\\n\.gguf'.*control character"),
        (".modelfix.json", r"'\.modelfix\.json'.*reserved"),
        ("a/.modelfix.json", r"reserved"),
        (".tmp-1234", r"reserved"),
        (".old-1234/x.gguf", r"reserved"),
        ("../x.gguf", r"'\.\./x\.gguf'"),
        ("/etc/passwd", r"absolute"),
        ("a" * 256 + ".gguf", r"longer than 255 bytes"),
        ("a/" * 2100 + "x.gguf", r"longer than 1024 bytes"),
    ],
    ids=[
        "dot-slash",
        "dot",
        "dot-segment",
        "empty-segment",
        "trailing-slash",
        "nul",
        "esc",
        "newline",
        "manifest",
        "manifest-in-folder",
        "staging",
        "old-view",
        "dot-dot",
        "absolute",
        "long-segment",
        "long-path",
    ],
)
def test_an_unsafe_pinned_path_is_refused_with_its_line(tmp_path, path, why):
    with pytest.raises(LockError, match=rf"model-lock.toml:10: files\[0\] of \[models.chat\]: .*{why}"):
        Lockfile.load(write(tmp_path, _with_pins(_pin(path))))


@pytest.mark.parametrize(
    ("second", "named"),
    [("x.gguf", "'x.gguf'"), ("X.gguf", "'X.gguf'"), ("x.gguf/y.gguf", "'x.gguf/y.gguf'")],
    ids=["twice", "case", "file-as-folder"],
)
def test_two_pins_of_one_entry_on_one_view_file_are_refused_naming_both(tmp_path, second, named):
    text = _with_pins(_pin("x.gguf"), _pin(second).replace('"model"', '"mmproj"'))
    with pytest.raises(LockError, match=rf"\[models.chat\].*'x.gguf' \(files\[0\]\).*{named} \(files\[1\]\)"):
        Lockfile.load(write(tmp_path, text))


def test_a_join_that_lands_on_another_pin_is_refused(tmp_path):
    text = _with_pins(_pin("x.gguf"), _pin("x.gguf.part1of1", ', join = "x.gguf"'))
    with pytest.raises(LockError, match=r"'x.gguf' \(files\[0\]\).*'x.gguf' \(files\[1\]\)"):
        Lockfile.load(write(tmp_path, text))


@pytest.mark.parametrize("join", ['["x"]', "{a = 1}", "5", '"../x.gguf"', '"x\\u0000"'])
def test_a_join_that_is_not_a_safe_file_name_is_refused(tmp_path, join):
    text = _with_pins(_pin("x.gguf.part1of1", f", join = {join}"))
    with pytest.raises(LockError, match=r"model-lock.toml:10: files\[0\] of \[models.chat\].*join"):
        Lockfile.load(write(tmp_path, text))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[models.chat]", '[models."chat\\n"]', r"model name 'chat\\n'"),
        (f'sha256 = "{SHA}"', f'sha256 = "{SHA}\\n"', r"sha256 must be 64 lowercase hex characters"),
        (f'revision = "{"1" * 40}"', f'revision = "{"1" * 40}\\n"', r"revision must be a full commit sha"),
    ],
    ids=["name", "sha256", "revision"],
)
def test_a_trailing_newline_does_not_pass_validation(tmp_path, old, new, message):
    with pytest.raises(LockError, match=message):
        Lockfile.load(write(tmp_path, PINNED.replace(old, new)))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("n_ctx = 99999999999999999999", r"model-lock.toml:6: n_ctx must be an integer >= 0 and <= 16777216"),
        ("n_ctx = 16777217", r"n_ctx must be an integer >= 0 and <= 16777216"),
        ("n_batch = 99999999999999999999", r"n_batch must be"),
        ("rope_freq_base = nan", r"rope_freq_base must be a finite number, got nan"),
        ("rope_freq_scale = inf", r"rope_freq_scale must be a finite number, got inf"),
        ("rope_freq_base = -inf", r"rope_freq_base must be a finite number"),
        ("seed = 99999999999999999999", r"seed must be"),
    ],
)
def test_absurd_settings_are_refused_with_the_bound(tmp_path, setting, message):
    with pytest.raises(LockError, match=message):
        Lockfile.load(write(tmp_path, PINNED.replace("n_ctx = 512", setting)))


def test_a_lockfile_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "model-lock.toml"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024 + 1)  # sparse: no disk used
    with pytest.raises(LockError, match=r"model-lock.toml is 64.0 MiB, over the 64 MiB a lockfile may have"):
        Lockfile.load(path)


def test_a_device_or_a_pipe_is_not_a_lockfile(tmp_path):
    with pytest.raises(LockError, match=r"/dev/zero is not a regular file"):
        Lockfile.load(Path("/dev/zero"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(LockError, match=r"fifo is not a regular file"):  # and does not wait for a writer
        Lockfile.load(fifo)


def _many(n: int, bad_last: bool = False) -> str:
    entries = [PINNED.replace("[models.chat]", f"[models.m{i}]") if i else PINNED for i in range(n)]
    text = "\n".join(e.split("\n", 2)[2] if i else e for i, e in enumerate(entries))
    return text[: text.rindex("role")] + 'role = "nope"}\n]\n' if bad_last else text


def test_a_valid_lockfile_is_read_without_looking_up_a_single_line(tmp_path, monkeypatch):
    from modelfix import lockfile_lines

    scans = []
    monkeypatch.setattr(lockfile_lines, "Lines", lambda *a, real=lockfile_lines.Lines: scans.append(a) or real(*a))

    assert len(Lockfile.load(write(tmp_path, _many(300))).entries) == 300
    assert scans == []


def test_an_error_deep_in_a_big_lockfile_scans_its_lines_once(tmp_path, monkeypatch):
    from modelfix import lockfile_lines

    scanned = []
    real = lockfile_lines.Lines

    class Counting(real):
        def _scan(self, line: str) -> None:
            scanned.append(line)
            super()._scan(line)

    monkeypatch.setattr(lockfile_lines, "Lines", Counting)
    text = _many(300, bad_last=True)

    with pytest.raises(LockError, match=rf"model-lock.toml:{text.count(chr(10)) - 1}: files\[0\] of \[models.m299\]"):
        Lockfile.load(write(tmp_path, text))
    assert len(scanned) <= text.count("\n") + 1


@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o077, 0o600)])
def test_a_new_lockfile_gets_the_mode_the_umask_gives(tmp_path, umask, mode):
    import subprocess
    import sys

    path = tmp_path / "model-lock.toml"
    code = (
        f"import os; os.umask({umask}); from pathlib import Path; from modelfix.locking import add_entry; "
        f"add_entry(Path({str(path)!r}), 'chat', 'org/tiny:Q4_K_M')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

    assert path.stat().st_mode & 0o777 == mode

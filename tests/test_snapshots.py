"""Snapshot tests (``model_snapshot``, ``modelfix.snapshot``), end to end and in their parts.

The end-to-end tests run real inner suites (``pytester``, in subprocesses) against the tiny
models served by the local hub, loaded by the real llama-cpp-python. Tiny random models answer
the same on one machine but not necessarily on another CPU, so no recording is committed:
each test records, then compares, within itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelfix.cli import main as modelfix_cli
from modelfix.errors import SnapshotError
from modelfix.snapshot_file import (
    Pin,
    Recording,
    Runtime,
    Snapshot,
    SnapshotFile,
    Value,
    dumps,
    loads,
    parse_key,
    snapshot_key,
)
from modelfix.snapshots import backend_name, explain, judge, mismatch_message, runtime_changes

pytest_plugins = ["pytester"]

# Two comparisons in one test, a whole completion dict, one snapshot per model of a
# multi-model marker, and a test without snapshots.
SUITE = """
import pytest


@pytest.mark.model("tiny")
def test_text(llama, model_snapshot):
    for prompt in ("The capital of France is", "Once upon a time"):
        assert model_snapshot == llama(prompt, max_tokens=8, temperature=0)["choices"][0]["text"]


@pytest.mark.model("tiny", "tiny8")
def test_completion(llama, model_snapshot):
    assert model_snapshot == llama("Hello", max_tokens=6, temperature=0)


def test_without_snapshots():
    pass
"""
KEYS = {"test_text", "test_text.1", "test_completion[tiny]", "test_completion[tiny8]"}
UPDATE = "--modelfix-snapshot-update"


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", *args)


def snapshots_line(result: pytest.RunResult) -> str:
    (line,) = [line for line in result.outlines if line.startswith("snapshots: ")]
    return line


@pytest.fixture
def suite(pytester: pytest.Pytester, hub) -> pytest.Pytester:
    """An inner project: ``tiny`` (org/tiny:Q4_0) and ``tiny8`` (org/tiny:Q8_0) pinned, and SUITE."""
    for name, source in (("tiny", "org/tiny:Q4_0"), ("tiny8", "org/tiny:Q8_0")):
        assert modelfix_cli(["--lock", str(pytester.path / "model-lock.toml"), "add", name, source]) == 0
    pytester.makepyfile(test_answers=SUITE)
    return pytester


@pytest.fixture
def recorded(suite: pytest.Pytester) -> pytest.Pytester:
    """``suite`` with its snapshots recorded."""
    run(suite, UPDATE).assert_outcomes(passed=4)
    return suite


def snapshot_file(pytester: pytest.Pytester, module: str = "test_answers") -> Path:
    return pytester.path / "__snapshots__" / f"{module}.modelfix.toml"


# --- the Done-when list, end to end ------------------------------------------------------------


def test_unrecorded_snapshots_fail_with_one_line_that_says_how_to_record(suite: pytest.Pytester) -> None:
    result = run(suite)

    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines(
        [
            "E *SnapshotMismatch: test_answers.py::test_text: no snapshot of comparison 1 ('test_text' in "
            "__snapshots__/test_answers.modelfix.toml). Record it with `pytest --modelfix-snapshot-update`.",
        ]
    )
    assert snapshots_line(result) == "snapshots: 0 passed, 0 written, 0 updated, 3 failed, 0 unused"
    assert not (suite.path / "__snapshots__").exists()


def test_update_records_every_comparison_then_the_suite_passes_unchanged(suite: pytest.Pytester) -> None:
    import llama_cpp

    from modelfix.lockfile import Lockfile

    result = run(suite, UPDATE)

    result.assert_outcomes(passed=4)
    assert snapshots_line(result) == "snapshots: 0 passed, 4 written, 0 updated, 0 failed, 0 unused"
    path = snapshot_file(suite)
    entries = SnapshotFile(path).read()
    assert set(entries) == KEYS
    lock = Lockfile.load(suite.path / "model-lock.toml")
    for key, model in (("test_text", "tiny"), ("test_completion[tiny]", "tiny"), ("test_completion[tiny8]", "tiny8")):
        rec = entries[key].recording
        entry = lock.entry(model)
        assert rec.model == model
        assert rec.pin == Pin(entry.source, entry.revision, tuple((f.path, f.sha256) for f in entry.files))
        assert rec.runtime.llama_cpp_python == llama_cpp.__version__ and rec.runtime.backend == "CPU"
        assert dict(rec.settings)["seed"] == 0  # the seed the llama fixture reset the handle to
    assert entries["test_text"].value.kind == "text"
    completion = entries["test_completion[tiny]"].value.data
    assert completion["object"] == "text_completion" and completion["choices"][0]["finish_reason"]
    assert not {"id", "created", "model"} & completion.keys()  # differ on every call or machine
    text = path.read_text()
    assert '\n["test_completion[tiny8]"]\nmodel = "tiny8"\njson = \'\'\'\n{\n  "choices": [' in text
    written = path.read_bytes()

    again = run(suite)
    again.assert_outcomes(passed=4)
    assert snapshots_line(again) == "snapshots: 4 passed, 0 written, 0 updated, 0 failed, 0 unused"

    rerecorded = run(suite, UPDATE)
    rerecorded.assert_outcomes(passed=4)
    assert snapshots_line(rerecorded) == "snapshots: 4 passed, 0 written, 0 updated, 0 failed, 0 unused"
    assert path.read_bytes() == written


@pytest.mark.parametrize("order", ["reversed", "xdist"])
def test_the_recorded_suite_passes_in_reverse_order_and_under_xdist(recorded: pytest.Pytester, order: str) -> None:
    written = snapshot_file(recorded).read_bytes()
    if order == "reversed":
        recorded.makeconftest("def pytest_collection_modifyitems(items):\n    items.reverse()\n")
        result = run(recorded, "-v")
        ran = [line.split(" ")[0] for line in result.outlines if line.startswith("test_answers.py::")]
        assert ran[0].endswith("test_without_snapshots") and ran[-1].endswith("test_text")
    else:
        result = run(recorded, "-n", "2")

    result.assert_outcomes(passed=4)
    assert snapshots_line(result) == "snapshots: 4 passed, 0 written, 0 updated, 0 failed, 0 unused"
    assert snapshot_file(recorded).read_bytes() == written


def test_xdist_workers_recording_one_module_lose_no_entry(pytester: pytest.Pytester, hub) -> None:
    assert modelfix_cli(["--lock", str(pytester.path / "model-lock.toml"), "add", "tiny", "org/tiny:Q4_0"]) == 0
    prompts = ["Hello", "Once", "The", "A", "In the", "Why", "It was", "Then"]
    pytester.makepyfile(
        test_many=f"""
        import pytest

        @pytest.mark.parametrize("prompt", {prompts!r})
        def test_each(llama, model_snapshot, prompt):
            assert model_snapshot == llama(prompt, max_tokens=4, temperature=0)["choices"][0]["text"]
        """
    )

    result = run(pytester, "-n", "2", UPDATE)

    result.assert_outcomes(passed=len(prompts))
    assert snapshots_line(result) == f"snapshots: 0 passed, {len(prompts)} written, 0 updated, 0 failed, 0 unused"
    assert set(SnapshotFile(snapshot_file(pytester, "test_many")).read()) == {f"test_each[{p}]" for p in prompts}
    run(pytester, "-n", "2").assert_outcomes(passed=len(prompts))


def test_after_repinning_to_other_weights_a_mismatch_names_the_pin_that_changed(
    recorded: pytest.Pytester, hub, tmp_path: Path
) -> None:
    from modelfix.lockfile import Lockfile
    from modelfix.testing.gguf import write_tiny_model

    lock_path = recorded.path / "model-lock.toml"
    old = Lockfile.load(lock_path).entry("tiny")
    weights = write_tiny_model(tmp_path / "tiny-Q4_0.gguf", seed=1234, qtype="Q4_0")[0]
    hub.commit("org/tiny", {"tiny-Q4_0.gguf": weights}, message="retrained")
    assert modelfix_cli(["--lock", str(lock_path), "lock", "--upgrade"]) == 0
    new = Lockfile.load(lock_path).entry("tiny")
    old_sha, new_sha = old.model_files[0].sha256, new.model_files[0].sha256
    assert old_sha != new_sha

    result = run(recorded)

    # tiny8's revision moved too, but not its bytes: its snapshot still passes.
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E *SnapshotMismatch: snapshot 'test_text' in __snapshots__/test_answers.modelfix.toml is not what "
            "model 'tiny' answers now.",
            "E *What changed since the recording:",
            f"E *model pin: tiny-Q4_0.gguf sha256 {old_sha[:12]}… -> {new_sha[:12]}…",
            f"E *model pin: revision {old.revision[:12]} -> {new.revision[:12]}",
            "E *--- recorded",
            "E *+++ now",
        ]
    )
    assert "Nothing modelfix records changed" not in result.stdout.str()
    # Comparisons are counted: test_text stopped at its first.
    assert snapshots_line(result) == "snapshots: 1 passed, 0 written, 0 updated, 2 failed, 0 unused"


def test_after_changing_the_prompt_a_mismatch_shows_the_diff(recorded: pytest.Pytester) -> None:
    before = SnapshotFile(snapshot_file(recorded)).read()["test_text"].value.text
    test = recorded.path / "test_answers.py"
    test.write_text(test.read_text().replace("The capital of France is", "My favourite colour is"))

    result = run(recorded)

    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E *SnapshotMismatch: snapshot 'test_text' in __snapshots__/test_answers.modelfix.toml is not what "
            "model 'tiny' answers now.",
            "E *Nothing modelfix records changed since the recording (model pin, runtime, load settings).",
            "E *If the test's own inputs (prompt, max_tokens, temperature) did not change either, this output is "
            "not deterministic with these settings: a temperature above 0 samples with the seed (seed = 0), *",
            "E *--- recorded",
            "E *+++ now",
            f"E *- {before.splitlines()[0]}",
            "E *+ *",
            "E *If the new output is right, record it with `pytest --modelfix-snapshot-update`.",
        ]
    )


def test_a_changed_setting_and_another_runtime_are_named(pytester: pytest.Pytester, hub) -> None:
    import llama_cpp

    assert modelfix_cli(["--lock", str(pytester.path / "model-lock.toml"), "add", "tiny", "org/tiny:Q4_0"]) == 0
    # assert_match from a helper module, which pytest does not rewrite: the whole explanation still shows.
    pytester.makepyfile(helpers="def check(snapshot, value):\n    snapshot.assert_match(value)\n")
    source = """
        import pytest
        from helpers import check

        @pytest.mark.model("tiny", seed={seed})
        def test_sampled(llama, model_snapshot):
            check(model_snapshot, llama("Hello", max_tokens=16, temperature=1.5)["choices"][0]["text"])
        """
    pytester.makepyfile(test_sampling=source.format(seed=1))
    run(pytester, UPDATE).assert_outcomes(passed=1)
    pytester.makepyfile(test_sampling=source.format(seed=2))

    result = run(pytester)

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E *What changed since the recording:", "E *setting seed: 1 -> 2"])

    path = snapshot_file(pytester, "test_sampling")
    path.write_text(
        path.read_text().replace(f'llama_cpp_python = "{llama_cpp.__version__}"', 'llama_cpp_python = "0.1.0"')
    )
    pytester.makepyfile(test_sampling=source.format(seed=1))
    result = run(pytester)
    # The same value is a pass, whatever recorded it; a different one names the runtime.
    result.assert_outcomes(passed=1)
    path.write_text(path.read_text().replace("text = ", 'text = "not this" #', 1))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"E *runtime: llama-cpp-python 0.1.0 -> {llama_cpp.__version__}"])


def test_runtime_same_skips_recordings_of_another_backend_and_any_compares_them(recorded: pytest.Pytester) -> None:
    path = snapshot_file(recorded)
    path.write_text(path.read_text().replace('runtime.backend = "CPU"', 'runtime.backend = "CUDA"'))
    written = path.read_bytes()

    same = run(recorded, "--modelfix-snapshot-runtime=same", "-rs")
    same.assert_outcomes(passed=1, skipped=3)
    same.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_answers.py:7: snapshot 'test_text' in __snapshots__/test_answers.modelfix.toml was "
            "recorded on another runtime (backend CUDA -> CPU): --modelfix-snapshot-runtime=same skips it"
        ]
    )
    assert snapshots_line(same) == (
        "snapshots: 0 passed, 0 written, 0 updated, 0 failed, 0 unused; 3 skipped (recorded on another runtime)"
    )
    # The ini key too; and an update under `same` leaves another runtime's recordings alone.
    recorded.makeini("[pytest]\nmodelfix_snapshot_runtime = same\n")
    run(recorded, UPDATE).assert_outcomes(passed=1, skipped=3)
    assert path.read_bytes() == written

    any_runtime = run(recorded, "--modelfix-snapshot-runtime=any")
    any_runtime.assert_outcomes(passed=4)  # the same values, whatever ran them
    assert snapshots_line(any_runtime).startswith("snapshots: 4 passed, ")

    # An update that may compare them rewrites each with the runtime that answers the same now.
    recorded.makeini("[pytest]\nmodelfix_snapshot_update = true\n")
    updated = run(recorded)
    updated.assert_outcomes(passed=4)
    assert snapshots_line(updated) == "snapshots: 0 passed, 0 written, 4 updated, 0 failed, 0 unused"
    assert 'runtime.backend = "CUDA"' not in path.read_text()

    recorded.makeini("[pytest]\nmodelfix_snapshot_runtime = sometimes\n")
    run(recorded).stderr.fnmatch_lines(["ERROR: modelfix_snapshot_runtime: expected any or same, got 'sometimes'"])


def test_unused_snapshots_are_reported_and_removed_only_when_known_unused(suite: pytest.Pytester) -> None:
    module = suite.path / "test_answers.py"
    module.write_text(
        SUITE
        + "\n\n@pytest.mark.model('tiny')\ndef test_gone(llama, model_snapshot):\n    assert model_snapshot == 'x'\n"
    )
    run(suite, UPDATE).assert_outcomes(passed=5)
    path = snapshot_file(suite)
    assert set(SnapshotFile(path).read()) == KEYS | {"test_gone"}
    # test_gone is deleted; test_text makes one comparison instead of two.
    module.write_text(
        SUITE.replace('("The capital of France is", "Once upon a time")', '("The capital of France is",)')
    )

    deselected = run(suite, "-k", "without_snapshots")
    deselected.assert_outcomes(passed=1)  # test_text did not run: its second entry may still be used
    deselected.stdout.re_match_lines(
        [
            r"-+ modelfix -+",
            r"snapshots: 0 passed, 0 written, 0 updated, 0 failed, 1 unused "
            r"\(--modelfix-snapshot-update removes them\)",
        ]
    )
    narrowed = run(suite, UPDATE, "-v", "test_answers.py::test_without_snapshots")
    narrowed.assert_outcomes(passed=1)
    # Only some tests were collected: nothing is known unused, and nothing is said.
    assert not [line for line in narrowed.outlines if line.startswith(("snapshots: ", "  unused: "))]
    assert set(SnapshotFile(path).read()) == KEYS | {"test_gone"}

    partial = run(suite, UPDATE, "-v", "-k", "not test_text")
    partial.stdout.fnmatch_lines(
        ["snapshots: *, 1 unused (removed)", "  unused: __snapshots__/test_answers.modelfix.toml: test_gone"]
    )
    assert set(SnapshotFile(path).read()) == KEYS

    # A test that fails before its comparisons keeps its entries; one that passed with fewer loses the rest.
    module.write_text(
        module.read_text().replace(
            "def test_completion(llama, model_snapshot):\n",
            "def test_completion(llama, model_snapshot):\n    raise RuntimeError('not today')\n",
        )
    )
    full = run(suite, UPDATE)
    full.assert_outcomes(passed=2, failed=2)
    assert snapshots_line(full) == "snapshots: 1 passed, 0 written, 0 updated, 0 failed, 1 unused (removed)"
    assert set(SnapshotFile(path).read()) == KEYS - {"test_text.1"}


def test_update_under_last_failed_keeps_the_snapshots_of_the_tests_it_did_not_collect(
    recorded: pytest.Pytester,
) -> None:
    module = recorded.path / "test_answers.py"
    module.write_text(
        SUITE.replace("def test_without_snapshots():\n    pass", "def test_without_snapshots():\n    assert 0")
    )
    recorded.runpytest_subprocess("-p", "no:randomly").assert_outcomes(passed=3, failed=1)

    result = recorded.runpytest_subprocess("-p", "no:randomly", "--lf", UPDATE)

    result.assert_outcomes(failed=1)  # --lf collected test_without_snapshots alone
    assert set(SnapshotFile(snapshot_file(recorded)).read()) == KEYS


# --- the parts: file format, concurrency, explanations ----------------------------------------

RECORDING = Recording(
    model="chat",
    pin=Pin("org/repo:Q4_0", "a" * 40, (("model.gguf", "1" * 64), ("mmproj.gguf", "2" * 64))),
    settings=(("n_ctx", 512), ("n_batch", 512), ("seed", 0), ("flash_attn", False), ("rope_freq_base", 0.0)),
    runtime=Runtime("0.3.16", "CPU", "on", "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | REPACK = 1 |"),
)
TRICKY = [
    "",
    "plain",
    'with "quotes" and \\ backslashes',
    "two\nlines",
    "a trailing newline\n",
    "\na leading newline",
    "'''three single quotes'''\nin two lines",
    'three """ double quotes\nin two lines',
    "ends with a quote\nit's'",
    "windows\r\nline ends",
    "a tab\tand control\x00\x1b chars\x7f\nsecond line",
    "unicode é 漢字 🙂\nand a line separator \u2028",
]


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_the_file_keeps_every_value_and_key_exactly(tmp_path: Path, text: str) -> None:
    entries = {
        f"test_x[{text}]": Snapshot(Value.of(text), RECORDING),
        "test_x[json]": Snapshot(Value.of({"text": text, "n": [1, 2.5, None, True]}), RECORDING),
    }
    path = tmp_path / "__snapshots__" / "test_x.modelfix.toml"
    assert SnapshotFile(path).write(entries)
    assert loads(path.read_text(encoding="utf-8"), path) == entries
    assert not SnapshotFile(path).write(entries), "an unchanged file is not rewritten"


def test_the_file_layout_is_one_fact_per_line_sorted_by_test_and_call() -> None:
    text = dumps({"test_a[x]": Snapshot(Value.of({"b": 1, "a": [1]}), RECORDING)})
    assert text.split("version = 1\n", 1)[1] == textwrap.dedent(
        f"""
        ["test_a[x]"]
        model = "chat"
        json = '''
        {{
          "a": [
            1
          ],
          "b": 1
        }}'''
        pin.source = "org/repo:Q4_0"
        pin.revision = "{"a" * 40}"
        pin.files."model.gguf" = "{"1" * 64}"
        pin.files."mmproj.gguf" = "{"2" * 64}"
        settings.n_ctx = 512
        settings.n_batch = 512
        settings.seed = 0
        settings.flash_attn = false
        settings.rope_freq_base = 0.0
        runtime.llama_cpp_python = "0.3.16"
        runtime.backend = "CPU"
        runtime.repack = "on"
        runtime.build = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | REPACK = 1 |"
        """
    )
    entries = {
        snapshot_key("test_b", 10): Snapshot(Value.of("eleventh"), RECORDING),
        snapshot_key("test_b", 1): Snapshot(Value.of("second\ncall"), RECORDING),
        snapshot_key("test_b", 0): Snapshot(Value.of("first"), RECORDING),
        snapshot_key("test_a[x]", 0): Snapshot(Value.of("x"), RECORDING),
    }
    text = dumps(entries)
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == ['["test_a[x]"]', "[test_b]", '["test_b.1"]', '["test_b.10"]']
    assert "text = '''\nsecond\ncall'''" in text
    assert parse_key("test_b.1") == ("test_b", 1) and parse_key("test_x[1.5]") == ("test_x[1.5]", 0)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('version = 1\n[test_a]\nmodel = "chat"\n<<<<<<< HEAD\n', "is not valid TOML"),
        ("version = 2\n", "has snapshot format version 2; this modelfix reads version 1"),
        ('version = 1\n[test_a]\nmodel = "chat"\ntext = "x"\n', "snapshot [test_a] is malformed (no 'pin')"),
        ('version = 1\n[test_a]\ntext = "x"\njson = "[]"\n', "it needs one value: text = ... or json = ..."),
    ],
)
def test_a_malformed_file_is_one_line_naming_it_and_the_fix(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "test_x.modelfix.toml"
    path.write_text(text)
    with pytest.raises(SnapshotError) as caught:
        SnapshotFile(path).write({"test_b": Snapshot(Value.of("y"), RECORDING)})
    message = str(caught.value)
    assert str(path) in message and says in message and "\n" not in message
    assert "--modelfix-snapshot-update" in message
    assert path.read_text() == text, "a file that cannot be read back is never overwritten"


WRITER = """
import sys
from modelfix.snapshot_file import Pin, Recording, Runtime, Snapshot, SnapshotFile, Value

path, worker = sys.argv[1], sys.argv[2]
RECORDING = Recording("chat", Pin("org/repo:Q4_0", None, (("m.gguf", "1" * 64),)), (), Runtime("0", "CPU", "on", ""))
for i in range(25):
    SnapshotFile(path).write({f"test_{worker}[{i}]": Snapshot(Value.of(f"{worker} {i}"), RECORDING)})
"""


def test_concurrent_writers_of_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "__snapshots__" / "test_x.modelfix.toml"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)], stderr=subprocess.PIPE) for w in range(4)
    ]
    for w in writers:
        assert w.wait(timeout=120) == 0, w.stderr.read().decode() if w.stderr else ""

    entries = SnapshotFile(path).read()
    assert set(entries) == {f"test_{w}[{i}]" for w in range(4) for i in range(25)}
    assert entries["test_3[24]"].value.text == "3 24"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file is left behind"


def test_explain_names_each_kind_of_change() -> None:
    import dataclasses

    def changed(**what):
        return dataclasses.replace(RECORDING, **what)

    new_pin = Pin("org/repo:Q4_0", "b" * 40, (("model.gguf", "3" * 64), ("extra.gguf", "4" * 64)))
    assert explain(RECORDING, changed(pin=new_pin)) == [
        f"model pin: model.gguf sha256 {'1' * 12}… -> {'3' * 12}…",
        f"model pin: extra.gguf added (sha256 {'4' * 12}…)",
        f"model pin: mmproj.gguf (sha256 {'2' * 12}…) no longer pinned",
        f"model pin: revision {'a' * 12} -> {'b' * 12}",
    ]
    same_files = dataclasses.replace(RECORDING.pin, revision="b" * 40)
    assert explain(RECORDING, changed(pin=same_files)) == [
        f"model pin: revision {'a' * 12} -> {'b' * 12} (the same files)"
    ]
    runtime = Runtime("0.3.36", "CUDA", "off", "CUDA : ARCHS = 890 | CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 |")
    assert runtime_changes(RECORDING.runtime, RECORDING.runtime) == []
    assert explain(RECORDING, changed(runtime=runtime)) == [
        "runtime: llama-cpp-python 0.3.16 -> 0.3.36",
        "runtime: llama.cpp build: CPU AVX512 1 -> (none); CUDA ARCHS (none) -> 890",
        "runtime: backend CPU -> CUDA",
        "runtime: weight repacking on -> off",
    ]
    settings = (("n_ctx", 1024), ("n_batch", 512), ("n_threads", 4), ("seed", 4294967295), ("flash_attn", False))
    assert explain(RECORDING, changed(settings=settings)) == [
        "setting n_ctx: 512 -> 1024",
        "setting n_threads: unset -> 4",
        "setting seed: 0 -> 4294967295 (random)",
        "setting rope_freq_base: 0.0 -> unset",
    ]
    assert explain(RECORDING, RECORDING) == []


def test_a_mismatch_message_explains_then_diffs() -> None:
    old = Snapshot(Value.of({"choices": [{"text": "Paris"}], "usage": 3}), RECORDING)
    new = Snapshot(Value.of({"choices": [{"text": "Lyon"}], "usage": 3}), RECORDING)
    lines = mismatch_message("snapshot 'test_a'", old, new, "Record it.").splitlines()
    assert lines[0] == "snapshot 'test_a' is not what model 'chat' answers now."
    assert lines[1].startswith("Nothing modelfix records changed since the recording")
    assert "(seed = 0)" in lines[2] and "(n_threads = all cores)" in lines[2] and "(n_batch = 512)" in lines[2]
    assert lines[3:5] == ["--- recorded", "+++ now"]
    assert lines[5] == "@@ -1,7 +1,7 @@"
    assert '-      "text": "Paris"' in lines and '+      "text": "Lyon"' in lines
    assert lines[-1] == "Record it."
    trailing = mismatch_message("s", Snapshot(Value.of("a"), RECORDING), Snapshot(Value.of("a\n"), RECORDING), "")
    assert "recorded: 'a'\nnow:      'a\\n'" in trailing


def test_judge_outcomes() -> None:
    same = Snapshot(Value.of("a"), RECORDING)
    other_runtime = Snapshot(Value.of("a"), Recording("chat", RECORDING.pin, (), RECORDING.runtime))
    differs = Snapshot(Value.of("b"), RECORDING)
    assert judge(None, same, update=False) == "missing" and judge(None, same, update=True) == "written"
    assert judge(same, same, update=False) == "passed" and judge(same, same, update=True) == "passed"
    assert judge(same, other_runtime, update=False) == "passed"
    assert judge(same, other_runtime, update=True) == "updated"  # rewritten with what produced it now
    assert judge(same, differs, update=False) == "failed" and judge(same, differs, update=True) == "updated"


# A GPU cannot run here: these are the build info strings that llama.cpp prints on such builds.
@pytest.mark.parametrize(
    ("info", "offload", "platform", "backend"),
    [
        ("CPU : SSE3 = 1 | AVX2 = 1 | REPACK = 1 |", False, "linux", "CPU"),
        ("CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX2 = 1 |", True, "linux", "CUDA"),
        ("CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX2 = 1 |", False, "linux", "CPU"),
        ("Vulkan : | CPU : SSE3 = 1 |", True, "linux", "Vulkan"),
        ("CPU : NEON = 1 | ARM_FMA = 1 | ACCELERATE = 1 |", True, "darwin", "Metal"),
        ("CPU : SSE3 = 1 |", True, "linux", "GPU"),
    ],
)
def test_backend_name_follows_the_build_and_the_offload(monkeypatch, info, offload, platform, backend) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    assert backend_name(info, offload=offload) == backend


def test_values_are_str_or_json_without_the_per_call_keys_of_responses() -> None:
    completion = {"id": "cmpl-1", "created": 1, "model": "/cache/x.gguf", "object": "text_completion", "choices": []}
    assert Value.of(completion).data == {"object": "text_completion", "choices": []}
    chunks = [dict(completion, object="chat.completion.chunk")] * 2
    assert Value.of(chunks).data == [{"object": "chat.completion.chunk", "choices": []}] * 2
    embedding = {"object": "list", "data": [{"object": "embedding", "embedding": [0.5]}], "model": "/x.gguf"}
    assert "model" not in Value.of(embedding).data
    mine = {"object": "mine", "id": 7}
    assert Value.of(mine).data == mine, "only llama-cpp-python's responses lose keys"
    assert Value.of((1, 2)) == Value.of([1, 2])
    with pytest.raises(SnapshotError, match=r"a str or a JSON-able value .*, not this bytes"):
        Value.of(b"bytes")
    assert json.loads(Value.of({"b": 1, "a": 2}).text) == {"a": 2, "b": 1}

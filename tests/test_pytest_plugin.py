"""The pytest plugin, end to end: real inner test suites (``pytester``, in subprocesses) using the
fixtures against tiny GGUF models served by the local hub, fetched into a real store and loaded
by the real llama-cpp-python."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelfix.cli import main as modelfix_cli

pytest_plugins = ["pytester"]

TINY_FILES = ("tiny-Q4_0.gguf", "mmproj-tiny-f16.gguf")


@pytest.fixture
def suite(pytester: pytest.Pytester, hub) -> pytest.Pytester:
    """An inner project folder whose model-lock.toml pins ``tiny`` (Q4_0) from the local hub."""
    lock(pytester, tiny="org/tiny:Q4_0")
    return pytester


def lock(pytester: pytest.Pytester, **models: str) -> Path:
    path = pytester.path / "model-lock.toml"
    for name, source in models.items():
        assert modelfix_cli(["--lock", str(path), "add", name, source]) == 0
    return path


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # -p no:randomly: the inner order is the one written (or reversed on purpose).
    return pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", *args)


def test_marker_fixtures_header_and_summary(suite: pytest.Pytester, hub) -> None:
    suite.makeconftest(
        """
        def pytest_modelfix_adjust_settings(name, settings):
            if name == "tiny":
                settings["n_ctx"] = 256
        """
    )
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.model("tiny", n_batch=64)
        def test_marked(llama):
            out = llama("Hello", max_tokens=4, temperature=0)
            assert out["choices"][0]["text"]
            assert llama.n_ctx() == 256  # from the conftest.py hook

        def test_unmarked_uses_the_only_model(llama, modelfix):
            assert llama is modelfix.load("tiny")

        def test_session_fixture(modelfix):
            path = modelfix.path("tiny")
            assert path.name == "tiny-Q4_0.gguf"
            assert path.stat().st_size == modelfix.lockfile.entry("tiny").model_files[0].size
            assert modelfix.loaded()
        """
    )
    result = run(suite, "--strict-markers", "-W", "error::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=3)
    result.stdout.re_match_lines(
        [
            rf"modelfix: lockfile {re.escape(str(suite.path / 'model-lock.toml'))}, cache .*, models: tiny, "
            r"GPU offload: (yes|no)",
            r"modelfix: llama.cpp repack (on|off)\b.*",
            r"-+ modelfix -+",
            r"models used: tiny",
            r"fetched: 3 files, 236.3 KB; cache hits: 0 models",
            r"load times: tiny \d+\.\d\ds.*",
            r"pool evictions: 0; cache evictions: 0 files",
        ]
    )
    result.stdout.fnmatch_lines(["modelfix: fetching tiny: tiny-Q4_0.gguf *"])

    warm = run(suite)
    warm.assert_outcomes(passed=3)
    warm.stdout.re_match_lines([r"fetched: 0 files, 0 B; cache hits: 1 model"])
    assert "modelfix: fetching" not in warm.stdout.str()


def test_a_suite_that_uses_no_fixture_gets_no_summary_even_if_it_calls_modelfix(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import modelfix

        def test_calls_the_library_itself():
            assert modelfix.load("tiny")("Hi", max_tokens=2)["choices"]
        """
    )
    result = run(suite)
    result.assert_outcomes(passed=1)
    text = result.stdout.str()
    assert "modelfix: lockfile" in text  # the header still says what the plugin would use
    assert "models used" not in text and "modelfix: fetching" not in text


def test_cache_evictions_are_counted_apart_from_pool_evictions(pytester: pytest.Pytester, hub, monkeypatch) -> None:
    path = lock(pytester, tiny="org/tiny:Q4_0", tiny8="org/tiny:Q8_0")
    # Another process fetched tiny (its lease ended with it); under the cap tiny8 can only come in
    # by evicting tiny's model file (mmproj and preset.ini it shares with tiny8): 236 kB + 260 kB > 400 kB.
    subprocess.run(
        [sys.executable, "-m", "modelfix", "--lock", str(path), "sync", "tiny"], check=True, capture_output=True
    )
    monkeypatch.setenv("MODELFIX_CACHE_MAX_SIZE", "400000")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.model("tiny8")
        def test_second_model(llama):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"models used: tiny8", r"pool evictions: 0; cache evictions: 1 file"])


def test_several_names_run_once_per_model(pytester: pytest.Pytester, hub) -> None:
    lock(pytester, tiny="org/tiny:Q4_0", tiny8="org/tiny:Q8_0")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.model("tiny", "tiny8")
        @pytest.mark.parametrize("prompt", ["a", "b"])
        def test_each(llama, modelfix_model, prompt):
            assert llama is not None and modelfix_model in ("tiny", "tiny8")

        def test_unmarked(llama):
            pass
        """
    )
    result = run(pytester, "-v")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "*::test_each[[]tiny-a] PASSED*",
            "*::test_each[[]tiny-b] PASSED*",
            "*::test_each[[]tiny8-a] PASSED*",
            "*::test_each[[]tiny8-b] PASSED*",
            '*LockError: *has several models (tiny, tiny8)*@pytest.mark.model("NAME")*',
        ]
    )
    result.stdout.re_match_lines([r"load times: tiny \d.*, tiny8 \d.*"])


def test_handle_state_is_reset_whatever_the_order(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makeconftest(
        """
        import os

        def pytest_collection_modifyitems(items):
            if os.environ.get("REVERSE"):
                items.reverse()
        """
    )
    suite.makepyfile(
        """
        import json, pathlib, pytest

        def record(name, llama, prompt):
            # Sampling (temperature > 0) depends on the seed; the prompt shares a prefix with
            # the other tests', which a stale KV cache would reuse.
            out = llama(prompt, max_tokens=12, temperature=0.9, top_k=50)["choices"][0]["text"]
            path = pathlib.Path("outputs.jsonl")
            with path.open("a") as f:
                f.write(json.dumps({name: out}) + "\\n")

        @pytest.mark.model("tiny", seed=7)
        def test_one(llama):
            record("one", llama, "Once upon a time")

        @pytest.mark.model("tiny", seed=7)
        def test_two(llama):
            record("two", llama, "Once upon a time there")

        @pytest.mark.model("tiny", seed=7)
        def test_three(llama):
            record("three", llama, "Once upon a time")
        """
    )
    outputs = suite.path / "outputs.jsonl"
    run(suite).assert_outcomes(passed=3)
    forward = [json.loads(line) for line in outputs.read_text().splitlines()]
    outputs.unlink()
    monkeypatch.setenv("REVERSE", "1")
    run(suite).assert_outcomes(passed=3)
    backward = [json.loads(line) for line in outputs.read_text().splitlines()]
    assert list(backward[0]) == ["three"]  # the order really was reversed

    def merged(rows: list[dict]) -> dict:
        return {k: v for row in rows for k, v in row.items()}

    assert merged(forward) == merged(backward)
    assert merged(forward)["one"] == merged(forward)["three"]


def test_a_stream_a_test_left_half_read_does_not_hang_the_next_test(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import threading

        KEPT = []

        def test_reads_half_a_stream_in_a_thread(llama):
            def read():
                stream = llama("Hello", stream=True, max_tokens=32)
                next(stream)
                KEPT.append(stream)  # never finished, never closed
            worker = threading.Thread(target=read)
            worker.start()
            worker.join()

        def test_next(llama):
            assert llama("Hi", max_tokens=2, temperature=0)["choices"]
        """
    )
    run(suite, "-p", "timeout", "--timeout", "60").assert_outcomes(passed=2)


@pytest.mark.parametrize("xdist", [False, True], ids=["one-process", "xdist"])
@pytest.mark.parametrize("preload", [False, True], ids=["first-test", "preload"])
def test_offline_missing_model_is_explained_once_then_in_one_line(
    suite: pytest.Pytester, hub, preload: bool, xdist: bool
) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.model("tiny")
        def test_needs_model(llama):
            pass

        def test_needs_path(modelfix):
            modelfix.path("tiny")

        @pytest.mark.model("tiny")
        def test_needs_it_again(llama):
            pass

        def test_needs_nothing():
            pass
        """
    )
    hub.clear_log()
    options = ["--modelfix-preload"] * preload + ["-n", "2"] * xdist
    result = run(suite, "--modelfix-offline", *options)
    result.assert_outcomes(passed=1, failed=1, errors=2)
    # The short summary at the end repeats each first line, cut to the terminal's width except where
    # pytest sees a CI (CI or BUILD_NUMBER set): what is promised is the reports above it.
    text = result.stdout.str().split("short test summary info")[0]
    # The core's message in full (the model, its files, the command that fetches them), once:
    assert text.count("offline mode is on (") == 1 and text.count("modelfix sync tiny") == 1
    assert text.count("tiny: tiny-Q4_0.gguf") == 1
    shorts = re.findall(r"^E?\s*OfflineError: tiny is not in the cache \(offline\): see (.*) for its files", text, re.M)
    assert len(shorts) == (3 if preload else 2), text
    (first,) = set(shorts)  # all point at the one full message
    if preload:  # said before the first test runs
        assert first == "the --modelfix-preload message above the test results"
        assert text.index("offline mode is on (") < result.stdout.str().index("passed")
    else:
        assert re.fullmatch(r"test_offline\S*\.py::test_needs_(model|path|it_again)", first), first
        # The full message is in the report of the test the others point at.
        sections = re.split(r"^_{3,} (.*?) _{3,}$", text, flags=re.M)
        shown = {title: body for title, body in zip(sections[1::2], sections[2::2], strict=True)}
        (full,) = [title for title, body in shown.items() if "offline mode is on (" in body]
        assert full.endswith(first.split("::")[1]), (full, first)
    assert "Traceback" not in text and "resolver.py" not in text
    assert hub.requests == []


def test_the_header_without_a_lockfile_names_the_pytest_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    header = next(line for line in result.stdout.lines if line.startswith("modelfix: "))
    assert "--modelfix-lock PATH" in header and "--lock PATH" not in header.replace("--modelfix-lock", "")


def test_a_fixture_without_a_lockfile_is_one_error_line_and_the_run_ends_cleanly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_needs_a_model(llama): pass")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    text = result.stdout.str() + result.stderr.str()
    assert "LockError: no model-lock.toml in" in text and "--modelfix-lock PATH" in text
    assert "Traceback" not in text and "INTERNALERROR" not in text
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_misspelt_model_name_is_one_clear_error_and_not_reported_as_used(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.model("tiny")
        def test_right(llama):
            pass

        @pytest.mark.model("tinny")
        def test_typo(llama):
            pass
        """
    )
    result = run(suite)
    result.assert_outcomes(passed=1, errors=1)
    text = result.stdout.str()
    assert "no model named 'tinny'" in text and "Traceback" not in text
    result.stdout.re_match_lines([r"models used: tiny$"])


def test_xdist_workers_share_the_store_and_download_each_blob_once(suite: pytest.Pytester, hub) -> None:
    suite.makepyfile(
        "\n".join(
            f"""
def test_{i}(llama):
    assert llama("Hi", max_tokens=2, temperature=0)["choices"]
"""
            for i in range(8)
        )
    )
    hub.clear_log()
    # A fixed budget that two workers cannot both have on any machine: the controller warns once.
    result = run(suite, "-n", "2", "--modelfix-memory-budget", "100TB")
    result.assert_outcomes(passed=8, warnings=1)
    for name in TINY_FILES:
        assert hub.count(origin="cdn", method="GET", filename=name) == 1, name
    text = result.stdout.str()
    assert text.count("modelfix memory budget 100.0 TB (--modelfix-memory-budget 100TB) × 2 xdist workers") == 1
    result.stdout.re_match_lines([r"models used: tiny", r"load times: tiny \d+\.\d\ds ×2"])
    # The workers' fetch lines reach the controller's terminal, one per file fetched.
    for name in TINY_FILES:
        assert text.count(f"modelfix: fetched tiny: {name} (") == 1, text
    # The warning points at what the user set, not at the plugin's code.
    warnings = text.split("warnings summary")[1]
    assert "pytest_plugin.py" not in warnings and "issue_config_time_warning" not in warnings
    assert "--modelfix-memory-budget 100TB" in warnings


def test_the_budget_warning_points_at_the_ini_line_that_set_it(suite: pytest.Pytester) -> None:
    suite.makeini(
        """
        [pytest]
        # the team's default
        modelfix_memory_budget = 100TB
        """
    )
    suite.makepyfile("def test_nothing(): pass")
    result = run(suite, "-n", "2")
    result.assert_outcomes(passed=1, warnings=1)
    warnings = result.stdout.str().split("warnings summary")[1]
    assert "tox.ini:3" in warnings and "modelfix_memory_budget = 100TB" in warnings
    assert "pytest_plugin.py" not in warnings


@pytest.mark.parametrize("how", [["-W", "error"], ["-W", "error::modelfix._pytest_options.ModelfixWarning"]])
def test_the_budget_warning_under_warnings_as_errors_is_one_usage_error(suite: pytest.Pytester, how) -> None:
    suite.makepyfile("def test_nothing(): pass")
    result = run(suite, "-n", "2", "--modelfix-memory-budget", "100TB", *how)
    # Before: an INTERNALERROR traceback through pytest_configure.
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in text and "Traceback" not in text
    result.stderr.fnmatch_lines(
        [
            "ERROR: modelfix memory budget 100.0 TB (--modelfix-memory-budget 100TB) × 2 xdist workers = *: "
            "lower it to * or use fewer workers. (ModelfixWarning at <command line>:1, an error under this run's "
            "warning filters)"
        ]
    )


def test_ini_options_and_command_line_precedence(pytester: pytest.Pytester, hub) -> None:
    (pytester.path / "locks").mkdir()
    lockfile = lock(pytester, tiny="org/tiny:Q4_0")
    lockfile.rename(pytester.path / "locks" / "model-lock.toml")
    pytester.makeini(
        """
        [pytest]
        modelfix_lock = locks/model-lock.toml
        modelfix_cache_dir = store
        modelfix_offline = true
        """
    )
    pytester.makepyfile("def test_nothing(): pass")
    header = run(pytester).stdout
    header.re_match_lines(
        [
            rf"modelfix: lockfile {re.escape(str(pytester.path / 'locks' / 'model-lock.toml'))}, "
            rf"cache {re.escape(str(pytester.path / 'store'))}, offline, models: tiny, .*"
        ]
    )
    other = pytester.path / "elsewhere"
    run(pytester, "--modelfix-cache-dir", str(other)).stdout.re_match_lines(
        [rf".*, cache {re.escape(str(other))}, offline, .*"]
    )


def test_the_llama_fixture_serves_from_read_only_caches_of_the_ini_or_the_command_line(
    suite: pytest.Pytester, hub
) -> None:
    import modelfix
    from modelfix.config import CacheSettings

    image = suite.path / "image"
    modelfix.sync(["tiny"], suite.path / "model-lock.toml", cache_settings=CacheSettings.resolve(cache_dir=image))
    suite.makeini(
        """
        [pytest]
        modelfix_readonly_cache =
            missing
            image
        modelfix_offline = true
        """
    )
    suite.makepyfile(
        """
        def test_in_place(llama, modelfix):
            assert modelfix.path("tiny").is_relative_to(modelfix.options.readonly_caches[-1])
            assert llama("Hello", max_tokens=4)["choices"][0]["text"]
        """
    )
    hub.clear_log()

    result = run(suite)
    elsewhere = run(suite, "--modelfix-readonly-cache", str(suite.path / "elsewhere"))

    result.assert_outcomes(passed=1)
    layers = f"read-only caches {suite.path / 'missing'}, {image}, offline"
    result.stdout.re_match_lines([rf"modelfix: lockfile .*, cache .*, {re.escape(layers)}, models: tiny, .*"])
    assert hub.requests == []
    elsewhere.assert_outcomes(errors=1)  # the command line replaces the ini's list: offline, tiny is missing
    elsewhere.stdout.fnmatch_lines(["*offline mode is on*"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("n_ctxx=5", "unknown setting 'n_ctxx' (@pytest.mark.model of test_marked; "),
        ("n_ctx='lots'", "setting n_ctx = 'lots' (@pytest.mark.model of test_marked; "),
    ],
)
def test_a_bad_marker_setting_is_one_line_naming_the_marker(suite: pytest.Pytester, marker: str, message: str) -> None:
    suite.makepyfile(f"import pytest\n\n@pytest.mark.model('tiny', {marker})\ndef test_marked(llama): pass\n")
    result = run(suite)
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert f"SettingsError: {message}" in text and "argument of load" not in text and "Traceback" not in text


@pytest.mark.parametrize("preload", [False, True], ids=["first-test", "preload"])
def test_marker_names_that_are_not_strings_fail_their_own_test_in_one_line(
    suite: pytest.Pytester, preload: bool
) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.model(["tiny"])
        def test_a_list(llama):
            pass

        @pytest.mark.model("tiny", 5)
        def test_mixed(llama, modelfix_model):
            pass

        @pytest.mark.model("tiny")
        def test_fine(llama):
            assert llama
        """
    )
    result = run(suite, *(["--modelfix-preload"] if preload else []))
    # Before: a collection error with a traceback through the plugin, and the module's other tests lost.
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "SettingsError: @pytest.mark.model of test_a_list takes model names of the lockfile as separate "
            "strings, got ?'tiny'?: write @pytest.mark.model('tiny').",
            "SettingsError: @pytest.mark.model of test_mixed takes * got 5: write @pytest.mark.model(*).",
        ]
    )
    assert "pytest_plugin.py" not in result.stdout.str() and "Traceback" not in result.stdout.str()


def test_help_lists_every_option_in_the_modelfix_group(pytester: pytest.Pytester) -> None:
    # A "%" in a help text made argparse's formatting raise: `pytest --help` crashed for every user.
    from modelfix._pytest_options import _OPTIONS

    result = run(pytester, "--help")
    assert result.ret == 0, result.stderr.str()
    text = result.stdout.str()
    group = text.split("modelfix: pinned llama.cpp models:", 1)[1].split("\n\n", 1)[0]
    for flag in re.findall(r"--modelfix-[a-z-]+", (Path(__file__).parents[1] / "docs" / "pytest.md").read_text()):
        assert flag in group, flag
    assert "modelfix_gpu_memory_budget (string):" in text
    flat = " ".join(group.split())
    for name, _, help_text, _ in _OPTIONS:  # each option with its whole text, "90% of free VRAM" too
        assert " ".join(help_text.split()) in flat, name


def test_testcases_doctests_and_wider_scopes_get_handles_as_the_docs_say(suite: pytest.Pytester) -> None:
    lock(suite, tiny8="org/tiny:Q8_0")
    suite.makepyfile(
        test_styles="""
        import contextlib
        import io
        import unittest

        import pytest


        def test_a_redirect_of_the_test_survives_the_fetch_lines(modelfix):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                modelfix.path("tiny")  # fetches: the plugin prints its lines on the terminal meanwhile
                print("mine")
            assert out.getvalue() == "mine\\n"


        @pytest.mark.model("tiny", n_ctx=256)
        class TestChat(unittest.TestCase):
            @pytest.fixture(autouse=True)
            def _handle(self, llama):
                self.llama = llama

            def test_answers(self):
                self.assertTrue(self.llama("Hi", max_tokens=2, temperature=0)["choices"])


        @pytest.fixture(scope="module")
        def chat(modelfix):
            return modelfix.load("tiny", n_ctx=256)


        @pytest.mark.model("tiny")
        def test_module_fixture_shares_the_pool(chat, llama):
            assert chat is not llama  # other settings, another handle
            assert chat("Hi", max_tokens=2, temperature=0)["choices"]


        @pytest.fixture(scope="session")
        def wrong(llama):
            return llama


        def test_scope_mismatch(wrong):
            pass
        """,
        helpers='''
        def complete(llm, prompt):
            """
            >>> llm = getfixture("modelfix").load("tiny8")  # fetches it: the plugin prints its lines meanwhile
            >>> complete(llm, "Hi") == complete(llm, "Hi")
            True
            """
            return llm(prompt, max_tokens=2, temperature=0)["choices"][0]["text"]
        ''',
    )
    result = run(suite, "--doctest-modules", "-rA")
    # Before: the doctest's first example, which fetches, got "nothing" (its output went to pytest's capture).
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["modelfix: fetching tiny8: *", "modelfix: fetching tiny: *"], consecutive=False)
    result.stdout.fnmatch_lines(["*ScopeMismatch*function scoped fixture llama with a session scoped*"])
    assert "INTERNALERROR" not in result.stdout.str()


def test_preload_loads_marked_models_before_the_first_test(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        def test_first(modelfix):
            assert len(modelfix.loaded()) == 1

        @pytest.mark.model("tiny")
        def test_second(llama):
            pass
        """
    )
    run(suite, "--modelfix-preload").assert_outcomes(passed=2)
    run(suite).assert_outcomes(passed=1, failed=1)


@pytest.mark.skipif(
    __import__("llama_cpp").llama_supports_gpu_offload(), reason="this build can offload: nothing is skipped"
)
@pytest.mark.parametrize(("strict", "outcome"), [(False, {"skipped": 1}), (True, {"errors": 1})])
def test_require_gpu_on_a_cpu_build(suite: pytest.Pytester, strict: bool, outcome: dict[str, int]) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.model("tiny", require_gpu=True)
        def test_gpu(llama):
            pass
        """
    )
    result = run(suite, "-rs", *(["--modelfix-strict"] if strict else []))
    result.assert_outcomes(**outcome)
    where = "" if strict else "test_require_gpu_on_a_cpu_build.py:*"  # the skip points at the test
    result.stdout.fnmatch_lines([f"*{where}needs GPU offload (require_gpu=True)*"])


def test_preload_survives_what_the_tests_themselves_report(pytester: pytest.Pytester, hub) -> None:
    lock(pytester, tiny="org/tiny:Q4_0", other="org/tiny:Q8_0")
    pytester.makepyfile(
        """
        import pytest

        def test_no_marker_with_two_models(llama):
            pass

        @pytest.mark.model("tiny", tensor_split=[1.0])
        def test_list_setting(llama):
            assert llama.n_ctx() > 0
        """
    )
    result = run(pytester, "--modelfix-preload")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*has several models (tiny, other)*"])
    assert "INTERNALERROR" not in result.stdout.str()


def test_a_bad_memory_budget_option_is_a_usage_error(suite: pytest.Pytester) -> None:
    suite.makepyfile("def test_nothing():\n    pass\n")
    result = run(suite, "--modelfix-memory-budget", "lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--modelfix-memory-budget / modelfix_memory_budget: bad memory budget 'lots'*auto or inf*"]
    )


def test_import_is_cheap() -> None:
    code = (
        "import sys, modelfix.pytest_plugin; "
        "print(sorted(m for m in ('llama_cpp', 'huggingface_hub', 'fsspec', 'numpy', 'tomlkit') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("env", "header"),
    [
        # Stands in for the AMX crash (this CPU has none): the probe's child dies with repacking on.
        (
            {"MODELFIX_PROBE_FAULT": "crash-with-repack"},
            "modelfix: llama.cpp repack off: llama.cpp's repacked kernels "
            "crash on this CPU (died by SIGSEGV with repacking on); loads run without",
        ),
        ({"MODELFIX_REPACK": "off"}, "modelfix: llama.cpp repack off (set explicitly; the backend probe is not *"),
    ],
)
def test_the_header_says_how_loads_repack(suite: pytest.Pytester, monkeypatch, env, header) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    suite.makepyfile(
        """
        def test_generates(llama):
            assert llama("Hello", max_tokens=4, temperature=0)["usage"]["completion_tokens"] == 4
        """
    )
    result = run(suite)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([header])


def test_a_crashed_xdist_worker_is_reported_with_its_model(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_crash="""
        import os, signal
        import pytest

        @pytest.mark.model("tiny")
        def test_dies_inside_llama_cpp(llama):
            llama("Hello", max_tokens=2)
            os.kill(os.getpid(), signal.SIGSEGV)  # as a crash in a kernel would, with the model in use

        def test_without_a_model():
            pass
        """
    )
    result = run(suite, "-n", "2")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines(
        [
            r".*worker '?gw\d'? crashed while running .*test_dies_inside_llama_cpp.*",
            r"-+ modelfix -+",
            r"modelfix: worker gw\d went down while using model 'tiny' \(org/tiny:Q4_0\) in "
            r"test_crash.py::test_dies_inside_llama_cpp: llama.cpp may have crashed. Run `modelfix doctor` "
            r"and add its output to a bug report.",
        ]
    )
    assert result.stdout.str().count("went down") == 1  # the worker without a model is not blamed on one


@pytest.mark.skipif(
    __import__("llama_cpp").llama_supports_gpu_offload(), reason="this build can offload: nothing is skipped"
)
def test_a_test_marked_gpu_skips_with_the_reason_on_a_cpu_build(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.gpu
        def test_on_the_gpu():
            raise AssertionError("ran on a build without GPU offload")

        def test_on_the_cpu():
            pass
        """
    )
    result = run(suite, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED *.py:3: marked gpu, and this llama-cpp-python build has none"])


@pytest.mark.parametrize("where", ["option", "ini"])
def test_gpu_layers_of_the_command_line_or_the_ini_reach_every_handle(suite: pytest.Pytester, where: str) -> None:
    # On this CPU build nothing is offloaded; the setting itself is what each handle is loaded with.
    suite.makepyfile(
        """
        from modelfix.pool import record

        def test_layers(llama):
            assert record(llama).settings.n_gpu_layers == 3
        """
    )
    if where == "ini":
        suite.makeini("[pytest]\nmodelfix_gpu_layers = 3\n")
    result = run(suite, *(["--modelfix-gpu-layers", "3"] if where == "option" else []))
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--modelfix-gpu-layers", "lots", "*--modelfix-gpu-layers*lots*"),
        ("--modelfix-gpu-memory-budget", "lots", "*--modelfix-gpu-memory-budget / modelfix_gpu_memory_budget*lots*"),
    ],
)
def test_a_bad_gpu_option_is_a_usage_error_naming_it(
    suite: pytest.Pytester, option: str, value: str, said: str
) -> None:
    suite.makepyfile("def test_nothing():\n    pass\n")
    result = run(suite, option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines([said])


@pytest.mark.parametrize("xdist", [True, False], ids=["xdist", "one-process"])
def test_xdist_workers_share_the_cores_unless_threads_are_set(suite: pytest.Pytester, xdist: bool) -> None:
    suite.makepyfile(
        f"""
        import os
        import pytest
        from modelfix.pool import record

        def test_default(llama):
            resident = record(llama)
            if {xdist}:  # each of the 2 workers gets half the cores, at least one
                share = max(1, len(os.sched_getaffinity(0)) // 2)
                assert (resident.settings.n_threads, resident.settings.n_threads_batch) == (share, share)
                assert resident.origins["n_threads"] == "frontend default"
            else:  # llama.cpp's own defaults
                assert (resident.settings.n_threads, resident.origins["n_threads"]) == (None, "default")

        @pytest.mark.model("tiny", n_threads=3)
        def test_a_marker_wins(llama):
            assert record(llama).settings.n_threads == 3
        """
    )
    result = run(suite, *(["-n", "2"] if xdist else []))
    result.assert_outcomes(passed=2)
    shown = "*thread* per handle unless set (* cores / 2 xdist workers)"
    assert bool(fnmatch.filter(result.stdout.lines, f"modelfix: llama.cpp {shown}")) is xdist, result.stdout.str()

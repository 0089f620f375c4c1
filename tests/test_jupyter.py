"""The notebook front end, through a real IPython shell and a real kernel.

Most tests drive ``InteractiveShell`` in this process (fast, and its text
output is what a terminal IPython user sees); one executes the example
notebook in a real ipykernel with nbclient and checks the widgets' final
state as the executed notebook stores it. The model is ``tiny`` pinned to
``org/tiny:Q4_0`` on the local hub.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from modelfix.locking import add

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "jupyter_ext" / "example.ipynb"


@pytest.fixture
def lockfile(hub, workdir: Path) -> Path:
    """``tiny`` pinned to org/tiny:Q4_0: the name the example notebook and the demo's lockfile use."""
    path = workdir / "model-lock.toml"
    add("tiny", "org/tiny:Q4_0", path)
    return path


@pytest.fixture
def shell(lockfile: Path):
    """A real IPython shell with the extension loaded; unloaded (handles released) after."""
    from IPython.core.interactiveshell import InteractiveShell

    from modelfix import pool

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "modelfix_jupyter")
    yield ip
    ip.run_line_magic("unload_ext", "modelfix_jupyter")
    pool.configure(keep_alive=None)  # --keep-alive sets it for the whole process


def magic(ip, line: str):
    """Run ``%line`` as a cell would; fail the test on any error."""
    name, _, rest = line.partition(" ")
    return ip.run_line_magic(name, rest)


def resident(name: str = "tiny") -> list:
    from modelfix import pool

    return [r for r in pool.loaded() if r.name == name]


@pytest.mark.parametrize("extension", ["modelfix", "modelfix_jupyter"])
def test_load_ext_registers_and_unload_removes(lockfile, extension: str) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", extension)
    try:
        handle = magic(ip, "load_model tiny")
        assert all(ip.find_line_magic(m) for m in ("load_model", "models", "unload_model", "modelfix_cache"))
        ip.run_line_magic("reload_ext", extension)
        assert ip.find_line_magic("load_model") is not None
        assert not resident(), "reloading released the handle the magics handed out"
        handle = magic(ip, "load_model tiny")
        assert resident()
    finally:
        ip.run_line_magic("unload_ext", extension)
    assert ip.find_line_magic("load_model") is None
    assert not resident(), "unload_ext must release every handle it created"
    assert handle("Hi", max_tokens=2)["choices"], "a released handle loads its model again on use"
    handle.close()


def test_load_ext_modelfix_without_the_package_says_what_to_install(monkeypatch, capsys) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setitem(sys.modules, "modelfix_jupyter", None)  # as if not installed
    result = InteractiveShell.instance().run_cell("%load_ext modelfix")

    assert not result.success
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 1 and "pip install modelfix-jupyter" in lines[0], lines


def test_load_reuses_handle_and_reports_progress(shell, capsys) -> None:
    llm = magic(shell, "load_model tiny")
    first = capsys.readouterr().out
    model = [line for line in first.splitlines() if "tiny-Q4_0.gguf:" in line]
    assert model[:2] == [
        "[modelfix] tiny tiny-Q4_0.gguf: downloading 218.9 KB",
        "[modelfix] tiny tiny-Q4_0.gguf: 218.9 KB · verifying",
    ]
    assert model[2].startswith("[modelfix] tiny tiny-Q4_0.gguf: 218.9 KB · verified · origin · ")
    assert model[2].endswith("B/s") and len(model) == 3  # then the download speed; one line per status
    load = [line for line in first.splitlines() if "llama.cpp:" in line]
    assert load[0].startswith("[modelfix] tiny llama.cpp: loading · ≈ ") and "loaded in" in load[1]
    assert "IProgress" not in first

    assert magic(shell, "load_model tiny") is llm
    assert capsys.readouterr().out == "", "a pool hit fetches and loads nothing, so it reports nothing"

    other = magic(shell, "load_model tiny --n-ctx 256")
    assert other is not llm and other.n_ctx() == 256
    assert len(resident()) == 2
    assert llm("Hello", max_tokens=4, temperature=0)["choices"][0]["text"]  # the first handle still generates


def test_flags_are_the_frontend_layer(shell, monkeypatch) -> None:
    # llama.cpp rounds n_ctx up to a multiple of 256, so the values are multiples of 256.
    monkeypatch.setenv("MODELFIX_N_CTX", "768")
    from_env = magic(shell, "load_model tiny")
    from_flag = magic(shell, "load_model tiny --n-ctx 256")
    assert from_env.n_ctx() == 768  # env over the lockfile and the defaults
    assert from_flag.n_ctx() == 256  # the flag over env
    import modelfix

    from_call = modelfix.load("tiny", n_ctx=512)
    assert from_call.n_ctx() == 512  # a load() argument over everything
    modelfix.unload(from_call)  # not the magics' handle: unloading the extension leaves it
    html = shell.display_formatter.format(from_flag)[0]["text/html"]
    assert "n_ctx=256 (%load_model flag)" in html
    assert "n_ctx=768 ($MODELFIX_N_CTX)" in shell.display_formatter.format(from_env)[0]["text/html"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("--gpu-layers 3", {"n_gpu_layers": 3}),
        ("--gpu-layers auto --main-gpu 0", {"n_gpu_layers": "auto", "main_gpu": 0}),
    ],
)
def test_gpu_flags_reach_the_handle(shell, flags: str, expected: dict) -> None:
    # On this CPU build nothing is offloaded: what is checked is the setting the handle was loaded with.
    from modelfix.pool import record

    settings = record(magic(shell, f"load_model tiny {flags}")).settings
    assert {name: getattr(settings, name) for name in expected} == expected


def test_models_table_html_and_text(shell) -> None:
    before = magic(shell, "models")
    assert "missing" in repr(before) and " no " in repr(before)
    magic(shell, "load_model tiny")
    table = magic(shell, "models")
    html, text = table._repr_html_(), repr(table)
    for header in ("name", "repo", "tag", "revision", "size", "cached", "resident", "est. memory", "last used"):
        assert f"<th>{header}</th>" in html
        assert header in text.splitlines()[1]
    row = next(line for line in text.splitlines() if line.startswith("tiny "))
    assert "org/tiny" in row and "Q4_0" in row and "cached" in row and "yes" in row
    assert "s ago" in row
    assert "<td>org/tiny</td>" in html
    # How loads repack, once: the backend probe ran before the first load (AMX hosts: off).
    assert text.splitlines()[-1].startswith("llama.cpp: repack ") and "<br>llama.cpp: repack " in html


def test_models_says_when_auto_turned_repack_off(shell, monkeypatch) -> None:
    from modelfix import probe

    monkeypatch.setattr(probe, "_MEMO", {})  # this process has not probed yet
    monkeypatch.setattr(probe, "_ANNOUNCED", set())
    # Stands in for the AMX crash, which cannot happen on this CPU: the probe's child dies with repacking on.
    monkeypatch.setenv("MODELFIX_PROBE_FAULT", "crash-with-repack")
    assert "not probed yet" in repr(magic(shell, "models"))

    llm = magic(shell, "load_model tiny")

    assert llm("Hello", max_tokens=2)["usage"]["completion_tokens"] == 2
    assert repr(magic(shell, "models")).splitlines()[-1] == (
        "llama.cpp: repack off: llama.cpp's repacked kernels crash on this CPU "
        "(died by SIGSEGV with repacking on); loads run without"
    )


def test_handle_and_entry_render_as_html(shell) -> None:
    llm = magic(shell, "load_model tiny --n-ctx 256")
    data, _ = shell.display_formatter.format(llm)
    html = data["text/html"]
    for expected in ("org/tiny", "tiny-Q4_0.gguf", "revision", "n_ctx=256", "GPU layers offloaded"):
        assert expected in html
    from modelfix.lockfile import Lockfile

    entry = Lockfile.find().entry("tiny")
    data, _ = shell.display_formatter.format(entry)
    assert entry.revision[:12] in data["text/html"] and "tiny-Q4_0.gguf" in data["text/plain"]


def test_unload_model_frees_the_pool_entry(shell, capsys) -> None:
    magic(shell, "load_model tiny")
    magic(shell, "load_model tiny --n-ctx 256")
    capsys.readouterr()
    magic(shell, "unload_model tiny")
    assert not resident()
    assert capsys.readouterr().out == "released: tiny (2 handles)\n"
    magic(shell, "unload_model tiny")
    assert capsys.readouterr().out == "tiny was not resident\n"
    magic(shell, "unload_model tinyy")  # a typo is named as one
    assert capsys.readouterr().out.endswith("model-lock.toml has no model 'tinyy' (models: tiny)\n")
    magic(shell, "load_model tiny")
    magic(shell, "unload_model --all")
    assert not resident()


def test_unload_frees_the_real_llama_though_out_and_underscore_hold_the_handle(shell) -> None:
    """What keeps a model's memory (VRAM on a GPU build) after an unload is a live ``Llama``
    (llama-cpp-python #1442, #223): a notebook's ``Out[]`` and ``_`` keep what a cell showed.
    They hold the pool's stand-in; the real ``Llama`` goes with the unload."""
    import gc
    import weakref

    from modelfix.handle import slot_of

    shell.run_cell("llm = %load_model tiny", store_history=True)
    shell.run_cell("llm", store_history=True)  # shown: now in Out[] and _
    shell.run_cell("llm('Hello', max_tokens=1)", store_history=True)
    handle = shell.user_ns["llm"]
    real = weakref.ref(slot_of(handle).llama)
    assert real() is not None and any(value is handle for value in shell.user_ns["Out"].values())

    magic(shell, "unload_model tiny")
    gc.collect()

    assert real() is None  # nothing (Out, _, the pool, its events) kept the real Llama alive
    assert any(value is handle for value in shell.user_ns["Out"].values())  # while Out still holds the handle


def test_showing_a_released_handle_does_not_reload_it(shell, capsys) -> None:
    """IPython probes _repr_html_, _repr_mimebundle_, _ipython_display_...: none may load the model."""
    from modelfix import pool

    shell.run_cell("llm = %load_model tiny")
    magic(shell, "unload_model tiny")
    loads = pool.pool_metrics().loads
    capsys.readouterr()
    shell.run_cell("llm")  # the display hook, as a cell ending in `llm`
    shown = capsys.readouterr().out
    data, _ = shell.display_formatter.format(shell.user_ns["llm"])
    assert "released (reloads on its next call)" in shown and "released" in data["text/html"]
    assert not resident() and pool.pool_metrics().loads == loads
    assert shell.user_ns["llm"]("Hi", max_tokens=2)["choices"]  # and it still works
    assert resident()


def test_keep_alive_releases_idle_handles_and_models_shows_it(shell) -> None:
    magic(shell, "load_model tiny --keep-alive 0.2s")

    def tiny_row() -> tuple[str, str]:
        table = repr(magic(shell, "models"))
        return next(line for line in table.splitlines() if line.startswith("tiny ")), table

    # The release happens on the pool's keep-alive thread, so poll as a user re-running %models would.
    deadline = time.monotonic() + 10
    while "released" not in tiny_row()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    row, table = tiny_row()
    assert not resident(), "an idle handle outlived the keep-alive"
    assert "released" in row and "(keep-alive)" in row
    assert "keep-alive 0.2 s" in table.splitlines()[-2]  # the pool line, then the backend line


def test_the_error_line_has_no_colour_codes_when_colours_are_off(shell, capsys) -> None:
    before = shell.colors
    shell.run_line_magic("colors", "nocolor")  # `ipython --colors=nocolor`, or output piped to a log
    try:
        shell.run_cell("%load_model nosuch")
    finally:
        shell.run_line_magic("colors", before)
    out = capsys.readouterr().out
    assert out.startswith("LockError: no model named 'nosuch'") and "\x1b" not in out


def test_offline_error_is_one_line(shell, capsys) -> None:
    result = shell.run_cell("llm = %load_model tiny --offline")
    out = capsys.readouterr().out
    from modelfix.errors import OfflineError

    assert isinstance(result.error_in_exec, OfflineError)
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("[modelfix]")]
    assert len(lines) == 1, out
    assert lines[0].startswith("\x1b[31mOfflineError: ") and "tiny-Q4_0.gguf" in lines[0]
    assert "modelfix sync tiny" in lines[0], "the line names the fix"
    assert "Traceback" not in out


@pytest.mark.parametrize(
    "line, message",
    [
        ("load_model tiny --n-ctx lots", "invalid int value"),
        ("load_model", "required: name"),
        ("load_model tiny --keep-alive soon", "bad duration"),
        ("load_model tiny --gpu-layers lots", "--gpu-layers"),
        ("unload_model", "NAME or --all"),
        ("modelfix_cache --max-size 1GB", "goes with --prune"),
        ('load_model "tiny', "%load_model: No closing quotation"),
    ],
)
def test_bad_arguments_are_usage_errors(shell, capsys, line: str, message: str) -> None:
    from IPython.core.error import UsageError

    result = shell.run_cell("%" + line)
    assert isinstance(result.error_in_exec, UsageError)
    assert message in capsys.readouterr().err


def test_help_lists_the_flags(shell, capsys) -> None:
    shell.run_cell("%load_model?")
    out = capsys.readouterr().out
    for flag in ("--n-ctx", "--gpu-layers", "--lock", "--offline", "--keep-alive"):
        assert flag in out


def test_cache_stats_and_prune(shell, tmp_path: Path) -> None:
    magic(shell, "load_model tiny")
    stats = magic(shell, "modelfix_cache")
    text = repr(stats)
    assert f"folder              {tmp_path / 'cache'}" in text
    assert "files               3 (236.3 KB)" in text
    assert any(line.split()[:2] == ["tiny", "236.3"] for line in text.splitlines())
    assert "<td>tiny</td><td>236.3 KB</td>" in stats._repr_html_()

    stale = tmp_path / "cache" / "tmp" / f"{'0' * 64}.partial"  # a download nobody will resume
    stale.write_bytes(b"x" * 1000)
    pruned = repr(magic(shell, "modelfix_cache --prune"))
    # The words of `modelfix cache gc` and `modelfix cache prune`: one code path, one report.
    gc = "0 unused files, 0 broken views, 0 superseded revisions, 0 leftover view folders and 1 partial download"
    assert f"removed {gc}: 1.0 KB freed" in pruned
    assert not stale.exists()
    capped = repr(magic(shell, "modelfix_cache --prune --max-size 1KB"))
    assert "evicted 0 files; the cache holds 236.3 KB" in capped
    assert "the rest is in use by running processes or pinned by the lockfile: above 1.0 KB" in capped
    assert "cached" in repr(magic(shell, "models")), "pruning never drops what the lockfile pins"


def test_cache_stats_name_every_model_sharing_the_files(shell, lockfile: Path) -> None:
    add("tiny-again", "hf://org/tiny:Q4_0", lockfile)  # same pins, another name
    magic(shell, "load_model tiny")
    magic(shell, "load_model tiny-again")
    assert "<td>tiny, tiny-again</td>" in magic(shell, "modelfix_cache")._repr_html_()


def test_example_notebook_in_a_real_kernel(lockfile, monkeypatch, capfd, tmp_path: Path) -> None:
    """The example notebook runs clean; its widgets end in the 'done' state.

    Run as the demo runs it: from the repository root, the lockfile named by
    MODELFIX_LOCK, the hub and cache inherited through the environment. One
    cell is added at the end: an error, which the kernel shows as one line.
    """
    import nbformat

    from modelfix_jupyter.run import main

    monkeypatch.setenv("MODELFIX_LOCK", str(lockfile))
    monkeypatch.chdir(ROOT)
    notebook = nbformat.read(EXAMPLE, as_version=4)
    failing = nbformat.v4.new_code_cell("%load_model nosuch", metadata={"tags": ["raises-exception"]})
    notebook.cells.append(failing)
    nbformat.write(notebook, tmp_path / "example.ipynb")
    assert main([str(tmp_path / "example.ipynb"), "--output", str(tmp_path / "done.ipynb"), "--timeout", "120"]) == 0
    printed, stderr = capfd.readouterr()
    # The headless run prints the widget's final state as text, a row per file.
    assert "tiny-Q4_0.gguf  218.9 KB · verified · origin" in printed and "llama.cpp  loaded in" in printed
    nb = nbformat.read(tmp_path / "done.ipynb", as_version=4)
    outputs = {c.source.splitlines()[0]: c.outputs for c in nb.cells if c.cell_type == "code"}

    *ok, [error] = outputs.values()
    assert not [o for outs in ok for o in outs if o.output_type == "error"]
    assert error.ename == "LockError" and len(error.traceback) == 1
    assert "no model named 'nosuch'" in error.traceback[0] and "modelfix add" in error.traceback[0]
    again = outputs["again = %load_model tiny"]
    assert [o.output_type for o in again] == ["execute_result"], "a pool hit shows no progress"
    assert again[0]["data"]["text/plain"] == "True"
    models_html = next(o for o in outputs["%models"] if o.output_type == "execute_result")["data"]["text/html"]
    assert "<td>org/tiny</td>" in models_html and "cached" in models_html
    progress = outputs["llm = %load_model tiny"][0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in progress
    # Where widgets are not drawn (GitHub, nbconvert to markdown), the saved text is the outcome.
    assert progress["text/plain"].startswith("tiny\ntiny-Q4_0.gguf  218.9 KB · verified · origin")
    assert "\nllama.cpp  loaded in " in progress["text/plain"]
    handle_html = outputs["llm = %load_model tiny"][-1]["data"]["text/html"]
    assert "tiny-Q4_0.gguf" in handle_html and "GPU layers offloaded" in handle_html
    everything = str(nb.cells) + printed + stderr
    assert "IProgress" not in everything and "without encryption" not in everything

    state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    labels = {b["description"] for b in bars}
    assert {"tiny-Q4_0.gguf", "llama.cpp"} <= labels
    assert all(b["value"] == b["max"] and b["bar_style"] == "success" for b in bars)
    notes = [m["state"]["value"] for m in state.values() if m["model_name"] == "HTMLModel"]
    assert any("loaded in" in n for n in notes) and any("verified" in n for n in notes)


def test_a_cached_file_evicted_is_not_a_released_handle(shell) -> None:
    from modelfix.events import Event, events

    magic(shell, "load_model tiny")
    # What the store emits when it deletes a file under its size cap: the handle stays resident.
    events.emit(Event(kind="evict", model="tiny", file="tiny-Q4_0.gguf", source="cache"))
    text = repr(magic(shell, "models"))
    assert "released" not in text and "yes" in text


@pytest.mark.parametrize("allow_errors", [False, True], ids=["stop", "--allow-errors"])
def test_a_failing_notebook_shows_what_ran_names_the_cell_and_still_saves(
    lockfile, monkeypatch, capfd, tmp_path: Path, allow_errors: bool
) -> None:
    import nbformat

    from modelfix_jupyter.run import main

    monkeypatch.setenv("MODELFIX_LOCK", str(lockfile))
    cells = [
        "%load_ext modelfix\nprint('before the failure')",
        "llm = %load_model tiny",
        "%load_model nosuch",
        "print('after the failure')",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbformat.write(notebook, tmp_path / "broken.ipynb")
    flags = ["--allow-errors"] if allow_errors else []

    code = main([str(tmp_path / "broken.ipynb"), "--output", str(tmp_path / "out.ipynb"), "--timeout", "120", *flags])

    printed, stderr = capfd.readouterr()
    assert "print('before the failure')\nbefore the failure\n" in printed
    assert "llama.cpp  loaded in" in printed  # the progress widget's final state, kept despite the failure
    saved = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [o.output_type for o in saved.cells[2].outputs] == ["error"]
    failure = "broken.ipynb: code cell 3 of 4 failed: LockError: no model named 'nosuch'"
    if allow_errors:  # every cell ran; the failure is reported, and the run still counts as done
        assert code == 0 and "after the failure\n" in printed and failure in stderr
        assert printed.endswith("broken.ipynb: 4 cells executed, 1 failed (--allow-errors)\n")
        assert saved.cells[3].outputs[0]["text"] == "after the failure\n"
    else:
        assert code == 1 and "after the failure" not in printed and failure in stderr


@pytest.mark.parametrize("package", ["nbformat", "nbclient", "ipykernel"])
def test_the_runner_without_its_extra_names_it_in_one_line(capfd, monkeypatch, tmp_path: Path, package) -> None:
    from modelfix.errors import ModelfixError
    from modelfix_jupyter.run import main, run_notebook

    # A plain `pip install modelfix-jupyter` has none of these: they are the `run` extra (it was a traceback).
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nb.ipynb")])
    stderr = capfd.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in stderr
    assert f"needs {package}" in stderr and "pip install 'modelfix-jupyter[run]'" in stderr
    with pytest.raises(ModelfixError, match=r"modelfix-jupyter\[run\]"):
        run_notebook(tmp_path / "nb.ipynb")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read {path}: No such file or directory"), ("{\n", "{path} is not a notebook (")],
    ids=["missing", "not-json"],
)
def test_the_runner_names_a_notebook_it_cannot_read_in_one_line(capfd, tmp_path: Path, content, message) -> None:
    from modelfix_jupyter.run import main

    path = tmp_path / "nb.ipynb"
    if content is not None:
        path.write_text(content)

    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])

    stderr = capfd.readouterr().err
    assert exit_info.value.code == 2 and message.format(path=path) in stderr and "Traceback" not in stderr


def test_a_warm_run_prints_what_the_notebook_guide_shows_and_the_magic_help(
    lockfile, monkeypatch, capfd, tmp_path: Path
) -> None:
    """The guide's headless example is the demo's: the files are synced before the notebook runs."""
    import re

    import nbformat

    from modelfix.cli import main as modelfix_cli
    from modelfix_jupyter.run import main

    monkeypatch.setenv("MODELFIX_LOCK", str(lockfile))
    assert modelfix_cli(["sync"]) == 0
    notebook = nbformat.read(EXAMPLE, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("%load_model?"))
    nbformat.write(notebook, tmp_path / "example.ipynb")
    assert main([str(tmp_path / "example.ipynb"), "--timeout", "120"]) == 0
    printed = capfd.readouterr().out

    def widget_rows(text: str) -> list[str]:
        """The lines of the `llm = %load_model tiny` cell before the handle's table, numbers blanked."""
        block = text.split("In [2]: llm = %load_model tiny\nllm\n", 1)[1].split(" · llama_cpp.Llama from", 1)[0]
        return [re.sub(r"\d+(\.\d+)?", "N", line) for line in block.splitlines()[:-1]]

    guide = (ROOT / "docs" / "notebook.md").read_text()
    assert widget_rows(guide) == widget_rows(printed)
    help_text = printed.split("%load_model?", 1)[1]
    for flag in ("--n-ctx", "--gpu-layers", "--lock", "--offline", "--keep-alive"):
        assert flag in help_text


def test_snapshot_records_then_compares_a_cell_value(shell, workdir: Path, capsys) -> None:
    """``modelfix.snapshot`` with a ``%load_model`` handle: the same file format as the pytest fixture."""
    from modelfix.lockfile import Lockfile
    from modelfix.snapshot_file import SnapshotFile

    shell.run_cell("import modelfix\nllm = %load_model tiny\nsnap = modelfix.snapshot('notes')", store_history=True)
    answer = "llm('Hello', max_tokens=6, temperature=0)['choices'][0]['text']"
    assert shell.run_cell(f"snap.check('hello', llm, {answer})").result == "written"
    path = workdir / "__snapshots__" / "notes.modelfix.toml"
    recorded = SnapshotFile(path).read()["hello"]
    entry = Lockfile.find().entry("tiny")
    assert recorded.recording.model == "tiny" and recorded.recording.pin.revision == entry.revision
    assert shell.run_cell(f"snap.check('hello', llm, {answer})").result == "passed"
    capsys.readouterr()

    result = shell.run_cell("snap.check('hello', llm, 'something else')")

    assert isinstance(result.error_in_exec, AssertionError)
    out = capsys.readouterr()
    shown = out.out + out.err
    assert f"SnapshotMismatch: snapshot 'hello' in {path} is not what model 'tiny' answers now.\n" in shown
    assert "Nothing modelfix records changed since the recording" in shown
    assert "--- recorded\n+++ now\n" in shown and "\n+ something else\n" in shown
    assert "Accept the new value with .check('hello', llm, value, update=True)." in shown
    assert "Traceback" not in shown and "snapshots.py" not in shown, "the message, not modelfix's frames"
    assert shell.run_cell("snap.check('hello', llm, 'something else', update=True)").result == "updated"
    assert shell.run_cell("snap['hello']").result == "something else"

    shell.run_cell("snap.check('plain', 'not a handle', 'x')")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].endswith(
        "SnapshotError: a snapshot records a modelfix handle (from modelfix.load, %load_model or the llama "
        "fixture), not a str: without one there is no pin to record.\x1b[0m"
    )


def test_a_half_read_stream_dropped_in_a_cell_lets_the_model_go(shell, capsys) -> None:
    """``next(it)`` to peek at a stream, then ``del it``: the model must not stay resident for good."""
    shell.run_cell("llm = %load_model tiny")
    shell.run_cell("it = llm('Once upon a time', max_tokens=50, stream=True)\nfirst = next(it)")
    capsys.readouterr()
    magic(shell, "unload_model tiny")
    assert capsys.readouterr().out == (
        "released: tiny\nstill in use, released when that ends: tiny (a running call, or a stream not read to its "
        "end: finish it, close() it or del it)\n"
    )
    assert resident(), "the open stream holds its handle until it ends"

    shell.run_cell("del it")

    assert not resident(), "the dropped stream still held its lease: unload and keep-alive could never free it"
    assert shell.user_ns["llm"]("Hi", max_tokens=2)["choices"]


def test_interrupting_a_download_is_one_line_and_the_next_run_resumes(
    shell, hub, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Ctrl-C (a kernel's interrupt is SIGINT) in the middle of a download: the cell says what is kept, no traceback."""
    # The interrupted cell ends once the hung read gives up (the fetch threads finish before it returns).
    monkeypatch.setenv("MODELFIX_READ_TIMEOUT", "1")
    import signal
    import threading

    from modelfix.testing.hub import Fault

    # 100 KB arrive (the connection is then reset: those bytes are kept), and the retry hangs.
    hub.inject("org/tiny", "tiny-Q4_0.gguf", Fault.reset(after_bytes=100_000))
    hub.inject("org/tiny", "tiny-Q4_0.gguf", Fault.stall(60))

    def interrupt_once_the_retry_hangs() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(p.stat().st_size >= 100_000 for p in (tmp_path / "cache" / "tmp").glob("*.partial")):
                break
            time.sleep(0.02)
        time.sleep(0.2)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # what a kernel's interrupt sends

    threading.Thread(target=interrupt_once_the_retry_hangs, daemon=True).start()
    result = shell.run_cell("llm = %load_model tiny")
    hub.release_stalls()

    out = capsys.readouterr().out
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    [line] = [line for line in out.splitlines() if not line.startswith("[modelfix]")]
    assert line.startswith("\x1b[31mKeyboardInterrupt: %load_model tiny stopped while downloading ")
    assert "tiny-Q4_0.gguf (100.0 KB of 218.9 KB kept in the cache)" in line
    assert line.endswith("Run the cell again to resume.\x1b[0m") and "Traceback" not in out
    assert "[modelfix] tiny tiny-Q4_0.gguf: 100.0 KB / 218.9 KB · cancelled (kept: resumes on the next load)" in out

    hub.clear_log()
    assert shell.run_cell("llm = %load_model tiny").success
    ranges = [r.range for r in hub.requests if r.filename == "tiny-Q4_0.gguf" and r.method == "GET"]
    assert ranges and all(r and r.startswith("bytes=100000-") for r in ranges), ranges


def test_quoted_arguments_lose_their_quotes_so_a_lockfile_path_may_hold_a_space(shell, lockfile: Path) -> None:
    """IPython's own splitting kept the quotes: ``--lock "my models/..."`` named a file with quotes in it."""
    spaced = lockfile.parent / "my models"
    spaced.mkdir()
    (spaced / "model-lock.toml").write_bytes(lockfile.read_bytes())
    lockfile.unlink()  # so that only --lock can find it

    for quoted in ('"my models/model-lock.toml"', "'my models/model-lock.toml'", r"my\ models/model-lock.toml"):
        assert repr(magic(shell, f"models --lock {quoted}")).startswith(f"{spaced / 'model-lock.toml'}\n")
    llm = magic(shell, "load_model 'tiny' --lock \"my models/model-lock.toml\" --n-ctx 256")
    assert llm.n_ctx() == 256 and resident()


def completions(ip, line: str) -> list[str]:
    """What Tab offers at the end of ``line``, as a kernel's complete_request asks for it."""
    from IPython.core.completer import provisionalcompleter

    with provisionalcompleter():
        return [c.text for c in ip.Completer.completions(line, len(line))]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("%load_model t", ["tiny"]),
        ("llm = %load_model ti", ["tiny"]),  # the usual form: a handle assigned
        ("%unload_model t", ["tiny"]),
        ("%load_model --lock model-lock.toml --n-ctx 256 t", ["tiny"]),
        ("%load_model tiny --n-ctx 2", []),  # a flag's value: not a model name
    ],
)
def test_tab_completes_the_lockfile_model_names(shell, lockfile: Path, line: str, expected: list) -> None:
    add("other", "org/tiny:Q8_0", lockfile)
    assert [m for m in completions(shell, line) if m in ("tiny", "other")] == expected
    assert not resident(), "completing loads nothing"


def test_unload_ext_removes_the_completion(lockfile) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "modelfix")
    assert "tiny" in completions(ip, "%load_model ti")
    ip.run_line_magic("unload_ext", "modelfix")
    assert "tiny" not in completions(ip, "%load_model ti")


@pytest.mark.parametrize(
    ("cell", "timeout", "said"),
    [
        ("import time; time.sleep(60)", "2", "code cell 2 of 3 timed out: it ran longer than 2 s (raise --timeout)"),
        ("import os; os._exit(3)", "60", "code cell 2 of 3 killed the kernel: its process ended during the cell"),
    ],
    ids=["timeout", "dead-kernel"],
)
def test_the_runner_names_the_cell_a_timeout_or_a_dead_kernel_stopped(capfd, tmp_path: Path, cell, timeout, said):
    """It said 'code cell 2 of 3 failed: KeyboardInterrupt: ' for a timeout, and named no cell for a dead kernel."""
    import nbformat

    from modelfix_jupyter.run import main

    cells = ["print('first')", cell, "print('never')"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbformat.write(notebook, tmp_path / "stops.ipynb")

    code = main([str(tmp_path / "stops.ipynb"), "--timeout", timeout, "--allow-errors"])

    printed, stderr = capfd.readouterr()
    assert code == 1, "a timeout or a dead kernel fails the run, even with --allow-errors"
    assert f"In [ ]: {cell}\n" in printed or f"In [2]: {cell}\n" in printed  # the cell it stopped in is shown
    assert "never" not in printed
    assert f"stops.ipynb: {said}" in stderr and "KeyboardInterrupt" not in stderr
    assert "Traceback" not in printed + stderr, "a timed-out kernel asked to shut down printed ipykernel's ZMQError"


def test_a_resumed_download_shows_the_speed_of_the_bytes_it_fetched(monkeypatch) -> None:
    """200 MB were on disk from an interrupted load; 53 MB more arrive in 1 s: 53 MB/s, not 253 MB/s."""
    from modelfix.events import Event
    from modelfix_jupyter import progress

    clock = iter([100.0, 100.2, 101.2, 101.2])  # the reporter's clock, one reading per event
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    row = progress._Row(label="model.gguf")
    for status, done in [("downloading", 0), ("downloading", 200_000_000), ("downloading", 253_000_000)]:
        row.update(Event(kind="job", model="m", file="model.gguf", status=status, done=done, total=253_000_000))
    row.update(Event(kind="job", model="m", file="model.gguf", status="completed", done=253_000_000, source="origin"))

    assert row.text() == "253.0 MB · verified · origin · 53.0 MB/s"

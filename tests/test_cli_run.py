"""``modelfix run``: a real subprocess loads a pinned tiny model and generates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelfix.eviction import format_size
from modelfix.lockfile import Lockfile
from modelfix.locking import write_pins
from modelfix.sources import source_for
from modelfix.testing.gguf import write_tiny_model

FETCHED = re.compile(r"^(tiny|chat): \S+  [\d.]+ [KMGT]?B  origin$")
STATS = re.compile(r"^loaded tiny in [\d.]+ s; 5 tokens in [\d.]+ s \([\d.]+ tokens/s\)$")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    write_tiny_model(folder / "tiny-Q4_0.gguf", seed=4)
    lock = folder / "model-lock.toml"
    lock.write_text('version = 1\n\n[models.tiny]\nsource = "./tiny-Q4_0.gguf"\nn_ctx = 256\n', encoding="utf-8")
    entry = Lockfile.load(lock).entry("tiny")
    write_pins(lock, {"tiny": source_for(entry.source, lock).resolve()})
    return lock


def modelfix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelfix", *args], capture_output=True, text=True, timeout=120)


def stats_line(stderr: str) -> str:
    """The speed line; before it, a cold cache's fetch lines and at most the note that the backend
    probe turned repacking off."""
    *before, last = stderr.strip().splitlines()
    assert all("repack off" in line or FETCHED.match(line) for line in before), stderr
    return last


def expected(plain_llama, project: Path, prompt: str, chat: bool) -> str:
    llm = plain_llama(project.parent / "tiny-Q4_0.gguf", n_ctx=256, verbose=False)
    try:
        if chat:
            messages = [{"role": "user", "content": prompt}]
            out = llm.create_chat_completion(messages=messages, max_tokens=5, temperature=0)
            return out["choices"][0]["message"]["content"]
        return llm(prompt, max_tokens=5, temperature=0)["choices"][0]["text"]
    finally:
        llm.close()


@pytest.mark.parametrize("chat", [False, True])
def test_run_prints_the_completion_then_speed(project, chat, plain_llama):
    chat_flag = ["--chat"] if chat else []
    result = modelfix("--lock", str(project), "run", "tiny", "Hello", "--max-tokens", "5", *chat_flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected(plain_llama, project, "Hello", chat) + "\n"
    # on a cold cache, one line per file copied in, then the speed; llama.cpp's own log stays quiet
    pins = Lockfile.load(project).entry("tiny").files
    fetched = [line for line in result.stderr.splitlines() if line.startswith("tiny: ")]
    assert fetched == [f"tiny: {pin.path}  {format_size(pin.size)}  origin" for pin in pins], result.stderr
    assert STATS.match(stats_line(result.stderr)), result.stderr


def test_run_finds_the_lockfile_upward(project, monkeypatch):
    monkeypatch.chdir(project.parent)
    result = modelfix("run", "tiny", "Hello", "--max-tokens", "5")
    assert result.returncode == 0 and STATS.match(stats_line(result.stderr)), result.stderr


def test_run_on_a_cold_cache_shows_the_download_then_a_warm_run_does_not(lock):
    files = Lockfile.load(lock).entry("chat").files

    result = modelfix("run", "chat", "Hello", "--max-tokens", "2")

    assert result.returncode == 0 and result.stdout, result.stderr
    fetched = [line for line in result.stderr.splitlines() if line.startswith("chat: ")]
    assert sorted(line.split("  ")[0] for line in fetched) == sorted(f"chat: {pin.path}" for pin in files)
    assert all(line.endswith("  origin") for line in fetched)
    assert stats_line(result.stderr).startswith("loaded chat in "), result.stderr
    warm = modelfix("run", "chat", "Hello", "--max-tokens", "2")
    assert warm.returncode == 0 and not [line for line in warm.stderr.splitlines() if line.startswith("chat: ")]
    assert stats_line(warm.stderr).startswith("loaded chat in "), warm.stderr


def test_run_unknown_model_is_one_line(project):
    result = modelfix("--lock", str(project), "run", "nope", "Hello")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no model named 'nope'") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args", [["tiny"], ["tiny", "Hello", "--max-tokens", "-3"], ["tiny", "Hello", "--max-tokens", "0"]]
)
def test_run_usage_error_exits_2(project, args):
    result = modelfix("--lock", str(project), "run", *args)
    assert result.returncode == 2 and result.stdout == ""
    if "--max-tokens" in args:  # not llama.cpp's "until the context is full"
        assert "argument --max-tokens: must be 1 or more" in result.stderr

"""``modelfix run``: a real subprocess loads a pinned tiny model and generates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelfix.lockfile import Lockfile
from modelfix.locking import write_pins
from modelfix.sources import source_for
from modelfix.testing.gguf import write_tiny_model

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
    """The speed line; before it, at most the one note that the backend probe turned repacking off."""
    *before, last = stderr.strip().splitlines()
    assert all("repack off" in line for line in before), stderr
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
    # one line on stderr: llama.cpp's own log stays quiet
    assert STATS.match(stats_line(result.stderr)), result.stderr


def test_run_finds_the_lockfile_upward(project, monkeypatch):
    monkeypatch.chdir(project.parent)
    result = modelfix("run", "tiny", "Hello", "--max-tokens", "5")
    assert result.returncode == 0 and STATS.match(stats_line(result.stderr)), result.stderr


def test_run_unknown_model_is_one_line(project):
    result = modelfix("--lock", str(project), "run", "nope", "Hello")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no model named 'nope'") and result.stderr.count("\n") == 1


def test_run_usage_error_exits_2(project):
    assert modelfix("--lock", str(project), "run", "tiny").returncode == 2

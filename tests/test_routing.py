"""Routing requests to models by the lockfile's [routing] rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfix.errors import LockError
from modelfix.lockfile import Lockfile
from modelfix.routing import route

MODELS = """
version = 1

[models.chat]
source = "org/tiny:Q4_0"

[models.coder]
source = "org/tiny:Q8_0"

[models.embedder]
source = "org/tiny:Q4_1"
embedding = true
"""

ROUTING = """
[routing]
default = "chat"
rules = [
  { pattern = '(?i)\\b(def|class|import)\\b', model = "coder" },
  { pattern = '^embed:', model = "embedder" },
  { pattern = 'python', model = "chat" },
]
"""


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    path = tmp_path / "model-lock.toml"
    path.write_text(MODELS + ROUTING, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "model"),
    [
        ("def add(a, b): return a + b", "coder"),
        ("IMPORT numpy please", "coder"),  # (?i) in the pattern
        ("embed: the quick brown fox", "embedder"),
        ("please embed: this", "chat"),  # ^ anchors at the start
        ("python def", "coder"),  # first matching rule wins, in order
        ("What is the capital of France?", "chat"),  # default
        ("", "chat"),
    ],
)
def test_first_matching_rule_then_default(lock, text, model):
    assert route(text, lock) == model


def test_lock_as_path_string_lockfile_or_found_upward(lock, monkeypatch):
    assert route("class X: pass", str(lock)) == "coder"
    assert route("class X: pass", Lockfile.load(lock)) == "coder"
    sub = lock.parent / "src" / "pkg"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert route("class X: pass") == "coder"


def test_patterns_are_case_sensitive_unless_they_say_so(tmp_path):
    path = tmp_path / "model-lock.toml"
    path.write_text(MODELS + '[routing]\nrules = [{ pattern = "SQL", model = "coder" }]\ndefault = "chat"\n')
    assert route("write SQL", path) == "coder"
    assert route("write sql", path) == "chat"


def test_no_match_and_no_default_is_an_error(tmp_path):
    path = tmp_path / "model-lock.toml"
    path.write_text(MODELS + '[routing]\nrules = [{ pattern = "^code:", model = "coder" }]\n')
    assert route("code: x", path) == "coder"
    with pytest.raises(LockError, match=r"no \[routing\] rule.*matches 'hello'.*default"):
        route("hello", path)


def test_no_routing_table_says_how_to_add_one(tmp_path):
    path = tmp_path / "model-lock.toml"
    path.write_text(MODELS)
    with pytest.raises(LockError, match=r"has no \[routing\] table"):
        route("hello", path)


def test_default_alone_routes_everything(tmp_path):
    path = tmp_path / "model-lock.toml"
    path.write_text(MODELS + '[routing]\ndefault = "coder"\n')
    assert route("anything", path) == "coder"


def test_routing_to_an_unknown_model_is_caught_when_the_lockfile_is_read(tmp_path):
    path = tmp_path / "model-lock.toml"
    path.write_text(MODELS + '[routing]\ndefault = "nope"\n')
    with pytest.raises(LockError, match="'nope'"):
        route("hello", path)


def test_route_is_public_api(lock):
    import modelfix

    assert modelfix.route("import os", lock) == "coder"


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ('rules = "x"', r"routing.rules must be a list of tables"),
        (
            'rules = [{ pattern = "x", model = "chat", extra = 1 }]',
            r"unknown key 'extra' in routing.rules\[0\] \(valid: pattern, model\)",
        ),
        ("default = 3", r"routing.default must be a model name"),
        ('rules = [{ pattern = "(", model = "chat" }]', r"routing.rules\[0\] pattern is not a valid regex"),
    ],
)
def test_bad_routing_tables_are_named_with_their_line(tmp_path, routing, message):
    path = tmp_path / "model-lock.toml"
    path.write_text(MODELS + f"[routing]\n{routing}\n")
    with pytest.raises(LockError, match=rf"model-lock.toml:\d+: {message}"):
        Lockfile.load(path)

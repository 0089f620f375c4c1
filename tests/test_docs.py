"""The docs' examples against what modelfix really does: a lockfile example loads, a printed line is the CLI's."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from modelfix.lockfile import Lockfile
from modelfix.routing import route

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(page: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", (DOCS / page).read_text(), re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", ["quickstart.md", "cli.md"])
def test_add_examples_show_the_lockfile_path_as_add_prints_it(page):
    shown = [m for block in _blocks(page, "console") for m in re.findall(r"^Added .* to (\S+): ", block, re.M)]
    assert shown, f"{page} shows no `modelfix add` output"
    assert all(os.path.isabs(path) for path in shown), shown  # add prints the absolute path it wrote


def test_the_routing_example_is_a_lockfile_that_loads_and_routes(tmp_path):
    (example,) = [block for block in _blocks("python-api.md", "toml") if "[routing]" in block]
    path = tmp_path / "model-lock.toml"
    path.write_text(example)
    lockfile = Lockfile.load(path)  # every model a rule names has its [models.NAME] table
    assert route("import os", lockfile) == "coder"
    assert route("embed: a sentence", lockfile) == "embedder"
    assert route("Capital of France?", lockfile) == lockfile.routing_default


def test_the_snapshot_file_example_is_what_modelfix_writes():
    from modelfix.snapshot_file import dumps, loads

    (example,) = [block for block in _blocks("pytest.md", "toml") if "[test_capital]" in block]
    entries = loads("version = 1\n" + example, DOCS / "pytest.md")
    assert entries["test_capital"].recording.model == "chat"
    assert dumps(entries).split("version = 1\n\n", 1)[1] == example  # the layout, line for line

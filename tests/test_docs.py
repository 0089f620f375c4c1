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


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE):
        slug = "".join(c for c in heading.lower() if c.isalnum() or c in " -_").replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def _prose(path: Path) -> str:
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    pages = [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(_prose(dest)):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []

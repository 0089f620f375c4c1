"""The README's demo (``modelfix.testing.demo``) outside a checkout: one line, nothing written.

``make demo`` itself runs the whole flow (minutes); these tests cover where it must refuse to start.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import modelfix
from modelfix.testing.demo import CHECKOUT_FILES, find_checkout

ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_is_a_checkout_and_an_empty_folder_is_not(tmp_path: Path) -> None:
    assert find_checkout(tmp_path, ROOT) == ROOT
    assert find_checkout(tmp_path) is None
    (tmp_path / CHECKOUT_FILES[0]).write_text("")
    assert find_checkout(tmp_path) is None  # a lockfile alone is a user's project, not a checkout


def test_the_demo_from_an_installed_package_names_make_demo_and_writes_nothing(tmp_path: Path) -> None:
    # The installed layout: modelfix/ straight in site-packages, run from a project folder.
    site = tmp_path / "site-packages"
    shutil.copytree(Path(modelfix.__file__).parent, site / "modelfix", ignore=shutil.ignore_patterns("__pycache__"))
    project = tmp_path / "project"
    project.mkdir()
    before = sorted(tmp_path.rglob("*"))
    done = subprocess.run(
        [sys.executable, "-B", "-m", "modelfix.testing.demo"],
        cwd=project,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "make demo" in done.stderr and str(project) in done.stderr
    assert sorted(tmp_path.rglob("*")) == before  # no .demo/ in site-packages (it once was), none here

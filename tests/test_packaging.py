"""modelfix and modelfix-jupyter as a user gets them: the sdists and wheels a release builds.

The rest of the suite runs from an editable install of the checkout, which sees every file of the
repository; a wheel holds only what the packaging config names. Each distribution is built as
``python -m build`` does it (the sdist, then the wheel from the sdist alone), from a copy of the
files the config reads, without a network (``--no-isolation``: build and setuptools come with the
dev extra). Then the modelfix wheel is installed into a bare folder and used from a project folder.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import modelfix

ROOT = Path(__file__).resolve().parents[1]
# name -> (project folder, import package)
DISTRIBUTIONS = {"modelfix": (ROOT, "modelfix"), "modelfix_jupyter": (ROOT / "jupyter_ext", "modelfix_jupyter")}


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Each distribution's (sdist, wheel), the wheel built from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    built = {}
    for name, (folder, package) in DISTRIBUTIONS.items():
        # A copy: setuptools writes egg-info and build/ beside the sources, and xdist workers share the checkout.
        source = tmp_path_factory.mktemp(f"src-{name}")
        for file in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
            if (folder / file).exists():
                shutil.copy(folder / file, source / file)
        shutil.copytree(folder / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
            check=True,
            capture_output=True,
        )
        (sdist,) = out.glob(f"{name}-*.tar.gz")
        (wheel,) = out.glob(f"{name}-*.whl")
        built[name] = (sdist, wheel)
    return built


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_the_wheel_holds_every_module_and_py_typed_and_nothing_else(dists, name: str) -> None:
    folder, package = DISTRIBUTIONS[name]
    expected = {p.relative_to(folder).as_posix() for p in (folder / package).rglob("*.py")}
    expected.add(f"{package}/py.typed")
    with zipfile.ZipFile(dists[name][1]) as archive:
        files = set(archive.namelist())
    shipped = {f for f in files if ".dist-info/" not in f}
    assert shipped == expected
    assert any(f.endswith(".dist-info/licenses/LICENSE") for f in files)


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_the_sdist_has_readme_and_license_and_no_half_of_the_tests(dists, name: str) -> None:
    with tarfile.open(dists[name][0]) as archive:
        files = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    assert {"README.md", "LICENSE", "pyproject.toml"} <= files
    assert not any(f.startswith("tests/") for f in files)  # conftest.py, examples/ and jupyter_ext/ would not come


def test_metadata_version_license_and_the_jupyter_package_s_modelfix_requirement(dists) -> None:
    core, jupyter = _metadata(dists["modelfix"][1]), _metadata(dists["modelfix_jupyter"][1])
    assert core["Version"] == modelfix.__version__ == jupyter["Version"]  # what `modelfix --version` prints
    for meta in (core, jupyter):
        assert meta["License-Expression"] == "MIT" and meta["Requires-Python"] == ">=3.10"
        assert meta["Description-Content-Type"] == "text/markdown" and meta.get_payload().strip()
    requirements = {Requirement(r).name: Requirement(r) for r in jupyter.get_all("Requires-Dist")}
    assert requirements["modelfix"].specifier.contains(modelfix.__version__)
    run_extra = {r.name for r in requirements.values() if r.marker and r.marker.evaluate({"extra": "run"})}
    assert run_extra == {"nbformat", "nbclient", "ipykernel"}  # what `python -m modelfix_jupyter.run` checks for
    assert (ROOT / "LICENSE").read_bytes() == (ROOT / "jupyter_ext" / "LICENSE").read_bytes()


def test_the_installed_wheel_runs_from_a_project_folder(dists, tmp_path: Path) -> None:
    site, project = tmp_path / "site-packages", tmp_path / "project"
    project.mkdir()
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    subprocess.run(
        [*pip, "--target", str(site), str(dists["modelfix"][1])],
        check=True,
        capture_output=True,
    )
    with zipfile.ZipFile(dists["modelfix"][1]) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(name).decode()
    assert "modelfix = modelfix.cli:main" in entry_points and "modelfix-hub = modelfix.testing.hub:main" in entry_points
    assert "[pytest11]\nmodelfix = modelfix.pytest_plugin" in entry_points
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = (
        "import sys, modelfix, modelfix.cli, modelfix.testing.hub, modelfix.pytest_plugin;"
        "print(modelfix.__file__);"
        "print(sorted(m for m in ('llama_cpp', 'huggingface_hub', 'fsspec') if m in sys.modules))"
    )
    lines = subprocess.run(
        [sys.executable, "-c", probe], cwd=project, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert lines == [str(site / "modelfix" / "__init__.py"), "[]"]  # the wheel's copy, and nothing heavy
    version = subprocess.run(
        [sys.executable, "-m", "modelfix", "--version"], cwd=project, env=env, capture_output=True, text=True
    )
    assert version.stdout.strip() == f"modelfix {_metadata(dists['modelfix'][1])['Version']}"

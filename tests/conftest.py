"""Fixtures shared by the test modules.

The local Hub (``local_hub``, ``hub_env``) comes from ``modelfix.testing`` —
the same fixtures users get. On top of it: a tiny model repository written
once per session, a hub serving it as ``org/tiny``, an isolated cache, and a
working folder with a lockfile. ``users`` acts as other users (``setpriv``) in
``shared`` folders, for what a cache shared by several users, or one that
another user made, must withstand.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfix.testing.gguf import tiny_repo_files

pytest_plugins = ["modelfix.testing.fixtures"]  # local_hub, hub_env: the fixtures users get too

TINY_REPO = "org/tiny"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's cache, token, offline switches or any other MODELFIX_*/HF_* setting.

    Every variable with those prefixes is cleared (the code reads some thirty of them, and a new one
    must not leak in from a shell); then the few the suite needs are set.
    """
    for name in list(os.environ):
        if name.startswith(("MODELFIX_", "HF_")) or name == "HUGGING_FACE_HUB_TOKEN":
            monkeypatch.delenv(name)
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    # huggingface_hub read HF_HOME when it was imported: point its saved-token paths there too,
    # so that a developer's `hf auth login` never leaks into a test.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("MODELFIX_RETRY_BASE_DELAY", "0.01")


class FakeClock:
    """A monotonic clock (seconds) that moves only when the test advances it: timing logic without sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A :class:`FakeClock`, for where modelfix takes a ``clock`` (the pool's keep-alive, the store's use records)."""
    return FakeClock()


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Hub-like folder: Q4_0 and Q8_0 single files, a 3-part Q4_1 split, mmproj, preset.ini.

    The weights are really quantized (llama.cpp runs its quantized kernels on them, and repacks Q4_0).
    """
    folder = tmp_path_factory.mktemp("tiny-repo")
    return tiny_repo_files(folder, tags=("Q4_0", "Q8_0"), split_tags=("Q4_1",), split_parts=3)


@pytest.fixture
def hub(hub_env, tiny_files):
    """The local hub (HF_ENDPOINT set) serving the tiny repository as ``org/tiny``."""
    hub_env.create_repo(TINY_REPO)
    hub_env.commit(TINY_REPO, dict(tiny_files), message="initial upload")
    return hub_env


@pytest.fixture
def lock(hub, workdir: Path) -> Path:
    """A pinned lockfile in ``workdir``: ``chat`` (org/tiny:Q4_0) and ``split`` (the 3-part Q4_1)."""
    from modelfix.locking import add

    path = workdir / "model-lock.toml"
    add("chat", f"{TINY_REPO}:Q4_0", path)
    add("split", f"{TINY_REPO}:Q4_1", path)
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder as the working directory."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture(scope="session")
def plain_llama(tmp_path_factory):
    """``llama_cpp.Llama(path, **kwargs)`` as a user writes it, repacking as the backend probe found safe.

    A plain Llama's first decode of a quantized model dies by SIGSEGV on the AMX hosts of issue 9;
    there the probe says "repack off" and this builds the Llama with ``use_extra_bufts = False``
    (what modelfix's own loads do). Elsewhere it is exactly ``llama_cpp.Llama(path, **kwargs)``.
    """
    from modelfix.handle import open_llama
    from modelfix.probe import use_repack

    repack = use_repack("auto", tmp_path_factory.mktemp("probe"))

    def make(path, **kwargs):
        return open_llama(Path(path), kwargs, repack=repack)

    return make


@pytest.fixture
def run_cli(capsys):
    """Run ``modelfix ARGS...`` in-process; returns (exit code, stdout, stderr)."""
    from modelfix.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def undocumented():
    """``undocumented(parser)``: each argument, command or `COMMAND --help` of an argparse tree without help text."""
    import argparse

    def walk(parser: argparse.ArgumentParser) -> list[str]:
        missing = []
        for action in parser._actions:
            name = "/".join(action.option_strings) or action.metavar or action.dest
            if not action.help:
                missing.append(f"{parser.prog}: {name}")
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest: choice.help for choice in action._choices_actions}
                for command, sub in dict(action.choices).items():
                    if not listed.get(command):
                        missing.append(f"{parser.prog}: command {command}")
                    if not sub.description:
                        missing.append(f"{sub.prog} --help: no description")
                    missing += walk(sub)
        return missing

    return walk


# --- acting as other users ------------------------------------------------------------------------


class Users:
    """Runs commands as other users: uids and a group that no account here uses."""

    OTHER, ALICE, BOB, TEAM = 4021, 4022, 4023, 4020
    # What `modelfix ARGS...` runs as another user: this interpreter, which may not be on their PATH.
    CLI = "import sys; from modelfix.cli import main; sys.exit(main(sys.argv[1:]))"

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this process cannot act as another user, or None."""
        if os.geteuid() != 0:
            return "acting as a second user needs root (setpriv --reuid)"
        if shutil.which("setpriv") is None:
            return "setpriv (util-linux) is not installed"
        probe = ["setpriv", f"--reuid={cls.OTHER}", f"--regid={cls.TEAM}", "--clear-groups", "true"]
        return None if subprocess.run(probe, check=False).returncode == 0 else "root may not switch uid here"

    @functools.cached_property
    def python_unreachable(self) -> str | None:
        """Why another user cannot run modelfix from this interpreter and checkout, or None. A checkout
        in a private folder (`mktemp -d` makes 0700 ones) is out of its reach."""
        command = [sys.executable, "-c", "import modelfix"]
        if self.run(self.OTHER, *command).returncode == 0:
            return None
        return f"uid {self.OTHER} cannot import modelfix from {sys.executable} (a private folder above the checkout?)"

    def run(self, uid: int, *command: str, **kwargs) -> subprocess.CompletedProcess:
        """Run ``command`` as ``uid`` in group TEAM, with no other groups."""
        return subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={self.TEAM}", "--clear-groups", *command],
            capture_output=True,
            text=True,
            check=False,
            **kwargs,
        )

    def cli(self, uid: int, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """``modelfix ARGS...`` as ``uid``."""
        return self.run(uid, sys.executable, "-c", self.CLI, *args, **kwargs)

    def plant_link(self, target: Path, link: Path) -> None:
        """Another user makes ``link`` point at ``target``."""
        done = self.run(self.OTHER, "ln", "-s", str(target), str(link))
        assert done.returncode == 0, done.stderr

    def team_folder(self, path: Path) -> Path:
        """``path``, a setgid folder of the team: what is made inside belongs to the team."""
        path.mkdir(exist_ok=True)
        os.chown(path, -1, self.TEAM)
        path.chmod(0o2775)
        return path


@pytest.fixture(scope="session")
def users() -> Users:
    """:class:`Users`; the test is skipped where this process cannot act as another user (not root, no setpriv)."""
    if (reason := Users.unavailable()) is not None:
        pytest.skip(reason)
    return Users()


@pytest.fixture
def users_python(users: Users) -> Users:
    """:class:`Users`, for tests that run modelfix as another user: skipped where that user cannot."""
    if users.python_unreachable is not None:
        pytest.skip(users.python_unreachable)
    return users


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every uid can reach (pytest's own temp folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="modelfix-shared-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 128 KiB tmpfs (root only): too small for the tiny model file; ``remount`` it bigger with ``size=``."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)

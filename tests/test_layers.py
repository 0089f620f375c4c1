"""Read-only caches: a store this process cannot write, and read-only layers in front of a writable one.

What a user checks: a cached model is served offline from a cache nobody here can write, in
place (its path is inside that cache), with nothing written there; what the layers lack comes
from the writable store, then the origin; a copied cache (new inodes and ctimes, times kept or
reset) is served, and hashed only where the copy broke its hard links; the Dockerfile and the
GitHub Actions recipes of docs/cache.md work as written.

A cache is made unwritable for real: a tmpfs remounted read-only (root that may mount), or a
copy owned by root (0755/0644) used by another uid (``users``, with ``setpriv``). Each test
skips with the reason where its way is not possible here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import modelfix
import modelfix.project
from modelfix.config import CacheSettings
from modelfix.lockfile import Lockfile, content_key
from modelfix.store import Store

DOCS = Path(__file__).resolve().parents[1] / "docs"
HASHED = "hashed it"  # what modelfix.layers logs when it hashes a view file of a read-only cache
COPIES: dict[str, Callable[[Path, Path], object]] = {
    # keeps hard links and times: what an image layer, tar (a restored CI cache) and rsync -aH do
    "cp -a": lambda src, dst: subprocess.run(["cp", "-a", str(src), str(dst)], check=True),
    # keeps times, breaks hard links: every view file becomes a copy of its blob
    "shutil.copytree": lambda src, dst: shutil.copytree(src, dst, symlinks=True),
    # breaks hard links and resets every time
    "cp -r": lambda src, dst: subprocess.run(["cp", "-r", str(src), str(dst)], check=True),
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every name under ``root`` with its inode, size, mtime and ctime: any write shows."""
    found = {}
    for parent, folders, names in os.walk(root):
        for name in [*folders, *names]:
            st = os.lstat(os.path.join(parent, name))
            found[os.path.relpath(os.path.join(parent, name), root)] = (
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
            )
    return found


def _flip_a_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(77)
        byte = f.read(1)
        f.seek(77)
        f.write(bytes([byte[0] ^ 0x40]))
    os.chmod(path, 0o444)


def _downloads(hub) -> set[str]:
    return {r.filename for r in hub.requests if r.method == "GET" and r.status in (200, 206)}


def _one_line_error(done: subprocess.CompletedProcess, *named: str) -> None:
    err = done.stderr
    assert done.returncode == 1, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(n in err for n in named), err


@pytest.fixture
def built(lock: Path, tmp_path: Path) -> Path:
    """A cache holding ``chat`` (not ``split``), as ``modelfix sync chat`` made it."""
    root = tmp_path / "built"
    modelfix.sync(["chat"], lock, cache_settings=CacheSettings.resolve(cache_dir=root))
    return root


# --- layers in front of the writable store ------------------------------------------------------------


def test_a_layer_serves_its_models_in_place_and_the_store_gets_only_what_it_lacks(
    lock, hub, built, tmp_path, monkeypatch
):
    layer = tmp_path / "layer"
    COPIES["cp -a"](built, layer)
    before = _tree(layer)
    monkeypatch.setenv("MODELFIX_READONLY_CACHES", os.pathsep.join([str(tmp_path / "absent"), str(layer)]))
    store = Store(CacheSettings.resolve().root)
    split = Lockfile.load(lock).entry("split")
    hub.clear_log()

    chat = modelfix.files("chat", lock)
    assert modelfix.path("chat", lock) == chat.model_path  # the warm call: the same view
    made = modelfix.files("split", lock)

    assert chat.view == layer / "views" / chat.content_key  # in place: no copy, no link in the store
    assert [_sha(f) for f in chat.files] == [p.sha256 for p in chat.entry.files]
    assert not store.view_path(chat.content_key).exists() and not store.has(chat.entry.files[0].sha256)
    assert made.view == store.view_path(made.content_key)
    # Only split's own parts were downloaded: its mmproj and preset (chat's too) came from the layer,
    # copied and hashed, never hard-linked (a link would change the layer's file, and tie the store to it).
    assert _downloads(hub) == {p.path for p in split.files if p.role == "model"}
    shared = [p.sha256 for p in split.files if p.role != "model"]
    assert shared and all(_sha(store.blob_path(s)) == s for s in shared)
    assert not any(os.path.samefile(store.blob_path(s), Store(layer).blob_path(s)) for s in shared)
    assert _tree(layer) == before  # no lease, no last-use time, no memo, no manifest rewritten


@pytest.mark.parametrize("copy", list(COPIES))
def test_a_copied_cache_is_served_and_hashed_only_where_the_copy_broke_its_links(
    lock, built, tmp_path, monkeypatch, caplog, copy
):
    layer = tmp_path / "image" / "models"
    layer.parent.mkdir()
    COPIES[copy](built, layer)
    entry = Lockfile.load(lock).entry("chat")
    view = layer / "views" / content_key(entry)
    # The trap: no file of the copy has the identity its manifest recorded, which nothing can update here.
    for item in json.loads((view / ".modelfix.json").read_text())["files"]:
        st = os.stat(view / item["name"])
        assert (st.st_ino, st.st_ctime_ns) != (item["id"][1], item["id"][4])
    monkeypatch.setenv("MODELFIX_READONLY_CACHES", str(layer))
    monkeypatch.setenv("MODELFIX_OFFLINE", "1")
    caplog.set_level(logging.INFO, logger="modelfix")

    served = modelfix.files("chat", lock)
    hashed = [r for r in caplog.records if HASHED in r.getMessage()]
    caplog.clear()
    modelfix.project._DEFAULTS.clear()  # this process's next first look: the manifest and every file again
    again = modelfix.files("chat", lock)

    assert served.view == again.view == view
    assert [_sha(f) for f in served.files] == [p.sha256 for p in entry.files]
    assert len(hashed) == (0 if copy == "cp -a" else len(entry.files))
    assert not [r for r in caplog.records if HASHED in r.getMessage()], "hashed twice in one process"


@pytest.mark.parametrize("spoil", ["bytes", "link"])
def test_a_view_file_of_a_layer_that_is_not_its_blob_is_not_served(lock, hub, built, tmp_path, monkeypatch, spoil):
    layer = tmp_path / "layer"
    COPIES["shutil.copytree"](built, layer)  # each view file a copy of its blob: only its bytes can tell
    entry = Lockfile.load(lock).entry("chat")
    pin = entry.files[0]
    shown = layer / "views" / content_key(entry) / pin.path
    if spoil == "bytes":
        _flip_a_byte(shown)
    else:
        shown.unlink()
        shown.symlink_to(Store(layer).blob_path(pin.sha256))
    monkeypatch.setenv("MODELFIX_READONLY_CACHES", str(layer))
    hub.clear_log()

    served = modelfix.files("chat", lock)

    assert served.view == Store(CacheSettings.resolve().root).view_path(served.content_key)
    assert [_sha(f) for f in served.files] == [p.sha256 for p in entry.files]
    assert _downloads(hub) == set()  # the layer's blobs are sound: copied from there, hashed, not downloaded


@pytest.mark.parametrize("copy", ["cp -a", "cp -r"])
def test_verify_hashes_a_layer_in_place_and_writes_nothing_there(run_cli, lock, built, tmp_path, copy):
    layer = tmp_path / "layer"
    COPIES[copy](built, layer)
    before = _tree(layer)

    assert run_cli("verify", "chat", "--readonly-cache", str(layer))[:2] == (0, "all files match (xxh3)\n")
    assert run_cli("verify", "--full", "chat", "--readonly-cache", str(layer))[:2] == (0, "all files match (sha256)\n")
    assert _tree(layer) == before  # no memo, no identity recorded
    if copy == "cp -a":  # a rotten byte under a hard link: the view is still whole, its bytes are not
        pin = Lockfile.load(lock).entry("chat").files[0]
        _flip_a_byte(layer / "views" / content_key(Lockfile.load(lock).entry("chat")) / pin.path)
        code, _, err = run_cli("--readonly-cache", str(layer), "verify", "chat")
        assert code == 1
        assert f"chat: {pin.path}: corrupt" in err and f"it stays there: {layer} is a read-only layer" in err
        assert Store(layer).has(pin.sha256)


def test_readonly_cache_options_add_up_and_stats_and_doctor_show_them(run_cli, lock, built, tmp_path):
    other = tmp_path / "missing-layer"
    options = ("--readonly-cache", str(built), "cache", "stats", "--readonly-cache", str(other))

    code, out, err = run_cli(*options)
    stats = json.loads(run_cli(*options, "--json")[1])
    doctor = run_cli("--readonly-cache", str(built), "doctor", "--readonly-cache", str(other))

    assert code == 0, err
    assert f"read-only {built} · 3 blobs" in out and f"read-only {other} · 0 blobs" in out
    assert re.search(rf"^chat .* pinned \(read-only {re.escape(str(built))}\)$", out, re.MULTILINE), out
    assert [layer["cache"] for layer in stats["readonly_caches"]] == [str(built), str(other)]
    assert stats["readonly_caches"][0]["models"][0]["models"] == ["chat"] and stats["readonly"] is None
    assert f"read-only   {built} · 3 blobs" in doctor[1] and "served in place: chat" in doctor[1]
    assert f"the read-only cache {other} is not a folder here" in doctor[1] and doctor[0] == 1


# --- a cache nobody here can write ------------------------------------------------------------------------------


def _mount_tmpfs(folder: Path) -> str | None:
    """Mount a tmpfs at new folder ``folder``; None if done, else why not (not root, not permitted here)."""
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip() or 'mount failed'}"


@pytest.fixture
def mount_point(shared: Path) -> Iterator[Path]:
    """A tmpfs in ``shared``, for root to remount read-only; skips where mounting is not permitted."""
    if (why := _mount_tmpfs(shared / "mnt")) is not None:
        pytest.skip(why)
    yield shared / "mnt"
    subprocess.run(["umount", "-l", str(shared / "mnt")], check=False)


class Unwritable:
    """Stages a cache where its user cannot write it, and runs commands as that user.

    ``mount``: copied (``cp -a``) into a tmpfs, remounted read-only; ``uid``: the user (None: this
    one). Without a mount, a copy owned by root, 0755/0644, in a folder every uid reaches.
    """

    def __init__(self, folder: Path, mount: Path | None, uid: int | None, users) -> None:
        self.folder, self.mount, self.uid, self.users = folder, mount, uid, users
        self.home = folder / "home"
        self.home.mkdir()
        if uid is not None:
            os.chown(self.home, uid, users.TEAM)

    def stage(self, cache: Path, name: str = "models") -> Path:
        """``cache`` copied (as an image's COPY does) to where this user cannot write it."""
        target = (self.mount or self.folder) / name
        COPIES["cp -a"](cache, target)
        subprocess.run(["chmod", "-R", "go-w,a+rX", str(target)], check=True)
        if self.mount is not None:
            subprocess.run(["mount", "-o", "remount,ro", str(self.mount)], check=True)
        return target

    def project(self, lock: Path) -> Path:
        folder = self.folder / "project"
        folder.mkdir()
        shutil.copy(lock, folder / "model-lock.toml")
        (folder / "model-lock.toml").chmod(0o644)
        return folder

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "HF_HOME": str(self.home / "hf"),
            "LLAMA_CACHE": str(self.home / "llama.cpp"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            **extra,
        }

    def run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        if self.uid is None:
            return subprocess.run(list(command), capture_output=True, text=True, check=False, **kwargs)
        return self.users.run(self.uid, *command, **kwargs)

    def spawns_python(self) -> bool:
        """Can a process of this user start this interpreter? (setpriv starts the first one with root's
        search rights; a kernel the notebook runner starts needs its own, and a pyenv under /root denies them.)"""
        return self.run("/bin/sh", "-c", 'test -x "$0"', sys.executable).returncode == 0

    def python(self, code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-c", code, *args, **kwargs)

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.python("import sys; from modelfix.cli import main; sys.exit(main(sys.argv[1:]))", *args, **kwargs)


@pytest.fixture(params=["read-only mount", "another user"])
def unwritable(request, shared: Path) -> Unwritable:
    """Each way a cache is unwritable for its user: a read-only mount (root), a cache of root's (another uid)."""
    if request.param == "read-only mount":
        return Unwritable(shared, request.getfixturevalue("mount_point"), None, None)
    users = request.getfixturevalue("users_python")
    return Unwritable(shared, None, users.OTHER, users)


def _bake_verdict(cache: Path) -> None:
    """What an image's build stage may run: the backend probe, its verdict kept in the cache."""
    done = subprocess.run(
        [sys.executable, "-m", "modelfix.probe", "--cache-dir", str(cache)], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr


SUITE = """\
import pytest


@pytest.mark.model("chat")
def test_answers(llama):
    assert llama("Hello", max_tokens=4)["choices"][0]["text"]
"""

API = """\
import json, logging, sys
import modelfix
from modelfix import probe
from modelfix.config import CacheSettings
logging.basicConfig(level=logging.DEBUG, format="%(message)s", stream=sys.stderr)
logging.getLogger("modelfix.llama_cpp").setLevel(logging.WARNING)
path = modelfix.path("chat")
files = modelfix.files("chat")
llm = modelfix.load("chat")
text = llm("Hello", max_tokens=4, temperature=0)["choices"][0]["text"]
settings = CacheSettings.resolve()
print(json.dumps({
    "path": str(path), "files": [str(f) for f in files.files], "again": str(modelfix.path("chat")), "text": text,
    "problems": [p.message for p in modelfix.verify(["chat"], full=True)],
    "verdict": probe.known_verdict(settings.root, settings.layers).path,
}))
"""


def test_a_cache_that_cannot_be_written_serves_a_cached_model_offline(lock, hub, built, unwritable):
    _bake_verdict(built)
    models = unwritable.stage(built)
    before = _tree(models)
    project = unwritable.project(lock)
    env = unwritable.env(MODELFIX_CACHE_DIR=str(models), MODELFIX_OFFLINE="1", HF_ENDPOINT=hub.endpoint)
    hub.clear_log()

    api = unwritable.python(API, cwd=project, env=env)
    assert api.returncode == 0, api.stderr
    found = json.loads(api.stdout.splitlines()[-1])
    commands = {
        args: unwritable.cli(*args, cwd=project, env=env)
        for args in [("list",), ("inspect", "chat"), ("verify", "chat"), ("run", "chat", "Hello", "--max-tokens", "4")]
    }
    stats = unwritable.cli("cache", "stats", cwd=project, env=env)
    (project / "test_chat.py").write_text(SUITE)
    suite = unwritable.run(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_chat.py", cwd=project, env=env
    )
    miss = unwritable.cli("sync", "split", cwd=project, env=env)
    refused = {
        what: unwritable.cli(*args, cwd=project, env=env)
        for what, args in {
            "`modelfix cache gc`": ("cache", "gc"),
            "`modelfix cache prune`": ("cache", "prune", "--max-size", "1"),
            "`modelfix cache rm chat`": ("cache", "rm", "chat"),
        }.items()
    }

    assert found["path"] == found["again"] and found["path"].startswith(f"{models}/views/")  # in place
    assert all(
        _sha(Path(f)) == p.sha256 for f, p in zip(found["files"], Lockfile.load(lock).entry("chat").files, strict=True)
    )
    assert found["text"] and found["problems"] == []
    assert found["verdict"] == str(next((models / "probe").glob("*.json")))  # no probe at start
    # Leases, last-use times and memos are skipped, and that is said once, at debug level.
    assert api.stderr.count(f"the cache {models} is ") == 1 and "without leases" in api.stderr
    assert HASHED not in api.stderr  # a copy that kept its hard links is not hashed
    for args, done in commands.items():
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
    assert re.search(r"^chat .* cached$", commands[("list",)].stdout, re.MULTILINE)
    assert f"cache     {models} (read-only" in stats.stdout and stats.returncode == 0
    assert suite.returncode == 0 and "1 passed" in suite.stdout, suite.stdout + suite.stderr
    assert f"cache {models} (read-only here: " in suite.stdout
    _one_line_error(miss, "fetching split", f"cannot write the cache {models}", "MODELFIX_READONLY_CACHES")
    for what, done in refused.items():
        _one_line_error(done, what, f"cannot write the cache {models}", "MODELFIX_CACHE_DIR")
    assert hub.requests == [] and _tree(models) == before


def test_load_model_in_a_real_kernel_from_a_cache_that_cannot_be_written(lock, hub, built, unwritable):
    import nbformat

    if not unwritable.spawns_python():
        pytest.skip(f"{sys.executable} is out of reach of uid {unwritable.uid}: it cannot start a kernel")
    _bake_verdict(built)
    models = unwritable.stage(built)
    project = unwritable.project(lock)
    cells = ["%load_ext modelfix", "llm = %load_model chat", 'llm("Hello", max_tokens=4)["choices"][0]["text"]']
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbformat.write(notebook, project / "check.ipynb")
    (project / "check.ipynb").chmod(0o644)
    env = unwritable.env(MODELFIX_CACHE_DIR=str(models), MODELFIX_OFFLINE="1", HF_ENDPOINT=hub.endpoint)
    before = _tree(models)
    hub.clear_log()

    done = unwritable.run(sys.executable, "-m", "modelfix_jupyter.run", "check.ipynb", cwd=project, env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "llama.cpp  loaded in" in done.stdout
    assert hub.requests == [] and _tree(models) == before


# --- the recipes of docs/cache.md -------------------------------------------------------------------------


def _block(language: str, containing: str) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```", (DOCS / "cache.md").read_text(), re.DOTALL | re.MULTILINE)
    (found,) = [b for b in blocks if containing in b]
    return found


def _final_stage_env(dockerfile: str) -> dict[str, str]:
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    blocks = re.findall(r"^ENV (.*?)(?<!\\)$", final, re.DOTALL | re.MULTILINE)
    return {name: value for block in blocks for name, value in re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " "))}


def test_the_dockerfile_recipe_runs_the_app_as_another_user_read_only_and_offline(
    lock, hub, shared, users_python, tmp_path
):
    """Each step of docs/cache.md's Dockerfile, with what stands in for the container where Docker cannot run.

    Build stage: ``modelfix sync`` and the probe into a fixed folder (``/models`` -> a folder here).
    ``COPY --from=build``: ``cp -a`` (new inodes and ctimes, as an image layer gives), into a tmpfs
    remounted read-only where root may mount, else a copy root owns (0755/0644). ``USER``: another
    uid, with the final stage's ``ENV``. Then the app, a test suite and the CLI, offline.
    """
    users = users_python
    dockerfile = _block("dockerfile", "COPY --from=build")
    steps = ["modelfix sync --cache-dir /models", "python -m modelfix.probe --cache-dir /models"]
    assert all(step in dockerfile for step in steps) and "COPY --from=build /models /models" in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.MULTILINE)
    final = _final_stage_env(dockerfile)
    assert final.get("MODELFIX_OFFLINE") == "1" and final.get("MODELFIX_READONLY_CACHES") == "/models", final
    app = _block("python", "modelfix.load")

    build = tmp_path / "build-models"  # the build stage: root, online
    for step in steps:
        words = step.replace("/models", str(build)).split()
        argv = (
            [sys.executable, "-m", "modelfix", *words[1:]] if words[0] == "modelfix" else [sys.executable, *words[1:]]
        )
        done = subprocess.run(argv, cwd=lock.parent, capture_output=True, text=True, check=False)
        assert done.returncode == 0, (step, done.stderr)
    mount = None if _mount_tmpfs(shared / "image") else shared / "image"
    try:
        image = Unwritable(shared, mount, users.OTHER, users)
        models = image.stage(build)
        project = image.project(lock)
        (project / "app.py").write_text(app)
        (project / "test_app.py").write_text(SUITE)
        env = image.env(**{k: v.replace("/models", str(models)) for k, v in final.items()}, HF_ENDPOINT=hub.endpoint)
        before = _tree(models)
        hub.clear_log()

        ran = image.run(sys.executable, "app.py", cwd=project, env=env)
        tests = image.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_app.py", cwd=project, env=env)
        smoke = image.cli("run", "chat", "Hello", "--max-tokens", "4", cwd=project, env=env)

        assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
        assert tests.returncode == 0 and "1 passed" in tests.stdout, tests.stdout + tests.stderr
        assert f"read-only caches {models}" in tests.stdout
        assert smoke.returncode == 0, smoke.stderr
        assert hub.requests == [] and _tree(models) == before
    finally:
        if mount is not None:
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("restore_as", ["read-only layer", "writable store"])
def test_the_github_actions_recipe_restores_the_cache_without_a_request(
    run_cli, lock, hub, built, tmp_path, restore_as
):
    """docs/cache.md's workflow: the cache saved and restored as actions/cache does (tar), keyed on the lockfile."""
    workflow = _block("yaml", "MODELFIX_READONLY_CACHES")
    assert "key: modelfix-${{ runner.os }}-${{ hashFiles('model-lock.toml') }}" in workflow
    assert run_cli("--cache-dir", str(built), "sync")[0] == 0  # the job that saved it synced every model
    saved = tmp_path / "cache.tar"
    subprocess.run(["tar", "-cf", str(saved), "-C", str(built.parent), built.name], check=True)
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-xf", str(saved), "-C", str(restored)], check=True)
    restored /= built.name
    options = ["--readonly-cache", str(restored)] if restore_as == "read-only layer" else ["--cache-dir", str(restored)]
    writable = CacheSettings.resolve().root
    hub.clear_log()

    code, _, err = run_cli(*options, "sync")
    offline = run_cli(*options, "--offline", "cache", "path", "split")

    assert code == 0, err
    assert hub.requests == []
    assert offline[0] == 0 and offline[1].startswith(str(restored))
    if restore_as == "read-only layer":
        assert not writable.exists()  # served in place: nothing copied into the writable store

"""Adversarial cases: hostile Hub answers, links planted by another user, colliding pins.

Each test replays an attack or a broken server and asserts what a user relies on: a blob keeps
its verified bytes, nothing outside the cache is written or deleted, and a hostile answer ends
in a one-line error naming the repository and the bound that stopped it.

* Hostile answers come from :class:`Hostile`, a bare ``http.server`` on 127.0.0.1 that speaks
  just enough of the Hub's API for ``modelfix add`` (model info, tree pages, a plain file).
  Every endless answer it gives is bounded here too, so that a modelfix without the bound
  finishes (wrongly) instead of hanging the suite.
* Planted links and files are made by a second uid (``setpriv``), so they really are another
  user's; those tests skip where this process cannot act as another user (not root, no setpriv).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import modelfix
import modelfix.project
from modelfix.config import CacheSettings
from modelfix.fetch import download
from modelfix.jobs import new_job
from modelfix.lockfile import Lockfile, content_key
from modelfix.retry import FetchPolicy
from modelfix.store import Store
from modelfix.testing.hub import Fault
from modelfix.transports import HttpTransport

REPO = "org/tiny"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(code: int, err: str) -> None:
    assert code == 1, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.fixture
def team_cache(users, shared: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache root the team (users.OTHER included) may write into, in use by this process."""
    root = users.team_folder(shared / "cache")
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(root))
    return root


# --- 1. pins that land on one view file -------------------------------------------------------


def _append_entry(lock: Path, name: str, source: str, pins: list[dict]) -> None:
    """``[models.NAME]`` with hand-written pins, as a bad merge or an attacker would write it."""
    rows = "".join("    {" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in pin.items()) + "},\n" for pin in pins)
    with open(lock, "a", encoding="utf-8") as f:
        f.write(f'\n[models.{name}]\nsource = "{source}"\npinned_from = "{source}"\nfiles = [\n{rows}]\n')


def _pin(pin, path: str, role: str = "model") -> dict:
    return {"path": path, "size": pin.size, "sha256": pin.sha256, "role": role}


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        ("x.gguf", "./x.gguf", "'./x.gguf'"),
        ("d/x.gguf", "d//x.gguf", "'d//x.gguf'"),
        ("x.gguf", "x.gguf", "'x.gguf'"),
        ("x.gguf", "X.gguf", "'X.gguf'"),
        ("x.gguf", "x.gguf/y.gguf", "'x.gguf/y.gguf'"),
        ("x.gguf", ".modelfix.json", "'.modelfix.json'"),
        ("x.gguf", ".tmp-x", "'.tmp-x'"),
    ],
    ids=["dot-slash", "double-slash", "twice", "case", "file-as-folder", "manifest-name", "staging-name"],
)
def test_two_pins_on_one_view_file_never_overwrite_a_verified_blob(lock, run_cli, first, second, named):
    assert run_cli("sync")[0] == 0  # blobs A and B are cached for chat and split
    entries = Lockfile.load(lock).entries
    a, b = entries["chat"].files[0], entries["split"].files[0]
    good = lock.read_text()
    _append_entry(lock, "c", entries["chat"].source, [_pin(a, first), _pin(b, second, "mmproj")])
    store = Store(CacheSettings.resolve().root)

    code, _, err = run_cli("sync", "c")

    _one_line_error(code, err)
    assert named in err and "[models.c]" in err
    assert _sha(store.blob_path(a.sha256)) == a.sha256 and _sha(store.blob_path(b.sha256)) == b.sha256
    lock.write_text(good)
    assert run_cli("verify", "--full")[:2] == (0, "all files match (sha256)\n")


def test_a_hub_listing_with_an_empty_path_segment_is_refused_at_lock_time(hub_env, workdir, run_cli):
    hub_env.create_repo("org/evil")
    part = b"GGUF" + os.urandom(2000)
    hub_env.commit(
        "org/evil",
        {
            "a/m-Q4_K_M-00001-of-00002.gguf": part,
            "a/m-Q4_K_M-00002-of-00002.gguf": os.urandom(2000),
            "a//m-Q4_K_M-00001-of-00002.gguf": os.urandom(2004),
        },
    )

    code, _out, err = run_cli("add", "c", "org/evil:Q4_K_M")

    _one_line_error(code, err)
    assert "org/evil" in err and "'a//m-Q4_K_M-00001-of-00002.gguf'" in err
    assert not (workdir / "model-lock.toml").exists()


@pytest.mark.parametrize("bad", ["\x1b]0;pwned\x07", "\n", "\x00"], ids=["esc", "newline", "nul"])
def test_a_tree_name_with_control_characters_is_refused_and_never_printed_raw(hub_env, workdir, run_cli, bad):
    hub_env.create_repo("org/ctl")
    hub_env.commit("org/ctl", {f"m{bad}-Q4_K_M.gguf": b"GGUF" + os.urandom(1000)})

    code, out, err = run_cli("add", "c", "org/ctl:Q4_K_M")

    _one_line_error(code, err)
    assert "org/ctl" in err and repr(f"m{bad}-Q4_K_M.gguf")[1:-1] in err
    assert bad not in out + err.rstrip("\n")
    assert not (workdir / "model-lock.toml").exists()


# --- 2. links planted by another user -----------------------------------------------------------


def test_a_partial_planted_as_a_link_is_never_written_through(users, lock, team_cache, tmp_path, run_cli):
    victim = tmp_path / "victim"  # root's file, far from the cache
    victim.write_bytes(b"precious")
    pin = Lockfile.load(lock).entry("chat").files[0]
    tmp = users.team_folder(team_cache / "tmp")
    users.plant_link(victim, tmp / f"{pin.sha256}.partial")

    code, _, err = run_cli("sync", "chat")

    assert victim.read_bytes() == b"precious"
    blob = Store(team_cache).blob_path(pin.sha256)
    assert not blob.is_symlink() and _sha(blob) == pin.sha256
    assert code == 0, err


def test_another_users_partial_download_never_becomes_a_blob_they_own(
    users, lock, team_cache, tiny_files, shared, run_cli
):
    pin = Lockfile.load(lock).entry("chat").files[0]
    tmp = users.team_folder(team_cache / "tmp")
    partial = tmp / f"{pin.sha256}.partial"
    prefix = shared / "prefix"  # the first bytes of the right file: a download of theirs, interrupted
    prefix.write_bytes(tiny_files[pin.path].read_bytes()[: pin.size // 2])
    prefix.chmod(0o644)
    assert users.run(users.OTHER, "cp", str(prefix), str(partial)).returncode == 0

    code, _, err = run_cli("sync", "chat")

    assert code == 0, err
    blob = Store(team_cache).blob_path(pin.sha256)
    assert blob.stat().st_uid == os.geteuid() and not blob.stat().st_mode & 0o222
    assert _sha(blob) == pin.sha256


def test_the_ranges_journal_is_never_written_through_a_planted_link(users, hub, tiny_files, shared, tmp_path):
    name = max((n for n in tiny_files if n.endswith(".gguf")), key=lambda n: tiny_files[n].stat().st_size)
    data = tiny_files[name].read_bytes()
    folder = users.team_folder(shared / "tmp")
    partial = folder / "blob.partial"
    victims = {suffix: tmp_path / f"victim{suffix}" for suffix in (".ranges", ".ranges.tmp")}
    for suffix, victim in victims.items():
        victim.write_bytes(b"precious")
        users.plant_link(victim, partial.with_name(partial.name + suffix))
    policy = FetchPolicy(
        base_delay=0.01, read_timeout=30, parallel_min=len(data) // 4, min_range=len(data) // 8, split_after=0.2
    )
    hub.inject(REPO, name, Fault.stall(0.6, after_bytes=len(data) // 10))  # slow enough to be split into ranges

    result = download(
        HttpTransport(hub.url(REPO, name), policy=policy),
        partial,
        len(data),
        job=new_job("m", name, len(data)),
        label=f"m: {name}",
        policy=policy,
    )

    assert result.sha256 == hashlib.sha256(data).hexdigest() and partial.read_bytes() == data
    assert len([r for r in hub.requests if r.filename == name and r.origin == "cdn"]) > 1  # it did split
    assert {s: v.read_bytes() for s, v in victims.items()} == dict.fromkeys(victims, b"precious")


def test_gc_refuses_a_tmp_folder_that_is_a_planted_link(users, team_cache, tmp_path, run_cli):
    precious = tmp_path / "precious"
    precious.mkdir()
    for name in ("a" * 64 + ".partial", "notes.txt"):
        (precious / name).write_text("keep me")
    users.plant_link(precious, team_cache / "tmp")

    code, _out, err = run_cli("cache", "gc")

    assert sorted(os.listdir(precious)) == sorted(["a" * 64 + ".partial", "notes.txt"])
    _one_line_error(code, err)
    assert str(team_cache / "tmp") in err and "link" in err


@pytest.mark.parametrize("folder", ["blobs", "tmp", "locks", "views", "leases", "memo"])
def test_sync_refuses_a_cache_folder_that_is_a_link(lock, tmp_path, run_cli, folder):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = CacheSettings.resolve().root
    root.mkdir()
    (root / folder).symlink_to(elsewhere)

    code, _, err = run_cli("sync", "chat")

    _one_line_error(code, err)
    assert err.startswith(f"error: {root / folder} is a symbolic link")
    assert list(elsewhere.rglob("*")) == []


@pytest.mark.parametrize("folder", ["blobs", "tmp", "locks", "views", "leases", "memo"])
def test_a_cache_folder_that_is_a_file_is_named_as_one(lock, run_cli, folder):
    root = CacheSettings.resolve().root
    root.mkdir()
    (root / folder).write_text("")

    code, _, err = run_cli("sync", "chat")

    _one_line_error(code, err)
    assert err.startswith(f"error: {root / folder} is not a folder")


def test_a_cache_root_that_is_a_link_the_user_made_works(lock, tmp_path, monkeypatch, run_cli):
    real = tmp_path / "real-cache"
    real.mkdir()
    (tmp_path / "cache-link").symlink_to(real)
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(tmp_path / "cache-link"))

    code, _out, err = run_cli("sync", "chat")

    assert code == 0, err
    assert run_cli("verify", "--full", "chat")[0] == 0 and (real / "blobs").is_dir()


def test_gc_deletes_only_the_regular_files_it_made(users, lock, team_cache, tmp_path, run_cli):
    assert run_cli("sync", "chat")[0] == 0
    tmp = users.team_folder(team_cache / "tmp")  # as a team member's umask 002 would have made it
    victim = tmp_path / "victim"
    victim.write_text("precious")
    stale = tmp / f"{'1' * 64}.partial"
    stale.write_bytes(b"abandoned")
    planted = tmp / f"{'2' * 64}.partial"
    users.plant_link(victim, planted)
    assert users.run(users.OTHER, "cp", "/etc/hostname", str(tmp / "notes.txt")).returncode == 0

    code, _out, err = run_cli("cache", "gc")

    assert code == 0, err
    assert not stale.exists() and victim.read_text() == "precious"
    assert (tmp / "notes.txt").read_text() == Path("/etc/hostname").read_text()


def test_a_lock_file_that_is_a_link_is_not_followed(lock, tmp_path, run_cli):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    pin = Lockfile.load(lock).entry("chat").files[0]
    locks = CacheSettings.resolve().root / "locks"
    locks.mkdir(parents=True)
    (locks / f"{pin.sha256}.lock").symlink_to(victim)

    code, _, err = run_cli("sync", "chat")

    assert code == 0, err
    assert victim.read_text() == "precious" and not (locks / f"{pin.sha256}.lock").is_symlink()


@pytest.mark.parametrize("ids", ["old", "new"], ids=["ids-of-the-previous-version", "ids-with-ctime"])
def test_a_view_planted_by_another_user_is_not_served(users, lock, team_cache, ids):
    entry = Lockfile.load(lock).entry("chat")
    views = users.team_folder(team_cache / "views")
    planted = views / content_key(entry)
    files = [{"name": p.path, "sha256": p.sha256, "size": p.size} for p in entry.files]
    # The other user builds the view folder from files of their own, with a manifest whose ids match them.
    script = (
        "import json, os, sys\n"
        "view, files, fields = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])\n"
        "os.mkdir(view)\n"
        "for f in files:\n"
        "    path = os.path.join(view, f['name'])\n"
        "    with open(path, 'wb') as out: out.write(b'E' * f['size'])\n"
        "    st = os.stat(path)\n"
        "    f.update(how='hardlink', id=[st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns][:fields])\n"
        "json.dump({'files': files, 'models': ['chat']}, open(os.path.join(view, '.modelfix.json'), 'w'))\n"
    )
    made = users.run(
        users.OTHER, sys.executable, "-c", script, str(planted), json.dumps(files), "4" if ids == "old" else "5"
    )
    assert made.returncode == 0, made.stderr

    served = modelfix.files("chat", lock)

    assert [_sha(f) for f in served.files] == [p.sha256 for p in entry.files]


# --- 3. identity: ctime, adoption of other users' files ----------------------------------------------


def _rewrite_keeping_mtime(path: Path) -> None:
    """What a file's owner can do: other bytes, same size, the mtime put back."""
    before = path.stat()
    with open(path, "r+b") as f:  # root writes a read-only file; its owner would chmod u+w first
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


@pytest.mark.parametrize("warm", [True, False], ids=["same-process", "new-process"])
def test_bytes_rewritten_in_place_with_the_mtime_put_back_are_not_served(lock, hub, warm):
    m = modelfix.files("chat", lock)
    pin = m.entry.files[0]
    _rewrite_keeping_mtime(m.model_path)
    if not warm:
        modelfix.project._DEFAULTS.clear()  # what a new process knows: the manifest alone

    served = modelfix.path("chat", lock)

    assert _sha(served) == pin.sha256
    assert modelfix.verify(["chat"], lock, full=True) == []


def test_a_view_and_memo_of_the_previous_version_are_checked_once_and_keep_working(lock, hub):
    m = modelfix.files("chat", lock)
    store = Store(CacheSettings.resolve().root)
    manifest = m.view / ".modelfix.json"
    old = json.loads(manifest.read_text())
    for f in old["files"]:
        f["id"] = f["id"][:4]  # (dev, inode, size, mtime_ns): no ctime yet
    manifest.write_text(json.dumps(old))
    for pin in m.entry.files:
        memo = store._memo_path(pin.sha256)
        record = json.loads(memo.read_text())
        memo.write_text(json.dumps({**record, "id": record["id"][:4]}))
    modelfix.project._DEFAULTS.clear()
    hub.clear_log()

    served = modelfix.files("chat", lock)

    assert [_sha(f) for f in served.files] == [p.sha256 for p in m.entry.files]
    assert hub.requests == []
    assert all(len(f["id"]) == 5 for f in json.loads(manifest.read_text())["files"])


def test_only_files_of_this_user_or_root_are_adopted_by_hard_link(users, lock, tmp_path, monkeypatch):
    entry = Lockfile.load(lock).entry("chat")
    theirs, ours = entry.files[0], entry.files[1]
    cache = tmp_path / "hf" / "hub"
    hf = {}
    for pin in entry.files:
        hf[pin.sha256] = cache / "models--org--tiny" / "blobs" / pin.sha256
        hf[pin.sha256].parent.mkdir(parents=True, exist_ok=True)
    # Bytes from the hub itself, so that adoption has the right ones to take.
    modelfix.sync(["chat"], lock, cache_settings=CacheSettings.resolve(cache_dir=tmp_path / "donor"))
    donor = Store(tmp_path / "donor")
    for pin in entry.files:
        hf[pin.sha256].write_bytes(donor.blob_path(pin.sha256).read_bytes())
    os.chown(hf[theirs.sha256], users.OTHER, users.OTHER)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("MODELFIX_OFFLINE", "1")

    modelfix.files("chat", lock)

    store = Store(CacheSettings.resolve().root)
    assert not os.path.samefile(store.blob_path(theirs.sha256), hf[theirs.sha256])
    assert _sha(store.blob_path(theirs.sha256)) == theirs.sha256
    assert os.path.samefile(store.blob_path(ours.sha256), hf[ours.sha256])


def test_a_user_adopts_roots_files_without_download(users_python, lock, shared, tmp_path):
    users = users_python
    entry = Lockfile.load(lock).entry("chat")
    modelfix.sync(["chat"], lock, cache_settings=CacheSettings.resolve(cache_dir=tmp_path / "donor"))
    hf = shared / "hf" / "hub" / "models--org--tiny" / "blobs"
    hf.mkdir(parents=True)
    for pin in entry.files:  # root's, 0644: only root may write them
        shutil.copy(Store(tmp_path / "donor").blob_path(pin.sha256), hf / pin.sha256)
        (hf / pin.sha256).chmod(0o644)
    for folder in (shared / "hf", shared / "hf" / "hub", hf.parent, hf):
        folder.chmod(0o755)
    project, cache = shared / "project", shared / "cache"
    project.mkdir()
    cache.mkdir()
    os.chown(cache, users.OTHER, users.TEAM)
    shutil.copy(lock, project / "model-lock.toml")
    (project / "model-lock.toml").chmod(0o644)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cache), "MODELFIX_CACHE_DIR": str(cache)}
    env |= {"HF_HUB_CACHE": str(shared / "hf" / "hub"), "MODELFIX_OFFLINE": "1", "LLAMA_CACHE": str(cache / "llama")}
    command = "import sys; from modelfix.cli import main; sys.exit(main(sys.argv[1:]))"

    done = users.run(users.OTHER, sys.executable, "-c", command, "sync", "chat", cwd=project, env=env)

    assert done.returncode == 0, done.stderr  # offline: every file came from root's cache
    # Root's files may be linked (only root can write them); a kernel with protected hard links
    # lets a user link only files they own, and then they are copied. Either way root's stay as they were.
    linkable = Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "0"
    for pin in entry.files:
        blob = Store(cache).blob_path(pin.sha256)
        assert _sha(blob) == pin.sha256 and os.path.samefile(blob, hf / pin.sha256) == linkable
        assert (hf / pin.sha256).stat().st_mode & 0o777 == 0o644


# --- 5. a cache shared by a team ---------------------------------------------------------------------


def test_a_team_cache_in_a_setgid_folder_works_for_two_users(users_python, lock, hub, shared):
    users = users_python
    cache = users.team_folder(shared / "team-cache")
    project = shared / "project"
    project.mkdir()
    shutil.copy(lock, project / "model-lock.toml")
    (project / "model-lock.toml").chmod(0o644)

    def cli(uid: int, *args: str) -> subprocess.CompletedProcess:
        home = shared / f"home-{uid}"
        home.mkdir(exist_ok=True)
        os.chown(home, uid, users.TEAM)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "HF_HOME": str(home / "hf"),
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "MODELFIX_CACHE_DIR": str(cache),
        }
        command = "import os, sys; os.umask(0o002); from modelfix.cli import main; sys.exit(main(sys.argv[1:]))"
        return users.run(uid, sys.executable, "-c", command, *args, cwd=project, env=env)

    steps = [
        (users.ALICE, "sync", "chat"),
        (users.BOB, "--offline", "cache", "path", "chat"),  # takes a lease: locks/store.lock, leases/
        (users.BOB, "sync", "split"),  # shares mmproj and preset with chat
        (users.BOB, "cache", "rm", "chat"),
        (users.ALICE, "sync", "chat"),  # into folders and lock files that Bob made
        (users.BOB, "verify", "--full"),
        (users.ALICE, "cache", "gc"),
    ]
    for uid, *args in steps:
        done = cli(uid, *args)
        assert done.returncode == 0, f"{uid} {args}: {done.stderr}"
        assert "Traceback" not in done.stderr
    store_lock = cache / "locks" / "store.lock"
    assert store_lock.stat().st_mode & 0o060 == 0o060 and store_lock.stat().st_gid == users.TEAM


# --- 4. hostile Hub answers ------------------------------------------------------------------------

COMMIT = "c0ffee" + "0" * 34


class Hostile:
    """A Hub that misbehaves: ``answer(handler, path, query)`` writes each answer.

    The default answers serve ``evil/repo`` at COMMIT: one LFS model file and nothing else.
    """

    def __init__(self) -> None:
        self.overrides: dict[str, Callable[[BaseHTTPRequestHandler, dict], None]] = {}
        self.requests = 0
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this each answer waits on a delayed ACK.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                hostile.requests += 1
                parts = urlsplit(self.path)
                route = next((r for r in hostile.overrides if parts.path.startswith(r)), None)
                try:
                    if route is not None:
                        hostile.overrides[route](self, parse_qs(parts.query))
                    else:
                        hostile.default(self, parts.path)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on an endless answer: what it should do

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def default(self, handler: BaseHTTPRequestHandler, path: str) -> None:
        if path.startswith("/api/models/evil/repo/tree/"):
            send_json(handler, [lfs_entry("m-Q4_K_M.gguf")])
        elif path.startswith("/api/models/evil/repo"):
            send_json(handler, {"id": "evil/repo", "sha": COMMIT, "siblings": []})
        else:
            send_json(handler, {"error": "not here"}, status=404)


def lfs_entry(path: str, size: int = 1000) -> dict:
    sha = hashlib.sha256(path.encode()).hexdigest()
    return {
        "type": "file",
        "path": path,
        "size": size,
        "oid": "0" * 40,
        "lfs": {"oid": sha, "size": size, "pointerSize": 134},
    }


def send_json(handler: BaseHTTPRequestHandler, body, status: int = 200, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hostile]:
    server = Hostile()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield server
    server.server.shutdown()
    server.server.server_close()


BOMB_MIB = 256


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A model_info answer of 3 small fields and BOMB_MIB MiB of JSON whitespace, gzipped (~0.3 MB)."""
    squeeze = zlib.compressobj(6, zlib.DEFLATED, 31)
    pieces = [squeeze.compress(json.dumps({"id": "evil/repo", "sha": COMMIT, "siblings": []})[:-1].encode())]
    block = b" " * (1 << 20)
    pieces += [squeeze.compress(block) for _ in range(BOMB_MIB)]
    pieces += [squeeze.compress(b"}"), squeeze.flush()]
    return b"".join(pieces)


def test_a_gzip_bomb_for_model_info_is_cut_off_at_a_bound(hostile, bomb, workdir):
    def info(handler: BaseHTTPRequestHandler, query: dict) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(bomb)))
        handler.end_headers()
        handler.wfile.write(bomb)

    hostile.overrides["/api/models/evil/repo/revision/"] = info
    report = (
        "import resource, sys\n"
        "from modelfix.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", report, "add", "m", "evil/repo:Q4_K_M"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MODELFIX_RETRIES": "1"},
    )

    errors = [line for line in done.stderr.splitlines() if not line.startswith("maxrss")]
    _one_line_error(done.returncode, "\n".join(errors) + "\n")
    assert "evil/repo" in errors[0] and "MiB" in errors[0]
    peak_mib = int(done.stderr.rsplit("maxrss", 1)[1].split()[0]) / 1024
    assert peak_mib < BOMB_MIB, f"{peak_mib:.0f} MiB peak: the answer was decoded whole"
    assert time.monotonic() - started < 60
    assert not (workdir / "model-lock.toml").exists()


ENDLESS_PAGES = 5000  # the server's own bound, far above modelfix's


def _endless_tree(hostile: Hostile, delay: float = 0.0) -> None:
    def tree(handler: BaseHTTPRequestHandler, query: dict) -> None:
        page = int(query.get("cursor", ["0"])[0])
        time.sleep(delay)
        if page >= ENDLESS_PAGES:
            return send_json(handler, [lfs_entry("m-Q4_K_M.gguf")])
        link = f'<{hostile.endpoint}/api/models/evil/repo/tree/{COMMIT}?recursive=true&cursor={page + 1}>; rel="next"'
        send_json(handler, [lfs_entry(f"pad/{page:06d}.bin", 1)], headers={"Link": link})

    hostile.overrides["/api/models/evil/repo/tree/"] = tree


def test_endless_tree_pages_stop_at_a_bound(hostile, workdir, run_cli):
    _endless_tree(hostile)

    code, _out, err = run_cli("add", "m", "evil/repo:Q4_K_M")

    _one_line_error(code, err)
    assert "evil/repo" in err and "pages" in err
    assert hostile.requests < ENDLESS_PAGES
    assert not (workdir / "model-lock.toml").exists()


def test_slow_tree_pages_stop_at_a_time_bound(hostile, workdir, run_cli, monkeypatch):
    import modelfix.hub_api

    monkeypatch.setattr(modelfix.hub_api, "LISTING_SECONDS", 1.0)
    _endless_tree(hostile, delay=0.2)
    started = time.monotonic()

    code, _out, err = run_cli("add", "m", "evil/repo:Q4_K_M")

    _one_line_error(code, err)
    assert "evil/repo" in err and "1 s" in err
    assert time.monotonic() - started < 10


def test_an_endless_plain_file_is_read_to_its_declared_size_plus_one_byte(hostile, workdir, run_cli):
    def tree(handler: BaseHTTPRequestHandler, query: dict) -> None:
        preset = {"type": "file", "path": "preset.ini", "size": 10, "oid": "1" * 40}
        send_json(handler, [lfs_entry("m-Q4_K_M.gguf"), preset])

    def endless(handler: BaseHTTPRequestHandler, query: dict) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Connection", "close")  # no length: the body ends when the server says so
        handler.end_headers()
        chunk = b"[x]\nk = v\n" * 6554  # 64 KiB
        for _ in range(1024):  # 64 MiB, then the server stops
            handler.wfile.write(chunk)

    hostile.overrides["/api/models/evil/repo/tree/"] = tree
    hostile.overrides[f"/evil/repo/resolve/{COMMIT}/preset.ini"] = endless

    code, _out, err = run_cli("add", "m", "evil/repo:Q4_K_M")

    _one_line_error(code, err)
    assert "evil/repo" in err and "preset.ini" in err and "10 bytes" in err
    assert not (workdir / "model-lock.toml").exists()

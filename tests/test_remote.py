"""The remote tier: a team folder or an S3 bucket (moto's server, what s3fs tests itself with).

It is content-addressed like the store, so nobody has to trust it: a corrupt blob
there is skipped and fetched from the origin instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelfix
from modelfix.events import events
from modelfix.lockfile import Lockfile
from modelfix.locking import add
from modelfix.project import push
from modelfix.tiers import remote_url

REPO = "org/tiny"


@pytest.fixture(params=["folder", "s3"])
def remote(request, tmp_path, monkeypatch) -> Iterator[str]:
    """MODELFIX_REMOTE pointing at an empty team folder or an empty S3 bucket."""
    if request.param == "folder":
        url = str(tmp_path / "team-remote")
        monkeypatch.setenv("MODELFIX_REMOTE", url)
        yield url
        return
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    urllib.request.urlopen(
        urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    )  # state is per process
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("team-models")
    monkeypatch.setenv("MODELFIX_REMOTE", "s3://team-models/cache")
    try:
        yield "s3://team-models/cache"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


@pytest.fixture
def lock(hub, workdir) -> Path:
    path = workdir / "model-lock.toml"
    add("chat", f"{REPO}:Q4_0", path)
    return path


def _sources(fn) -> dict[str, str]:
    seen = []
    with events.listening(seen.append):
        fn()
    return {e.file: e.source for e in seen if e.kind == "job" and e.status == "completed"}


def _fresh_cache(monkeypatch, tmp_path, name: str) -> None:
    monkeypatch.setenv("MODELFIX_CACHE_DIR", str(tmp_path / name))


def test_push_fills_the_remote_and_a_fresh_machine_syncs_from_it(lock, hub, remote, tmp_path, monkeypatch):
    assert set(_sources(lambda: modelfix.sync(lock=lock)).values()) == {"origin"}  # the remote was empty

    first = push(lock=lock)
    again = push(lock=lock)

    assert {what for *_, what in first} == {"uploaded"} and {what for *_, what in again} == {"present"}
    _fresh_cache(monkeypatch, tmp_path, "other-machine")
    hub.clear_log()
    sources = _sources(lambda: modelfix.sync(lock=lock))
    assert set(sources.values()) == {"remote"}
    assert [r for r in hub.requests if r.method == "GET"] == []
    assert modelfix.verify(lock=lock, full=True) == []


def test_a_corrupt_blob_in_the_remote_is_skipped_for_the_origin(lock, hub, remote, tmp_path, monkeypatch):
    import fsspec

    modelfix.sync(lock=lock)
    push(lock=lock)
    pin = Lockfile.load(lock).entry("chat").files[0]
    fs, target = fsspec.core.url_to_fs(remote_url(remote, pin.sha256))
    data = bytearray(fs.cat_file(target))
    data[4242] ^= 0xFF
    fs.pipe_file(target, bytes(data))  # same size: only the hash can tell
    _fresh_cache(monkeypatch, tmp_path, "other-machine")
    hub.clear_log()

    sources = _sources(lambda: modelfix.sync(lock=lock))

    assert sources[pin.path] == "origin" and sources["preset.ini"] == "remote"
    path = modelfix.path("chat", lock)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pin.sha256

    # A copy of the right size passes for present; --force uploads it again, repaired.
    assert {what for *_, what in push(lock=lock)} == {"present"}
    assert {what for *_, what in push(lock=lock, force=True)} == {"uploaded"}
    assert hashlib.sha256(fs.cat_file(target)).hexdigest() == pin.sha256


def test_a_pipe_planted_in_a_remote_folder_is_skipped_not_waited_on(lock, hub, tmp_path, monkeypatch):
    # Anyone who may write the team folder can put a FIFO at a blob's name; opening one blocks
    # until a writer comes, so a sync that opened it would hang for ever.
    remote = tmp_path / "team-remote"
    monkeypatch.setenv("MODELFIX_REMOTE", str(remote))
    pin = Lockfile.load(lock).entry("chat").files[0]
    blob = Path(remote_url(str(remote), pin.sha256))
    blob.parent.mkdir(parents=True)
    os.mkfifo(blob)

    done = subprocess.run(
        [sys.executable, "-m", "modelfix", "sync", "chat"], cwd=lock.parent, capture_output=True, text=True, timeout=30
    )

    assert done.returncode == 0, done.stderr
    path = modelfix.path("chat", lock)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pin.sha256
    assert dict((file, what) for _, file, what in push(lock=lock))[pin.path] == "uploaded"
    assert blob.is_file() and hashlib.sha256(blob.read_bytes()).hexdigest() == pin.sha256


def test_push_without_a_remote_says_how_to_set_one(lock, monkeypatch):
    monkeypatch.delenv("MODELFIX_REMOTE", raising=False)
    with pytest.raises(modelfix.CacheError, match="set MODELFIX_REMOTE"):
        push(lock=lock)


@pytest.fixture
def http_mirror(tmp_path) -> Iterator[tuple[Path, str]]:
    """A folder served read-only over HTTP, as a team's web mirror of its remote would be."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path / "mirror"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_mirror_of_the_remote_is_read_but_never_pushed_to(lock, hub, http_mirror, tmp_path, monkeypatch):
    folder, url = http_mirror
    monkeypatch.setenv("MODELFIX_REMOTE", str(folder))
    modelfix.sync(lock=lock)
    push(lock=lock)
    monkeypatch.setenv("MODELFIX_REMOTE", url)
    _fresh_cache(monkeypatch, tmp_path, "other-machine")
    hub.clear_log()

    assert set(_sources(lambda: modelfix.sync(lock=lock)).values()) == {"remote"}
    assert [r for r in hub.requests if r.method == "GET"] == []
    with pytest.raises(modelfix.CacheError, match=r"read-only over HTTP: `modelfix push` to the storage behind it"):
        push(lock=lock)

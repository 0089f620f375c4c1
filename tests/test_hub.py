"""The local Hub against the real huggingface_hub client (and raw httpx2 for the faults)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

import modelfix.testing.hub as hub_module
from modelfix.lockfile import Lockfile
from modelfix.testing.hub import Fault, LocalHub

ROOT = Path(hub_module.__file__).resolve().parents[2]
GGUF = bytes(range(256)) * 2048  # 512 KiB; LFS by its name
README = b"# tiny\n"


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", **extra)
    return env


@pytest.fixture
def hub(local_hub: LocalHub) -> LocalHub:
    """Overrides conftest's ``hub``: this file tests the server alone, with hand-made bytes."""
    local_hub.create_repo("org/tiny")
    local_hub.commit("org/tiny", {"tiny-Q4_K_M.gguf": GGUF, "README.md": README, "sub/x-Q8_0.gguf": b"q8" * 10})
    return local_hub


def test_model_info_by_branch_tag_and_sha(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.endpoint)
    v1 = api.model_info("org/tiny").sha
    hub.create_tag("org/tiny", "v1", revision="main")
    v2 = hub.commit("org/tiny", {"README.md": b"new"}, message="docs")
    hub.create_branch("org/tiny", "dev", revision=v1)

    info = api.model_info("org/tiny", files_metadata=True)
    assert info.sha == v2 and len(v2) == 40 and v2 == v2.lower() and v2 != v1
    files = {s.rfilename: s for s in info.siblings}
    assert sorted(files) == ["README.md", "sub/x-Q8_0.gguf", "tiny-Q4_K_M.gguf"]
    assert files["tiny-Q4_K_M.gguf"].lfs.sha256 == hashlib.sha256(GGUF).hexdigest()
    assert files["tiny-Q4_K_M.gguf"].size == len(GGUF)
    assert files["README.md"].lfs is None and files["README.md"].blob_id == git_oid(b"new")
    for rev in ("v1", v1, "dev"):
        assert api.model_info("org/tiny", revision=rev).sha == v1
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/tiny", revision="nope")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")


def test_commit_semantics(hub: LocalHub) -> None:
    main = hub.commit("org/tiny", {"b.gguf": b"b"}, delete=["sub"])
    dev = hub.commit("org/tiny", {"c.gguf": b"c"}, branch="dev")  # new branch, from main's head
    api = HfApi(endpoint=hub.endpoint)
    assert {f.path for f in api.list_repo_tree("org/tiny", revision=dev)} == {
        "README.md",
        "b.gguf",
        "c.gguf",
        "tiny-Q4_K_M.gguf",
    }
    assert "c.gguf" not in {s.rfilename for s in api.model_info("org/tiny", revision=main).siblings}
    refs = api.list_repo_refs("org/tiny")
    assert {(b.name, b.ref, b.target_commit) for b in refs.branches} == {
        ("main", "refs/heads/main", main),
        ("dev", "refs/heads/dev", dev),
    }
    with pytest.raises(ValueError):
        hub.create_branch("org/tiny", "dev")


def test_tree_pagination_paths_info_and_refs(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.endpoint)
    hub.page_size = 2
    hub.create_tag("org/tiny", "v1")
    hub.clear_log()
    tree = list(api.list_repo_tree("org/tiny", recursive=True))
    assert [(type(e).__name__, e.path) for e in tree] == [
        ("RepoFile", "README.md"),
        ("RepoFolder", "sub"),
        ("RepoFile", "sub/x-Q8_0.gguf"),
        ("RepoFile", "tiny-Q4_K_M.gguf"),
    ]
    assert hub.count(method="GET", path_contains="/tree/main") == 2  # 4 entries, 2 a page
    lfs = {e.path: e.lfs for e in tree if hasattr(e, "lfs")}
    assert lfs["tiny-Q4_K_M.gguf"].sha256 == hashlib.sha256(GGUF).hexdigest() and lfs["README.md"] is None
    assert [e.path for e in api.list_repo_tree("org/tiny", path_in_repo="sub", revision="v1")] == ["sub/x-Q8_0.gguf"]
    assert [e.path for e in api.list_repo_tree("org/tiny")] == ["README.md", "sub", "tiny-Q4_K_M.gguf"]
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/tiny", path_in_repo="nope"))

    infos = api.get_paths_info("org/tiny", ["README.md", "sub", "missing.gguf"], expand=True)
    assert [(type(e).__name__, e.path) for e in infos] == [("RepoFile", "README.md"), ("RepoFolder", "sub")]
    assert infos[0].size == len(README) and infos[0].blob_id == git_oid(README)
    assert infos[0].last_commit.oid == api.model_info("org/tiny").sha

    refs = api.list_repo_refs("org/tiny")
    assert [t.name for t in refs.tags] == ["v1"] and refs.tags[0].ref == "refs/tags/v1" and refs.converts == []


def test_download_lfs_plain_and_disk_files(hub: LocalHub, tmp_path: Path) -> None:
    big = tmp_path / "weights.dat"  # LFS by size (> 10 MiB), served from disk
    big.write_bytes(os.urandom(1 << 20) * 11)
    sha = hub.commit("org/tiny", {"weights.dat": big})
    hub.clear_log()
    cache = tmp_path / "cache"
    path = hf_hub_download("org/tiny", "tiny-Q4_K_M.gguf", endpoint=hub.endpoint, cache_dir=cache)
    assert Path(path).read_bytes() == GGUF
    assert hub.count(method="HEAD", origin="api") == 1 and hub.count(method="GET", origin="cdn") == 1
    assert sha in path  # X-Repo-Commit named the snapshot
    path = hf_hub_download("org/tiny", "README.md", revision=sha, endpoint=hub.endpoint, cache_dir=cache)
    assert Path(path).read_bytes() == README and hub.count(filename="README.md", origin="api") == 2
    path = hf_hub_download("org/tiny", "weights.dat", endpoint=hub.endpoint, cache_dir=cache)
    assert Path(path).read_bytes() == big.read_bytes()
    hub.clear_log()
    hf_hub_download("org/tiny", "tiny-Q4_K_M.gguf", revision=sha, endpoint=hub.endpoint, cache_dir=cache)
    assert hub.requests == []  # warm with a full commit sha: no request at all

    fs = HfFileSystem(endpoint=hub.endpoint, skip_instance_cache=True)
    with fs.open("org/tiny/tiny-Q4_K_M.gguf", "rb") as f:
        f.seek(1000)
        assert f.read(300) == GGUF[1000:1300]


def test_private_repo_needs_its_token(local_hub: LocalHub, tmp_path: Path) -> None:
    local_hub.create_repo("org/secret", private=True, token="hf_good")
    local_hub.commit("org/secret", {"s.gguf": b"secret bytes", "README.md": b"hi"})
    for token in (None, "hf_bad"):
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=local_hub.endpoint, token=token).model_info("org/secret")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("org/secret", "s.gguf", token=token, endpoint=local_hub.endpoint, cache_dir=tmp_path)
    r = httpx2.head(local_hub.url("org/secret", "s.gguf"))
    assert r.status_code == 401 and r.headers["X-Error-Code"] == "RepoNotFound"
    assert HfApi(endpoint=local_hub.endpoint, token="hf_good").model_info("org/secret").private is True
    path = hf_hub_download("org/secret", "s.gguf", token="hf_good", endpoint=local_hub.endpoint, cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"secret bytes"


def test_errors_headers_and_ranges(hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/tiny", "README.md", revision="nope", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/tiny", "nope.gguf", endpoint=hub.endpoint, cache_dir=tmp_path)
    r = httpx2.get(hub.url("org/tiny", "nope.gguf"))
    assert (r.status_code, r.headers["X-Error-Code"], "error" in r.json()) == (404, "EntryNotFound", True)
    assert httpx2.get(f"{hub.endpoint}/api/models/org/none").headers["X-Error-Code"] == "RepoNotFound"

    sha = HfApi(endpoint=hub.endpoint).model_info("org/tiny").sha
    r = httpx2.head(hub.url("org/tiny", "tiny-Q4_K_M.gguf"))
    digest = hashlib.sha256(GGUF).hexdigest()
    assert r.status_code == 302 and r.headers["X-Repo-Commit"] == sha
    assert r.headers["X-Linked-Etag"] == f'"{digest}"' and r.headers["X-Linked-Size"] == str(len(GGUF))
    cdn = r.headers["Location"]
    assert cdn.startswith(hub.cdn_endpoint) and hub.cdn_endpoint != hub.endpoint
    with httpx2.Client() as c:
        for rng, status, body in (
            ("bytes=10-19", 206, GGUF[10:20]),
            ("bytes=524000-", 206, GGUF[524000:]),
            ("bytes=-5", 206, GGUF[-5:]),
            (None, 200, GGUF),
        ):
            r = c.get(cdn, headers={"Range": rng} if rng else {})
            assert (r.status_code, r.content) == (status, body)
            assert "X-Repo-Commit" not in r.headers and r.headers["Accept-Ranges"] == "bytes"
            assert not [h for h in r.headers if h.lower().startswith("x-xet")]
        assert c.get(cdn, headers={"Range": "bytes=10-19"}).headers["Content-Range"] == f"bytes 10-19/{len(GGUF)}"
        assert c.get(cdn, headers={"Range": f"bytes={len(GGUF)}-"}).status_code == 416
        r = c.get(hub.url("org/tiny", "README.md"), headers={"Range": "bytes=2-5"})
        assert (r.status_code, r.content, r.headers["X-Repo-Commit"]) == (206, README[2:6], sha)
        assert r.headers["ETag"] == f'"{git_oid(README)}"'


def test_faults_seen_raw(hub: LocalHub) -> None:
    url = hub.url("org/tiny", "tiny-Q4_K_M.gguf")
    with httpx2.Client(follow_redirects=True) as c:
        hub.inject("org/tiny", "tiny-Q4_K_M.gguf", Fault.status(500), times=1)
        assert [c.get(url).status_code for _ in range(2)] == [500, 200]
        hub.inject("org/tiny", "tiny-Q4_K_M.gguf", Fault.status(429, retry_after=1))
        r = c.get(url)
        assert (r.status_code, r.headers["Retry-After"]) == (429, "1")
        hub.inject("org/tiny", "tiny-Q4_K_M.gguf", Fault.reset(1000))
        with pytest.raises(httpx2.TransportError):
            c.get(url)
        hub.inject("org/tiny", "tiny-Q4_K_M.gguf", Fault.truncate(1000))
        with pytest.raises(httpx2.RemoteProtocolError):
            c.get(url)
        hub.inject("org/tiny", "tiny-Q4_K_M.gguf", Fault.corrupt(7))
        body = c.get(url).content
        assert len(body) == len(GGUF) and body != GGUF and body[:7] + body[8:] == GGUF[:7] + GGUF[8:]
        for fault in (Fault.stall(0.3), Fault.stall(0.3, after_bytes=100)):
            hub.inject("org/tiny", "tiny-Q4_K_M.gguf", fault)
            start = time.monotonic()
            assert c.get(url).content == GGUF and time.monotonic() - start >= 0.3
        hub.inject("org/tiny", "README.md", Fault.status(503), times=None)  # plain file: on resolve
        assert c.head(hub.url("org/tiny", "README.md")).status_code == 200  # HEAD is no byte download
        assert [c.get(hub.url("org/tiny", "README.md")).status_code for _ in range(3)] == [503] * 3
        hub.clear_faults()
        assert c.get(hub.url("org/tiny", "README.md")).content == README
    hub.inject("org/tiny", "tiny-Q4_K_M.gguf", Fault.truncate(1000))
    with pytest.raises(http.client.IncompleteRead) as e:
        urllib.request.urlopen(url).read()
    assert len(e.value.partial) == 1000


def test_real_client_under_faults(hub: LocalHub, tmp_path: Path) -> None:
    hub.inject("org/tiny", "tiny-Q4_K_M.gguf", Fault.status(500))
    with pytest.raises(HfHubHTTPError):
        hf_hub_download("org/tiny", "tiny-Q4_K_M.gguf", endpoint=hub.endpoint, cache_dir=tmp_path / "a")
    hub.inject("org/tiny", "tiny-Q4_K_M.gguf", Fault.corrupt(0))  # the client checks sizes, not hashes
    path = hf_hub_download("org/tiny", "tiny-Q4_K_M.gguf", endpoint=hub.endpoint, cache_dir=tmp_path / "b")
    assert Path(path).read_bytes() != GGUF


def test_request_log_and_admin_api(hub: LocalHub) -> None:
    hub.clear_log()
    httpx2.get(f"{hub.endpoint}/api/models/org/tiny/revision/main", params={"blobs": "true"})
    httpx2.get(hub.url("org/tiny", "tiny-Q4_K_M.gguf"), follow_redirects=True, headers={"Range": "bytes=0-9"})
    log = httpx2.get(f"{hub.endpoint}/_modelfix/requests").json()
    assert [(r["origin"], r["method"], r["status"], r["range"]) for r in log] == [
        ("api", "GET", 200, None),
        ("api", "GET", 302, "bytes=0-9"),
        ("cdn", "GET", 206, "bytes=0-9"),
    ]
    assert log[0]["query"] == "blobs=true" and log[0]["path"] == "/api/models/org/tiny/revision/main"
    assert hub.count(filename="tiny-Q4_K_M.gguf") == 2 and hub.count(origin="cdn", method="get") == 1
    assert hub.requests[2].repo == "org/tiny"
    assert httpx2.delete(f"{hub.cdn_endpoint}/_modelfix/requests").status_code == 204
    assert hub.requests == []


def test_hub_env_patches_this_process(hub_env: LocalHub, tmp_path: Path) -> None:
    import huggingface_hub

    hub_env.create_repo("org/env")
    hub_env.commit("org/env", {"e.gguf": b"env"})
    assert os.environ["HF_ENDPOINT"] == hub_env.endpoint and "HF_TOKEN" not in os.environ
    assert huggingface_hub.model_info("org/env").id == "org/env"
    assert Path(hf_hub_download("org/env", "e.gguf", cache_dir=tmp_path)).read_bytes() == b"env"


def test_subprocess_with_hf_endpoint(hub: LocalHub, tmp_path: Path) -> None:
    code = (
        "from huggingface_hub import hf_hub_download as d; import sys; "
        "sys.stdout.buffer.write(open(d('org/tiny', 'sub/x-Q8_0.gguf'), 'rb').read())"
    )
    env = child_env(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60, check=True)
    assert out.stdout == b"q8" * 10
    assert hub.count(filename="sub/x-Q8_0.gguf", origin="cdn") == 1


def test_cli_serves_a_folder(tmp_path: Path) -> None:
    (tmp_path / "m" / "deep").mkdir(parents=True)
    (tmp_path / "m" / "cli-Q4_K_M.gguf").write_bytes(GGUF)
    (tmp_path / "m" / "deep" / "preset.ini").write_bytes(b"[x]\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfix.testing.hub", "--repo", f"org/cli={tmp_path / 'm'}", "--page-size", "1"],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("HF_ENDPOINT=http://127.0.0.1:")
        endpoint = line.split("=", 1)[1]
        api = HfApi(endpoint=endpoint)
        assert [e.path for e in api.list_repo_tree("org/cli", recursive=True)] == [
            "cli-Q4_K_M.gguf",
            "deep",
            "deep/preset.ini",
        ]
        path = hf_hub_download("org/cli", "cli-Q4_K_M.gguf", endpoint=endpoint, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == GGUF
        log = json.loads(urllib.request.urlopen(f"{endpoint}/_modelfix/requests").read())
        assert sum(r["origin"] == "cdn" for r in log) == 1 and sum("/tree/" in r["path"] for r in log) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_cli_help_describes_every_flag(undocumented) -> None:
    assert undocumented(hub_module.build_parser()) == []
    for argv, shown in ((["--help"], "--repo ORG/NAME=DIR"), (["commit", "--help"], "--endpoint URL")):
        result = subprocess.run(
            [sys.executable, "-m", "modelfix.testing.hub", *argv], env=child_env(), capture_output=True, text=True
        )
        assert result.returncode == 0 and shown in result.stdout and "commit" in result.stdout


def _single_models(tiny_files: dict[str, Path]) -> list[str]:
    return [n for n in tiny_files if n.endswith(".gguf") and "mmproj" not in n and "-of-" not in n]


def test_cli_serves_several_commits_and_adds_one_so_lock_upgrade_moves_the_pin(
    tmp_path: Path, workdir: Path, tiny_files: dict[str, Path]
) -> None:
    """As a user tries `lock --upgrade` offline: serve v1 and v2, pin, commit v3 from the command line, upgrade."""
    model, other = _single_models(tiny_files)[:2]
    versions = {}
    for version, content in (("v1", model), ("v2", other), ("v3", model)):
        folder = tmp_path / version
        folder.mkdir()
        data = tiny_files[content].read_bytes() + (b"\0" * 32 if version == "v3" else b"")
        (folder / model).write_bytes(data)
        versions[version] = (folder, hashlib.sha256(data).hexdigest())
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [bin_dir / "modelfix-hub", "--repo", f"org/cli={versions['v1'][0]}", "--repo", f"org/cli={versions['v2'][0]}"],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = server.stdout.readline().strip().removeprefix("HF_ENDPOINT=")
        served = [server.stderr.readline().split() for _ in range(2)]  # org/cli  COMMIT  (main)  from DIR
        assert [(line[0], line[-1]) for line in served] == [
            ("org/cli", str(versions["v1"][0])),
            ("org/cli", str(versions["v2"][0])),
        ]
        first = served[0][1]
        env = child_env(HF_ENDPOINT=endpoint)

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

        assert run(bin_dir / "modelfix", "add", "m", f"hf://org/cli/{model}").returncode == 0
        assert run(bin_dir / "modelfix", "add", "old", f"hf://org/cli@{first}/{model}").returncode == 0
        pins = Lockfile.load(workdir / "model-lock.toml")
        assert pins.entry("m").files[0].sha256 == versions["v2"][1], "main is the last --repo's commit"
        assert pins.entry("old").files[0].sha256 == versions["v1"][1], "and the first is still served"

        added = run(bin_dir / "modelfix-hub", "commit", "org/cli", str(versions["v3"][0]), "-m", "v3")
        assert added.returncode == 0, added.stderr
        new_commit = added.stdout.strip()
        assert len(new_commit) == 40 and added.stderr.startswith(f"org/cli: commit {new_commit} on main, 1 file")
        assert run(bin_dir / "modelfix", "lock").stdout.endswith("up to date (2 models)\n"), "a pin stays put"
        assert Lockfile.load(workdir / "model-lock.toml").entry("m") == pins.entry("m")

        upgraded = run(bin_dir / "modelfix", "lock", "--upgrade", "--model", "m")
        assert upgraded.returncode == 0 and upgraded.stdout.startswith("Updated m: "), upgraded.stderr
        moved = Lockfile.load(workdir / "model-lock.toml").entry("m")
        assert (moved.revision, moved.files[0].sha256) == (new_commit, versions["v3"][1])
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


@pytest.mark.parametrize("case", ["no hub", "no folder", "no endpoint"])
def test_cli_commit_errors_are_one_line(tmp_path: Path, case: str) -> None:
    env = child_env() if case == "no endpoint" else child_env(HF_ENDPOINT="http://127.0.0.1:9")
    folder = tmp_path / ("missing" if case == "no folder" else "v")
    if case != "no folder":
        folder.mkdir()
        (folder / "x.gguf").write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, "-m", "modelfix.testing.hub", "commit", "org/x", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 if case != "no folder" else "usage:" in result.stderr
    expected = {"no hub": "http://127.0.0.1:9", "no folder": str(folder), "no endpoint": "--endpoint"}[case]
    assert expected in result.stderr

"""Source strings, and resolving Hub sources with the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from modelfix.errors import AuthError, LockError, NetworkError, SourceError
from modelfix.sources import FsspecSource, HubSource, parse_source
from modelfix.testing.gguf import write_tiny_model
from modelfix.testing.hub import Fault

TINY_REPO = "org/tiny"  # served by the `hub` fixture (conftest.py)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("text", "repo", "tag", "file", "revision"),
    [
        ("org/repo", "org/repo", None, None, None),
        ("org/repo:Q4_K_M", "org/repo", "Q4_K_M", None, None),
        ("hf://org/repo:Q4_K_M@dev", "org/repo", "Q4_K_M", None, "dev"),
        ("org/repo@v1.0:Q8_0", "org/repo", "Q8_0", None, "v1.0"),
        ("org/repo:Q8_0@refs/pr/1", "org/repo", "Q8_0", None, "refs/pr/1"),
        # the documented @REV-before-TAG form, and a named file, with a ref that holds slashes
        ("org/repo@refs/pr/1:Q8_0", "org/repo", "Q8_0", None, "refs/pr/1"),
        ("hf://org/repo@refs/pr/1/sub/m-Q4_0.gguf", "org/repo", None, "sub/m-Q4_0.gguf", "refs/pr/1"),
        ("hf://org/repo/sub/m-Q4_0.gguf", "org/repo", None, "sub/m-Q4_0.gguf", None),
        ("hf://org/repo@" + "a" * 40 + "/m.gguf", "org/repo", None, "m.gguf", "a" * 40),
        # a branch with a slash: as it is in the ORG/REPO forms, %2F in a named file's (as HfFileSystem writes it)
        ("org/repo@feature/x", "org/repo", None, None, "feature/x"),
        ("org/repo@feature/x:Q8_0", "org/repo", "Q8_0", None, "feature/x"),
        ("hf://org/repo@feature%2Fx/sub/m-Q4_0.gguf", "org/repo", None, "sub/m-Q4_0.gguf", "feature/x"),
        ("hf://org/repo@feature/x:Q8_0", "org/repo", "Q8_0", None, "feature/x"),
        ("hf://org/repo@feature/x", "org/repo", None, None, "feature/x"),
    ],
)
def test_hub_forms(text, repo, tag, file, revision):
    source = parse_source(text)
    assert isinstance(source, HubSource)
    assert (source.repo, source.tag, source.file, source.revision) == (repo, tag, file, revision)


@pytest.mark.parametrize(
    ("text", "url_end"),
    [
        ("https://example.com/m.gguf", "https://example.com/m.gguf"),
        ("s3://bucket/m.gguf", "s3://bucket/m.gguf"),
        ("./models/m.gguf", "/models/m.gguf"),
        ("models/m.gguf", "/models/m.gguf"),
    ],
)
def test_url_and_path_forms(tmp_path, text, url_end):
    source = parse_source(text, tmp_path)
    assert isinstance(source, FsspecSource) and source.url.endswith(url_end)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("org/-bad", "bad repository id"),
        ("org/re..po:Q4_0", "bad repository id"),
        ("org/repo:Q4 K", "bad tag"),
        ("hf://org/repo/../etc/m.gguf", "unsafe file path"),
        ("just-a-word", "cannot understand source 'just-a-word'"),
    ],
)
def test_bad_sources_say_what_is_expected(text, message):
    with pytest.raises((SourceError, LockError), match=message):
        parse_source(text)


def test_single_file_with_mmproj_and_preset(hub, tiny_files):
    pins = parse_source(f"{TINY_REPO}:Q4_0").resolve()
    assert [(f.path, f.role) for f in pins.files] == [
        ("tiny-Q4_0.gguf", "model"),
        ("mmproj-tiny-f16.gguf", "mmproj"),
        ("preset.ini", "preset"),
    ]
    for pin in pins.files:
        assert (pin.size, pin.sha256) == (tiny_files[pin.path].stat().st_size, sha256(tiny_files[pin.path]))
    assert len(pins.revision) == 40
    assert hub.count(origin="cdn") == 0, "locking must not download model bytes"


def test_split_set_in_load_order(hub, tiny_files):
    pins = parse_source(f"hf://{TINY_REPO}:q4_1").resolve()
    models = [f.path for f in pins.files if f.role == "model"]
    assert models == [f"tiny-Q4_1-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_explicit_file_brings_the_whole_split(hub):
    pins = parse_source(f"hf://{TINY_REPO}/tiny-Q4_1-00002-of-00003.gguf").resolve()
    assert [f.path for f in pins.files] == [f"tiny-Q4_1-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def test_no_tag_takes_q4_k_m_else_q8_0(hub):
    # The tiny repository has no K-quant (nothing can write one): llama.cpp's second choice wins.
    # test_selection checks the whole order on listings, Q4_K_M first.
    assert parse_source(TINY_REPO).resolve().files[0].path == "tiny-Q8_0.gguf"


@pytest.mark.parametrize(
    "link_base",
    [None, "", "http://hub-by-another-name.invalid:1"],
    ids=["absolute", "relative", "another-spelling-of-the-host"],
)
def test_pagination_is_followed_on_the_endpoint(hub, link_base):
    hub.page_size, hub.page_link_base = 2, link_base
    pins = parse_source(f"{TINY_REPO}:Q4_1").resolve()
    assert len(pins.files) == 5
    assert hub.count(path_contains="/tree/") >= 4  # every page was asked of the endpoint itself


def test_revisions_branch_tag_and_commit(hub, tiny_files, tmp_path):
    first = parse_source(TINY_REPO).resolve().revision
    hub.create_tag(TINY_REPO, "v1")
    (new_weights,) = write_tiny_model(tmp_path / "tiny-Q4_0.gguf", seed=7)
    second = hub.commit(TINY_REPO, {"tiny-Q4_0.gguf": new_weights})
    hub.create_branch(TINY_REPO, "dev", revision=first)
    assert parse_source(TINY_REPO).resolve().revision == second
    assert parse_source(f"{TINY_REPO}@v1").resolve().revision == first
    assert parse_source(f"{TINY_REPO}:Q4_0@dev").resolve().revision == first
    assert parse_source(f"{TINY_REPO}@{first}:Q4_0").resolve().files[0].sha256 == sha256(tiny_files["tiny-Q4_0.gguf"])


def test_a_pull_request_ref_resolves_in_every_form(hub, tiny_files):
    pr = hub.create_branch(TINY_REPO, "refs/pr/1")
    for text in (
        f"{TINY_REPO}@refs/pr/1:Q4_0",
        f"{TINY_REPO}:Q4_0@refs/pr/1",
        f"hf://{TINY_REPO}@refs/pr/1/tiny-Q4_0.gguf",
    ):
        assert parse_source(text).resolve().revision == pr, text


def test_a_branch_with_a_slash_resolves_in_every_form(hub):
    branch = hub.create_branch(TINY_REPO, "feature/x")
    for text in (
        f"{TINY_REPO}@feature/x",
        f"{TINY_REPO}@feature/x:Q4_0",
        f"{TINY_REPO}:Q4_0@feature/x",
        f"hf://{TINY_REPO}@feature%2Fx/tiny-Q4_0.gguf",
    ):
        assert parse_source(text).resolve().revision == branch, text


def test_missing_revision(hub):
    with pytest.raises(SourceError, match="revision 'nope' does not exist in org/tiny"):
        parse_source(f"{TINY_REPO}@nope").resolve()


def test_tag_without_match_lists_what_exists(hub):
    with pytest.raises(
        SourceError, match=r"tag 'Q3_K_S' matches no model file in org/tiny\. Available: .*tiny-Q8_0\.gguf"
    ):
        parse_source(f"{TINY_REPO}:Q3_K_S").resolve()


def test_missing_repo(hub):
    with pytest.raises(AuthError, match=r"repository 'org/nothing' was not found.*HF_TOKEN"):
        parse_source("org/nothing").resolve()


def _api_answers(hub) -> list[int]:
    return [r.status for r in hub.requests if r.path.startswith("/api/")]


@pytest.mark.parametrize(
    ("fault", "times"),
    [
        (Fault.status(503), 2),
        (Fault.status(429, retry_after=1), 1),
        (Fault.status(429, ratelimit_reset=1), 1),
        (Fault.reset(), 2),
    ],
    ids=["503", "429-retry-after", "429-ratelimit", "reset"],
)
def test_api_faults_are_retried_and_the_pins_do_not_change(hub, fault, times):
    clean = parse_source(f"{TINY_REPO}:Q4_0").resolve()
    hub.clear_log()
    hub.inject_api(TINY_REPO, fault, times=times)
    started = time.monotonic()

    assert parse_source(f"{TINY_REPO}:Q4_0").resolve() == clean
    assert _api_answers(hub)[: times + 1] == [fault.status_code] * times + [200]
    if fault.retry_after or fault.ratelimit_reset:  # the wait the Hub asked for, not a quick backoff
        assert time.monotonic() - started >= (fault.retry_after or fault.ratelimit_reset)


def test_a_hub_that_keeps_failing_is_a_network_error_naming_the_repo(hub, monkeypatch):
    monkeypatch.setenv("MODELFIX_RETRIES", "3")
    hub.inject_api(TINY_REPO, Fault.status(502), times=None)
    with pytest.raises(
        NetworkError, match=r"^org/tiny: the Hub answered HTTP 502 \(injected fault: 502\) \(gave up after 3 attempts\)"
    ):
        parse_source(f"{TINY_REPO}:Q4_0").resolve()
    assert _api_answers(hub) == [502] * 3


def test_a_client_error_is_not_retried(hub):
    hub.inject_api(TINY_REPO, Fault.status(400), times=None)
    with pytest.raises(NetworkError, match=r"^org/tiny: the Hub answered HTTP 400 \(injected fault: 400\)$"):
        parse_source(f"{TINY_REPO}:Q4_0").resolve()
    assert _api_answers(hub) == [400]


SECRET = "hf_SecretTokenValue12345"


def test_private_repo_needs_the_token(hub, tiny_files, monkeypatch):
    hub.create_repo("org/private", private=True, token=SECRET)
    hub.commit("org/private", {"p-Q4_0.gguf": tiny_files["tiny-Q4_0.gguf"]})
    with pytest.raises(AuthError, match="set HF_TOKEN"):
        parse_source("org/private").resolve()
    monkeypatch.setenv("HF_TOKEN", "hf_WrongTokenValue999999")
    with pytest.raises(SourceError) as wrong:
        parse_source("org/private").resolve()
    assert "hf_Wrong" not in str(wrong.value)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    pins = parse_source("org/private").resolve()
    assert pins.files[0].path == "p-Q4_0.gguf"
    assert SECRET not in repr(pins)


@pytest.mark.parametrize("source", ["org/nothing", f"{TINY_REPO}:Q4_0@no-such-branch"])
def test_a_mirror_s_password_in_hf_endpoint_never_reaches_an_error(hub, monkeypatch, source):
    """HF_ENDPOINT=https://user:password@mirror (a company's proxy of the Hub): errors name the
    mirror without its credentials."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint.replace("://", "://me:mirr0rPassw0rd@"))
    with pytest.raises(SourceError) as info:
        parse_source(source).resolve()
    assert "mirr0rPassw0rd" not in str(info.value) and "mirr0rPassw0rd" not in repr(info.value.args)


def test_unsafe_names_from_the_server_are_refused(hub, tmp_path):
    # The real Hub never lists such names; a hostile or broken server could.
    (extra,) = write_tiny_model(tmp_path / "extra-Q5_1.gguf", qtype="Q5_1")
    sha = hub.commit(TINY_REPO, {"extra-Q5_1.gguf": extra})
    tree = hub._repos[TINY_REPO].commits[sha].tree
    tree["../evil-Q5_1.gguf"] = tree.pop("extra-Q5_1.gguf")
    with pytest.raises(LockError, match=r"unsafe file path '../evil-Q5_1.gguf'"):
        parse_source(f"{TINY_REPO}:Q5_1").resolve()


def test_local_split_set_is_hashed_whole(tiny_files):
    first = tiny_files["tiny-Q4_1-00001-of-00003.gguf"]
    pins = parse_source(str(first)).resolve()
    assert [f.path for f in pins.files] == [f"tiny-Q4_1-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert pins.files[1].sha256 == sha256(first.parent / pins.files[1].path)
    assert pins.revision is None


def test_missing_local_file(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        parse_source("./absent.gguf", tmp_path).resolve()


def test_a_plugin_adds_a_scheme(tmp_path, tiny_files):
    from modelfix.hooks import hookimpl, plugin_manager

    class Mirror:
        @hookimpl
        def modelfix_parse_source(self, text, base_dir):
            if text.startswith("mirror:"):
                return FsspecSource(text=text, url=tiny_files[text.removeprefix("mirror:")].as_uri())

    pm = plugin_manager()
    pm.register(Mirror(), name="mirror")
    try:
        pins = parse_source("mirror:tiny-Q8_0.gguf").resolve()
    finally:
        pm.unregister(name="mirror")
    assert pins.files[0].sha256 == sha256(tiny_files["tiny-Q8_0.gguf"])


@pytest.mark.parametrize("name", ["a b/x.gguf", "uu/ü.gguf", "100%/x y.gguf"])
@pytest.mark.parametrize("form", ["relative", "absolute", "file URL"])
def test_local_paths_with_spaces_and_accents_pin_and_locate(tmp_path, tiny_files, name, form):
    file = tmp_path / name
    file.parent.mkdir()
    file.write_bytes(tiny_files["tiny-Q8_0.gguf"].read_bytes())
    text = {"relative": f"./{name}", "absolute": str(file), "file URL": file.as_uri()}[form]

    source = parse_source(text, tmp_path)
    pins = source.resolve()

    assert [(p.path, p.sha256) for p in pins.files] == [(file.name, sha256(file))]
    located = source.locate(pins.files[0], pins.revision).url
    assert Path(located).read_bytes() == file.read_bytes()


@pytest.fixture
def web(tmp_path):
    """A plain web server on a folder whose every file fails its first ``web.failures`` requests with 500."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from types import SimpleNamespace

    folder = tmp_path / "www"
    folder.mkdir()
    state = SimpleNamespace(folder=folder, failures=0, answers=[], failed={})

    class Flaky(SimpleHTTPRequestHandler):
        def send_head(self):
            failed = state.failed.setdefault(self.path, 0)
            if failed < state.failures:
                state.failed[self.path] = failed + 1
                state.answers.append((self.path, 500))
                self.send_error(500)
                return None
            # Logged before answering: the client may check the log as soon as it has the answer.
            state.answers.append((self.path, 200 if Path(self.translate_path(self.path)).is_file() else 404))
            return super().send_head()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Flaky, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_source_retries_server_errors_then_pins_every_part(web, tiny_files):
    parts = [f"tiny-Q4_1-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for part in parts:
        (web.folder / part).write_bytes(tiny_files[part].read_bytes())
    web.failures = 2  # every file, its existence probed and its bytes read, fails twice first

    pins = parse_source(f"{web.url}/{parts[0]}").resolve()

    assert [(p.path, p.sha256) for p in pins.files] == [(part, sha256(tiny_files[part])) for part in parts]
    for part in parts:
        assert [code for path, code in web.answers if path == f"/{part}"][:3] == [500, 500, 200]


def test_the_hub_s_download_link_pins_the_file_and_its_split_siblings_by_their_names(hub, tiny_files):
    """What the Hub's web page links to: .../resolve/main/x.gguf?download=true."""
    parts = [f"tiny-Q4_1-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    source = parse_source(hub.url(TINY_REPO, parts[0]) + "?download=true")

    pins = source.resolve()

    assert [(p.path, p.sha256) for p in pins.files] == [(part, sha256(tiny_files[part])) for part in parts]
    assert source.locate(pins.files[2], None).url == hub.url(TINY_REPO, parts[2]) + "?download=true"


def test_a_gguf_url_that_serves_a_web_page_is_refused_with_the_fix(web):
    """The address a browser shows for a Hub file (/blob/) is its web page, not its bytes."""
    page = web.folder / "org" / "repo" / "blob" / "main"
    page.mkdir(parents=True)
    (page / "m-Q4_0.gguf").write_text("<!doctype html><html><body>model card</body></html>")

    with pytest.raises(SourceError) as info:
        parse_source(f"{web.url}/org/repo/blob/main/m-Q4_0.gguf").resolve()

    assert "m-Q4_0.gguf is not a GGUF file (it starts b'<!doctyp')" in str(info.value)
    assert "use its download URL (/resolve/ instead of /blob/)" in str(info.value)


def test_a_url_source_whose_server_keeps_failing_is_a_network_error_naming_the_url(web, monkeypatch):
    monkeypatch.setenv("MODELFIX_RETRIES", "3")
    (web.folder / "m.gguf").write_bytes(b"GGUF")
    web.failures = 100

    with pytest.raises(NetworkError, match=rf"cannot read {web.url}/m.gguf: HTTP 500 \(gave up after 3 attempts\)"):
        parse_source(f"{web.url}/m.gguf").resolve()
    assert web.answers == [("/m.gguf", 500)] * 3


def test_a_url_source_on_a_closed_port_is_a_network_error_after_retries(monkeypatch, run_cli, workdir):
    import socket

    monkeypatch.setenv("MODELFIX_RETRIES", "2")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/m.gguf"

    code, _, err = run_cli("add", "m", url)

    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1
    assert f"cannot read {url}: ConnectError: [Errno 111] Connection refused (gave up after 2 attempts)" in err


def test_a_url_that_is_not_there_is_missing_after_one_request(web):
    with pytest.raises(SourceError, match=rf"no such file \({web.url}/absent.gguf\)"):
        parse_source(f"{web.url}/absent.gguf").resolve()
    assert web.answers == [("/absent.gguf", 404)]

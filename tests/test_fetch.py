"""Moving bytes: transports, retries on each kind of fault, resume, parallel ranges, cancel, jobs.

Everything runs against the real ``huggingface_hub`` HTTP client and the local Hub
(``hub`` fixture: ``org/tiny``), whose fault injection makes the network misbehave.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelfix.errors import CacheError, Cancelled, IntegrityError, NetworkError, SourceMissing
from modelfix.events import events
from modelfix.fetch import download
from modelfix.jobs import jobs, new_job
from modelfix.retry import FetchPolicy
from modelfix.testing.hub import Fault
from modelfix.transports import FsspecTransport, HttpTransport

REPO, FILE = "org/tiny", "tiny-Q4_0.gguf"
FAST = FetchPolicy(base_delay=0.01, read_timeout=0.5, attempts=3)


def _fetch(hub, tiny_files, tmp_path, policy=FAST, cancel=None, name=FILE):
    data = tiny_files[name].read_bytes()
    partial = tmp_path / "blob.partial"
    result = download(
        HttpTransport(hub.url(REPO, name), policy=policy),
        partial,
        len(data),
        job=new_job("m", name, len(data)),
        label=f"m: {name}",
        policy=policy,
        cancel=cancel,
    )
    return result, data, partial


def _byte_gets(hub, name=FILE):
    return [r for r in hub.requests if r.filename == name and r.method == "GET" and r.origin == "cdn"]


@pytest.mark.parametrize(
    "fault, resumes_at",
    [
        (Fault.status(500), None),
        (Fault.status(503), None),
        (Fault.status(429, retry_after=1), None),
        (Fault.status(429, ratelimit_reset=1), None),
        (Fault.reset(after_bytes=100_000), None),
        (Fault.truncate(after_bytes=100_000), 100_000),
        (Fault.stall(5, after_bytes=100_000), 100_000),
        (Fault.stall(5), None),
    ],
    ids=["500", "503", "429", "429-ratelimit", "reset", "truncate", "stall-mid-body", "stall-before-headers"],
)
def test_each_fault_is_retried_and_the_bytes_come_out_right(hub, tiny_files, tmp_path, fault, resumes_at):
    hub.inject(REPO, FILE, fault)
    started = time.monotonic()

    result, data, _ = _fetch(hub, tiny_files, tmp_path)

    assert result.sha256 == hashlib.sha256(data).hexdigest()
    gets = _byte_gets(hub)
    if fault.kind != "stall":  # a stalled answer is logged only once the hub gives up on it
        assert len(gets) == 2
    if resumes_at is not None:  # the retry asks only for what is missing
        assert gets[-1].range == f"bytes={resumes_at}-{len(data) - 1}"
    if fault.retry_after or fault.ratelimit_reset:  # Retry-After, or the Hub's quota reset, honoured
        assert time.monotonic() - started >= (fault.retry_after or fault.ratelimit_reset)


def test_a_server_that_answers_ranges_in_pieces_is_asked_for_the_rest_at_once(hub, tiny_files, tmp_path, caplog):
    """A 206 may hold less than the range asked for (its Content-Range says so): each piece is
    progress, so the next request goes out without a backoff (5 s here would make it crawl)."""
    hub.inject(REPO, FILE, Fault.short(64 * 1024), times=None)
    size = tiny_files[FILE].stat().st_size

    with caplog.at_level("INFO", logger="modelfix"):
        result, data, _ = _fetch(hub, tiny_files, tmp_path, policy=dataclasses.replace(FAST, base_delay=5.0))

    assert result.sha256 == hashlib.sha256(data).hexdigest()
    starts = [int(g.range.split("=")[1].split("-")[0]) for g in _byte_gets(hub)]
    assert starts == list(range(0, size, 64 * 1024))  # each request starts where the last piece ended
    assert not [r for r in caplog.records if "retrying in" in r.getMessage()]


def test_a_fault_that_never_clears_ends_in_a_network_error_naming_the_file(hub, tiny_files, tmp_path):
    hub.inject(REPO, FILE, Fault.status(502), times=None)

    with pytest.raises(NetworkError) as info:
        _fetch(hub, tiny_files, tmp_path)

    message = str(info.value)
    assert f"m: {FILE}" in message and "HTTP 502" in message and "3 failed attempts" in message
    assert len(_byte_gets(hub)) == 3


def test_a_file_that_is_not_there_is_reported_as_missing(hub, tmp_path):
    transport = HttpTransport(hub.url(REPO, "nope.gguf"), policy=FAST)
    with pytest.raises(SourceMissing, match="404"):
        download(transport, tmp_path / "p", 10, job=new_job("m", "nope.gguf", 10), label="m", policy=FAST)


def test_a_size_that_changed_upstream_is_an_integrity_error(hub, tiny_files, tmp_path):
    size = tiny_files[FILE].stat().st_size
    with pytest.raises(IntegrityError, match=f"now has {size} bytes.*pins {size + 5}"):
        download(
            HttpTransport(hub.url(REPO, FILE), policy=FAST),
            tmp_path / "p",
            size + 5,
            job=new_job("m", FILE, size + 5),
            label="m",
            policy=FAST,
        )


def test_a_partial_file_resumes_with_a_range_request(hub, tiny_files, tmp_path):
    data = tiny_files[FILE].read_bytes()
    (tmp_path / "blob.partial").write_bytes(data[:200_000])

    result, _, _ = _fetch(hub, tiny_files, tmp_path)

    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert [r.range for r in _byte_gets(hub)] == [f"bytes=200000-{len(data) - 1}"]


# Small enough that the tiny files count as large; a stall makes the stream slow.
SPLITTING = FetchPolicy(
    base_delay=0.01, read_timeout=30, parallel_min=100_000, min_range=32_768, split_after=0.2, connections=4
)


def test_a_slow_stream_of_a_large_file_is_split_into_parallel_ranges(hub, tiny_files, tmp_path):
    # The answer (a 206: ranges work) starts, then the stream goes slow.
    hub.inject(REPO, FILE, Fault.stall(1.0, after_bytes=20_000))

    result, data, partial = _fetch(hub, tiny_files, tmp_path, policy=SPLITTING)

    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert partial.read_bytes() == data
    ranges = [r.range for r in _byte_gets(hub)]
    assert len(set(ranges)) == 4 and f"bytes=0-{len(data) - 1}" in ranges


def test_files_already_streaming_side_by_side_are_not_split_further(hub, tiny_files, tmp_path):
    # Two slow files and two connections: each stream is one of them, nothing is spare to split with.
    # split_after leaves both threads ample time to open their streams before a split is weighed.
    policy = dataclasses.replace(SPLITTING, connections=2, split_after=1.0)
    names = ["tiny-Q4_0.gguf", "tiny-Q8_0.gguf"]
    for name in names:
        hub.inject(REPO, name, Fault.stall(2.5, after_bytes=20_000))
    results: dict[str, object] = {}

    def fetch(name: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        results[name] = _fetch(hub, tiny_files, folder, policy=policy, name=name)

    threads = [threading.Thread(target=fetch, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for name in names:
        result, data, _ = results[name]
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert len(_byte_gets(hub, name)) == 1, name


def test_no_split_before_the_server_shows_it_serves_ranges(hub, tiny_files, tmp_path):
    hub.inject(REPO, FILE, Fault.stall(1.0))  # no answer at all yet when the split would be decided

    result, data, _ = _fetch(hub, tiny_files, tmp_path, policy=SPLITTING)

    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert len(_byte_gets(hub)) == 1


def test_a_fast_stream_is_not_split(hub, tiny_files, tmp_path):
    _fetch(hub, tiny_files, tmp_path, policy=SPLITTING)

    assert len(_byte_gets(hub)) == 1


def test_a_stream_held_back_by_this_machine_not_the_link_is_not_split(hub, tiny_files, tmp_path, monkeypatch):
    # A slow disk (simulated: each write takes 0.5 s) makes the stream slow, but its bytes came at
    # once: more connections would only compete for the same disk and cores.
    write = os.pwrite

    def slow_disk(fd: int, data: memoryview, offset: int) -> int:
        time.sleep(0.5)
        return write(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", slow_disk)

    result, data, partial = _fetch(hub, tiny_files, tmp_path, policy=SPLITTING)

    assert result.sha256 == hashlib.sha256(data).hexdigest() and partial.read_bytes() == data
    assert len(_byte_gets(hub)) == 1


def test_parallel_ranges_resume_each_from_the_journal_after_a_cancel(hub, tiny_files, tmp_path):
    policy = SPLITTING
    size = tiny_files[FILE].stat().st_size
    hub.inject(REPO, FILE, Fault.stall(30, after_bytes=20_000), times=4)  # slow, split, and every range stalls
    cancel = threading.Event()
    partial = tmp_path / "blob.partial"
    journal = partial.with_name(partial.name + ".ranges")
    threading.Timer(1.0, cancel.set).start()

    with pytest.raises(Cancelled):
        _fetch(hub, tiny_files, tmp_path, policy=policy, cancel=cancel)
    assert journal.exists()
    hub.clear_faults()
    hub.clear_log()

    result, data, _ = _fetch(hub, tiny_files, tmp_path, policy=policy)

    assert result.sha256 == hashlib.sha256(data).hexdigest()
    fetched = 0
    for r in _byte_gets(hub):
        first, last = map(int, r.range.removeprefix("bytes=").split("-"))
        fetched += last - first + 1
    assert fetched == size - 4 * 20_000  # nothing fetched twice


@pytest.mark.parametrize("damage", ["truncated", "replaced"])
def test_a_journal_that_claims_more_than_the_partial_holds_starts_afresh(hub, tiny_files, tmp_path, damage):
    # A partial cut short or swapped behind its journal (a crash that kept the journal's rename but
    # not the bytes, a restored cache, a hand): resuming would wait for bytes that are not there.
    hub.inject(REPO, FILE, Fault.stall(30, after_bytes=20_000), times=4)
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    with pytest.raises(Cancelled):
        _fetch(hub, tiny_files, tmp_path, policy=SPLITTING, cancel=cancel)
    partial = tmp_path / "blob.partial"
    assert partial.with_name(partial.name + ".ranges").exists()
    if damage == "truncated":
        os.truncate(partial, 1000)
    else:
        partial.unlink()
        partial.write_bytes(b"")
    hub.clear_faults()

    result, data, _ = _fetch(hub, tiny_files, tmp_path, policy=SPLITTING)

    assert result.sha256 == hashlib.sha256(data).hexdigest() and partial.read_bytes() == data


def test_a_disk_that_fills_while_ranges_run_leaves_only_the_partial_and_its_journal(hub, tiny_files, small_disk):
    # The last journal write (after a range failed) meets the full disk too: its temporary file must go.
    hub.inject(REPO, FILE, Fault.stall(1.0, after_bytes=20_000))  # slow: split into ranges, journaled

    with pytest.raises(CacheError, match="No space left on device"):
        _fetch(hub, tiny_files, small_disk, policy=SPLITTING)  # its partial: small_disk / "blob.partial"

    assert sorted(os.listdir(small_disk)) == ["blob.partial", "blob.partial.ranges"]


def test_a_slow_server_that_ignores_ranges_is_not_split(hub, tiny_files, tmp_path):
    hub.honour_ranges = False  # a mirror or proxy answering every byte request with the whole file
    hub.inject(REPO, FILE, Fault.stall(1.0, after_bytes=10_000))  # slow enough to want a split

    result, data, partial = _fetch(hub, tiny_files, tmp_path, policy=SPLITTING)

    assert result.sha256 == hashlib.sha256(data).hexdigest() and partial.read_bytes() == data
    assert [r.status for r in _byte_gets(hub)] == [200]  # one stream, never restarted


def test_ranges_resumed_from_a_journal_fall_back_to_the_whole_file_when_ranges_stop_working(hub, tiny_files, tmp_path):
    hub.inject(REPO, FILE, Fault.stall(30, after_bytes=20_000), times=4)  # slow, split, every range stalls
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    with pytest.raises(Cancelled):
        _fetch(hub, tiny_files, tmp_path, policy=SPLITTING, cancel=cancel)
    assert (tmp_path / "blob.partial.ranges").exists()
    hub.clear_faults()
    hub.honour_ranges = False  # the next run goes through a proxy that ignores ranges
    hub.clear_log()

    result, data, partial = _fetch(hub, tiny_files, tmp_path, policy=SPLITTING)

    assert result.sha256 == hashlib.sha256(data).hexdigest() and partial.read_bytes() == data
    assert _byte_gets(hub)[-1].range in (None, "", f"bytes=0-{len(data) - 1}")


def test_cancel_stops_a_stalled_download_and_keeps_the_partial(hub, tiny_files, tmp_path):
    hub.inject(REPO, FILE, Fault.stall(30, after_bytes=150_000))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    policy = FetchPolicy(base_delay=0.01, read_timeout=1)
    started = time.monotonic()

    with pytest.raises(Cancelled, match="resumes next time"):
        _fetch(hub, tiny_files, tmp_path, policy=policy, cancel=cancel)

    assert time.monotonic() - started < 5
    assert (tmp_path / "blob.partial").stat().st_size == 150_000


def test_fsspec_urls_and_missing_files(tmp_path):
    data = b"x" * 3_000_000
    (tmp_path / "src.gguf").write_bytes(data)
    transport = FsspecTransport((tmp_path / "src.gguf").as_uri())

    result = download(transport, tmp_path / "p", len(data), job=new_job("m", "src", len(data)), label="m")

    assert result.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(SourceMissing):
        download(FsspecTransport("memory://nowhere/x"), tmp_path / "q", 1, job=new_job("m", "x", 1), label="m")


def test_a_job_reports_its_progress_as_events(hub, tiny_files, tmp_path):
    seen = []
    with events.listening(seen.append):
        _fetch(hub, tiny_files, tmp_path)

    mine = [e for e in seen if e.kind == "job" and e.file == FILE]
    assert mine[0].status == "queued"
    assert any(e.done > 0 for e in mine)
    snapshot = [j for j in jobs() if j.file == FILE][-1]
    assert snapshot.size == tiny_files[FILE].stat().st_size


class _Recorder(BaseHTTPRequestHandler):
    """Answers like the Hub: the API origin redirects, the CDN origin serves bytes."""

    seen: list[tuple[str, str | None]] = []
    cdn: str = ""
    body = b"0123456789" * 1000

    def do_GET(self) -> None:
        origin = "api" if self.server.server_port == type(self).api_port else "cdn"
        type(self).seen.append((origin, self.headers.get("Authorization")))
        if origin == "api":
            self.send_response(302)
            self.send_header("Location", f"{type(self).cdn}/blob")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def test_the_token_goes_to_the_hub_origin_only_never_to_the_cdn(tmp_path):
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Recorder) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    api, cdn = (f"http://127.0.0.1:{s.server_port}" for s in servers)
    _Recorder.api_port, _Recorder.cdn, _Recorder.seen = servers[0].server_port, cdn, []
    try:
        transport = HttpTransport(
            f"{api}/org/x/resolve/main/f.gguf", policy=FAST, token="hf_secret_token_123", token_origin=api
        )
        size = len(_Recorder.body)
        download(transport, tmp_path / "p", size, job=new_job("m", "f", size), label="m")
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()

    assert _Recorder.seen == [("api", "Bearer hf_secret_token_123"), ("cdn", None)]

"""HttpTransport's receive path, against small servers of the test's own.

A body is read from the connection's socket straight into the caller's buffer; everything
around it must keep working: TLS, proxies (``HTTPS_PROXY``, ``HTTP_PROXY``), redirects (relative,
to another origin, signed URLs), the token going to the Hub's origin only, and answers the fast
path must not take (chunked) or must refuse (compressed), or that end early. Faults of the
local hub (resets, truncations, stalls, ignored ranges) are in test_fetch.py.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import ipaddress
import os
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from modelfix.errors import NetworkError
from modelfix.fetch import FetchPolicy, download
from modelfix.jobs import new_job
from modelfix.transports import HttpTransport

DATA = os.urandom(3 * 1024 * 1024 + 12_345)  # several buffers and a partial one
POLICY = FetchPolicy(base_delay=0.01, read_timeout=5, attempts=3)
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _fresh_session(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No proxy of the developer's; huggingface_hub's session made anew (it reads the
    environment, proxies and SSL_CERT_FILE included, when it is created)."""
    from huggingface_hub.utils import close_session

    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    close_session()
    yield
    close_session()


class _Origin:
    """A server of ``DATA`` at any path, with ``Range`` (206). ``mode`` changes how it answers:

    * ``plain``: status line, headers and the first 64 KiB of the body in one write, so that
      the client's HTTP parser has part of the body before the socket is read directly;
    * ``chunked``: ``Transfer-Encoding: chunked``; ``gzip``: the body compressed;
    * ``pieces``: at most ``PIECE`` bytes per answer, the Content-Range saying so.

    ``redirects`` maps a path to the ``Location`` of a 302. Every request is logged as
    (path, query, Authorization, Range).
    """

    PIECE = 300_000

    def __init__(self, mode: str = "plain", tls: ssl.SSLContext | None = None) -> None:
        self.mode, self.redirects, self.seen = mode, {}, []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                split = urlsplit(self.path)  # absolute when it came through a forwarding proxy
                origin.seen.append((split.path, split.query, self.headers.get("Authorization"), self.headers["Range"]))
                if split.path in origin.redirects:
                    self.send_response(302)
                    self.send_header("Location", origin.redirects[split.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                origin.answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        first, last = 0, len(DATA) - 1
        asked = handler.headers["Range"]
        if asked:
            a, b = asked.removeprefix("bytes=").split("-")
            first, last = int(a), min(int(b or last), last)
        if self.mode == "pieces":
            last = min(last, first + self.PIECE - 1)
        body = DATA[first : last + 1]
        head = [f"HTTP/1.1 {206 if asked else 200} OK", "Content-Type: application/octet-stream"]
        if asked:
            head.append(f"Content-Range: bytes {first}-{last}/{len(DATA)}")
        if self.mode == "gzip":
            body = gzip.compress(body, compresslevel=1)
            head.append("Content-Encoding: gzip")
        if self.mode == "chunked":
            head.append("Transfer-Encoding: chunked")
            handler.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
            for i in range(0, len(body), 100_000):
                piece = body[i : i + 100_000]
                handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            handler.wfile.write(b"0\r\n\r\n")
            return
        head.append(f"Content-Length: {len(body)}")
        handler.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body[:65536])
        handler.wfile.write(body[65536:])


class _Proxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy: ``CONNECT host:port`` tunnels (HTTPS_PROXY), an absolute-form request is
    forwarded as is (HTTP_PROXY). Logs each request line."""

    daemon_threads = True

    def __init__(self) -> None:
        self.lines: list[str] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: _Proxy

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            got = self.request.recv(65536)
            if not got:
                return
            head += got
        line = head.split(b"\r\n", 1)[0].decode()
        self.server.lines.append(line)
        method, target, _ = line.split(" ")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            parts = urlsplit(target)
            upstream = socket.create_connection((parts.hostname, parts.port))
            upstream.sendall(head)
        with upstream:
            back = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
            back.start()
            _pipe(self.request, upstream)
            back.join()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert.pem, key.pem)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelfix test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def origin(request: pytest.FixtureRequest, certificate, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Origin]:
    """An :class:`_Origin`; ``@pytest.mark.parametrize("origin", [(mode, tls)], indirect=True)``."""
    mode, tls = getattr(request, "param", ("plain", False))
    context = None
    if tls:
        cert, key = certificate
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts it, as a user's CA bundle
    server = _Origin(mode, context)
    yield server
    server.close()


@pytest.fixture
def proxy() -> Iterator[_Proxy]:
    server = _Proxy()
    yield server
    server.close()


def _download(url: str, tmp_path: Path, **transport: object) -> bytes:
    partial = tmp_path / "blob.partial"
    result = download(
        HttpTransport(url, policy=POLICY, **transport),
        partial,
        len(DATA),
        job=new_job("m", "f.gguf", len(DATA)),
        label="m: f.gguf",
        policy=POLICY,
    )
    assert result.sha256 == hashlib.sha256(DATA).hexdigest()
    return partial.read_bytes()


def _read(url: str, start: int, end: int, buffer_size: int = 1 << 20) -> tuple[bytes, bool]:
    """``read(start, end)`` through ``Body.readinto``: the bytes, and whether they came from the socket."""
    out = bytearray()
    buffer = memoryview(bytearray(buffer_size))
    with HttpTransport(url, policy=POLICY).read(start, end) as body:
        while got := body.readinto(buffer):
            out += buffer[:got]
        return bytes(out), body.fill is not None


@pytest.mark.parametrize("origin", [("plain", False), ("plain", True)], indirect=True, ids=["http", "https"])
def test_a_range_is_read_from_the_socket_into_the_callers_buffer(origin, tmp_path):
    got, from_socket = _read(f"{origin.url}/f.gguf", 1_000_001, 2_500_000, buffer_size=100_000)

    assert got == DATA[1_000_001:2_500_000]
    assert from_socket
    assert _download(f"{origin.url}/f.gguf", tmp_path) == DATA


@pytest.mark.parametrize("origin", [("plain", True)], indirect=True)
def test_https_goes_through_the_proxy_of_https_proxy(origin, proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)

    got, from_socket = _read(f"{origin.url}/f.gguf", 5, 3_000_000)

    assert got == DATA[5:3_000_000] and from_socket  # TLS over the tunnel is TLS on a socket
    assert _download(f"{origin.url}/f.gguf", tmp_path) == DATA
    port = urlsplit(origin.url).port
    assert proxy.lines and all(line == f"CONNECT 127.0.0.1:{port} HTTP/1.1" for line in proxy.lines)


def test_http_goes_through_the_proxy_of_http_proxy(origin, proxy, tmp_path, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)

    assert _download(f"{origin.url}/f.gguf", tmp_path) == DATA

    assert proxy.lines and all(line.startswith(f"GET {origin.url}/f.gguf ") for line in proxy.lines)


@pytest.mark.parametrize("origin", [("chunked", False)], indirect=True)
def test_a_chunked_answer_is_read_whole_without_the_socket_path(origin, tmp_path):
    got, from_socket = _read(f"{origin.url}/f.gguf", 10, 2_000_000)

    assert got == DATA[10:2_000_000] and not from_socket
    assert _download(f"{origin.url}/f.gguf", tmp_path) == DATA


@pytest.mark.parametrize("origin", [("gzip", False)], indirect=True)
def test_a_compressed_answer_is_refused_and_nothing_is_written(origin, tmp_path):
    with pytest.raises(NetworkError, match=r"m: f\.gguf: .*Content-Encoding: gzip.*NO_PROXY") as info:
        _download(f"{origin.url}/f.gguf", tmp_path)

    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    assert (tmp_path / "blob.partial").stat().st_size == 0
    assert len(origin.seen) == 1  # not worth a retry


@pytest.mark.parametrize("origin", [("pieces", False)], indirect=True)
def test_answers_shorter_than_asked_are_resumed_where_they_stopped(origin, tmp_path):
    assert _download(f"{origin.url}/f.gguf", tmp_path) == DATA

    starts = [int(r.removeprefix("bytes=").split("-")[0]) for *_, r in origin.seen]
    assert starts == list(range(0, len(DATA), _Origin.PIECE))  # each asks for the rest, nothing twice


def test_redirects_keep_the_token_on_the_hub_origin_and_the_signed_url_whole(origin, tmp_path):
    cdn = _Origin()
    try:
        origin.redirects = {
            "/org/x/resolve/main/f.gguf": "/org/y/resolve/main/f.gguf",  # relative: a renamed repository
            "/org/y/resolve/main/f.gguf": f"{cdn.url}/blob?X-Amz-Signature=abc%2F1&Expires=9",
        }
        assert _download(f"{origin.url}/org/x/resolve/main/f.gguf", tmp_path, token="hf_tok", token_origin=origin.url)
    finally:
        cdn.close()

    assert [(path, auth) for path, _, auth, _ in origin.seen] == [
        ("/org/x/resolve/main/f.gguf", "Bearer hf_tok"),
        ("/org/y/resolve/main/f.gguf", "Bearer hf_tok"),
    ]
    assert [(path, query, auth) for path, query, auth, _ in cdn.seen] == [
        ("/blob", "X-Amz-Signature=abc%2F1&Expires=9", None)
    ]

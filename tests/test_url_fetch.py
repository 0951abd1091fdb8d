"""The hardened URL fetch against a local server on 127.0.0.1: slow drips cut at the deadline, oversized
bodies, redirects to file:// or to a private address, retries on 5xx/429 only, and the address check.

No test sends traffic anywhere but 127.0.0.1: other addresses come from a patched getaddrinfo, and a
spy on socket connections checks that nothing else is ever connected to.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_url_fetch.py
"""

from __future__ import annotations

import collections
import http.server
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from pipelines import url_fetch
from pipelines.source_files import read_location
from pipelines.url_fetch import FetchError, FetchSettings

IMAGE = b"\xff\xd8\xff" + bytes(range(256)) * 4
DRIP_SECONDS = 5.0  # a drip handler gives up by itself after this long


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves the test routes; `hits` counts requests per path."""

    hits: collections.Counter = collections.Counter()
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, data: bytes) -> None:
        """Writes `data` 8 bytes a second (each write well within any per-read timeout)."""
        start = time.monotonic()
        for offset in range(0, len(data), 8):
            if time.monotonic() - start > DRIP_SECONDS:
                return
            try:
                self.wfile.write(data[offset:offset + 8])
                self.wfile.flush()
            except OSError:  # the client hung up
                return
            time.sleep(1.0)

    def do_GET(self):  # noqa: N802 (http.server's name)
        Handler.hits[self.path] += 1
        count = Handler.hits[self.path]
        port = self.server.server_address[1]
        routes = {
            "/image.jpg": lambda: self._send(200, IMAGE),
            "/missing": lambda: self._send(404, b"no"),
            "/flaky": lambda: self._send(500, b"try again") if count == 1 else self._send(200, IMAGE),
            "/busy": lambda: self._send(429, b"slow down", {"Retry-After": "100"}),
            "/big": lambda: self._send(200, b"\0" * (2 * 2**20)),
            "/to_image": lambda: self._send(302, headers={"Location": "/image.jpg"}),
            "/to_file": lambda: self._send(302, headers={"Location": "file:///etc/passwd"}),
            "/to_private": lambda: self._send(302, headers={"Location": f"http://10.0.0.1:{port}/image.jpg"}),
            "/loop": lambda: self._send(302, headers={"Location": "/loop"}),
        }
        if self.path in routes:
            routes[self.path]()
        elif self.path == "/big_chunked":  # no Content-Length: only reading tells the size
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                for _ in range(64):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        elif self.path == "/drip_body":
            self.send_response(200)
            self.send_header("Content-Length", "4096")
            self.end_headers()
            self.wfile.flush()
            self._drip(b"x" * 4096)
        elif self.path == "/drip_headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self._drip(b"X-Slow: " + b"a" * 4096)
        else:
            self._send(500, b"unknown route")


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1 in a thread; yields its base URL."""
    Handler.hits = collections.Counter()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def connections(monkeypatch):
    """Every address a socket connects to during the test; fails at once on any but 127.0.0.1."""
    connected = []

    class SpySocket(socket.socket):
        def connect(self, address):
            connected.append(address[0])
            assert address[0] == "127.0.0.1", f"a test tried to connect to {address}"
            return super().connect(address)

    monkeypatch.setattr(url_fetch.socket, "socket", SpySocket)
    return connected


LOCAL = FetchSettings(allow_private_urls=True, timeout_seconds=5.0, backoff_seconds=0.25, max_backoff_seconds=0.5)


def test_fetches_an_image_and_follows_a_redirect(server, connections):
    assert url_fetch.fetch(f"{server}/image.jpg", LOCAL) == IMAGE
    assert url_fetch.fetch(f"{server}/to_image", LOCAL) == IMAGE
    assert read_location(f"{server}/image.jpg", LOCAL) == IMAGE
    assert set(connections) == {"127.0.0.1"}


@pytest.mark.parametrize("path", ["/drip_body", "/drip_headers"])
def test_a_slow_drip_is_cut_off_at_the_deadline(server, connections, path):
    settings = FetchSettings(allow_private_urls=True, timeout_seconds=1.5)
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"deadline of 1\.5 s passed"):
        url_fetch.fetch(f"{server}{path}", settings)
    assert 1.4 < time.monotonic() - start < 2.5


@pytest.mark.parametrize("path", ["/big", "/big_chunked"])
def test_an_oversized_body_is_refused(server, connections, path):
    settings = FetchSettings(allow_private_urls=True, max_bytes=2**20)
    with pytest.raises(FetchError, match=r"over the limit of 1048576 bytes"):
        url_fetch.fetch(f"{server}{path}", settings)


def test_a_redirect_to_file_is_refused(server, connections):
    with pytest.raises(FetchError, match=r"redirect to file:///etc/passwd: only http and https"):
        url_fetch.fetch(f"{server}/to_file", LOCAL)


def test_redirects_are_limited(server, connections):
    with pytest.raises(FetchError, match=r"more than 5 redirects"):
        url_fetch.fetch(f"{server}/loop", LOCAL)
    assert Handler.hits["/loop"] == 6


def test_a_redirect_to_a_private_address_is_refused_without_the_flag(server, connections, monkeypatch):
    # Only the test server itself counts as public here; every other address is judged as usual.
    judge = url_fetch.address_problem
    monkeypatch.setattr(url_fetch, "address_problem",
                        lambda address, allow: None if str(address) == "127.0.0.1" else judge(address, allow))
    settings = FetchSettings(timeout_seconds=5.0)
    assert url_fetch.fetch(f"{server}/image.jpg", settings) == IMAGE
    with pytest.raises(FetchError, match=r"redirected to http://10\.0\.0\.1:\d+/image\.jpg\): host 10\.0\.0\.1 "
                                         r"resolves to 10\.0\.0\.1, a private address"):
        url_fetch.fetch(f"{server}/to_private", settings)
    assert set(connections) == {"127.0.0.1"}


def test_a_500_is_retried_with_backoff(server, connections):
    sleeps = []
    assert url_fetch.fetch(f"{server}/flaky", LOCAL, sleep=sleeps.append) == IMAGE
    assert Handler.hits["/flaky"] == 2 and sleeps == [0.25]


def test_a_404_is_not_retried(server, connections):
    sleeps = []
    with pytest.raises(FetchError, match=r"HTTP 404"):
        url_fetch.fetch(f"{server}/missing", LOCAL, sleep=sleeps.append)
    assert Handler.hits["/missing"] == 1 and sleeps == []


def test_a_429_waits_at_most_the_cap_and_gives_up(server, connections):
    sleeps = []
    with pytest.raises(FetchError, match=r"HTTP 429 Too Many Requests after 4 tries"):
        url_fetch.fetch(f"{server}/busy", LOCAL, sleep=sleeps.append)
    assert sleeps == [0.5, 0.5, 0.5]  # Retry-After: 100, capped
    assert Handler.hits["/busy"] == 4
    with pytest.raises(FetchError, match=r"HTTP 429 Too Many Requests, and no time left to retry"):
        url_fetch.fetch(f"{server}/busy", FetchSettings(allow_private_urls=True, timeout_seconds=1.0,
                                                        max_backoff_seconds=5.0), sleep=sleeps.append)


def test_loopback_is_refused_without_the_flag_before_any_request(server, connections):
    with pytest.raises(FetchError, match=r"host 127\.0\.0\.1 resolves to 127\.0\.0\.1, a loopback address "
                                         r"\(--allow_private_urls allows it\)"):
        url_fetch.fetch(f"{server}/image.jpg")
    port = server.rsplit(":", 1)[1]
    with pytest.raises(FetchError, match=r"host localhost resolves to .*a loopback address"):
        url_fetch.fetch(f"http://localhost:{port}/image.jpg")
    assert Handler.hits["/image.jpg"] == 0 and connections == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/image.jpg", "data:image/png;base64,AAAA",
                                 "gopher://127.0.0.1/"])
def test_only_http_and_https_are_fetched(url, connections):
    with pytest.raises(FetchError, match=r"is not allowed"):
        read_location(url)
    with pytest.raises(FetchError, match=r"is not allowed"):
        url_fetch.fetch(url)
    assert connections == []


@pytest.mark.parametrize("address, problem", [
    ("10.1.2.3", "a private address"), ("172.16.0.9", "a private address"), ("192.168.1.1", "a private address"),
    ("127.0.0.2", "a loopback address"), ("::1", "a loopback address"), ("169.254.10.10", "a link-local address"),
    ("fe80::1", "a link-local address"), ("224.0.0.251", "a multicast address"), ("0.0.0.0", "an unspecified address"),
    ("240.0.0.1", "a reserved address"), ("100.64.0.1", "not a public address"), ("fc00::5", "a private address"),
    ("169.254.169.254", "a cloud metadata address"), ("fd00:ec2::254", "a cloud metadata address"),
    ("::ffff:10.0.0.1", r"a private address \(inside ::ffff:a00:1\)"),
    ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),
])
def test_private_and_special_addresses_are_refused_before_connecting(monkeypatch, connections, address, problem):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr = (address, 80, 0, 0) if family == socket.AF_INET6 else (address, 80)
    monkeypatch.setattr(url_fetch.socket, "getaddrinfo",
                        lambda host, port, **kwargs: [(family, socket.SOCK_STREAM, 6, "", sockaddr)])
    with pytest.raises(FetchError, match=rf"host images\.example resolves to \S+, {problem}"):
        url_fetch.fetch("http://images.example/a.jpg", FetchSettings(timeout_seconds=1.0))
    assert connections == []


def test_metadata_is_refused_even_with_the_flag(monkeypatch, connections):
    monkeypatch.setattr(url_fetch.socket, "getaddrinfo", lambda *args, **kwargs: pytest.fail("resolved"))
    with pytest.raises(FetchError, match=r"host metadata\.google\.internal is a cloud metadata server"):
        url_fetch.fetch("http://metadata.google.internal/computeMetadata/v1/", FetchSettings(allow_private_urls=True))
    assert url_fetch.address_problem(ipaddress.ip_address("169.254.169.254"), True) == "a cloud metadata address"
    assert url_fetch.address_problem(ipaddress.ip_address("10.0.0.1"), True) is None
    assert url_fetch.address_problem(ipaddress.ip_address("8.8.8.8"), False) is None  # judged, never contacted
    assert connections == []


@pytest.fixture
def tls_server(tmp_path):
    """An https server on 127.0.0.1 with a self-signed certificate (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    Handler.hits = collections.Counter()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_https_verifies_the_certificate_and_is_checked_like_http(tls_server, connections):
    with pytest.raises(FetchError, match=r"CERTIFICATE_VERIFY_FAILED"):  # self-signed: not trusted
        url_fetch.fetch(f"{tls_server}/image.jpg", LOCAL)
    with pytest.raises(FetchError, match=r"a loopback address"):
        url_fetch.fetch(f"{tls_server}/image.jpg")
    assert set(connections) == {"127.0.0.1"}

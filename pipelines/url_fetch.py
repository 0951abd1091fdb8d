"""Fetching an image URL from an untrusted list: http(s) only, public addresses only, bounded in time and size.

The URLs of an `openimages_csv:` source come from people we do not know, and a fetch runs on our
workers, inside our network. `fetch` therefore:

- accepts http:// and https:// only (file://, ftp://, data: ... are refused);
- resolves the host itself and refuses it when any of its addresses is loopback, private, link-local,
  multicast, unspecified, reserved or otherwise not public, unless `allow_private_urls` (a test server,
  a mirror inside the network); a cloud metadata server (169.254.169.254, fd00:ec2::254,
  metadata.google.internal) is refused even then. The check is made at connect time, on the address
  connected to, for every redirect hop, so neither a redirect nor a second DNS answer gets around it;
- follows at most `max_redirects` redirects, each to http(s) only;
- gives the whole fetch, retries and redirects included, one deadline (`timeout_seconds`): every
  socket operation waits at most the time left, so a server that drips a few bytes a second is cut off
  at the deadline, not only when it stalls;
- reads at most `max_bytes` (a larger Content-Length is refused before the body is read);
- retries 429 and 5xx answers a few times with exponential backoff (Retry-After honoured up to a cap),
  never past the deadline; other errors (404, refused connections) are not retried.

Every refusal is a `FetchError` (an OSError) whose message names the URL and says why: the dead
letter's reason. Proxies from the environment are not used (the address check would be moot), and
name resolution is bounded by the system resolver's own timeouts, not by the deadline.

    python -c "from pipelines import url_fetch; print(len(url_fetch.fetch('https://example.com/')))"
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable

ALLOWED_SCHEMES = ("http", "https")
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_READ_SIZE = 64 * 1024


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    """The limits of one fetch (picklable: they travel to the Beam workers with the source).

    Attributes:
      allow_private_urls: let hosts resolve to loopback/private/link-local/... addresses (never metadata).
      timeout_seconds: deadline of the whole fetch, redirects and retries included.
      max_bytes: the largest body accepted.
      max_redirects: redirects followed before the fetch is refused.
      retries: further attempts after a 429 or 5xx answer.
      backoff_seconds: wait before the first retry; doubled for each next one.
      max_backoff_seconds: the longest wait before a retry (also caps a Retry-After header).
    """

    allow_private_urls: bool = False
    timeout_seconds: float = 30.0
    max_bytes: int = 32 * 2**20
    max_redirects: int = 5
    retries: int = 3
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 4.0


class FetchError(OSError):
    """A URL that was refused or could not be fetched; the message names it and says why."""


def is_url(location: str) -> bool:
    """Whether `location` is an http(s) URL (what `fetch` takes)."""
    return urllib.parse.urlsplit(location).scheme.lower() in ALLOWED_SCHEMES


def address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    """Why a connection to `address` is refused ('a loopback address', ...), or None when it is allowed."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(embedded, allow_private)
            return f"{problem} (inside {address})" if problem else None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if allow_private:
        return None
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return f"{'an' if kind == 'unspecified' else 'a'} {kind.replace('_', '-')} address"
    return None if address.is_global else "not a public address"


def _checked_addresses(host: str, port: int, settings: FetchSettings) -> list[tuple]:
    """getaddrinfo's answers for `host`; FetchError when the host or any of its addresses is refused."""
    if host.rstrip(".").lower() in METADATA_HOSTS:
        raise FetchError(f"host {host} is a cloud metadata server")
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise FetchError(f"cannot resolve {host}: {error}") from None
    for *_, sockaddr in answers:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        problem = address_problem(address, settings.allow_private_urls)
        if problem:
            hint = "" if problem == "a cloud metadata address" else " (--allow_private_urls allows it)"
            raise FetchError(f"host {host} resolves to {address}, {problem}{hint}")
    if not answers:
        raise FetchError(f"cannot resolve {host}: no address")
    return answers


class _Deadline:
    """The time left of one fetch; raises FetchError once it is spent."""

    def __init__(self, seconds: float, clock: Callable[[], float]):
        self._clock = clock
        self._end = clock() + seconds
        self.seconds = seconds

    def left(self) -> float:
        remaining = self._end - self._clock()
        if remaining <= 0:
            raise FetchError(f"deadline of {self.seconds:g} s passed")
        return remaining


class _DeadlineSocket:
    """What http.client needs of a socket (sendall, makefile, close), each call bounded by the deadline.

    As with a real socket, `close` takes effect once the files made from it are closed too (http.client
    closes the connection before it has read the body of a response that ends the connection)."""

    def __init__(self, sock: socket.socket, deadline: _Deadline):
        self._sock, self._deadline = sock, deadline
        self._open_files, self._closed = 0, False

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data)

    def recv_into(self, buffer) -> int:
        self._sock.settimeout(self._deadline.left())
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self._deadline.left()  # past the deadline: say so
            raise

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        del mode, args, kwargs  # http.client asks for "rb" only
        self._open_files += 1
        return io.BufferedReader(_DeadlineReader(self))

    def file_closed(self) -> None:
        self._open_files -= 1
        if self._closed and self._open_files <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._open_files <= 0:
            self._sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket):
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.file_closed()
        super().close()


def _connect(host: str, port: int, settings: FetchSettings, deadline: _Deadline) -> socket.socket:
    """A TCP connection to a checked address of `host` (the first that answers)."""
    failure: OSError | None = None
    for family, kind, protocol, _, sockaddr in _checked_addresses(host, port, settings):
        sock = socket.socket(family, kind, protocol)
        try:
            sock.settimeout(deadline.left())
            sock.connect(sockaddr)
            return sock
        except FetchError:
            sock.close()
            raise
        except OSError as error:
            sock.close()
            failure = error
    raise FetchError(f"cannot connect to {host}:{port}: {failure}")


class _CheckedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, settings: FetchSettings, deadline: _Deadline):
        super().__init__(host, port)
        self._settings, self._deadline = settings, deadline

    def connect(self) -> None:
        self.sock = _DeadlineSocket(_connect(self.host, self.port, self._settings, self._deadline), self._deadline)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, settings: FetchSettings, deadline: _Deadline):
        super().__init__(host, port, context=ssl.create_default_context())
        self._settings, self._deadline = settings, deadline

    def connect(self) -> None:
        sock = _connect(self.host, self.port, self._settings, self._deadline)
        try:
            sock.settimeout(self._deadline.left())  # the handshake as a whole waits at most this
            tls = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = _DeadlineSocket(tls, self._deadline)


def _request(url: str, settings: FetchSettings, deadline: _Deadline) -> tuple[int, str, http.client.HTTPMessage,
                                                                                   bytes | None]:
    """(status, reason, headers, body) of one GET; the body only for a 2xx answer, read within the limits."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise FetchError(f"scheme {parts.scheme or '(none)'!r} is not allowed (only http and https)")
    if not parts.hostname:
        raise FetchError("the URL has no host")
    connection_class = _CheckedHTTPSConnection if parts.scheme.lower() == "https" else _CheckedHTTPConnection
    try:
        port = parts.port
    except ValueError as error:
        raise FetchError(f"bad port: {error}") from None
    connection = connection_class(parts.hostname, port, settings, deadline)
    response = None
    try:
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        connection.request("GET", target, headers={"User-Agent": "distillery-extract", "Accept": "image/*"})
        response = connection.getresponse()
        if not 200 <= response.status < 300:
            return response.status, response.reason, response.headers, None
        length = response.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > settings.max_bytes:
            raise FetchError(f"Content-Length {int(length)} is over the limit of {settings.max_bytes} bytes")
        chunks, size = [], 0
        while True:
            chunk = response.read(min(_READ_SIZE, settings.max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > settings.max_bytes:
                raise FetchError(f"the body is over the limit of {settings.max_bytes} bytes")
        return response.status, response.reason, response.headers, b"".join(chunks)
    finally:
        if response is not None:
            response.close()
        connection.close()


def _retry_delay(attempt: int, headers: http.client.HTTPMessage, settings: FetchSettings) -> float:
    delay = settings.backoff_seconds * 2 ** attempt
    retry_after = (headers.get("Retry-After") or "").strip()
    if retry_after.isdigit():
        delay = max(delay, float(retry_after))
    return min(delay, settings.max_backoff_seconds)


def fetch(url: str, settings: FetchSettings = FetchSettings(), sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> bytes:
    """The body of `url` within `settings`' limits (see the module docstring).

    Raises:
      FetchError: naming the URL: refused (scheme, address, size, redirects), failed (HTTP status,
        connection) or cut off at the deadline.
    """
    deadline = _Deadline(settings.timeout_seconds, clock)
    current, redirects, attempt = url, 0, 0
    try:
        while True:
            status, reason, headers, body = _request(current, settings, deadline)
            if body is not None:
                return body
            if status in _REDIRECTS and headers.get("Location"):
                redirects += 1
                if redirects > settings.max_redirects:
                    raise FetchError(f"more than {settings.max_redirects} redirects")
                current = urllib.parse.urljoin(current, headers["Location"])
                if not is_url(current):
                    raise FetchError(f"redirect to {current}: only http and https are allowed")
                continue
            if (status == 429 or 500 <= status < 600) and attempt < settings.retries:
                delay = _retry_delay(attempt, headers, settings)
                if delay >= deadline.left():
                    raise FetchError(f"HTTP {status} {reason}, and no time left to retry")
                sleep(delay)
                attempt += 1
                continue
            tries = f" after {attempt + 1} tries" if attempt else ""
            raise FetchError(f"HTTP {status} {reason}{tries}")
    except FetchError as error:
        where = url if current == url else f"{url} (redirected to {current})"
        raise FetchError(f"{where}: {error}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        where = url if current == url else f"{url} (redirected to {current})"
        raise FetchError(f"{where}: {type(error).__name__}: {error}") from None

"""Reusable pieces for tests that run the front door for real, with real clients.

Import the fixtures you need into a test module (`from tests.frontdoor_fixtures import site,
front_door, upstream`); pytest finds fixtures by the names a module holds.

- `site`: a fresh state directory (world-traversable, so processes of other users reach its
  control socket) with a generated certificate bound to `0.0.0.0:<free port>`.
- `front_door`: a `FrontDoor` for `site`, running in-process in the test's nursery.
- `upstream`: a `RecordingUpstream`, an h11 HTTP/1.1 server on a loopback port that records every
  request it receives (head, body length and hash, complete or cut off) and answers with a JSON
  echo unless a test routes a path prefix to its own handler.
- `serve_process(state_dir)`: `httpsys-emu serve` as a subprocess, waited for until it listens.
- `tls_connect(...)`: a TLS client from the standard library (trio.SSLStream), an implementation
  independent of ours, for raw requests; `read_until_closed` and `parse_responses` read answers.
- `curl(...)`, `openssl_s_client(...)`: the real tools, run with trio.run_process.
- `read_access_log`, `read_httperr_log`: the front door's logs as dictionaries.
- `unprivileged_user`: a non-root user (created with useradd when the tests run as root).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from httpsys_emu.certstore import CertStore
from httpsys_emu.control_client import ControlUnavailable, call_blocking
from httpsys_emu.frontdoor import FrontDoor, running_front_door
from httpsys_emu.pages import ErrorPage, error_body
from httpsys_emu.store import SslCertBinding, SslKey, Store
from tests.certs import TestCertificate, make_certificate

APPID = "{00112233-4455-6677-8899-aabbccddeeff}"
CLI = Path(sys.executable).parent / "httpsys-emu"
TIMEOUT = 15.0

SERVER_CERT = make_certificate("localhost", key_type="ec", sans=("localhost", "127.0.0.1", "::1"))
CLIENT_CERT = make_certificate("tentacle", key_type="ec", client=True)
EXPIRED_CLIENT_CERT = make_certificate("old-tentacle", key_type="ec", client=True, expired=True)


# ------------------------------------------------------------------------------ ports and state

def free_port() -> int:
    """A TCP port free on both 0.0.0.0 and :: right now (the kernel's choice)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6:
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            v6.bind(("::", 0))
            port = v6.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as v4:
                v4.bind(("0.0.0.0", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def import_certificate(state_dir: Path, cert: TestCertificate, store: str = "MY") -> str:
    """Put a test certificate with its key into the state directory's certificate store."""
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = cert.write(Path(tmp), "cert")
        CertStore(state_dir).import_pem(cert_path, key_path, store=store)
    return cert.thumbprint


def bind_certificate(store: Store, port: int, thumbprint: str, *, ip: str = "0.0.0.0",
                     hostname: str | None = None, client_cert: bool = False) -> SslCertBinding:
    key = SslKey.hostnameport(hostname, port) if hostname else SslKey.ipport(ip, port)
    binding = SslCertBinding(key, thumbprint, APPID, client_cert_negotiation=client_cert)
    store.add_sslcert(binding)
    return binding


@dataclass
class Site:
    """A state directory with a certificate bound to `port`, and a store handle to change it."""

    state_dir: Path
    port: int
    store: Store
    cert: TestCertificate = SERVER_CERT
    files: Path = field(default_factory=Path)   # PEM files for curl/openssl (cert, key, client)

    @property
    def thumbprint(self) -> str:
        return self.cert.thumbprint

    def prefix(self, path: str = "/", host: str = "+") -> str:
        return f"https://{host}:{self.port}{path}"

    def url(self, path: str = "/", host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"

    def resolve(self, host: str = "localhost", ip: str = "127.0.0.1") -> list[str]:
        """curl arguments sending SNI `host` to `ip` on our port."""
        return ["--resolve", f"{host}:{self.port}:{ip}"]

    @property
    def client_cert_args(self) -> list[str]:
        return ["--cert", str(self.files / "client.crt"), "--key", str(self.files / "client.key")]

    def access_log(self) -> list[dict[str, str]]:
        return read_access_log(self.state_dir)

    def httperr_log(self) -> list[dict[str, str]]:
        return read_httperr_log(self.state_dir)

    def httperr_reasons(self) -> list[str]:
        return [row["s-reason"] for row in self.httperr_log()]

    async def access_lines(self, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
        """The access log once it holds `count` lines (a line is written after the response
        went out, so a fast client can be ahead of it)."""
        await wait_for(lambda: len(self.access_log()) >= count, timeout)
        return self.access_log()


def make_state_dir() -> Path:
    """A fresh state directory under /tmp that other users can traverse (not pytest's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="httpsys-fd-"))
    path.chmod(0o755)
    return path


@pytest.fixture
def site() -> Iterator[Site]:
    state_dir = make_state_dir()
    files = state_dir / "test-files"
    files.mkdir()
    SERVER_CERT.write(files, "server")
    CLIENT_CERT.write(files, "client")
    EXPIRED_CLIENT_CERT.write(files, "expired")
    store = Store.open(state_dir)
    import_certificate(state_dir, SERVER_CERT)
    port = free_port()
    bind_certificate(store, port, SERVER_CERT.thumbprint)
    try:
        yield Site(state_dir, port, store, files=files)
    finally:
        store.close()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
async def front_door(site: Site) -> AsyncIterator[FrontDoor]:
    """The front door for `site`, in-process; retried on a new port if someone took ours."""
    for _attempt in range(3):
        async with running_front_door(site.state_dir) as door:
            if door.listening_addresses():
                yield door
                return
        site.store.delete_sslcert(SslKey.ipport("0.0.0.0", site.port))
        site.port = free_port()
        bind_certificate(site.store, site.port, site.thumbprint)
    raise RuntimeError("the front door could not listen")


async def applied(door: FrontDoor, site: Site) -> None:
    """Ask the front door to reload and wait until it runs the store's current generation."""
    generation = site.store.generation()
    door.request_reload()
    await wait_for(lambda: door.snapshot and door.snapshot.generation >= generation)


def http_request(path: str, *, method: str = "GET", host: str = "localhost",
                 headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                 version: str = "1.1") -> bytes:
    """One request's bytes (Content-Length added when there is a body)."""
    lines = [f"{method} {path} HTTP/{version}", f"Host: {host}"]
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0,
                   interval: float = 0.01) -> Any:
    """Poll `predicate` until it returns something true; TooSlowError after `timeout`."""
    with trio.fail_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(interval)


# ------------------------------------------------------------------------------ the logs

def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    except FileNotFoundError:
        return []


def read_access_log(state_dir: Path) -> list[dict[str, str]]:
    names = ("time", "client", "host", "method", "path", "status", "bytes", "duration",
             "route", "target")
    return [dict(zip(names, line.split(" "))) for line in _read_lines(state_dir / "logs" /
                                                                      "access.log")]


def read_httperr_log(state_dir: Path) -> list[dict[str, str]]:
    names = ("date", "time", "c-ip", "c-port", "s-ip", "s-port", "cs-version", "cs-method",
             "cs-uri", "streamid", "sc-status", "s-siteid", "s-reason", "s-queuename")
    return [dict(zip(names, line.split(" "))) for line in _read_lines(state_dir / "logs" /
                                                                      "httperr.log")]


# ------------------------------------------------------------------------------ the upstream

@dataclass
class UpstreamRequest:
    """One request as the upstream application received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    connection: int
    body_length: int = 0
    body_sha256: str = hashlib.sha256(b"").hexdigest()
    body_start: bytes = b""            # the first 64 KiB, for assertions
    complete: bool = False             # head and whole body arrived

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def as_json(self) -> bytes:
        return json.dumps({"method": self.method, "target": self.target,
                           "headers": self.headers, "body_length": self.body_length,
                           "body_sha256": self.body_sha256}).encode()


class CloseConnection(Exception):
    """Raised by an upstream handler to drop the connection on the spot."""


class UpstreamExchange:
    """One request inside a RecordingUpstream handler: read the body, answer."""

    def __init__(self, upstream: "RecordingUpstream", stream: trio.SocketStream,
                 conn: h11.Connection, request: UpstreamRequest) -> None:
        self.upstream = upstream
        self.stream = stream
        self.conn = conn
        self.request = request
        self._hash = hashlib.sha256()
        self.first_body_bytes = trio.Event()

    async def _event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                with trio.fail_after(TIMEOUT):
                    data = await self.stream.receive_some(65536)
                self.conn.receive_data(data)
                continue
            return event

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (recorded as it goes)."""
        while not self.request.complete:
            if self.conn.they_are_waiting_for_100_continue:
                await self.send(self.conn.send(h11.InformationalResponse(status_code=100,
                                                                          headers=[])))
            event = await self._event()
            if isinstance(event, h11.Data):
                data = bytes(event.data)
                req = self.request
                if len(req.body_start) < 65536:
                    req.body_start += data[:65536 - len(req.body_start)]
                req.body_length += len(data)
                self._hash.update(data)
                req.body_sha256 = self._hash.hexdigest()
                self.first_body_bytes.set()
                yield data
            elif isinstance(event, h11.EndOfMessage):
                self.request.complete = True
            else:
                raise CloseConnection(f"unexpected {event!r} inside a body")

    async def read_body(self) -> None:
        async for _data in self.body_chunks():
            pass

    async def send(self, data: bytes | None) -> None:
        if data:
            await self.stream.send_all(data)

    async def respond(self, status: int, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> None:
        headers = list(headers or [])
        headers.append(("Content-Length", str(len(body))))
        await self.start(status, headers)
        await self.write(body)
        await self.end()

    async def start(self, status: int, headers: list[tuple[str, str]] | None = None) -> None:
        await self.send(self.conn.send(h11.Response(status_code=status, headers=headers or [])))

    async def write(self, data: bytes) -> None:
        if data:
            await self.send(self.conn.send(h11.Data(data=data)))

    async def end(self) -> None:
        await self.send(self.conn.send(h11.EndOfMessage()))

    async def switch_protocols(self, headers: list[tuple[str, str]]) -> bytes:
        """Answer 101; returns the bytes that came after the request (the new protocol's)."""
        await self.send(self.conn.send(h11.InformationalResponse(status_code=101,
                                                                 headers=headers)))
        return bytes(self.conn.trailing_data[0])


UpstreamHandler = Callable[[UpstreamExchange], Awaitable[None]]


async def echo_handler(exchange: UpstreamExchange) -> None:
    """Read the whole body, answer 200 with the request as JSON."""
    await exchange.read_body()
    await exchange.respond(200, [("Content-Type", "application/json")],
                           exchange.request.as_json())


class RecordingUpstream:
    """An HTTP/1.1 application behind the front door that remembers what it was sent."""

    def __init__(self, unix_path: str | None = None) -> None:
        self.unix_path = unix_path
        self.port = 0
        self.requests: list[UpstreamRequest] = []
        self.accepts = 0
        self.errors: list[Exception] = []
        self.open_connections = 0
        self.request_arrived = trio.Event()
        self._routes: list[tuple[str, UpstreamHandler]] = []
        self._cancel = trio.CancelScope()

    @property
    def target(self) -> str:
        """The delivery address for `add forward target=` and `register(deliver=)`."""
        return f"unix:{self.unix_path}" if self.unix_path else f"http://127.0.0.1:{self.port}"

    def route(self, path_prefix: str, handler: UpstreamHandler) -> None:
        """Requests whose target starts with `path_prefix` go to `handler` (longest first)."""
        self._routes.append((path_prefix, handler))
        self._routes.sort(key=lambda r: -len(r[0]))

    def complete_requests(self) -> list[UpstreamRequest]:
        return [r for r in self.requests if r.complete]

    def targets(self) -> list[str]:
        return [r.target for r in self.requests]

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.unix_path:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(self.unix_path)
            sock.listen(128)
            listeners = [trio.SocketListener(sock)]
        else:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
        with self._cancel:
            task_status.started(self)
            await trio.serve_listeners(self._connection, listeners)

    def stop(self) -> None:
        """Stop listening and drop every connection (an upstream that dies)."""
        self._cancel.cancel()

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.accepts += 1
        self.open_connections += 1
        number = self.accepts
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                exchange_conn_event = await self._next(stream, conn)
                if not isinstance(exchange_conn_event, h11.Request):
                    return
                event = exchange_conn_event
                request = UpstreamRequest(
                    method=event.method.decode(), target=event.target.decode("latin-1"),
                    headers=[(n.decode("latin-1"), v.decode("latin-1"))
                             for n, v in event.headers.raw_items()],
                    connection=number)
                self.requests.append(request)
                self.request_arrived.set()
                self.request_arrived = trio.Event()
                exchange = UpstreamExchange(self, stream, conn, request)
                handler = next((h for p, h in self._routes if request.target.startswith(p)),
                               echo_handler)
                await handler(exchange)
                if conn.our_state is h11.SWITCHED_PROTOCOL:
                    return
                if not request.complete:
                    await exchange.read_body()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (CloseConnection, h11.RemoteProtocolError, h11.LocalProtocolError,
                trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                OSError):
            return
        except Exception as exc:       # a handler's assertion: remembered, connection dropped
            self.errors.append(exc)
            return
        finally:
            self.open_connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def settle(self, door: FrontDoor | None = None) -> None:
        """Wait until every byte sent to us has been read: close the front door's idle pooled
        connections first, then wait for all our connections to end."""
        if door is not None:
            await door.proxy.pool.aclose()
        await wait_for(lambda: self.open_connections == 0)

    @staticmethod
    async def _next(stream: trio.SocketStream, conn: h11.Connection) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.fail_after(60):
                    data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            return event


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    async with trio.open_nursery() as nursery:
        server = RecordingUpstream()
        await nursery.start(server.run)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_upstream(unix_path: str | None = None) -> AsyncIterator[RecordingUpstream]:
    async with trio.open_nursery() as nursery:
        server = RecordingUpstream(unix_path)
        await nursery.start(server.run)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------ TLS clients

def client_ssl_context(cert_files: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A stdlib client context that accepts any server certificate (we pin by thumbprint)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert_files is not None:
        ctx.load_cert_chain(str(cert_files[0]), str(cert_files[1]))
    return ctx


async def tls_connect(port: int, *, host: str = "127.0.0.1", sni: str | None = "localhost",
                      cert_files: tuple[Path, Path] | None = None,
                      source: str | None = None) -> trio.SSLStream[trio.SocketStream]:
    """A TLS connection through the standard library; `source` binds the client address."""
    with trio.fail_after(TIMEOUT):
        if source is None:
            tcp = await trio.open_tcp_stream(host, port)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = trio.socket.socket(family, socket.SOCK_STREAM)
            await sock.bind((source, 0))
            await sock.connect((host, port))
            tcp = trio.SocketStream(sock)
        stream = trio.SSLStream(tcp, client_ssl_context(cert_files), server_hostname=sni,
                                https_compatible=True)
        await stream.do_handshake()
    return stream


def peer_thumbprint(stream: trio.SSLStream[Any]) -> str:
    der = stream.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha1(der).hexdigest().upper()


async def read_until_closed(stream: trio.abc.ReceiveStream, timeout: float = 5.0,
                            limit: int = 64 << 20) -> bytes:
    """Everything until EOF; TooSlowError if the peer keeps the connection open."""
    data = bytearray()
    with trio.fail_after(timeout):
        while len(data) < limit:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def read_response(stream: trio.abc.ReceiveStream, method: str = "GET",
                        timeout: float = 5.0, buffer: bytearray | None = None) -> "RawResponse":
    """Read exactly one response (keep-alive safe). `buffer` carries bytes between calls."""
    buf = buffer if buffer is not None else bytearray()
    with trio.fail_after(timeout):
        while True:
            parsed, rest = parse_responses(bytes(buf), [method], allow_partial=True)
            finals = [r for r in parsed if r.status >= 200 or r.status == 101]
            if finals:
                consumed = len(buf) - len(rest)
                del buf[:consumed]
                return finals[0]
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError(f"connection closed after {bytes(buf)[:200]!r}")
            buf += chunk


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


def parse_responses(data: bytes, methods: list[str] | None = None,
                    allow_partial: bool = False) -> tuple[list[RawResponse], bytes]:
    """Split a byte stream of HTTP/1.1 responses; returns (responses, unparsed rest).

    `methods` lists the request methods in order (HEAD responses have no body). A body without
    Content-Length or chunking runs to the end of `data` (the connection closed).
    """
    methods = list(methods or [])
    out: list[RawResponse] = []
    rest = data
    while rest:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            break
        head = rest[:end + 4]
        lines = head[:-4].decode("latin-1").split("\r\n")
        _version, status_text, *reason = lines[0].split(" ", 2)
        status = int(status_text)
        headers = [(ln.split(":", 1)[0], ln.split(":", 1)[1].strip()) for ln in lines[1:]]
        after = rest[end + 4:]
        lowered = {n.lower(): v for n, v in headers}
        if 100 <= status < 200:
            out.append(RawResponse(status, reason[0] if reason else "", headers, b"", head))
            rest = after
            if status == 101:
                break
            continue
        method = methods.pop(0) if methods else "GET"
        if method == "HEAD" or status in (204, 304):
            body, rest = b"", after
        elif "content-length" in lowered:
            length = int(lowered["content-length"])
            if len(after) < length and allow_partial:
                break
            body, rest = after[:length], after[length:]
        elif lowered.get("transfer-encoding", "").lower() == "chunked":
            body_parts = []
            pos = 0
            complete = False
            while True:
                nl = after.find(b"\r\n", pos)
                if nl < 0:
                    break
                size = int(after[pos:nl].split(b";")[0], 16)
                if size == 0:
                    trailer_end = after.find(b"\r\n\r\n", nl)
                    if trailer_end == nl:
                        pos = nl + 4
                        complete = True
                    elif trailer_end > 0:
                        pos = trailer_end + 4
                        complete = True
                    break
                if len(after) < nl + 2 + size + 2:
                    break
                body_parts.append(after[nl + 2:nl + 2 + size])
                pos = nl + 2 + size + 2
            if not complete and allow_partial:
                break
            body, rest = b"".join(body_parts), after[pos:]
        else:
            if allow_partial:
                break
            body, rest = after, b""
        out.append(RawResponse(status, reason[0] if reason else "", headers, body, head))
    return out, rest


HTTPSYS_PAGE_HEADERS = ["Content-Type", "Server", "Date", "Connection", "Content-Length"]


def assert_error_page(response: RawResponse, page: ErrorPage, head_only: bool = False) -> None:
    """Exactly what HTTP.sys sends (spec httpsys.md §4): status line, header order, body."""
    spec = page.value
    assert (response.status, response.reason) == (spec.status, spec.reason), response.head
    assert [n for n, _ in response.headers] == HTTPSYS_PAGE_HEADERS, response.head
    assert response.header("Content-Type") == "text/html; charset=us-ascii"
    assert response.header("Server") == "Microsoft-HTTPAPI/2.0"
    assert response.header("Connection") == "close"
    assert response.header("Content-Length") == str(len(error_body(page)))
    assert response.body == (b"" if head_only else error_body(page))


# ------------------------------------------------------------------------------ real tools

async def run_tool(argv: list[str], *, timeout: float = TIMEOUT, stdin: bytes | None = None,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(argv, stdin=stdin, capture_stdout=True,
                                      capture_stderr=True, check=False, env=env)


async def curl(*args: str, timeout: float = TIMEOUT,
               stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`curl -sS -k ARGS` (certificate checks off: tests pin thumbprints where it matters)."""
    return await run_tool(["curl", "-sS", "-k", "--max-time", str(int(timeout)), *args],
                          timeout=timeout + 5, stdin=stdin)


async def openssl_s_client(port: int, *args: str, host: str = "127.0.0.1",
                           stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return await run_tool(["openssl", "s_client", "-connect", f"{host}:{port}", *args],
                          stdin=stdin)


def s_client_thumbprint(output: bytes) -> str | None:
    """SHA-1 of the server certificate printed by `openssl s_client` (None if none was sent)."""
    text = output.decode("latin-1")
    begin = text.find("-----BEGIN CERTIFICATE-----")
    if begin < 0:
        return None
    end = text.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
    return hashlib.sha1(ssl.PEM_cert_to_DER_cert(text[begin:end] + "\n")).hexdigest().upper()


async def cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The `httpsys-emu` console script, as a user runs it."""
    return await run_tool([str(CLI), "--state-dir", str(state_dir), *args])


# ------------------------------------------------------------------------------ processes

@dataclass
class ServeProcess:
    process: trio.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _servicestate(state_dir: Path) -> dict[str, Any] | None:
    try:
        return call_blocking(state_dir, "servicestate", timeout=2.0)["state"]
    except (ControlUnavailable, OSError):
        return None


@asynccontextmanager
async def serve_process(state_dir: Path, *extra: str, drain_seconds: float | None = None,
                        timeout: float = TIMEOUT) -> AsyncIterator[ServeProcess]:
    """`httpsys-emu --state-dir DIR serve` in a subprocess; yields once it listens.

    With `drain_seconds`, `python -m httpsys_emu.serve --drain-seconds N` instead (the drain
    deadline has no store row). On exit: SIGTERM, then SIGKILL if still there after `timeout`.
    """
    log_path = state_dir / "serve-process.log"
    if drain_seconds is None:
        argv = [str(CLI), "--state-dir", str(state_dir), "serve", *extra]
    else:
        argv = [sys.executable, "-m", "httpsys_emu.serve", "--state-dir", str(state_dir),
                "--drain-seconds", str(drain_seconds), *extra]
    with open(log_path, "ab") as log:
        process = await trio.lowlevel.open_process(argv, stdout=log, stderr=log,
                                                   stdin=subprocess.DEVNULL)
    serve = ServeProcess(process, log_path)
    try:
        with trio.fail_after(timeout):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"serve exited with {process.returncode}: {serve.log()}")
                state = await trio.to_thread.run_sync(_servicestate, state_dir)
                if state and state.get("listeners"):
                    break
                await trio.sleep(0.05)
        yield serve
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(timeout):
                    await process.wait()
            if process.poll() is None:
                process.kill()
                await process.wait()


# ------------------------------------------------------------------------------ users

@dataclass(frozen=True)
class TestUser:
    __test__ = False
    name: str
    uid: int
    gid: int

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run as this user (through setpriv when we are root)."""
        if os.geteuid() == 0 and self.uid != 0:
            return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                    *argv]
        return argv


UNPRIVILEGED_NAME = "httpsysemu-test"


@pytest.fixture(scope="session")
def unprivileged_user() -> TestUser:
    """A user who is not root: created with useradd when running as root, else ourselves."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return TestUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_NAME)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", UNPRIVILEGED_NAME], check=False,
                       capture_output=True)
        entry = pwd.getpwnam(UNPRIVILEGED_NAME)
    return TestUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def python_command(code: str) -> list[str]:
    return [sys.executable, "-c", code]

"""Serve an in-process-style handler behind a running front door, on a Unix socket or port.

A process that registers a prefix over the control socket receives the requests as plain
HTTP/1.1 with the facts in headers the front door sets (and strips from clients). This module
turns them back into the same `HandlerRequest` an in-process handler gets, so an application has
one code path whether it runs embedded or as its own process.
"""

from __future__ import annotations

import base64
import itertools
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h11
import trio

from .bufstream import PushbackStream
from .handlers import Handler, HandlerRequest, respond_whole
from .request import ConnectionInfo, RequestInfo
from .response_writer import HOP_BY_HOP
from .urlprefix import parse_prefix

_ids = itertools.count(1)


def _split_address(text: str | None) -> tuple[str, int]:
    if not text:
        return "", 0
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    try:
        return host, int(port)
    except ValueError:
        return text, 0


def _pem_to_der(pem: str) -> bytes | None:
    lines = [line for line in pem.strip().splitlines() if line and not line.startswith("-----")]
    try:
        return base64.b64decode("".join(lines), validate=True)
    except (ValueError, TypeError):
        return None


def canonical_from_forwarded(raw_path: str) -> str:
    """Undo the proxy's encoding of the canonical path: every escape but `%25`, which is how a
    canonical path spells a literal percent sign (in-process handlers see the same string)."""
    return "%25".join(unquote(part) for part in raw_path.split("%25"))


def request_info_from_forwarded(request: h11.Request, connection_id: int) -> RequestInfo:
    """Rebuild what the front door knew from the headers it set on the forwarded request."""
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers.raw_items()]
    get = {n.lower(): v for n, v in reversed(headers)}
    local_ip, local_port = _split_address(get.get("x-httpsys-local-address"))
    remote_ip, remote_port = _split_address(get.get("x-httpsys-remote-address"))
    cert_der = None
    if "x-client-cert" in get:
        cert_der = _pem_to_der(unquote(get["x-client-cert"]))
    conn = ConnectionInfo(connection_id=connection_id, local_ip=local_ip, local_port=local_port,
                          remote_ip=remote_ip or get.get("x-forwarded-for", ""),
                          remote_port=remote_port, sni=get.get("x-httpsys-sni"),
                          tls_version=get.get("x-httpsys-tls-version"), client_cert_der=cert_der)
    target = request.target.decode("latin-1")
    raw_path, _, query = target.partition("?")
    prefix_text = get.get("x-httpsys-prefix")
    prefix = parse_prefix(prefix_text) if prefix_text else parse_prefix("http://+:80/")
    original = get.get("x-original-url", target)
    app_headers = tuple((n, v) for n, v in headers if not n.lower().startswith("x-httpsys-"))
    upgrade = get.get("upgrade") if "upgrade" in get.get("connection", "").lower() else None
    return RequestInfo(conn=conn, request_id=0, method=request.method.decode("ascii"),
                       target=original, version=request.http_version.decode("ascii"),
                       headers=app_headers, host=(get.get("x-forwarded-host") or
                                                  get.get("host", "")).split(":")[0].lower(),
                       path=canonical_from_forwarded(raw_path), query=query, prefix=prefix,
                       scheme=get.get("x-forwarded-proto", "https"), upgrade=upgrade)


class H11Channel:
    """The `ClientChannel` interface over an h11 server connection (the front door's side)."""

    def __init__(self, stream: PushbackStream, conn: h11.Connection, request: h11.Request,
                 timeout: float) -> None:
        self.stream = stream
        self.conn = conn
        self.request = request
        self.timeout = timeout
        self.response_started = False
        self.response_done = False
        self.body_done = False
        self.switched = False
        self.status: int | None = None

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                with trio.fail_after(self.timeout):
                    data = await self.stream.receive_some(65536)
                self.conn.receive_data(data)
                continue
            return event

    async def read_body(self) -> bytes:
        if self.body_done:
            return b""
        event = await self._next_event()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        self.body_done = True
        return b""

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def start_response(self, status: int, headers: list[tuple[str, str]], *,
                             reason: str | None = None) -> None:
        if self.response_started:
            raise RuntimeError("response already started")
        self.response_started = True
        self.status = status
        clean = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP]
        await self._send(h11.Response(status_code=status, headers=clean,
                                      reason=(reason or "").encode("latin-1")))

    async def send_body(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def end_response(self) -> None:
        if not self.response_done:
            self.response_done = True
            await self._send(h11.EndOfMessage())

    async def switch_protocols(self, headers: list[tuple[str, str]]) -> trio.abc.Stream:
        self.response_started = self.response_done = self.switched = True
        self.status = 101
        await self._send(h11.InformationalResponse(status_code=101, headers=headers))
        leftover, _closed = self.conn.trailing_data
        self.stream.unread(bytes(leftover))
        return self.stream


class AppServer:
    """Accepts the front door's connections and runs `handler` for each request."""

    def __init__(self, handler: Handler, *, request_timeout: float = 300.0,
                 log: Any = None) -> None:
        self.handler = handler
        self.request_timeout = request_timeout
        self.log = log

    async def serve_connection(self, raw: trio.abc.Stream) -> None:
        stream = PushbackStream(raw)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                channel = H11Channel(stream, conn, None, self.request_timeout)  # type: ignore[arg-type]
                event = await channel._next_event()
                if not isinstance(event, h11.Request):
                    return
                channel.request = event
                info = request_info_from_forwarded(event, next(_ids))
                request = HandlerRequest(info, channel)  # type: ignore[arg-type]
                try:
                    await self.handler(request)
                except Exception as exc:      # an app bug answers 500, the process lives on
                    if self.log:
                        self.log(f"handler failed on {info.path}: {exc!r}")
                    if not channel.response_started:
                        await respond_whole(channel, 500, [("Content-Type", "text/plain")],
                                              b"Internal Server Error\n")
                    else:
                        return
                if channel.switched:
                    return
                if not channel.response_started:
                    await respond_whole(channel, 500, [], b"")
                await channel.end_response()
                while not channel.body_done:
                    await channel.read_body()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError,
                h11.ProtocolError):
            return
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await stream.aclose()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    async def serve_unix(self, path: str | Path, *, mode: int = 0o660,
                         task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a Unix socket (replacing a stale one) until cancelled."""
        import socket as _socket
        path = Path(path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        await sock.bind(str(path))
        os.chmod(path, mode)
        sock.listen(256)
        try:
            task_status.started(path)
            await trio.serve_listeners(self.serve_connection, [trio.SocketListener(sock)])
        finally:
            try:
                path.unlink()
            except OSError:
                pass

    async def serve_tcp(self, port: int = 0, host: str = "127.0.0.1", *,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self.serve_connection, listeners)

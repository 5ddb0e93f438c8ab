"""One client connection: TLS handshake, then requests read, routed and delivered in turn.

This is the I/O shell around the pure pieces (head reader, canonicaliser, router): it owns every
deadline of a connection (handshake, header wait, idle) and turns every refusal into the exact
HTTP.sys page followed by a close.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import trio

from .bufstream import PushbackStream
from .canonical import canonicalize_path, split_target
from .channel import ClientChannel, ConnectionAbort
from .handlers import HandlerRequest, HandlerTarget
from .pages import ErrorPage, HttpSysError, render_error
from .registry import Registration
from .request import ConnectionInfo, RequestInfo
from .request_head import RequestHead, RequestHeadReader
from .routing import RouteRequest, parse_host_header
from .urlprefix import normalize_ip

if TYPE_CHECKING:
    from .frontdoor import FrontDoor

_connection_ids = itertools.count(1)


def plain_ip(address: str) -> str:
    """An IPv4-mapped IPv6 address as IPv4 (dual-stack sockets report v4 peers that way)."""
    return normalize_ip(address) or address


class IdleAtHead(Exception):
    """The connection ended (or timed out) cleanly between requests."""


class ConnectionHandler:
    """Serves one accepted TCP connection to the end."""

    def __init__(self, door: "FrontDoor", tcp: trio.SocketStream) -> None:
        self.door = door
        self.tcp = tcp
        local = tcp.socket.getsockname()
        remote = tcp.socket.getpeername()
        self.local_ip, self.local_port = plain_ip(local[0]), int(local[1])
        self.remote_ip, self.remote_port = plain_ip(remote[0]), int(remote[1])
        self.connection_id = next(_connection_ids)
        self.cancel_scope = trio.CancelScope()
        self.in_request = False

    def _httperr(self, reason: str, status: int | None = None,
                 head: RequestHead | None = None) -> None:
        self.door.log.httperr(
            client_ip=self.remote_ip, client_port=self.remote_port, server_ip=self.local_ip,
            server_port=self.local_port, version=head.version if head else None,
            method=head.method if head else None, uri=head.target if head else None,
            status=status, reason=reason)

    async def run(self) -> None:
        with self.cancel_scope:
            try:
                tls = await self.door.tls_handshake(self.tcp, self.local_ip, self.local_port)
            except ConnectionAbort as exc:
                self._httperr(exc.reason)
                await self._close(self.tcp)
                return
            conn = ConnectionInfo(
                connection_id=self.connection_id, local_ip=self.local_ip,
                local_port=self.local_port, remote_ip=self.remote_ip,
                remote_port=self.remote_port, sni=tls.sni, tls_version=tls.tls_version,
                cipher=tls.cipher, client_cert_der=tls.peer_certificate_der)
            stream = PushbackStream(tls)
            try:
                await self._serve(stream, conn)
            except ConnectionAbort as exc:
                self._httperr(exc.reason)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                if self.in_request:
                    self._httperr("Connection_Dropped")
            finally:
                await self._close(stream)

    async def _close(self, stream: trio.abc.AsyncResource) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _read_head(self, stream: PushbackStream, first: bool) -> RequestHead:
        limits = self.door.limits
        reader = RequestHeadReader(max_request_bytes=limits.max_request_bytes,
                                   max_field_length=limits.max_field_length,
                                   max_headers=limits.max_headers)
        idle_deadline = trio.current_time() + (limits.header_wait if first
                                               else limits.idle_connection)
        head_deadline: float | None = None
        got_bytes = False
        while True:
            head = reader.next_head()
            if head is not None:
                stream.unread(reader.take_remaining())
                return head
            deadline = head_deadline if head_deadline is not None else idle_deadline
            with trio.move_on_at(deadline) as scope:
                data = await stream.receive_some(65536)
            if scope.cancelled_caught:
                if got_bytes:
                    raise ConnectionAbort("Timer_HeaderWait")
                raise ConnectionAbort("Timer_IdleConnection" if not first
                                      else "Timer_ConnectionIdle")
            if not data:
                if got_bytes:
                    raise ConnectionAbort("Connection_Dropped", "client closed inside the head")
                raise IdleAtHead()
            if not got_bytes:
                got_bytes = True
                self.in_request = True
                head_deadline = (idle_deadline if first
                                 else trio.current_time() + limits.header_wait)
            reader.feed(data)

    def route(self, head: RequestHead, conn: ConnectionInfo) -> tuple[RequestInfo, Registration]:
        """Canonicalise and route one head; HttpSysError with the page on refusal."""
        limits = self.door.limits
        path, query, authority = split_target(head.target)
        host_value = authority if authority is not None else head.host
        if host_value is None:          # HTTP/1.0 without Host: the local address names it
            host_value = f"[{self.local_ip}]" if ":" in self.local_ip else self.local_ip
        hostname, _port = parse_host_header(host_value)
        canonical = canonicalize_path(path, max_segment_length=limits.url_segment_max_length,
                                      max_segment_count=limits.url_segment_max_count,
                                      max_url_length=limits.max_url_length)
        match = self.door.routes.route(RouteRequest("https", self.local_ip, self.local_port,
                                                    hostname, canonical))
        info = RequestInfo(conn=conn, request_id=0, method=head.method, target=head.target,
                           version=head.version, headers=tuple((name.decode('latin-1'), value.decode('latin-1'))
                                         for _lower, name, value in head.headers),
                           host=hostname, path=canonical, query=query, prefix=match.prefix,
                           upgrade=head.upgrade, keep_alive=head.keep_alive)
        return info, match.target

    async def _send_page(self, stream: PushbackStream, page: ErrorPage, head_only: bool) -> None:
        data = render_error(page, head_only=head_only)
        with trio.move_on_after(self.door.limits.send_deadline(len(data))):
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _serve(self, stream: PushbackStream, conn: ConnectionInfo) -> None:
        first = True
        while not self.door.draining:
            self.in_request = False
            try:
                head = await self._read_head(stream, first)
            except IdleAtHead:
                return
            except HttpSysError as exc:
                self._httperr(exc.reason, exc.page.status)
                await self._send_page(stream, exc.page, head_only=False)
                return
            except ConnectionAbort as exc:
                if exc.reason in ("Timer_IdleConnection", "Timer_ConnectionIdle"):
                    self._httperr(exc.reason)
                    return
                raise
            first = False
            started = trio.current_time()
            try:
                info, registration = self.route(head, conn)
            except HttpSysError as exc:
                self._httperr(exc.reason, exc.page.status, head)
                await self._send_page(stream, exc.page, head.method == "HEAD")
                return
            channel = ClientChannel(stream, head, self.door.limits)
            self.door.active_requests += 1
            try:
                await self._deliver(registration, info, channel, head)
            except HttpSysError as exc:
                self._httperr(exc.reason, exc.page.status, head)
                if not channel.response_started:
                    await self._send_page(stream, exc.page, head.method == "HEAD")
                self._access(info, registration, exc.page.status, channel, started)
                return
            except ConnectionAbort as exc:
                self._httperr(exc.reason, channel.status, head)
                self._access(info, registration, channel.status or 0, channel, started)
                return
            finally:
                self.door.active_requests -= 1
            self._access(info, registration, channel.status or 0, channel, started)
            if channel.switched or not channel.keep_alive or not channel.response_done:
                return
            if not channel.body_done and not await channel.drain_body():
                return

    def _access(self, info: RequestInfo, registration: Registration, status: int,
                channel: ClientChannel, started: float) -> None:
        self.door.log.access(
            client=f"{self.remote_ip}:{self.remote_port}", host=info.host, method=info.method,
            path=info.path, status=status, nbytes=channel.response_bytes,
            duration=trio.current_time() - started, route=str(registration.prefix),
            target=str(registration.target))

    async def _deliver(self, registration: Registration, info: RequestInfo,
                       channel: ClientChannel, head: RequestHead) -> None:
        target = registration.target
        if isinstance(target, HandlerTarget):
            request = HandlerRequest(info, channel)
            try:
                await target.handler(request)
            except (HttpSysError, ConnectionAbort, trio.Cancelled):
                raise
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectionAbort("Connection_Dropped")
            except Exception as exc:       # an application bug must not kill the front door
                self.door.log.info(f"handler {target.name} failed on {info.path}: {exc!r}")
                if not channel.response_started:
                    raise HttpSysError(ErrorPage.SERVICE_UNAVAILABLE, "AppError",
                                       repr(exc)) from None
                raise ConnectionAbort("Connection_Abandoned_By_AppPool", repr(exc)) from None
            if not channel.response_started:
                raise HttpSysError(ErrorPage.SERVICE_UNAVAILABLE, "AppError", "no response")
            if not channel.response_done and not channel.switched:
                await channel.end_response()
            return
        await self.door.proxy.forward(info, channel, target, self.door.limits)

"""One client connection: TLS handshake, then requests read, routed and delivered in turn.

This is the I/O shell around the pure pieces (head reader, canonicaliser, router): it owns every
deadline of a connection (handshake, idle, header wait) and turns every refusal into the exact
HTTP.sys page followed by a close. Pipelined requests are read one head at a time, so each is
routed and authorised on its own, and nothing after a refused request is ever read as a request.

How a connection ends matters to the client: after an error page we half-close (close_notify,
FIN) and read and discard what the client still sends for a moment ("lingering close"), because
closing a socket with unread bytes sends a TCP reset that can destroy the page before the client
read it. Timers just close; a full request queue resets (HTTP.sys verbosity Basic).
"""

from __future__ import annotations

import enum
import itertools
import socket
import struct
import weakref
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
from .tls import TLSStream
from .urlprefix import normalize_ip

if TYPE_CHECKING:
    from .frontdoor import FrontDoor

_connection_ids = itertools.count(1)
DRAIN_LINGER = 0.25          # shutting down: linger only briefly after the last response
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


# Registration -> (route, target) as the access log writes them; both are immutable, so the
# strings are formatted once per registration instead of once per request.
_LOG_NAMES: "weakref.WeakKeyDictionary[Registration, tuple[str, str]]" = \
    weakref.WeakKeyDictionary()


def _log_names(registration: Registration) -> tuple[str, str]:
    names = _LOG_NAMES.get(registration)
    if names is None:
        names = (str(registration.prefix), str(registration.target))
        _LOG_NAMES[registration] = names
    return names


def plain_ip(address: str) -> str:
    """A socket address as plain text: IPv6 compressed without brackets or zone, an
    IPv4-mapped IPv6 address as IPv4 (dual-stack sockets report v4 peers that way)."""
    return (normalize_ip(address) or address).strip("[]")


def leaf_exception(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, else `exc` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Close(enum.Enum):
    """How a connection ends."""

    GRACEFUL = "graceful"     # close_notify, then close
    LINGER = "linger"         # close_notify + FIN, discard what the client still sends, close
    ABORT = "abort"           # close at once (timers, broken streams)
    RESET = "reset"           # TCP reset (request queue full)


class IdleAtHead(Exception):
    """The client closed cleanly between requests."""


class ConnectionHandler:
    """Serves one accepted TCP connection to the end."""

    def __init__(self, door: "FrontDoor", tcp: trio.SocketStream) -> None:
        self.door = door
        self.tcp = tcp
        local = tcp.socket.getsockname()
        remote = tcp.socket.getpeername()
        self.local_ip, self.local_port = plain_ip(local[0]), int(local[1])
        self.remote_ip, self.remote_port = plain_ip(remote[0]), int(remote[1])
        self._log_client = f"{self.remote_ip}:{self.remote_port}"
        self.connection_id = next(_connection_ids)
        self.cancel_scope = trio.CancelScope()
        self.in_request = False
        self.requests = 0

    def httperr(self, reason: str, status: int | None = None,
                head: RequestHead | None = None) -> None:
        self.door.log.httperr(
            client_ip=self.remote_ip, client_port=self.remote_port, server_ip=self.local_ip,
            server_port=self.local_port, version=head.version if head else None,
            method=head.method if head else None, uri=head.target if head else None,
            status=status, reason=reason)

    # -- the connection ----------------------------------------------------------------------
    async def run(self) -> None:
        with self.cancel_scope:
            try:
                tls = await self.door.tls_handshake(self.tcp, self.local_ip, self.local_port)
            except ConnectionAbort as exc:
                self.httperr(exc.reason)
                await self._finish(None, Close.ABORT)
                return
            conn = ConnectionInfo(
                connection_id=self.connection_id, local_ip=self.local_ip,
                local_port=self.local_port, remote_ip=self.remote_ip,
                remote_port=self.remote_port, sni=tls.sni, tls_version=tls.tls_version,
                cipher=tls.cipher, client_cert_der=tls.peer_certificate_der)
            stream = PushbackStream(tls)
            how = Close.ABORT
            try:
                how = await self._serve(stream, conn)
            except ConnectionAbort as exc:
                self.httperr(exc.reason)
                how = Close.RESET if exc.reset else Close.ABORT
            except _STREAM_ERRORS:
                if self.in_request:
                    self.httperr("Connection_Dropped")
            except BaseException as exc:
                cut = isinstance(leaf_exception(exc), trio.Cancelled)
                if cut and self.in_request and self.door.draining:   # the drain deadline
                    self.httperr("Connection_Abandoned_By_ReqQueue")
                raise
            finally:
                await self._finish(tls, how)

    async def _finish(self, tls: TLSStream | None, how: Close) -> None:
        """End the connection the chosen way, bounded in time. Lingering stops at once when
        the front door shuts down; the close itself is shielded."""
        linger = self.door.limits.linger
        if self.door.draining:
            linger = min(linger, DRAIN_LINGER)
        with trio.move_on_after(max(linger, 0.1)):
            try:
                if how is Close.RESET:
                    self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                elif tls is not None and how in (Close.GRACEFUL, Close.LINGER):
                    await tls.send_eof()
                    if how is Close.LINGER:
                        await self.tcp.send_eof()
                        await self._discard_input()
            except (*_STREAM_ERRORS, trio.BusyResourceError):
                pass
        with trio.CancelScope(shield=True):
            try:
                await self.tcp.aclose()
            except _STREAM_ERRORS:
                pass

    async def _discard_input(self) -> None:
        """Read and drop raw bytes until the client closes, within the linger budget."""
        budget = self.door.limits.linger_max_bytes
        while budget > 0:
            data = await self.tcp.receive_some(65536)
            if not data:
                return
            budget -= len(data)

    async def _read_head(self, stream: PushbackStream) -> RequestHead:
        """The next request head: IdleConnection until its first byte, then HeaderWait."""
        limits = self.door.limits
        reader = RequestHeadReader(max_request_bytes=limits.max_request_bytes,
                                   max_field_length=limits.max_field_length,
                                   max_headers=limits.max_headers)
        deadline = trio.current_time() + limits.idle_connection
        started = False
        while True:
            head = reader.next_head()
            if head is not None:
                stream.unread(reader.take_remaining())
                return head
            with trio.move_on_at(deadline) as scope:
                data = await stream.receive_some(65536)
            if scope.cancelled_caught:
                raise ConnectionAbort("Timer_HeaderWait" if started else "Timer_ConnectionIdle")
            if not data:
                if started:
                    raise ConnectionAbort("Connection_Dropped", "client closed inside the head")
                raise IdleAtHead()
            if not started:
                started = True
                self.in_request = True
                deadline = trio.current_time() + limits.header_wait
            reader.feed(data)

    def route(self, head: RequestHead, conn: ConnectionInfo) -> tuple[RequestInfo, Registration]:
        """Canonicalise and route one head; HttpSysError with the page on refusal."""
        limits = self.door.limits
        raw_path, raw_query, authority = split_target(head.target_bytes)
        if authority is not None:
            host_value = authority        # absolute form: the target's authority wins
        elif head.host is not None:
            host_value = head.host
        else:                             # HTTP/1.0 without Host: the local address names it
            host_value = (f"[{self.local_ip}]" if ":" in self.local_ip
                          else self.local_ip) + f":{self.local_port}"
        hostname, _port = parse_host_header(host_value)
        path = raw_path if raw_path == b"*" else canonicalize_path(
            raw_path, max_segment_length=limits.url_segment_max_length,
            max_segment_count=limits.url_segment_max_count,
            max_url_length=limits.max_url_length)
        if isinstance(path, bytes):
            path = path.decode("ascii")
        match = self.door.routes.route(RouteRequest("https", self.local_ip, self.local_port,
                                                    hostname, path))
        info = RequestInfo(
            conn=conn, request_id=self.requests, method=head.method, target=head.target,
            version=head.version,
            headers=tuple((name.decode("latin-1"), value.decode("latin-1"))
                          for _lower, name, value in head.headers),
            host=hostname, path=path, query=raw_query.decode("latin-1"), prefix=match.prefix,
            authority=host_value.strip(" \t"), upgrade=head.upgrade, keep_alive=head.keep_alive)
        return info, match.target

    async def _send_page(self, stream: PushbackStream, page: ErrorPage, head_only: bool) -> None:
        data = render_error(page, head_only=head_only)
        with trio.move_on_after(self.door.limits.send_deadline(len(data))):
            try:
                await stream.send_all(data)
            except _STREAM_ERRORS:
                pass

    async def _serve(self, stream: PushbackStream, conn: ConnectionInfo) -> Close:
        """Requests one after another until one of them ends the connection."""
        while True:
            if self.door.draining:
                return Close.GRACEFUL
            self.in_request = False
            try:
                head = await self._read_head(stream)
            except IdleAtHead:
                return Close.GRACEFUL
            except HttpSysError as exc:
                self.httperr(exc.reason, exc.page.status)
                await self._send_page(stream, exc.page, head_only=False)
                return Close.LINGER
            except ConnectionAbort as exc:
                self.httperr(exc.reason)
                return Close.ABORT
            self.requests += 1
            try:
                info, registration = self.route(head, conn)
            except HttpSysError as exc:
                self.httperr(exc.reason, exc.page.status, head)
                await self._send_page(stream, exc.page, head.method == "HEAD")
                return Close.LINGER
            how = await self._deliver_one(stream, head, info, registration)
            if how is not None:
                return how

    async def _deliver_one(self, stream: PushbackStream, head: RequestHead, info: RequestInfo,
                           registration: Registration) -> Close | None:
        """Deliver a routed request; None to go on with the next request on this connection."""
        slot = self.door.queue_slot(registration)
        if slot is None:
            self.httperr("QueueFull", 503, head)
            return Close.RESET
        started = trio.current_time()
        channel = ClientChannel(stream, head, self.door.limits,
                                closing=lambda: self.door.draining, on_switch=slot.release)
        status: int | None = None
        try:
            await self._deliver(registration, info, channel)
        except HttpSysError as exc:
            self.httperr(exc.reason, exc.page.status, head)
            if channel.response_started:
                status = channel.status
                return Close.ABORT
            status = exc.page.status
            await self._send_page(stream, exc.page, head.method == "HEAD")
            return Close.LINGER
        except ConnectionAbort as exc:
            self.httperr(exc.reason, channel.status, head)
            status = channel.status
            return Close.RESET if exc.reset else Close.ABORT
        finally:
            slot.release()
            self._access(info, registration, status if status is not None
                         else channel.status or 0, channel, started)
        if channel.switched:
            return Close.GRACEFUL
        if not channel.response_done or not channel.keep_alive:
            return Close.LINGER
        if not channel.body_done and not await channel.drain_body():
            return Close.LINGER
        return None

    def _access(self, info: RequestInfo, registration: Registration, status: int,
                channel: ClientChannel, started: float) -> None:
        route, target = _log_names(registration)
        self.door.log.access(
            client=self._log_client, host=info.host, method=info.method,
            path=info.path, status=status, nbytes=channel.response_bytes,
            duration=trio.current_time() - started, route=route, target=target)

    async def _deliver(self, registration: Registration, info: RequestInfo,
                       channel: ClientChannel) -> None:
        target = registration.target
        if not isinstance(target, HandlerTarget):
            try:
                await self.door.proxy.forward(info, channel, target, self.door.limits)
            except BaseExceptionGroup as group:
                exc = leaf_exception(group)
                if isinstance(exc, Exception) and not isinstance(exc, BaseExceptionGroup):
                    raise exc from None
                raise
            return
        request = HandlerRequest(info, channel, self.door.shutdown_event)
        try:
            await target.handler(request)
        except BaseException as raised:
            exc = leaf_exception(raised)
            if isinstance(exc, (HttpSysError, ConnectionAbort)):
                raise exc from None
            if isinstance(exc, _STREAM_ERRORS) and channel.switched:
                return                      # the upgraded stream broke: the handler's business
            if not isinstance(raised, Exception):
                raise                       # Cancelled, KeyboardInterrupt: not ours to judge
            self.door.log.info(f"handler {target.name} failed on {info.path}: {exc!r}")
            if channel.switched:
                return
            if not channel.response_started:
                raise HttpSysError(ErrorPage.SERVICE_UNAVAILABLE, "AppOffline",
                                   repr(exc)) from None
            raise ConnectionAbort("Connection_Abandoned_By_AppPool", repr(exc)) from None
        if not channel.response_started:
            raise HttpSysError(ErrorPage.SERVICE_UNAVAILABLE, "AppOffline", "no response")
        if not channel.response_done and not channel.switched:
            await channel.end_response()

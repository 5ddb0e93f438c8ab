"""The client side of one request, as every delivery path sees it.

In-process handlers and the reverse proxy both read the request body and write the response
through a `ClientChannel`; it owns the per-read and per-write deadlines (EntityBody, MinSendRate)
so no application code has to know about time. Every failure of the client connection comes out
of it as `ConnectionAbort` with the HTTPERR reason, whoever was reading or writing.
"""

from __future__ import annotations

from typing import Callable

import trio

from .bufstream import PushbackStream
from .limits import Limits
from .pages import ErrorPage, HttpSysError
from .request_head import ChunkedDecoder, ContentLengthBody, RequestHead
from .response_writer import LAST_CHUNK, Framing, build_response_head, chunk, format_head

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class ConnectionAbort(Exception):
    """Stop serving this connection at once; `reason` goes to the HTTPERR log.

    `reset` closes with a TCP reset instead of a FIN (a full request queue, verbosity Basic).
    """

    def __init__(self, reason: str, detail: str = "", *, reset: bool = False) -> None:
        self.reason = reason
        self.detail = detail
        self.reset = reset
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _never() -> bool:
    return False


COALESCE_MAX = 64 * 1024


class ClientChannel:
    """Body in, response out, for one request on a client connection."""

    def __init__(self, stream: PushbackStream, head: RequestHead, limits: Limits, *,
                 closing: Callable[[], bool] = _never,
                 on_switch: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.head = head
        self.limits = limits
        self._closing = closing
        self._on_switch = on_switch
        self.keep_alive = head.keep_alive
        # One body decoder per framing, both from the pure core; the loop below serves both.
        self._decoder: ChunkedDecoder | ContentLengthBody = (
            ChunkedDecoder() if head.chunked else ContentLengthBody(head.content_length or 0))
        self.body_done = not head.chunked and not head.content_length
        self.body_bytes_read = 0
        self._continue_sent = False
        self.auto_continue = True         # the proxy relays the upstream's own 100 instead
        self.response_started = False
        self.response_done = False
        self.status: int | None = None
        self.response_bytes = 0
        self._framing = Framing.NONE
        self._sent_body = 0
        self._held_head: bytes | None = None
        self._declared_length: int | None = None
        self.switched = False

    # -- request body -------------------------------------------------------------------------
    async def _receive(self) -> bytes:
        with trio.move_on_after(self.limits.entity_body) as scope:
            try:
                data = await self.stream.receive_some(65536)
            except _STREAM_ERRORS as exc:
                raise ConnectionAbort("Connection_Dropped", f"reading the body: {exc}") from None
        if scope.cancelled_caught:
            raise ConnectionAbort("Timer_EntityBody")
        if not data:
            raise ConnectionAbort("Connection_Dropped", "client closed inside the body")
        return data

    async def read_body(self) -> bytes:
        """The next piece of the request body, b"" once it has all been read.

        HttpSysError for a malformed chunked body (and the body cap); ConnectionAbort when the
        client stalls (EntityBody) or goes away.
        """
        if self.body_done:
            return b""
        if self.auto_continue:
            await self.send_continue()
        while True:
            event = self._decoder.next_event()
            if isinstance(event, (bytes, bytearray)):
                if event:
                    self._count(len(event))
                    return bytes(event)
                continue
            if event is not None:          # the end of the body
                self.stream.unread(self._decoder.take_remaining())
                self.body_done = True
                return b""
            self._decoder.feed(await self._receive())

    def _count(self, n: int) -> None:
        self.body_bytes_read += n
        cap = self.limits.max_body_bytes
        if cap and self.body_bytes_read > cap:
            raise HttpSysError(ErrorPage.REQUEST_TOO_LONG, "EntityTooLarge",
                               f"body over {cap} bytes")

    @property
    def continue_sent(self) -> bool:
        return self._continue_sent

    async def send_continue(self) -> None:
        """Answer `Expect: 100-continue` once, when the body is first wanted."""
        if self.head.expect_continue and not self._continue_sent and not self.response_started:
            self._continue_sent = True
            await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def drain_body(self) -> bool:
        """Swallow what the application left unread; False when the connection must close."""
        swallowed = 0
        if self.head.expect_continue and not self._continue_sent:
            return False                    # the client is still waiting: do not invite it
        self.auto_continue = False
        try:
            with trio.move_on_after(self.limits.drain_entity_body) as scope:
                while not self.body_done:
                    swallowed += len(await self.read_body())
                    if swallowed > self.limits.drain_body_max:
                        return False
            return not scope.cancelled_caught
        except (ConnectionAbort, HttpSysError):
            return False

    # -- response -------------------------------------------------------------------------------
    async def _send(self, data: bytes) -> None:
        with trio.move_on_after(self.limits.send_deadline(len(data))) as scope:
            try:
                await self.stream.send_all(data)
            except _STREAM_ERRORS as exc:
                raise ConnectionAbort("Connection_Dropped", f"sending: {exc}") from None
        if scope.cancelled_caught:
            raise ConnectionAbort("Timer_MinBytesPerSecond")
        self.response_bytes += len(data)

    async def send_raw(self, data: bytes) -> None:
        """Bytes to the client as they are (the caller did the framing)."""
        await self._send(data)

    async def start_response(self, status: int, headers: list[tuple[str, str]], *,
                             reason: str | None = None) -> None:
        if self.response_started:
            raise RuntimeError("response already started")
        if not 200 <= status <= 999:
            raise ValueError(f"status {status} cannot start a final response")
        keep = self.keep_alive and not self._closing()
        head, framing, keep = build_response_head(
            self.head.method, status, headers, self.head.version, keep, reason=reason)
        declared: int | None = None
        for name, value in headers:
            if name.lower() == "content-length":
                declared = int(value)
        self.response_started = True
        self.status = status
        self.keep_alive = keep
        self._framing = framing
        self._declared_length = declared
        if framing is Framing.LENGTH and declared is not None and 0 < declared <= COALESCE_MAX:
            # A small body usually follows at once: send head and body as one TLS record and
            # one syscall instead of two (the proxy's hot path); end_response flushes it anyway.
            self._held_head = head
            return
        await self._send(head)
        if framing is Framing.NONE:
            self.response_done = True

    async def send_body(self, data: bytes) -> None:
        if not self.response_started:
            raise RuntimeError("send_body() before start_response()")
        if not data or self._framing is Framing.NONE:
            return
        if self._framing is Framing.CHUNKED:
            await self._send(chunk(data))
        else:
            if (self._declared_length is not None
                    and self._sent_body + len(data) > self._declared_length):
                raise RuntimeError("body longer than the declared Content-Length")
            held, self._held_head = self._held_head, None
            await self._send(held + data if held else data)
        self._sent_body += len(data)

    async def end_response(self) -> None:
        if self.response_done:
            return
        if not self.response_started:
            raise RuntimeError("end_response() before start_response()")
        if self._held_head is not None:
            held, self._held_head = self._held_head, None
            await self._send(held)
        if self._framing is Framing.CHUNKED:
            await self._send(LAST_CHUNK)
        elif self._framing is Framing.LENGTH and self._sent_body != self._declared_length:
            self.keep_alive = False
            raise ConnectionAbort("Connection_Abandoned_By_AppPool",
                                  "body shorter than Content-Length")
        elif self._framing is Framing.CLOSE:
            self.keep_alive = False
        self.response_done = True

    async def switch_protocols(self, headers: list[tuple[str, str]]) -> PushbackStream:
        """Send `101 Switching Protocols` and hand over the raw stream for the new protocol."""
        if self.response_started:
            raise RuntimeError("response already started")
        if not self.head.upgrade:
            raise RuntimeError("the request did not ask for an upgrade")
        data = format_head(101, headers)
        self.response_started = self.response_done = True
        self.status = 101
        self.switched = True
        self.keep_alive = False
        if self._on_switch is not None:
            self._on_switch()
        await self._send(data)
        return self.stream

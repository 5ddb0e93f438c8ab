"""The client side of one request, as every delivery path sees it.

In-process handlers and the reverse proxy both read the request body and write the response
through a `ClientChannel`; it owns the per-read and per-write deadlines (EntityBody, MinSendRate)
so no application code has to know about time.
"""

from __future__ import annotations

import trio

from .bufstream import PushbackStream
from .limits import Limits
from .pages import ErrorPage, HttpSysError
from .request_head import ChunkedDecoder, RequestHead
from .response_writer import LAST_CHUNK, Framing, build_response_head, chunk, format_head


class ConnectionAbort(Exception):
    """Stop serving this connection at once; `reason` goes to the HTTPERR log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ClientChannel:
    """Body in, response out, for one request on a client connection."""

    def __init__(self, stream: PushbackStream, head: RequestHead, limits: Limits) -> None:
        self.stream = stream
        self.head = head
        self.limits = limits
        self.keep_alive = head.keep_alive
        self._remaining = head.content_length if not head.chunked else None
        self._decoder = ChunkedDecoder() if head.chunked else None
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
        self._declared_length: int | None = None
        self.switched = False

    # -- request body -------------------------------------------------------------------------
    async def _receive(self) -> bytes:
        with trio.move_on_after(self.limits.entity_body) as scope:
            data = await self.stream.receive_some(65536)
        if scope.cancelled_caught:
            raise ConnectionAbort("Timer_EntityBody")
        return data

    async def read_body(self) -> bytes:
        """The next piece of the request body, b"" once it has all been read."""
        if self.body_done:
            return b""
        if self.auto_continue:
            await self.send_continue()
        if self._decoder is None:
            assert self._remaining is not None
            data = await self._receive()
            if not data:
                raise ConnectionAbort("Connection_Dropped", "client closed inside the body")
            if len(data) > self._remaining:
                self.stream.unread(data[self._remaining:])
                data = data[: self._remaining]
            self._remaining -= len(data)
            self.body_done = self._remaining == 0
            self._count(len(data))
            return data
        while True:
            event = self._decoder.next_event()
            if isinstance(event, (bytes, bytearray)):
                if event:
                    self._count(len(event))
                    return bytes(event)
                continue
            if event is not None:          # end of the chunked body
                self.stream.unread(self._decoder.take_remaining())
                self.body_done = True
                return b""
            data = await self._receive()
            if not data:
                raise ConnectionAbort("Connection_Dropped", "client closed inside the body")
            self._decoder.feed(data)

    def _count(self, n: int) -> None:
        self.body_bytes_read += n
        cap = self.limits.max_body_bytes
        if cap and self.body_bytes_read > cap:
            raise HttpSysError(ErrorPage.REQUEST_TOO_LONG, "EntityTooLarge",
                               f"body over {cap} bytes")

    async def send_continue(self) -> None:
        """Answer `Expect: 100-continue` once, when the body is first wanted."""
        if self.head.expect_continue and not self._continue_sent and not self.response_started:
            self._continue_sent = True
            await self.send_raw(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def drain_body(self) -> bool:
        """Swallow what the application left unread; False when the connection must close."""
        swallowed = 0
        try:
            with trio.move_on_after(self.limits.drain_entity_body) as scope:
                while not self.body_done:
                    if not self._continue_sent and self.head.expect_continue:
                        return False        # the client is still waiting: do not invite it
                    data = await self.read_body()
                    swallowed += len(data)
                    if swallowed > self.limits.drain_body_max:
                        return False
            return not scope.cancelled_caught
        except (ConnectionAbort, HttpSysError):
            return False

    # -- response -------------------------------------------------------------------------------
    async def send_raw(self, data: bytes) -> None:
        with trio.move_on_after(self.limits.send_deadline(len(data))) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise ConnectionAbort("Timer_MinBytesPerSecond")
        self.response_bytes += len(data)

    async def start_response(self, status: int, headers: list[tuple[str, str]], *,
                             reason: str | None = None) -> None:
        if self.response_started:
            raise RuntimeError("response already started")
        self.response_started = True
        self.status = status
        keep = self.keep_alive and (self.body_done or True)
        head, framing, keep = build_response_head(
            self.head.method, status, headers, self.head.version, keep, reason=reason)
        self.keep_alive = keep
        self._framing = framing
        for name, value in headers:
            if name.lower() == "content-length":
                self._declared_length = int(value)
        await self.send_raw(head)
        if framing is Framing.NONE:
            self.response_done = True

    async def send_body(self, data: bytes) -> None:
        if not data or self._framing is Framing.NONE:
            return
        if self._framing is Framing.CHUNKED:
            await self.send_raw(chunk(data))
        else:
            if (self._declared_length is not None
                    and self._sent_body + len(data) > self._declared_length):
                raise RuntimeError("body longer than the declared Content-Length")
            await self.send_raw(data)
        self._sent_body += len(data)

    async def end_response(self) -> None:
        if self.response_done:
            return
        if self._framing is Framing.CHUNKED:
            await self.send_raw(LAST_CHUNK)
        elif self._framing is Framing.LENGTH and self._sent_body != self._declared_length:
            self.keep_alive = False
            raise ConnectionAbort("Connection_Abandoned", "body shorter than Content-Length")
        elif self._framing is Framing.CLOSE:
            self.keep_alive = False
        self.response_done = True

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """A whole response in one call, with Content-Length."""
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        await self.start_response(status, headers)
        await self.send_body(body)
        await self.end_response()

    async def switch_protocols(self, headers: list[tuple[str, str]]) -> PushbackStream:
        """Send `101 Switching Protocols` and hand over the raw stream for the new protocol."""
        if self.response_started:
            raise RuntimeError("response already started")
        self.response_started = self.response_done = True
        self.status = 101
        self.switched = True
        self.keep_alive = False
        await self.send_raw(format_head(101, headers))
        return self.stream

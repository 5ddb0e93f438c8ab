"""Halibut's view of a WebSocket: one endless fragmented binary message, read as a byte stream.

Both ends use this (the server after the front door hands over the upgraded stream, the tentacle
after its client handshake). wsproto does the framing; we add what it lacks: a per-frame size
cap (1009), a bounded text message for `MX`, answered pings, and deadlines on the close.
"""

from __future__ import annotations

from typing import Any

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

MAX_FRAME = 1 << 20
MAX_TEXT = 4096
CLOSE_TIMEOUT = 5.0


class WebSocketClosed(Exception):
    """The WebSocket is closed; `code` and `reason` say how."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")


class HalibutWebSocket:
    """Send and receive the Halibut byte stream over a WebSocket connection."""

    def __init__(self, stream: trio.abc.Stream, ws: Connection, *, max_frame: int = MAX_FRAME,
                 leftover: bytes = b"", close_timeout: float = CLOSE_TIMEOUT) -> None:
        self.stream = stream
        self.close_timeout = close_timeout
        self.ws = ws
        self.max_frame = max_frame
        self._send_lock = trio.Lock()
        self._frame_bytes = 0
        self._events: list[Any] = []
        self._closed: WebSocketClosed | None = None
        self._text_parts: list[str] = []
        self._receiving = False
        if leftover:
            ws.receive_data(leftover)

    @classmethod
    def server(cls, stream: trio.abc.Stream, **kw: Any) -> "HalibutWebSocket":
        return cls(stream, Connection(ConnectionType.SERVER), **kw)

    @classmethod
    def client(cls, stream: trio.abc.Stream, leftover: bytes = b"", **kw: Any
               ) -> "HalibutWebSocket":
        return cls(stream, Connection(ConnectionType.CLIENT), leftover=leftover, **kw)

    @property
    def closed(self) -> WebSocketClosed | None:
        return self._closed

    async def _send_event(self, event: Any) -> None:
        async with self._send_lock:
            try:
                data = self.ws.send(event)
            except LocalProtocolError as exc:
                raise WebSocketClosed(self._closed.code if self._closed else None,
                                      str(exc)) from None
            if data:
                await self.stream.send_all(data)

    async def _take_events(self) -> None:
        """Move what wsproto has parsed into our queue; pings answered, violations closed."""
        for event in self.ws.events():
            if isinstance(event, Ping):
                await self._send_event(event.response())
            elif isinstance(event, Pong):
                continue
            elif isinstance(event, CloseConnection):
                if self.ws.state is ConnectionState.OPEN:
                    # wsproto reports a peer's protocol violation as a CloseConnection it made
                    # up itself (state still OPEN): answer with that code (1002/1007/1009).
                    await self._fail(event.code, event.reason or "protocol violation")
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    try:
                        await self._send_event(event.response())
                    except (WebSocketClosed, trio.BrokenResourceError, OSError):
                        pass
                self._events.append(event)
            else:
                self._events.append(event)

    async def _fill(self) -> None:
        """Make at least one event available: first what is already parsed (bytes that came
        with the handshake), else read more from the network."""
        if self._closed is not None:
            raise self._closed
        try:
            await self._take_events()
        except RemoteProtocolError as exc:
            await self._fail(1002, str(exc))
        if self._events:
            return
        self._receiving = True
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._closed = WebSocketClosed(1006, f"connection lost: {exc}")
            raise self._closed from None
        finally:
            self._receiving = False
        self.ws.receive_data(data if data else None)
        try:
            await self._take_events()
        except RemoteProtocolError as exc:
            await self._fail(1002, str(exc))
        if not data and not self._events:
            self._closed = WebSocketClosed(1006, "connection closed without a Close frame")
            raise self._closed

    async def _fail(self, code: int, reason: str) -> None:
        try:
            await self.close(code, reason)
        finally:
            self._closed = WebSocketClosed(code, reason)
        raise self._closed

    async def receive_text(self) -> str:
        """One complete text message (at most MAX_TEXT characters)."""
        while True:
            while self._events:
                event = self._events.pop(0)
                if isinstance(event, CloseConnection):
                    self._closed = WebSocketClosed(event.code, event.reason or "")
                    raise self._closed
                if isinstance(event, TextMessage):
                    self._text_parts.append(event.data)
                    if sum(len(p) for p in self._text_parts) > MAX_TEXT:
                        await self._fail(1009, "text message too big")
                    if event.message_finished:
                        text = "".join(self._text_parts)
                        self._text_parts.clear()
                        return text
                    continue
                await self._fail(1002, "expected a text message")
            await self._fill()

    async def receive_some(self) -> bytes:
        """The next bytes of the binary stream; b"" once the WebSocket is closed (by the peer,
        or by us after a violation: see `closed` for the code)."""
        while True:
            while self._events:
                event = self._events.pop(0)
                if isinstance(event, CloseConnection):
                    self._closed = WebSocketClosed(event.code, event.reason or "")
                    return b""
                if isinstance(event, BytesMessage):
                    self._frame_bytes += len(event.data)
                    if self._frame_bytes > self.max_frame:
                        try:
                            await self._fail(1009, f"frame larger than {self.max_frame} bytes")
                        except WebSocketClosed:
                            return b""
                    if event.frame_finished:
                        self._frame_bytes = 0
                    if event.data:
                        return bytes(event.data)
                    continue
                if isinstance(event, TextMessage):
                    try:
                        await self._fail(1002, "text inside the binary stream")
                    except WebSocketClosed:
                        return b""
            if self._closed is not None:
                return b""
            try:
                await self._fill()
            except WebSocketClosed:
                return b""

    async def send_text(self, text: str) -> None:
        await self._send_event(TextMessage(data=text))

    async def send_part(self, data: bytes) -> None:
        """One write = one frame of the endless binary message (FIN never set)."""
        if not data:
            return
        await self._send_event(BytesMessage(data=data, message_finished=False))

    async def send_writes(self, writes: list[bytes]) -> None:
        for data in writes:
            await self.send_part(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send Close (if still open) and wait briefly for the peer's Close, then drop TCP."""
        with trio.move_on_after(self.close_timeout):
            try:
                if self.ws.state is ConnectionState.OPEN and self._receiving:
                    # Another task is reading: it will see the peer's Close; just send ours.
                    await self._send_event(CloseConnection(code=code, reason=reason))
                elif self.ws.state is ConnectionState.OPEN:
                    await self._send_event(CloseConnection(code=code, reason=reason))
                    while self.ws.state is not ConnectionState.CLOSED:
                        data = await self.stream.receive_some(65536)
                        if not data:
                            break
                        self.ws.receive_data(data)
                        for _ in self.ws.events():
                            pass
                elif self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self._send_event(CloseConnection(code=code, reason=reason))
            except (WebSocketClosed, trio.BrokenResourceError, trio.ClosedResourceError,
                    OSError, RemoteProtocolError, LocalProtocolError):
                pass
        if self._closed is None:
            self._closed = WebSocketClosed(code, reason)
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

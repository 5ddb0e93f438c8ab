"""A trio stream with a push-back buffer.

The head reader may read past the end of a request head; those bytes belong to the body, to the
next pipelined request, or (after an upgrade) to the tunnelled protocol, so they are pushed back
and served first.
"""

from __future__ import annotations

import trio


class PushbackStream(trio.abc.Stream):
    """Wraps a stream; `unread()` puts bytes back in front of what the transport delivers."""

    def __init__(self, transport: trio.abc.Stream) -> None:
        self.transport = transport
        self._pending = bytearray()
        self.bytes_received = 0
        self.bytes_sent = 0

    def unread(self, data: bytes) -> None:
        """Put `data` back so the next receive returns it first."""
        if data:
            self._pending[:0] = data

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            n = len(self._pending) if max_bytes is None else min(max_bytes, len(self._pending))
            data = bytes(self._pending[:n])
            del self._pending[:n]
            return data
        data = await self.transport.receive_some(max_bytes if max_bytes else 65536)
        self.bytes_received += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)
        self.bytes_sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close when the transport supports it (TCP and Unix sockets do; TLS does not)."""
        send_eof = getattr(self.transport, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()

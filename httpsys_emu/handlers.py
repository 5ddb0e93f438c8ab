"""In-process applications: an async function receives each routed request directly.

This is the embedding path (the `octopus-comms serve --embedded` mode): no extra hop, the same
routing and ACL rules, and for upgrades the handler gets the client stream itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

from .channel import ClientChannel
from .request import RequestInfo


async def respond_whole(channel: Any, status: int, headers: list[tuple[str, str]],
                        body: bytes) -> None:
    """A whole response with its Content-Length, over either channel (the front door's
    `ClientChannel` or the app server's `H11Channel`: both have start/send/end)."""
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    headers.append(("Content-Length", str(len(body))))
    await channel.start_response(status, headers)
    await channel.send_body(body)
    await channel.end_response()


class HandlerRequest:
    """One request as an in-process handler sees it: facts, body, and ways to answer.

    Reading and writing raise `channel.ConnectionAbort` when the client stalls or goes away and
    `pages.HttpSysError` for a malformed body; let both propagate (the front door logs them).
    `shutdown` is set when the front door starts draining: long-lived handlers (WebSockets)
    should then say goodbye (Close 1001) and return.
    """

    def __init__(self, info: RequestInfo, channel: ClientChannel,
                 shutdown: trio.Event | None = None) -> None:
        self.info = info
        self._channel = channel
        self.shutdown = shutdown if shutdown is not None else trio.Event()

    @property
    def responded(self) -> bool:
        return self._channel.response_started

    @property
    def client_cert_der(self) -> bytes | None:
        """The client certificate (DER) from the TLS handshake, or None."""
        return self.info.conn.client_cert_der

    @property
    def client_cert_thumbprint(self) -> str | None:
        """SHA-1 of the client certificate, upper-case hex, or None."""
        return self.info.conn.client_cert_thumbprint

    async def body(self) -> AsyncIterator[bytes]:
        """The request body piece by piece, as the client sends it."""
        while True:
            data = await self._channel.read_body()
            if not data:
                return
            yield data

    async def read_body(self, limit: int = 16 << 20) -> bytes:
        """The whole body; ValueError when it is longer than `limit` bytes."""
        parts: list[bytes] = []
        total = 0
        async for data in self.body():
            total += len(data)
            if total > limit:
                raise ValueError(f"request body over {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    async def respond(self, status: int, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"") -> None:
        await respond_whole(self._channel, status, list(headers or []), body)

    async def start_response(self, status: int, headers: list[tuple[str, str]] | None = None
                             ) -> None:
        """Begin a streamed response; without a Content-Length it goes out chunked."""
        await self._channel.start_response(status, list(headers or []))

    async def send(self, data: bytes) -> None:
        await self._channel.send_body(data)

    async def end(self) -> None:
        await self._channel.end_response()

    async def accept_upgrade(self, headers: list[tuple[str, str]]) -> trio.abc.Stream:
        """Answer 101 with `headers` and take over the connection's byte stream.

        Bytes the client sent after the request (early frames) come first from the stream. The
        stream has no deadlines of its own: the handler owns them from here on.
        """
        return await self._channel.switch_protocols(list(headers))


Handler = Callable[[HandlerRequest], Awaitable[None]]


@dataclass(frozen=True, eq=False)
class HandlerTarget:
    """Delivery to an async function in this process."""

    handler: Handler
    name: str = "in-process"

    def __str__(self) -> str:
        return f"in-process:{self.name}"

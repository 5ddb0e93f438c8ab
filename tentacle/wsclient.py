"""The agent's way in: TCP, TLS with its client certificate, then the WebSocket upgrade.

Why here and not in wsproto's handshake helper: the Octopus upgrade needs our extra header
(`X-Octopus-RequestId`), the `Octopus` sub-protocol, a bounded response head, a deadline on every
step, and errors that say which step failed (the reconnect policy treats a failed connect
differently from everything after it). h11 parses the `101`; whatever bytes followed it are handed
to `HalibutWebSocket.client` so no frame is lost. The server's certificate is accepted here and
pinned by the caller (`server_thumbprint`), as the real agent does.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio
from OpenSSL import SSL

from httpsys_emu.tls import TLSStream
from octopus_comms.wsstream import HalibutWebSocket

__all__ = [
    "OCTOPUS_SUBPROTOCOL",
    "REQUEST_ID_HEADER",
    "ClientConnection",
    "ConnectError",
    "PollingAddress",
    "connect_websocket",
]

OCTOPUS_SUBPROTOCOL = "Octopus"
REQUEST_ID_HEADER = "X-Octopus-RequestId"
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE_HEAD = 16 * 1024

OpenTcp = Callable[[str, int], Awaitable[trio.abc.Stream]]


class ConnectError(Exception):
    """Connecting failed at `stage` ("TCP connect", "TLS handshake", "WebSocket upgrade")."""

    def __init__(self, stage: str, detail: str, *, status: int | None = None) -> None:
        self.stage = stage
        self.detail = detail
        self.status = status
        super().__init__(f"{stage} failed: {detail}")


@dataclass(frozen=True)
class PollingAddress:
    """A `wss://host[:port]/path` polling address, taken apart."""

    url: str
    host: str
    port: int
    target: str

    @classmethod
    def parse(cls, url: str) -> PollingAddress:
        parts = urlsplit(url.strip())
        if parts.scheme.lower() != "wss":
            raise ValueError(f"polling address {url!r} is not a wss:// URL")
        if not parts.hostname:
            raise ValueError(f"polling address {url!r} has no host")
        try:
            port = parts.port or 443
        except ValueError:
            raise ValueError(f"polling address {url!r} has a bad port") from None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(url=url.strip(), host=parts.hostname, port=port, target=target)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


@dataclass
class ClientConnection:
    """An open polling WebSocket and what the handshake established."""

    ws: HalibutWebSocket
    tls: TLSStream
    server_thumbprint: str | None
    request_id: str
    subprotocol: str | None


def _accept_token(key: bytes) -> str:
    return base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode("ascii")


async def _close_quietly(stream: trio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _upgrade(tls: TLSStream, address: PollingAddress, request_id: str) -> tuple[str | None, bytes]:
    """Send the upgrade request and read the 101; returns (sub-protocol, bytes after the head)."""
    key = base64.b64encode(secrets.token_bytes(16))
    client = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    request = h11.Request(
        method="GET",
        target=address.target,
        headers=[
            ("Host", address.host_header),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key.decode("ascii")),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", OCTOPUS_SUBPROTOCOL),
            (REQUEST_ID_HEADER, request_id),
        ],
    )
    await tls.send_all(client.send(request) + client.send(h11.EndOfMessage()))
    received = 0
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as exc:
            raise ConnectError("WebSocket upgrade", f"bad HTTP response: {exc}") from None
        if event is h11.NEED_DATA:
            data = await tls.receive_some(8192)
            received += len(data)
            if received > MAX_RESPONSE_HEAD:
                raise ConnectError("WebSocket upgrade", "the response head is too large")
            if not data:
                raise ConnectError("WebSocket upgrade", "the server closed the connection")
            client.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            break
        if isinstance(event, h11.InformationalResponse):
            continue  # 1xx other than 101: keep reading
        if isinstance(event, h11.Response):
            reason = event.reason.decode("latin-1", "replace")
            raise ConnectError(
                "WebSocket upgrade",
                f"the server answered HTTP {event.status_code} {reason} instead of 101 "
                "(is the polling WebSocket listener enabled at this address?)",
                status=event.status_code,
            )
        raise ConnectError("WebSocket upgrade", f"unexpected {type(event).__name__}")
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers}
    if headers.get("upgrade", "").strip().lower() != "websocket":
        raise ConnectError("WebSocket upgrade", "the 101 response has no 'Upgrade: websocket'")
    if headers.get("sec-websocket-accept", "").strip() != _accept_token(key):
        raise ConnectError("WebSocket upgrade", "the server's Sec-WebSocket-Accept is wrong")
    if headers.get("sec-websocket-extensions"):
        raise ConnectError("WebSocket upgrade", "the server chose an extension we did not offer")
    subprotocol = headers.get("sec-websocket-protocol", "").strip() or None
    if subprotocol is not None and subprotocol != OCTOPUS_SUBPROTOCOL:
        raise ConnectError("WebSocket upgrade", f"the server chose sub-protocol {subprotocol!r}")
    leftover, _closed = client.trailing_data
    return subprotocol, bytes(leftover)


async def connect_websocket(
    address: PollingAddress,
    context: SSL.Context,
    *,
    connect_timeout: float = 60.0,
    handshake_timeout: float = 60.0,
    request_id: str | None = None,
    open_tcp: OpenTcp = trio.open_tcp_stream,
) -> ClientConnection:
    """Open the polling WebSocket (TCP within `connect_timeout`, TLS and upgrade within
    `handshake_timeout`). `context` is `tlsconfig.client_context(cert, key)`. Raises
    ConnectError; the connection is closed on any failure or cancellation."""
    request_id = request_id or str(uuid.uuid4())
    try:
        with trio.fail_after(connect_timeout):
            tcp = await open_tcp(address.host, address.port)
    except trio.TooSlowError:
        raise ConnectError("TCP connect", f"no connection to {address.host}:{address.port} "
                           f"within {connect_timeout:g} s") from None
    except OSError as exc:
        raise ConnectError("TCP connect", f"{address.host}:{address.port}: {exc.strerror or exc}") from None
    tls = TLSStream(tcp, context, server_hostname=address.host)
    try:
        stage = "TLS handshake"
        with trio.fail_after(handshake_timeout):
            await tls.do_handshake()
            stage = "WebSocket upgrade"
            subprotocol, leftover = await _upgrade(tls, address, request_id)
    except ConnectError:
        await _close_quietly(tls)
        raise
    except trio.TooSlowError:
        await _close_quietly(tls)
        raise ConnectError(stage, f"no answer within {handshake_timeout:g} s") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, SSL.Error) as exc:
        await _close_quietly(tls)
        raise ConnectError(stage, str(exc) or type(exc).__name__) from None
    except BaseException:
        await _close_quietly(tls)
        raise
    return ClientConnection(
        ws=HalibutWebSocket.client(tls, leftover),
        tls=tls,
        server_thumbprint=tls.server_thumbprint,
        request_id=request_id,
        subprotocol=subprotocol,
    )

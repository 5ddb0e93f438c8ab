"""HalibutWebSocket over in-memory streams: framing, caps, violations and closes."""

from __future__ import annotations

import struct

import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from octopus_comms.wsstream import HalibutWebSocket


def _pair() -> tuple[HalibutWebSocket, HalibutWebSocket]:
    a, b = trio.testing.memory_stream_pair()
    return HalibutWebSocket.client(a), HalibutWebSocket.server(b)


async def test_endless_binary_message_is_a_byte_stream() -> None:
    client, server = _pair()
    async with trio.open_nursery() as nursery:
        received = bytearray()

        async def read() -> None:
            assert await server.receive_text() == "MX"
            while len(received) < 6000:
                data = await server.receive_some()
                assert data
                received.extend(data)

        nursery.start_soon(read)
        await client.send_text("MX")  # text first, as the agent does
        for i in range(6):
            await client.send_part(bytes([i]) * 1000)
    assert bytes(received) == b"".join(bytes([i]) * 1000 for i in range(6))


async def test_every_write_is_a_non_final_frame() -> None:
    a, b = trio.testing.memory_stream_pair()
    client = HalibutWebSocket.client(a)
    raw = Connection(ConnectionType.SERVER)
    await client.send_part(b"abc")
    await client.send_part(b"def")
    raw.receive_data(await b.receive_some())
    events = list(raw.events())
    assert [(e.data, e.message_finished) for e in events if isinstance(e, BytesMessage)] \
        == [(b"abc", False), (b"def", False)]


async def test_text_receive_and_leftover_from_handshake_is_served_first() -> None:
    a, b = trio.testing.memory_stream_pair()
    peer = Connection(ConnectionType.CLIENT)
    leftover = peer.send(TextMessage(data="MX"))
    server = HalibutWebSocket(b, Connection(ConnectionType.SERVER), leftover=leftover)
    with trio.fail_after(1):       # nothing more will ever arrive on the stream
        assert await server.receive_text() == "MX"


async def test_unmasked_client_frame_is_closed_with_1002() -> None:
    a, b = trio.testing.memory_stream_pair()
    server = HalibutWebSocket.server(b, close_timeout=0.2)
    await a.send_all(b"\x82\x03abc")         # binary, FIN, no mask bit
    assert await server.receive_some() == b""
    assert server.closed is not None and server.closed.code == 1002
    raw = Connection(ConnectionType.CLIENT)
    raw.receive_data(await a.receive_some())
    closes = [e for e in raw.events() if isinstance(e, CloseConnection)]
    assert closes and closes[0].code == 1002


async def test_frame_over_the_cap_is_closed_with_1009() -> None:
    a, b = trio.testing.memory_stream_pair()
    server = HalibutWebSocket.server(b, max_frame=1024, close_timeout=0.2)
    mask = b"\x01\x02\x03\x04"
    payload = bytes(4096)
    masked = bytes(x ^ mask[i % 4] for i, x in enumerate(payload))
    await a.send_all(b"\x02\xfe" + struct.pack("!H", len(payload)) + mask + masked)
    data = b""
    with trio.fail_after(2):
        while True:
            chunk = await server.receive_some()
            if not chunk:
                break
            data += chunk
    assert server.closed is not None and server.closed.code == 1009
    assert len(data) <= 4096


async def test_peer_close_gives_eof_and_is_echoed() -> None:
    a, b = trio.testing.memory_stream_pair()
    server = HalibutWebSocket.server(b)
    raw = Connection(ConnectionType.CLIENT)
    await a.send_all(raw.send(CloseConnection(code=1000, reason="bye")))
    assert await server.receive_some() == b""
    assert server.closed is not None and server.closed.code == 1000
    raw.receive_data(await a.receive_some())
    assert any(isinstance(e, CloseConnection) for e in raw.events())

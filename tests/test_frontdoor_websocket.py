"""WebSockets through the front door with the `websockets` library as the client.

Three ways in: a static forward to an echo server written with `websockets.serve` (on a loopback
port and on a unix socket), and an in-process handler that speaks wsproto over the upgraded
stream. A raw tunnel test checks that half-closes travel through in both directions.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import wsproto
import wsproto.events as ws_events
from websockets.trio.client import connect as ws_connect
from websockets.trio.server import ServerConnection, serve as ws_serve
from wsproto.utilities import generate_accept_token

from httpsys_emu.frontdoor import FrontDoor
from httpsys_emu.handlers import HandlerRequest
from httpsys_emu.tls import TLSStream
from httpsys_emu.tlsconfig import client_context
from tests.frontdoor_fixtures import (
    RecordingUpstream,
    Site,
    UpstreamExchange,
    applied,
    client_ssl_context,
    front_door,
    read_response,
    site,
    upstream,
)

__all__ = ["front_door", "site", "upstream"]


@asynccontextmanager
async def echo_server(unix_path: str | None = None) -> AsyncIterator[tuple[str, list[dict]]]:
    """A websockets echo server; yields its delivery target and the handshakes it saw."""
    seen: list[dict] = []

    async def echo(ws: ServerConnection) -> None:
        seen.append(dict(ws.request.headers.raw_items()) | {"path": ws.request.path})
        async for message in ws:
            await ws.send(message)

    if unix_path:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(unix_path)
        sock.listen(16)
        listeners = [trio.SocketListener(sock)]
        target = f"unix:{unix_path}"
    else:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        target = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(ws_serve, echo, listeners=listeners,
                                              compression=None))
        yield target, seen
        nursery.cancel_scope.cancel()


async def exchange_messages(url: str) -> list[str | bytes]:
    answers: list[str | bytes] = []
    with trio.fail_after(10):
        async with ws_connect(url.replace("https://", "wss://"), ssl=client_ssl_context(),
                              proxy=None) as ws:
            for message in ("hello", b"\x00binary\xff", "x" * 200_000):
                await ws.send(message)
                answers.append(await ws.recv())
    return answers


@pytest.mark.parametrize("where", ["tcp", "unix"])
async def test_websocket_through_a_forward(where: str, site: Site,
                                           front_door: FrontDoor) -> None:
    unix_path = str(site.state_dir / "ws.sock") if where == "unix" else None
    async with echo_server(unix_path) as (target, seen):
        site.store.add_forward(site.prefix("/ws/"), target)
        await applied(front_door, site)
        answers = await exchange_messages(site.url("/ws/echo?x=1"))
    assert answers == ["hello", b"\x00binary\xff", "x" * 200_000]
    [handshake] = seen
    assert handshake["path"] == "/ws/echo?x=1"
    assert handshake["X-Forwarded-For"] == "127.0.0.1"
    assert handshake["Upgrade"] == "websocket"
    [line] = await site.access_lines(1)
    assert (line["path"], line["status"]) == ("/ws/echo", "101")


async def wsproto_echo(req: HandlerRequest) -> None:
    """An in-process WebSocket echo application on wsproto's low-level connection."""
    key = (req.info.header("Sec-WebSocket-Key") or "").encode()
    stream = await req.accept_upgrade([
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key).decode())])
    ws = wsproto.Connection(wsproto.ConnectionType.SERVER)
    while True:
        with trio.fail_after(10):
            data = await stream.receive_some(65536)
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, ws_events.Message):
                reply = (ws_events.TextMessage if isinstance(event, ws_events.TextMessage)
                         else ws_events.BytesMessage)
                await stream.send_all(ws.send(reply(data=event.data,
                                                    message_finished=event.message_finished)))
            elif isinstance(event, ws_events.Ping):
                await stream.send_all(ws.send(event.response()))
            elif isinstance(event, ws_events.CloseConnection):
                await stream.send_all(ws.send(event.response()))
                return
        if not data:
            return


async def test_websocket_to_an_in_process_wsproto_handler(site: Site,
                                                           front_door: FrontDoor) -> None:
    async with front_door.register_handler(site.prefix("/inproc-ws/"), wsproto_echo):
        answers = await exchange_messages(site.url("/inproc-ws/"))
    assert answers == ["hello", b"\x00binary\xff", "x" * 200_000]
    [line] = await site.access_lines(1)
    assert (line["path"], line["status"]) == ("/inproc-ws/", "101")


async def test_tunnel_relays_half_closes_both_ways(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    """Client EOF reaches the upstream as a FIN while the upstream can still answer; the
    upstream's FIN reaches the client as close_notify after every byte before it."""
    async def raw_echo(exchange: UpstreamExchange) -> None:
        early = await exchange.switch_protocols([("Upgrade", "x-raw"),
                                                 ("Connection", "Upgrade")])
        received = bytearray(early)
        while True:
            data = await exchange.stream.receive_some(65536)
            if not data:
                break                                 # the client's half-close arrived
            received += data
        await exchange.stream.send_all(b"after your eof: " + bytes(received))
        await exchange.stream.send_eof()

    upstream.route("/tunnel/", raw_echo)
    site.store.add_forward(site.prefix("/tunnel/"), upstream.target)
    await applied(front_door, site)
    tcp = await trio.open_tcp_stream("127.0.0.1", site.port)
    client = TLSStream(tcp, client_context(), server_hostname="localhost")
    with trio.fail_after(10):
        await client.send_all(b"GET /tunnel/ HTTP/1.1\r\nHost: localhost\r\n"
                              b"Connection: Upgrade\r\nUpgrade: x-raw\r\n\r\nearly ")
        buffer = bytearray()
        switched = await read_response(client, buffer=buffer)
        assert switched.status == 101
        await client.send_all(b"and late")
        await client.send_eof()                      # TLS close_notify: our write side only
        rest = bytearray(buffer)
        while True:
            data = await client.receive_some(65536)
            if not data:
                break
            rest += data
    assert bytes(rest) == b"after your eof: early and late"
    await client.aclose()

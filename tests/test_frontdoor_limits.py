"""Timers and caps (spec §5, hardening.md "Slow clients"): each closes exactly the connection
that broke it, on time, logs the HTTPERR reason, and leaves everyone else served.

Timers come from the store (the smallest value it takes is one second); caps the store has no
row for are set as limit overrides on the running front door.
"""

from __future__ import annotations

import ssl
import tracemalloc

import pytest
import trio

from httpsys_emu.frontdoor import FrontDoor
from httpsys_emu.handlers import HandlerRequest
from tests.frontdoor_fixtures import (
    RecordingUpstream,
    Site,
    UpstreamExchange,
    applied,
    curl,
    front_door,
    http_request,
    read_response,
    read_until_closed,
    site,
    tls_connect,
    upstream,
    wait_for,
)

__all__ = ["front_door", "site", "upstream"]

REFUSED = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)


async def _forward(site: Site, door: FrontDoor, upstream: RecordingUpstream) -> None:
    site.store.add_forward(site.prefix("/app/"), upstream.target)
    await applied(door, site)


async def test_header_wait_closes_a_byte_dripping_client(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    site.store.set_timeout("headerwaittimeout", 1)
    await _forward(site, front_door, upstream)
    stream = await tls_connect(site.port)
    started = trio.current_time()
    closed_at: list[float] = []

    async def drip() -> None:
        for byte in b"GET /app/slow HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000:
            try:
                await stream.send_all(bytes([byte]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await trio.sleep(0.05)     # 20 bytes a second: an inactivity timer never fires

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip)
        assert await read_until_closed(stream, timeout=5) == b""      # closed, no page
        closed_at.append(trio.current_time() - started)
        nursery.cancel_scope.cancel()
    assert 0.9 <= closed_at[0] < 3.0
    assert site.httperr_reasons() == ["Timer_HeaderWait"]
    assert upstream.requests == []


async def test_idle_connection_timer_between_requests_and_before_the_first(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    site.store.set_timeout("idleconnectiontimeout", 1)
    await _forward(site, front_door, upstream)
    used = await tls_connect(site.port)
    silent = await tls_connect(site.port)
    started = trio.current_time()
    await used.send_all(http_request("/app/once"))
    assert (await read_response(used)).status == 200
    async with trio.open_nursery() as nursery:
        for stream in (used, silent):
            nursery.start_soon(read_until_closed, stream, 5)
    assert 0.9 <= trio.current_time() - started < 3.0
    assert site.httperr_reasons() == ["Timer_ConnectionIdle", "Timer_ConnectionIdle"]
    assert upstream.targets() == ["/app/once"]


@pytest.mark.parametrize("delivery", ["forward", "in-process"])
async def test_entity_body_timer_closes_a_stalled_upload(
        delivery: str, site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    site.store.set_timeout("entitybody", 1)
    got: list[bytes] = []

    async def handler(req: HandlerRequest) -> None:
        async for data in req.body():
            got.append(data)
        await req.respond(200)

    await _forward(site, front_door, upstream)
    async with front_door.register_handler(site.prefix("/inproc/"), handler):
        path = "/app/upload" if delivery == "forward" else "/inproc/upload"
        stream = await tls_connect(site.port)
        await stream.send_all(f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
                              f"Content-Length: 10\r\n\r\nabc".encode())
        started = trio.current_time()
        assert await read_until_closed(stream, timeout=5) == b""
        assert 0.9 <= trio.current_time() - started < 3.0
    assert site.httperr_reasons() == ["Timer_EntityBody"]
    [line] = site.access_log()
    assert (line["path"], line["status"]) == (path, "0")
    if delivery == "forward":
        await upstream.settle(front_door)
        [received] = upstream.requests
        assert (received.target, received.complete, received.body_start) == (path, False,
                                                                             b"abc")
    else:
        assert got == [b"abc"]


async def test_tls_handshake_deadline_for_a_silent_or_dripping_client(
        site: Site, front_door: FrontDoor) -> None:
    front_door.set_limit_overrides(handshake_timeout=0.5)
    silent = await trio.open_tcp_stream("127.0.0.1", site.port)
    dripping = await trio.open_tcp_stream("127.0.0.1", site.port)
    started = trio.current_time()

    async def drip() -> None:
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 200
        for byte in hello:
            try:
                await dripping.send_all(bytes([byte]))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip)
        for stream in (silent, dripping):
            assert await read_until_closed(stream, timeout=3) == b""
        nursery.cancel_scope.cancel()
    assert 0.45 <= trio.current_time() - started < 2.5
    assert site.httperr_reasons() == ["Timer_ConnectionIdle", "Timer_ConnectionIdle"]
    assert front_door.handshakes_failed == 2


async def test_min_send_rate_closes_a_client_that_does_not_read(
        site: Site, front_door: FrontDoor) -> None:
    site.store.set_setting("minsendrate", 100_000_000)   # every write gets its floor: 2 s
    sent: list[int] = []

    async def flood(req: HandlerRequest) -> None:
        await req.start_response(200, [("Content-Length", str(256 << 20))])
        block = b"x" * (1 << 20)
        for _ in range(256):
            await req.send(block)
            sent.append(len(block))

    async with front_door.register_handler(site.prefix("/flood/"), flood):
        await applied(front_door, site)
        stream = await tls_connect(site.port)
        await stream.send_all(http_request("/flood/"))
        await wait_for(lambda: "Timer_MinBytesPerSecond" in site.httperr_reasons(), timeout=8)
        await stream.aclose()
    assert sum(sent) < 64 << 20            # stopped long before the end, memory stayed flat
    [line] = site.access_log()
    assert line["status"] == "200"


async def test_connection_caps_refuse_at_once_and_serve_everyone_else(
        site: Site, front_door: FrontDoor) -> None:
    front_door.set_limit_overrides(max_connections_per_client=2, max_connections=4)

    async def hello(req: HandlerRequest) -> None:
        await req.respond(200, [], b"hello")

    async with front_door.register_handler(site.prefix("/"), hello):
        first = [await tls_connect(site.port) for _ in range(2)]
        with pytest.raises(REFUSED):
            third = await tls_connect(site.port)
            await third.send_all(http_request("/"))
            await read_response(third)
        assert site.httperr_reasons() == ["ConnLimit_PerClient"]
        other = [await tls_connect(site.port, source="127.0.0.2") for _ in range(2)]
        with pytest.raises(REFUSED):                              # four open: the total cap
            fifth = await tls_connect(site.port, source="127.0.0.3")
            await fifth.send_all(http_request("/"))
            await read_response(fifth)
        assert site.httperr_reasons() == ["ConnLimit_PerClient", "ConnLimit"]
        for stream in first + other:                              # the held ones still work
            await stream.send_all(http_request("/"))
            assert (await read_response(stream)).body == b"hello"
        await first[0].aclose()
        await wait_for(lambda: len(front_door._connections) == 3)
        result = await curl(site.url("/"), "--interface", "127.0.0.3")
        assert result.stdout == b"hello", result.stderr
    assert front_door.connections_refused == 2


async def test_memory_stays_flat_while_bodies_and_tunnels_stream(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    """Traced Python memory (front door, client and upstream together) grows by far less
    than what flows: no buffer on the body or tunnel paths grows with the input."""
    total = 16 << 20
    piece = b"z" * (256 << 10)

    async def discard_tunnel(exchange: UpstreamExchange) -> None:
        await exchange.switch_protocols([("Upgrade", "x-sink"), ("Connection", "Upgrade")])
        received = 0
        while received < total:
            data = await exchange.stream.receive_some(65536)
            if not data:
                break
            received += len(data)
        await exchange.stream.send_all(b"%d" % received)

    upstream.route("/app/tunnel", discard_tunnel)
    await _forward(site, front_door, upstream)
    body_client = await tls_connect(site.port)
    tunnel_client = await tls_connect(site.port)
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        await body_client.send_all(b"POST /app/sink HTTP/1.1\r\nHost: localhost\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(total // len(piece)):
            await body_client.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
        await body_client.send_all(b"0\r\n\r\n")
        assert (await read_response(body_client, timeout=30)).status == 200
        await tunnel_client.send_all(b"GET /app/tunnel HTTP/1.1\r\nHost: localhost\r\n"
                                     b"Connection: Upgrade\r\nUpgrade: x-sink\r\n\r\n")
        buffer = bytearray()
        assert (await read_response(tunnel_client, buffer=buffer)).status == 101
        for _ in range(total // len(piece)):
            await tunnel_client.send_all(piece)
        with trio.fail_after(30):
            while bytes(buffer) != b"%d" % total:
                buffer += await tunnel_client.receive_some(65536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert upstream.requests[0].body_length == total
    assert peak - baseline < 4 << 20, f"peak grew by {(peak - baseline) >> 20} MiB"

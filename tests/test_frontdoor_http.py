"""HTTP/1.1 through the front door with real clients: forwards, in-process handlers, keep-alive,
pipelining, 100-continue, streaming, upgrades that are refused, and upstream failures.

Every test checks both ends: what the client saw, and what the application received.
"""

from __future__ import annotations

import hashlib
import json
import os
from urllib.parse import unquote

import trio

from httpsys_emu.frontdoor import FrontDoor
from httpsys_emu.handlers import HandlerRequest
from httpsys_emu.pages import ErrorPage
from tests.frontdoor_fixtures import (
    CLIENT_CERT,
    CloseConnection,
    RecordingUpstream,
    Site,
    UpstreamExchange,
    assert_error_page,
    curl,
    front_door,
    parse_responses,
    read_response,
    read_until_closed,
    running_upstream,
    applied,
    http_request as request,
    site,
    tls_connect,
    upstream,
)

__all__ = ["front_door", "site", "upstream"]


def forward(site: Site, upstream: RecordingUpstream, path: str = "/app/") -> None:
    site.store.add_forward(site.prefix(path), upstream.target)


# ------------------------------------------------------------------------------ forwards

async def test_forward_sets_trustworthy_headers_and_strips_forged_ones(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    forward(site, upstream)
    await applied(front_door, site)
    result = await curl("--path-as-is", site.url("/app/x%2Fy/../z?q=1&r=%41"),
                        "-H", "X-Forwarded-For: 6.6.6.6",
                        "-H", "Forwarded: for=6.6.6.6", "-H", "X-Client-Cert: forged",
                        "-H", "X-Client-Cert-Thumbprint: FORGED", "-H", "X-HttpSys-SNI: evil",
                        "-H", "X-Real-IP: 6.6.6.6", "-H", "Connection: keep-alive, X-Drop-Me",
                        "-H", "X-Drop-Me: 1", "-H", "Keep-Alive: timeout=5", "-H", "TE: trailers",
                        "-H", "X-Keep-Me: yes")
    assert result.returncode == 0, result.stderr
    echoed = json.loads(result.stdout)
    assert echoed["target"] == "/app/x/z?q=1&r=%41"          # canonical path, raw query
    [received] = upstream.requests
    assert received.complete
    assert received.header("X-Forwarded-For") == "127.0.0.1"
    assert received.header("X-Forwarded-Proto") == "https"
    assert received.header("X-Forwarded-Host") == f"localhost:{site.port}"
    assert received.header("Host") == f"localhost:{site.port}"
    forwarded = received.header_values("Forwarded")
    assert len(forwarded) == 1 and forwarded[0].startswith('for="127.0.0.1:')
    assert f'by="127.0.0.1:{site.port}"' in forwarded[0] and "proto=https" in forwarded[0]
    for forged in ("X-Client-Cert", "X-Client-Cert-Thumbprint", "X-Real-IP", "X-Drop-Me",
                   "Keep-Alive", "TE"):
        assert received.header(forged) is None, forged
    assert received.header("X-HttpSys-SNI") == "localhost"
    assert received.header("X-Keep-Me") == "yes"
    assert received.header_values("X-Forwarded-For") == ["127.0.0.1"]
    assert received.header("X-Original-URL") == "/app/x%2Fy/../z?q=1&r=%41"
    [line] = await site.access_lines(1)
    assert (line["method"], line["path"], line["status"]) == ("GET", "/app/x/z", "200")


async def test_client_certificate_reaches_the_application_as_headers(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    forward(site, upstream)
    async with front_door.register_handler(site.prefix("/other/"), _never_called,
                                           client_cert=True):
        await applied(front_door, site)
        result = await curl(site.url("/app/"), *site.client_cert_args,
                            "-H", "X-Client-Cert-Thumbprint: FORGED")
        assert result.returncode == 0, result.stderr
        no_cert = await curl(site.url("/app/"))
        assert no_cert.returncode == 0
    with_cert, without = upstream.requests
    assert with_cert.header_values("X-Client-Cert-Thumbprint") == [CLIENT_CERT.thumbprint]
    assert unquote(with_cert.header("X-Client-Cert") or "").encode() == CLIENT_CERT.cert_pem
    assert without.header("X-Client-Cert-Thumbprint") is None
    assert without.header("X-Client-Cert") is None


async def _never_called(request: HandlerRequest) -> None:
    raise AssertionError("not routed here")


async def test_keep_alive_reuses_one_upstream_connection(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    forward(site, upstream)
    await applied(front_door, site)
    urls = [site.url(f"/app/{i}") for i in range(5)]
    result = await curl(*urls, "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                        "-o", "/dev/null", "-o", "/dev/null", "-w", "%{num_connects}\n")
    assert result.returncode == 0, result.stderr
    # one client connection for five requests, and one upstream connection behind it
    assert result.stdout.split() == [b"1", b"0", b"0", b"0", b"0"]
    again = await curl(site.url("/app/again"))       # a new client connection, same pool
    assert again.returncode == 0
    assert upstream.accepts == 1
    assert {r.connection for r in upstream.requests} == {1}
    pool = front_door.proxy.pool
    assert (pool.connects, pool.reuses) == (1, 5)
    assert [r.target for r in upstream.requests] == [f"/app/{i}" for i in range(5)] + [
        "/app/again"]


async def test_pooled_connection_closed_by_the_upstream_is_replaced(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    async def close_after(exchange: UpstreamExchange) -> None:
        await exchange.read_body()
        await exchange.respond(200, [("Connection", "close")], b"bye")

    upstream.route("/app/close", close_after)
    forward(site, upstream)
    await applied(front_door, site)
    for path in ("/app/close", "/app/next", "/app/close", "/app/last"):
        result = await curl(site.url(path))
        assert result.returncode == 0, result.stderr
    assert upstream.targets() == ["/app/close", "/app/next", "/app/close", "/app/last"]
    assert [r.connection for r in upstream.requests] == [1, 2, 2, 3]
    assert front_door.proxy.pool.connects == 3


async def test_pooled_connection_the_upstream_dropped_while_idle_is_not_used(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    async def drop_when_idle(exchange: UpstreamExchange) -> None:
        await exchange.read_body()
        await exchange.respond(200, [], b"ok")         # keep-alive, then a silent close
        raise CloseConnection("idle timeout")

    upstream.route("/app/", drop_when_idle)
    forward(site, upstream)
    await applied(front_door, site)
    for path in ("/app/1", "/app/2", "/app/3"):
        result = await curl(site.url(path))
        assert (result.returncode, result.stdout) == (0, b"ok"), result.stderr
    assert [r.connection for r in upstream.requests] == [1, 2, 3]
    assert site.httperr_log() == []


async def test_pipelined_requests_are_routed_one_by_one_and_stop_at_the_404(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    seen: list[str] = []

    async def handler(req: HandlerRequest) -> None:
        seen.append(req.info.path)
        await req.respond(200, [("Content-Type", "text/plain")], b"handled " +
                          req.info.path.encode())

    forward(site, upstream, "/fwd/")
    async with front_door.register_handler(site.prefix("/inproc/"), handler):
        await applied(front_door, site)
        stream = await tls_connect(site.port)
        await stream.send_all(
            request("/fwd/1") + request("/inproc/2") + request("/fwd/3", method="POST",
                                                               body=b"x" * 10)
            + request("/nowhere/4") + request("/fwd/5") + request("/inproc/6"))
        data = await read_until_closed(stream)
    responses, rest = parse_responses(data, ["GET", "GET", "POST", "GET"])
    assert rest == b""
    assert [r.status for r in responses] == [200, 200, 200, 404]
    assert_error_page(responses[3], ErrorPage.NOT_FOUND)
    assert responses[1].body == b"handled /inproc/2"
    assert upstream.targets() == ["/fwd/1", "/fwd/3"]
    assert upstream.requests[1].body_start == b"x" * 10
    assert seen == ["/inproc/2"]
    assert [(a["method"], a["path"]) for a in site.access_log()] == [
        ("GET", "/fwd/1"), ("GET", "/inproc/2"), ("POST", "/fwd/3")]
    [refused] = site.httperr_log()
    assert (refused["sc-status"], refused["s-reason"], refused["cs-uri"]) == (
        "404", "NotFound", "/nowhere/4")


async def test_absolute_form_routes_on_its_authority_and_the_upstream_sees_it_as_host(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    site.store.add_forward(site.prefix("/", host="good.example"), upstream.target)
    await applied(front_door, site)
    stream = await tls_connect(site.port)
    await stream.send_all(
        f"GET https://good.example:{site.port}/a?b HTTP/1.1\r\nHost: evil.example\r\n"
        f"Connection: close\r\n\r\n".encode())
    [response], _ = parse_responses(await read_until_closed(stream))
    assert response.status == 200
    [received] = upstream.requests
    assert received.target == "/a?b"
    assert received.header_values("Host") == [f"good.example:{site.port}"]


async def test_http10_without_host_and_head_requests(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    forward(site, upstream, "/")
    await applied(front_door, site)
    stream = await tls_connect(site.port)
    await stream.send_all(b"GET /ten HTTP/1.0\r\n\r\n")
    [response], _ = parse_responses(await read_until_closed(stream))
    assert response.status == 200 and response.header("Connection") == "close"
    assert upstream.requests[0].header("Host") == f"127.0.0.1:{site.port}"
    head = await curl("-I", site.url("/head"))
    assert head.returncode == 0 and head.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert upstream.requests[1].method == "HEAD"


# ------------------------------------------------------------------------------ bodies

async def test_100_continue_end_to_end_with_curl(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    forward(site, upstream)
    got: list[bytes] = []

    async def handler(req: HandlerRequest) -> None:
        got.append(await req.read_body())
        await req.respond(201, [], b"stored")

    body = os.urandom(4096)
    async with front_door.register_handler(site.prefix("/inproc/"), handler):
        await applied(front_door, site)
        for url in (site.url("/app/upload"), site.url("/inproc/upload")):
            result = await curl("-v", "-H", "Expect: 100-continue", "--expect100-timeout", "30",
                                "--data-binary", "@-", url, stdin=body)
            assert result.returncode == 0, result.stderr
            assert b"< HTTP/1.1 100 Continue" in result.stderr
    [received] = upstream.requests
    assert received.complete and received.body_length == 4096
    assert received.body_sha256 == hashlib.sha256(body).hexdigest()
    assert received.header("Expect") == "100-continue"
    assert got == [body]


async def test_large_chunked_bodies_stream_both_ways(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    """20 MiB up and 20 MiB down: the upstream sees the first bytes while the client is still
    holding back the rest, and the client gets the response's first bytes while the upstream
    is still holding back its rest; nothing is buffered whole."""
    size = 20 << 20
    piece = os.urandom(1 << 20)
    upload_started = trio.Event()
    client_got_first = trio.Event()

    async def sink(exchange: UpstreamExchange) -> None:
        async for _data in exchange.body_chunks():
            upload_started.set()
        await exchange.respond(200, [], exchange.request.body_sha256.encode())

    async def source(exchange: UpstreamExchange) -> None:
        await exchange.read_body()
        await exchange.start(200, [("Content-Type", "application/octet-stream")])
        await exchange.write(piece)
        with trio.fail_after(10):
            await client_got_first.wait()
        for _ in range(size // len(piece) - 1):
            await exchange.write(piece)
        await exchange.end()

    upstream.route("/app/sink", sink)
    upstream.route("/app/source", source)
    forward(site, upstream)
    await applied(front_door, site)
    stream = await tls_connect(site.port)
    await stream.send_all(b"POST /app/sink HTTP/1.1\r\nHost: localhost\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
    await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
    with trio.fail_after(10):
        await upload_started.wait()                  # before the client sent the rest
    expected = hashlib.sha256(piece)
    for _ in range(size // len(piece) - 1):
        await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
        expected.update(piece)
    await stream.send_all(b"0\r\n\r\n")
    response = await read_response(stream, timeout=30)
    assert response.status == 200 and response.body == expected.hexdigest().encode()
    [received] = upstream.requests
    assert received.complete and received.body_length == size
    assert received.header("Transfer-Encoding") == "chunked"

    await stream.send_all(b"GET /app/source HTTP/1.1\r\nHost: localhost\r\n\r\n")
    first = await stream.receive_some(65536)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked" in first
    client_got_first.set()                            # only now does the upstream go on
    total = bytearray(first)
    with trio.fail_after(30):
        while not total.endswith(b"\r\n0\r\n\r\n"):
            total += await stream.receive_some(1 << 20)
    [response], _ = parse_responses(bytes(total))
    assert len(response.body) == size
    assert response.body[: len(piece)] == piece


# ------------------------------------------------------------------------------ failures

async def test_upstream_refusing_gives_the_exact_503_page(
        site: Site, front_door: FrontDoor) -> None:
    async with running_upstream() as gone:
        target = gone.target
        gone.stop()
    site.store.add_forward(site.prefix("/app/"), target)
    await applied(front_door, site)
    stream = await tls_connect(site.port)
    await stream.send_all(request("/app/x") + request("/app/never"))
    [response], rest = parse_responses(await read_until_closed(stream))
    assert_error_page(response, ErrorPage.SERVICE_UNAVAILABLE)
    assert rest == b""
    [line] = site.httperr_log()
    assert (line["sc-status"], line["s-reason"], line["cs-uri"]) == ("503", "AppOffline",
                                                                     "/app/x")
    unix = await curl("-i", site.url("/app/y"))
    assert unix.stdout.startswith(b"HTTP/1.1 503 Service Unavailable")


async def test_upstream_dying_mid_response_aborts_the_client_connection(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    async def die(exchange: UpstreamExchange) -> None:
        await exchange.read_body()
        await exchange.start(200, [("Content-Length", "100000")])
        await exchange.write(b"partial")
        raise CloseConnection("dies")

    async def die_chunked(exchange: UpstreamExchange) -> None:
        await exchange.read_body()
        await exchange.start(200, [])
        await exchange.write(b"partial")
        raise CloseConnection("dies")

    upstream.route("/app/die", die)
    upstream.route("/app/chunked-die", die_chunked)
    forward(site, upstream)
    await applied(front_door, site)
    for path in ("/app/die", "/app/chunked-die"):
        result = await curl(site.url(path))
        assert result.returncode == 18, result.stderr      # "transfer closed ... remaining"
        assert result.stdout == b"partial"
    assert site.httperr_reasons() == ["Connection_Abandoned_By_AppPool"] * 2
    assert [a["status"] for a in await site.access_lines(2)] == ["200", "200"]


async def test_handler_failure_before_and_after_the_response_started(
        site: Site, front_door: FrontDoor) -> None:
    async def broken(req: HandlerRequest) -> None:
        if req.info.path.endswith("late"):
            await req.start_response(200, [])
            await req.send(b"half")
        raise RuntimeError("application bug")

    async with front_door.register_handler(site.prefix("/bug/"), broken):
        early = await curl("-i", site.url("/bug/early"))
        late = await curl(site.url("/bug/late"))
        healthy = await curl("-i", site.url("/bug/early"))
    [response], _ = parse_responses(early.stdout)
    assert_error_page(response, ErrorPage.SERVICE_UNAVAILABLE)
    assert late.returncode == 18 and late.stdout == b"half"
    assert healthy.stdout.startswith(b"HTTP/1.1 503")         # the front door lives on
    assert site.httperr_reasons() == ["AppOffline", "Connection_Abandoned_By_AppPool",
                                      "AppOffline"]


async def test_h2c_upgrade_is_never_tunnelled(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    async def eager_upgrader(exchange: UpstreamExchange) -> None:
        await exchange.read_body()
        if exchange.request.header("Upgrade"):
            await exchange.switch_protocols([("Upgrade", "h2c"), ("Connection", "Upgrade")])
            return
        await exchange.respond(200, [], b"plain http")

    upstream.route("/app/", eager_upgrader)
    forward(site, upstream)
    await applied(front_door, site)
    stream = await tls_connect(site.port)
    await stream.send_all(request("/app/h2c", headers=[
        ("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")]) + request("/app/after"))
    buffer = bytearray()
    first = await read_response(stream, buffer=buffer)
    second = await read_response(stream, buffer=buffer)
    assert (first.status, first.body, second.status) == (200, b"plain http", 200)
    h2c, after = upstream.requests
    assert h2c.header("Upgrade") is None and h2c.header("HTTP2-Settings") is None
    assert h2c.header("Connection") is None
    assert after.target == "/app/after"


async def test_websocket_upgrade_answered_with_200_stays_http(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    forward(site, upstream)
    await applied(front_door, site)
    stream = await tls_connect(site.port)
    ws_headers = [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                  ("Sec-WebSocket-Version", "13"),
                  ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
    await stream.send_all(request("/app/ws", headers=ws_headers))
    buffer = bytearray()
    refused = await read_response(stream, buffer=buffer)
    assert refused.status == 200 and json.loads(refused.body)["target"] == "/app/ws"
    await stream.send_all(request("/app/next"))
    following = await read_response(stream, buffer=buffer)
    assert following.status == 200 and json.loads(following.body)["target"] == "/app/next"
    upgrade, _next = upstream.requests
    assert upgrade.header("Upgrade") == "websocket"
    assert upgrade.header("Connection") == "Upgrade"


async def test_forward_to_a_unix_socket(site: Site, front_door: FrontDoor) -> None:
    path = str(site.state_dir / "app.sock")
    async with running_upstream(path) as unix_upstream:
        site.store.add_forward(site.prefix("/unix/"), unix_upstream.target)
        await applied(front_door, site)
        result = await curl(site.url("/unix/ping"), "--data-binary", "hello")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["body_length"] == 5
        assert unix_upstream.requests[0].header("X-Forwarded-For") == "127.0.0.1"


async def test_a_full_request_queue_resets_the_connection(
        site: Site, front_door: FrontDoor) -> None:
    release = trio.Event()
    inside = trio.Event()

    async def slow(req: HandlerRequest) -> None:
        inside.set()
        await release.wait()
        await req.respond(200, [], b"done")

    site.store.set_setting("requestqueuelength", 1)
    async with front_door.register_handler(site.prefix("/q/"), slow):
        await applied(front_door, site)
        first = await tls_connect(site.port)
        await first.send_all(request("/q/1"))
        with trio.fail_after(5):
            await inside.wait()
        second = await tls_connect(site.port)
        await second.send_all(request("/q/2"))
        assert await read_until_closed(second) == b""            # reset, no page
        release.set()
        response = await read_response(first)
        assert response.body == b"done"
    assert "QueueFull" in site.httperr_reasons()


async def test_response_framing_for_in_process_handlers(
        site: Site, front_door: FrontDoor) -> None:
    async def streamed(req: HandlerRequest) -> None:
        await req.start_response(200, [("Content-Type", "text/plain")])
        for part in (b"one ", b"two ", b"three"):
            await req.send(part)
        await req.end()

    async with front_door.register_handler(site.prefix("/s/"), streamed):
        stream = await tls_connect(site.port)
        await stream.send_all(request("/s/") + b"GET /s/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = await read_until_closed(stream)
    chunked, close_delimited = parse_responses(data)[0]
    assert (chunked.header("Transfer-Encoding"), chunked.body) == ("chunked", b"one two three")
    assert close_delimited.header("Connection") == "close"
    assert close_delimited.body == b"one two three"


async def test_a_live_registration_keeps_its_prefix_until_it_goes(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    async def app(req: HandlerRequest) -> None:
        await req.respond(200, [], b"in-process")

    async with front_door.register_handler(site.prefix("/shared/"), app):
        site.store.add_forward(site.prefix("/shared/"), upstream.target)   # added later
        await applied(front_door, site)
        held = await curl(site.url("/shared/x"))
        assert held.stdout == b"in-process"
    taken_over = await curl(site.url("/shared/y"))
    assert taken_over.returncode == 0 and json.loads(taken_over.stdout)["target"] == "/shared/y"
    assert upstream.targets() == ["/shared/y"]


async def test_host_specific_forward_refuses_other_hosts(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    site.store.add_forward(site.prefix("/", host="only.example"), upstream.target)
    await applied(front_door, site)
    wrong = await curl("-i", site.url("/x"))
    [response], _ = parse_responses(wrong.stdout)
    assert_error_page(response, ErrorPage.INVALID_HOSTNAME)
    right = await curl(*site.resolve("only.example"), site.url("/x", host="only.example"))
    assert right.returncode == 0, right.stderr
    assert upstream.targets() == ["/x"]
    assert site.httperr_reasons() == ["Hostname"]


async def test_a_stale_pooled_connection_is_retried_only_for_idempotent_requests(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    async def drop_on_first_connection(exchange: UpstreamExchange) -> None:
        if exchange.request.connection == 1:
            raise CloseConnection("went away just as the request came")
        await exchange.read_body()
        await exchange.respond(200, [], b"second try")

    upstream.route("/app/stale", drop_on_first_connection)
    forward(site, upstream)
    await applied(front_door, site)
    stream = await tls_connect(site.port)
    buffer = bytearray()
    await stream.send_all(request("/app/warm"))
    assert (await read_response(stream, buffer=buffer)).status == 200
    await stream.send_all(request("/app/stale"))
    retried = await read_response(stream, buffer=buffer)
    assert (retried.status, retried.body) == (200, b"second try")
    assert [(r.target, r.connection) for r in upstream.requests] == [
        ("/app/warm", 1), ("/app/stale", 1), ("/app/stale", 2)]
    assert (front_door.proxy.pool.connects, front_door.proxy.pool.reuses) == (2, 1)


async def test_a_post_on_a_stale_pooled_connection_is_not_replayed(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    async def drop_second_request(exchange: UpstreamExchange) -> None:
        if exchange.request.target == "/app/post":
            await exchange.read_body()
            raise CloseConnection("gone")
        await exchange.respond(200, [], b"ok")

    upstream.route("/app/", drop_second_request)
    forward(site, upstream)
    await applied(front_door, site)
    stream = await tls_connect(site.port)
    await stream.send_all(request("/app/warm") + request("/app/post", method="POST",
                                                         body=b"pay once"))
    responses, _ = parse_responses(await read_until_closed(stream), ["GET", "POST"])
    assert [r.status for r in responses] == [200, 503]
    assert upstream.targets() == ["/app/warm", "/app/post"]      # not sent a second time

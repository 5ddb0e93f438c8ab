"""`httpsys-emu serve` as the separate process it is in production: configured with the CLI
while it runs, reloaded by SIGHUP, drained by SIGTERM.
"""

from __future__ import annotations

import signal

import pytest
import trio

from tests.frontdoor_fixtures import (
    RecordingUpstream,
    Site,
    UpstreamExchange,
    cli,
    curl,
    http_request,
    read_response,
    read_until_closed,
    serve_process,
    site,
    tls_connect,
    upstream,
    wait_for,
)

__all__ = ["site", "upstream"]


async def test_cli_changes_reach_new_connections_within_a_second_and_spare_open_ones(
        site: Site, upstream: RecordingUpstream) -> None:
    async with serve_process(site.state_dir) as served:
        assert (await cli(site.state_dir, "add", "forward", f"url={site.prefix('/app/')}",
                          f"target={upstream.target}")).returncode == 0
        first = await _poll_until_routed(site, "/app/first")
        assert first < 1.0
        keep = await tls_connect(site.port)
        await keep.send_all(http_request("/app/kept"))
        assert (await read_response(keep)).status == 200
        result = await cli(site.state_dir, "add", "urlacl",
                           f"url={site.prefix('/reserved/')}", "user=root")
        assert result.returncode == 0, result.stdout + result.stderr
        site.store.add_forward(site.prefix("/more/"), upstream.target)
        site.store.set_timeout("idleconnectiontimeout", 30)
        assert await _poll_until_routed(site, "/more/x") < 1.0
        reserved = await curl("-i", site.url("/reserved/x"))
        assert reserved.stdout.startswith(b"HTTP/1.1 400 Bad Request")
        await keep.send_all(http_request("/app/kept-again"))     # established: untouched
        assert (await read_response(keep)).status == 200
        state = await cli(site.state_dir, "show", "servicestate")
        assert f"{site.port}" in state.stdout.decode()
        assert f"HTTPS://+:{site.port}/APP/ -> {upstream.target}" in state.stdout.decode()
        served.process.send_signal(signal.SIGHUP)
        await wait_for(lambda: "SIGHUP: reloading" in served.log(), timeout=5)
        second = await cli(site.state_dir, "serve")          # one front door per state dir
        assert second.returncode == 1
        assert b"already running" in second.stderr
        await keep.send_all(http_request("/app/still-there"))
        assert (await read_response(keep)).status == 200
    assert "/app/kept-again" in upstream.targets()


async def _poll_until_routed(site: Site, path: str) -> float:
    started = trio.current_time()
    with trio.fail_after(5):
        while True:
            result = await curl("-o", "/dev/null", "-w", "%{http_code}", site.url(path))
            if result.stdout == b"200":
                return trio.current_time() - started
            await trio.sleep(0.05)


@pytest.mark.parametrize("finishes", [True, False], ids=["in-time", "past-deadline"])
async def test_sigterm_drains_in_flight_requests(
        finishes: bool, site: Site, upstream: RecordingUpstream) -> None:
    release = trio.Event()

    async def slow(exchange: UpstreamExchange) -> None:
        await exchange.read_body()
        await release.wait()
        await exchange.respond(200, [], b"finished late")

    upstream.route("/slow/", slow)
    site.store.add_forward(site.prefix("/"), upstream.target)
    async with serve_process(site.state_dir, drain_seconds=5 if finishes else 0.5) as served:
        idle = await tls_connect(site.port)
        await idle.send_all(http_request("/warm-up"))
        assert (await read_response(idle)).status == 200
        busy = await tls_connect(site.port)
        await busy.send_all(http_request("/slow/request"))
        await wait_for(lambda: "/slow/request" in upstream.targets())
        started = trio.current_time()
        served.process.send_signal(signal.SIGTERM)
        assert await read_until_closed(idle) == b""          # idle: closed at once
        await wait_for(lambda: _refused(site.port), timeout=3)    # and no more accepting
        _refused_after = trio.current_time() - started
        if finishes:
            release.set()
            response = await read_response(busy)
            assert (response.status, response.body) == (200, b"finished late")
            assert response.header("Connection") == "close"
            await busy.aclose()
        else:
            assert await read_until_closed(busy, timeout=5) == b""
            assert trio.current_time() - started >= 0.5
        with trio.fail_after(5):
            await served.process.wait()
        assert served.process.returncode == 0
        assert _refused_after < 1.0
        if not finishes:
            assert site.httperr_reasons() == ["Connection_Abandoned_By_ReqQueue"]
        else:
            assert site.httperr_reasons() == []
    release.set()


def _refused(port: int) -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False

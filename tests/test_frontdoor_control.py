"""Registrations from other processes over the control socket: real subprocesses that use
`httpsys_emu.control_client`, the kernel's word (SO_PEERCRED) on who they are, urlacl
reservations deciding what a non-root user may register, and a registration that lives exactly
as long as its process.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from httpsys_emu.control_client import connect
from httpsys_emu.frontdoor import FrontDoor
from httpsys_emu.handlers import HandlerRequest
from httpsys_emu.pages import ErrorPage
from httpsys_emu.urlacl import UrlAcl, unix_user_sid
from httpsys_emu.winerror import WinError
from tests.frontdoor_fixtures import (
    CLIENT_CERT,
    RecordingUpstream,
    Site,
    TestUser,
    applied,
    assert_error_page,
    cli,
    curl,
    front_door,
    parse_responses,
    python_command,
    site,
    unprivileged_user,
    upstream,
    wait_for,
)

__all__ = ["front_door", "site", "unprivileged_user", "upstream"]

REGISTRANT = """
import sys, trio
from httpsys_emu.control_client import connect
from httpsys_emu.winerror import WinError

async def main(state_dir, prefix, deliver, client_cert):
    async with connect(state_dir) as control:
        try:
            await control.register(prefix, deliver=deliver, client_cert=client_cert == "1")
        except WinError as exc:
            print("error", exc.code, flush=True)
            return
        print("registered", prefix, flush=True)
        await trio.sleep_forever()

trio.run(main, *sys.argv[1:])
"""


@asynccontextmanager
async def registrant(site: Site, prefix: str, deliver: str, *, user: TestUser | None = None,
                     client_cert: bool = False) -> AsyncIterator[tuple[trio.Process, str]]:
    """A separate process that registers `prefix` and then waits; yields its first line."""
    argv = python_command(REGISTRANT) + [str(site.state_dir), prefix, deliver,
                                         "1" if client_cert else "0"]
    if user is not None:
        argv = user.command(argv)
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, cwd="/")
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(15):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                if not chunk:
                    err = await process.stderr.receive_some(65536) if process.stderr else b""
                    raise AssertionError(f"registrant said nothing: {err.decode()}")
                line += chunk
        yield process, line.decode().strip()
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.kill()
            await process.wait()


async def static_page(req: HandlerRequest) -> None:
    await req.respond(200, [], b"static")


async def test_a_registration_lives_exactly_as_long_as_its_process(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    prefix = site.prefix("/proc/")
    async with front_door.register_handler(site.prefix("/other/"), static_page):
        async with registrant(site, prefix, upstream.target) as (process, line):
            assert line == f"registered {prefix}"
            served = await curl(site.url("/proc/hello"))
            assert served.returncode == 0, served.stderr
            state = await cli(site.state_dir, "show", "servicestate")
            process.kill()
            await process.wait()
            refused = await curl("-i", site.url("/proc/hello"))       # at once: no polling
        [response], _ = parse_responses(refused.stdout)
        assert_error_page(response, ErrorPage.NOT_FOUND)
        async with registrant(site, prefix, upstream.target) as (_second, line):
            assert line == f"registered {prefix}"                     # free for the next one
            again = await curl(site.url("/proc/again"))
            assert again.returncode == 0
    assert upstream.targets() == ["/proc/hello", "/proc/again"]
    text = state.stdout.decode()
    assert f"HTTPS://+:{site.port}/PROC/ -> {upstream.target}" in text
    assert f"ID: {process.pid}" in text
    assert f"pid {process.pid}, uid {os.geteuid()}" in text
    assert f"HTTPS://+:{site.port}/OTHER/ -> in-process:in-process" in text


async def test_without_another_registration_the_port_answers_invalid_hostname(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    async with registrant(site, site.prefix("/proc/"), upstream.target) as (process, _line):
        process.kill()
        await process.wait()
        refused = await curl("-i", site.url("/proc/x"))
    [response], _ = parse_responses(refused.stdout)
    assert_error_page(response, ErrorPage.INVALID_HOSTNAME)


async def test_acl_for_a_user_who_is_not_root(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream,
        unprivileged_user: TestUser) -> None:
    prefix = site.prefix("/user/")
    async with registrant(site, prefix, upstream.target, user=unprivileged_user) as (_p, line):
        assert line == "error 5"                               # no reservation: access denied
    site.store.add_urlacl(site.prefix("/user/"), UrlAcl.for_user(unix_user_sid(0)))
    await applied(front_door, site)
    async with registrant(site, prefix, upstream.target, user=unprivileged_user) as (_p, line):
        assert line == "error 5"                               # reserved for someone else
    site.store.delete_urlacl(site.prefix("/user/"))
    site.store.add_urlacl(site.prefix("/user/"),
                          UrlAcl.for_user(unix_user_sid(unprivileged_user.uid)))
    await applied(front_door, site)
    async with registrant(site, site.prefix("/user/sub/"), upstream.target,
                          user=unprivileged_user) as (process, line):
        assert line == f"registered {site.prefix('/user/sub/')}"    # covered by /user/
        result = await curl(site.url("/user/sub/x"))
        assert result.returncode == 0, result.stderr
        state = front_door.servicestate()["registrations"]
        [mine] = [r for r in state if r["kind"] == "control"]
        assert (mine["uid"], mine["user"], mine["pid"]) == (
            unprivileged_user.uid, unprivileged_user.name, process.pid)
        async with registrant(site, site.prefix("/user/sub/"), upstream.target,
                              user=unprivileged_user) as (_p, twice):
            assert twice == "error 183"
    assert upstream.targets() == ["/user/sub/x"]


@pytest.mark.skipif(os.geteuid() != 0, reason="registering without a reservation needs root")
async def test_root_may_register_anything(site: Site, front_door: FrontDoor,
                                          upstream: RecordingUpstream) -> None:
    site.store.add_urlacl(site.prefix("/locked/"), UrlAcl.for_user(unix_user_sid(12345)))
    await applied(front_door, site)
    async with registrant(site, site.prefix("/locked/"), upstream.target) as (_p, line):
        assert line == f"registered {site.prefix('/locked/')}"


async def test_errors_from_the_control_socket(site: Site, front_door: FrontDoor,
                                              upstream: RecordingUpstream) -> None:
    async with connect(site.state_dir) as control:
        for prefix, deliver, code in [
                ("https://+:0/x/", upstream.target, 87),                 # bad prefix
                (site.prefix("/x/"), "ftp://example", 87),                # bad delivery
                (site.prefix("/x/"), "http://192.0.2.1:80", 87),          # not loopback
                (f"http://+:{site.port}/x/", upstream.target, None)]:     # other scheme: ok
            if code is None:
                await control.register(prefix, deliver=deliver)
                continue
            with pytest.raises(WinError) as raised:
                await control.register(prefix, deliver=deliver)
            assert raised.value.code == code
        with pytest.raises(WinError) as raised:
            await control.register(site.prefix("/x/"), deliver=upstream.target)
        assert raised.value.code == 183              # the port already carries http
        with pytest.raises(WinError) as raised:
            await control.unregister(site.prefix("/never/"))
        assert raised.value.code == 2


async def test_control_client_in_process_and_client_certificate_request(
        site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    async with connect(site.state_dir) as control:
        await control.register(site.prefix("/pinned/"), deliver=upstream.target,
                               client_cert=True)
        result = await curl(site.url("/pinned/"), *site.client_cert_args)
        assert result.returncode == 0, result.stderr
        state = await control.servicestate()
        assert [r["url"] for r in state["registrations"]] == [site.prefix("/pinned/")]
    await wait_for(lambda: not front_door.registrations())
    [received] = upstream.requests
    assert received.header("X-Client-Cert-Thumbprint") == CLIENT_CERT.thumbprint


async def test_control_socket_buffers_are_capped(site: Site, front_door: FrontDoor,
                                                 upstream: RecordingUpstream) -> None:
    async with connect(site.state_dir) as control:
        await control.register(site.prefix("/capped/"), deliver=upstream.target)
        sock = await trio.open_unix_socket(str(Path(site.state_dir) / "control.sock"))
        with trio.fail_after(5):
            try:
                for _ in range(64):                     # 4 MiB without a newline
                    await sock.send_all(b"x" * 65536)
            except (trio.BrokenResourceError, OSError):
                pass
            try:
                while await sock.receive_some(65536):   # the daemon hung up on us
                    pass
            except trio.BrokenResourceError:            # (a reset: it did not read it all)
                pass
        assert [str(r.prefix) for r in front_door.registrations()] == [
            site.prefix("/capped/")]                    # other sessions are untouched
    raw = await trio.open_unix_socket(str(site.state_dir / "control.sock"))
    await raw.send_all(b'{"id": 1, "op": "nonsense"}\n')
    with trio.fail_after(5):
        assert await raw.receive_some(100) == b""       # not our protocol: closed
    await raw.aclose()

"""Listeners and certificates (spec §7) with curl, `openssl s_client` and the stdlib client:
which certificate each connection gets, client certificates, IPv6, `iplisten`, and changes made
while connections are open (new connections see them, established ones keep working).
"""

from __future__ import annotations

import socket

import pytest
import trio

from httpsys_emu.frontdoor import FrontDoor
from httpsys_emu.handlers import HandlerRequest
from httpsys_emu.store import SslCertBinding, SslKey
from tests.certs import make_certificate
from tests.frontdoor_fixtures import (
    CLIENT_CERT,
    EXPIRED_CLIENT_CERT,
    SERVER_CERT,
    RecordingUpstream,
    Site,
    applied,
    bind_certificate,
    curl,
    free_port,
    front_door,
    http_request,
    import_certificate,
    openssl_s_client,
    peer_thumbprint,
    read_response,
    read_until_closed,
    s_client_thumbprint,
    site,
    tls_connect,
    upstream,
    wait_for,
)

__all__ = ["front_door", "site", "upstream"]

ALT_CERT = make_certificate("alt.example", key_type="ec")
LOOPBACK_CERT = make_certificate("loopback-only", key_type="ec")
V6_CERT = make_certificate("v6-only", key_type="ec")
NEW_CERT = make_certificate("renewed.localhost", key_type="ec", sans=("localhost",))


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")


async def who(req: HandlerRequest) -> None:
    """Answer with what the front door told the application about the connection."""
    conn = req.info.conn
    body = (f"{conn.local_ip} {conn.remote_ip} {conn.sni} {req.client_cert_thumbprint} "
            f"{len(req.client_cert_der or b'')}").encode()
    await req.respond(200, [("Content-Type", "text/plain")], body)


async def test_certificate_choice_follows_sni_then_address_then_wildcard(
        site: Site, front_door: FrontDoor) -> None:
    for cert in (ALT_CERT, LOOPBACK_CERT, V6_CERT):
        import_certificate(site.state_dir, cert)
    bind_certificate(site.store, site.port, ALT_CERT.thumbprint, hostname="alt.example")
    bind_certificate(site.store, site.port, LOOPBACK_CERT.thumbprint, ip="127.0.0.1")
    bind_certificate(site.store, site.port, V6_CERT.thumbprint, ip="::")
    await applied(front_door, site)

    async def thumbprint(*args: str, host: str = "127.0.0.1") -> str | None:
        result = await openssl_s_client(site.port, *args, host=host)
        return s_client_thumbprint(result.stdout)

    assert await thumbprint("-servername", "alt.example") == ALT_CERT.thumbprint
    assert await thumbprint("-servername", "ALT.example.") == ALT_CERT.thumbprint
    assert await thumbprint("-noservername") == LOOPBACK_CERT.thumbprint     # exact address
    assert await thumbprint("-servername", "other.example") == LOOPBACK_CERT.thumbprint
    assert await thumbprint("-noservername", host="127.0.0.2") == SERVER_CERT.thumbprint
    if _has_ipv6_loopback():
        assert await thumbprint("-noservername", host="[::1]") == V6_CERT.thumbprint
    async with front_door.register_handler(site.prefix("/"), who):
        result = await curl(*site.resolve("alt.example"), site.url("/", host="alt.example"))
    assert result.stdout.split()[:3] == [b"127.0.0.1", b"127.0.0.1", b"alt.example"]


async def test_no_binding_for_the_connection_drops_it_without_a_certificate(
        site: Site, front_door: FrontDoor) -> None:
    import_certificate(site.state_dir, ALT_CERT)
    port = free_port()
    bind_certificate(site.store, port, ALT_CERT.thumbprint, hostname="alt.example")
    await applied(front_door, site)
    await wait_for(lambda: any(p == port for _h, p in front_door.listening_addresses()))
    result = await openssl_s_client(port, "-noservername")
    assert s_client_thumbprint(result.stdout) is None
    assert b"no peer certificate available" in result.stdout
    named = await openssl_s_client(port, "-servername", "alt.example")
    assert s_client_thumbprint(named.stdout) == ALT_CERT.thumbprint
    assert site.httperr_reasons() == ["Connection_Dropped"]


async def test_plain_http_on_the_tls_port_is_closed(site: Site, front_door: FrontDoor) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", site.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = await read_until_closed(stream)
    assert b"HTTP/1.1" not in data
    assert site.httperr_reasons() == ["Connection_Dropped"]


async def test_client_certificate_asked_for_when_the_binding_says_so(
        site: Site, front_door: FrontDoor) -> None:
    site.store.delete_sslcert(SslKey.ipport("0.0.0.0", site.port))
    bind_certificate(site.store, site.port, SERVER_CERT.thumbprint, client_cert=True)
    await applied(front_door, site)
    async with front_door.register_handler(site.prefix("/"), who):
        with_cert = await curl(site.url("/"), *site.client_cert_args)
        expired = await curl(site.url("/"), "--cert", str(site.files / "expired.crt"),
                             "--key", str(site.files / "expired.key"))
        without = await curl(site.url("/"))
    assert with_cert.stdout.split()[3:] == [CLIENT_CERT.thumbprint.encode(),
                                            str(len(CLIENT_CERT.cert_der)).encode()]
    assert expired.stdout.split()[3] == EXPIRED_CLIENT_CERT.thumbprint.encode()
    assert without.stdout.split()[3:] == [b"None", b"0"]


async def test_client_certificate_asked_for_when_a_registration_wants_one(
        site: Site, front_door: FrontDoor) -> None:
    async with front_door.register_handler(site.prefix("/"), who):
        await applied(front_door, site)
        not_asked = await curl(site.url("/"), *site.client_cert_args)
        async with front_door.register_handler(site.prefix("/pinned/"), who, client_cert=True):
            asked = await curl(site.url("/"), *site.client_cert_args)
        after = await curl(site.url("/"), *site.client_cert_args)
    assert not_asked.stdout.split()[3] == b"None"
    assert asked.stdout.split()[3] == CLIENT_CERT.thumbprint.encode()
    assert after.stdout.split()[3] == b"None"


@needs_ipv6
async def test_ipv6_listener(site: Site, front_door: FrontDoor,
                             upstream: RecordingUpstream) -> None:
    site.store.add_forward(site.prefix("/app/"), upstream.target)
    await applied(front_door, site)
    async with front_door.register_handler(site.prefix("/who/"), who):
        direct = await curl(site.url("/who/", host="[::1]"))
        forwarded = await curl(site.url("/app/", host="[::1]"))
    assert direct.stdout.split()[:2] == [b"::1", b"::1"], direct.stderr
    assert forwarded.returncode == 0, forwarded.stderr
    [received] = upstream.requests
    assert received.header("X-Forwarded-For") == "::1"
    assert received.header("Host") == f"[::1]:{site.port}"
    assert received.header("Forwarded").startswith('for="[::1]:')


@needs_ipv6
async def test_iplisten_restricts_addresses_without_dropping_open_connections(
        site: Site, front_door: FrontDoor) -> None:
    async with front_door.register_handler(site.prefix("/"), who):
        v6 = await tls_connect(site.port, host="::1")
        await v6.send_all(http_request("/"))
        assert (await read_response(v6)).status == 200
        site.store.add_iplisten("127.0.0.1")
        started = trio.current_time()
        await wait_for(lambda: front_door.listening_addresses() == [("127.0.0.1", site.port)])
        assert trio.current_time() - started < 1.0      # the reload tick, not a restart
        with pytest.raises(OSError):
            await trio.open_tcp_stream("::1", site.port)
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.2", site.port)
        ok = await curl(site.url("/"))
        assert ok.returncode == 0, ok.stderr
        await v6.send_all(http_request("/"))              # established: still served
        assert (await read_response(v6)).status == 200
        site.store.delete_iplisten("127.0.0.1")
        await wait_for(lambda: len(front_door.listening_addresses()) == 2)
        again = await curl(site.url("/", host="[::1]"))
        assert again.returncode == 0, again.stderr


async def test_replaced_certificate_reaches_new_connections_and_spares_open_ones(
        site: Site, front_door: FrontDoor) -> None:
    import_certificate(site.state_dir, NEW_CERT)
    async with front_door.register_handler(site.prefix("/"), who):
        old = await tls_connect(site.port)
        assert peer_thumbprint(old) == SERVER_CERT.thumbprint
        await old.send_all(http_request("/"))
        assert (await read_response(old)).status == 200
        site.store.delete_sslcert(SslKey.ipport("0.0.0.0", site.port))
        bind_certificate(site.store, site.port, NEW_CERT.thumbprint)
        started = trio.current_time()

        async def new_thumbprint() -> str:
            stream = await tls_connect(site.port)
            thumb = peer_thumbprint(stream)
            await stream.aclose()
            return thumb

        while await new_thumbprint() != NEW_CERT.thumbprint:
            assert trio.current_time() - started < 1.0
            await trio.sleep(0.05)
        await old.send_all(http_request("/"))
        assert (await read_response(old)).status == 200
        assert peer_thumbprint(old) == SERVER_CERT.thumbprint
        site.store.delete_sslcert(SslKey.ipport("0.0.0.0", site.port))   # the last binding
        await wait_for(lambda: front_door.listening_addresses() == [])
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", site.port)
        await old.send_all(http_request("/"))                    # still served
        assert (await read_response(old)).status == 200


async def test_stdlib_client_certificate_is_seen_by_in_process_handlers(
        site: Site, front_door: FrontDoor) -> None:
    async with front_door.register_handler(site.prefix("/"), who, client_cert=True):
        stream = await tls_connect(site.port, cert_files=(site.files / "client.crt",
                                                          site.files / "client.key"))
        await stream.send_all(http_request("/"))
        response = await read_response(stream)
    assert response.body.split()[3] == CLIENT_CERT.thumbprint.encode()




CCS_A = make_certificate("ccs-a.example", key_type="ec", sans=("ccs-a.example",))
CCS_B = make_certificate("ccs-b.example", key_type="ec", sans=("ccs-b.example", "www.ccs-b.example"))


async def test_central_certificate_store_binding_picks_the_certificate_by_sni(
        site: Site, front_door: FrontDoor) -> None:
    for cert in (CCS_A, CCS_B):
        import_certificate(site.state_dir, cert)
    port = free_port()
    site.store.add_sslcert(SslCertBinding(SslKey.ccs(port), None,
                                          "{00112233-4455-6677-8899-aabbccddeeff}"))
    await applied(front_door, site)
    await wait_for(lambda: any(p == port for _h, p in front_door.listening_addresses()))

    async def thumbprint(*args: str) -> str | None:
        return s_client_thumbprint((await openssl_s_client(port, *args)).stdout)

    assert await thumbprint("-servername", "ccs-a.example") == CCS_A.thumbprint
    assert await thumbprint("-servername", "WWW.ccs-b.example") == CCS_B.thumbprint
    assert await thumbprint("-servername", "nobody.example") is None   # no certificate: dropped
    assert await thumbprint("-noservername") is None                  # ccs needs SNI

"""TLSStream and tlsconfig against real sockets, `openssl s_client` and curl; selection is pure."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from OpenSSL import SSL

from httpsys_emu.request_head import RequestHeadReader
from httpsys_emu.tls import NoCertificateBindingError, TLSStream
from httpsys_emu.tlsconfig import (
    Binding,
    CertificateSelector,
    client_context,
    normalise_ip,
    server_context,
    switching_context,
)
from tests.certs import TestCertificate, make_certificate

TIMEOUT = 10

SERVER_A = make_certificate("a.example")
SERVER_B = make_certificate("b.example", key_type="ec")
CLIENT = make_certificate("tentacle", client=True)
CLIENT_EC = make_certificate("tentacle-ec", key_type="ec", client=True)
CLIENT_EXPIRED = make_certificate("old-tentacle", client=True, expired=True)


def ctx_for(cert: TestCertificate, *, client_cert: bool = False) -> SSL.Context:
    return server_context(cert.cert_pem, cert.key_pem, request_client_cert=client_cert)


def default_bindings(port: int) -> list[Binding]:
    """ipport 0.0.0.0 → A (no client cert); hostnameport b.example → B (asks for a client cert)."""
    return [
        Binding("ipport", "0.0.0.0", None, port, ctx_for(SERVER_A)),
        Binding("hostnameport", None, "B.Example", port, ctx_for(SERVER_B, client_cert=True)),
    ]


# ------------------------------------------------------------------------------------------
# A small server: every accepted connection's outcome is reported on a channel.

Handler = Callable[[TLSStream], Awaitable[None]]


async def echo(stream: TLSStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


@dataclass
class Server:
    port: int
    outcomes: trio.MemoryReceiveChannel[TLSStream | BaseException]
    tmp: Path = field(default_factory=Path)

    async def next_outcome(self) -> TLSStream | BaseException:
        with trio.fail_after(TIMEOUT):
            return await self.outcomes.receive()

    async def next_stream(self) -> TLSStream:
        outcome = await self.next_outcome()
        assert isinstance(outcome, TLSStream), repr(outcome)
        return outcome


@asynccontextmanager
async def tls_server(
    bindings: Callable[[int], list[Binding]] = default_bindings,
    handler: Handler = echo,
) -> AsyncIterator[Server]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    context = switching_context(CertificateSelector(bindings(port)).select)
    send, receive = trio.open_memory_channel[TLSStream | BaseException](100)

    async def serve_one(tcp: trio.SocketStream) -> None:
        stream = TLSStream(tcp, context, server_side=True)
        try:
            with trio.fail_after(TIMEOUT):
                await stream.do_handshake()
                send.send_nowait(stream)  # reported after the handshake, before the handler
                await handler(stream)
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            send.send_nowait(exc)
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve_one, listeners)
        yield Server(port, receive)
        nursery.cancel_scope.cancel()


async def connect(server: Server, name: str | None = "a.example",
                  cert: TestCertificate | None = None) -> TLSStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
    ctx = client_context(cert.cert_pem, cert.key_pem) if cert else client_context()
    return TLSStream(tcp, ctx, server_hostname=name)


async def s_client(server: Server, *args: str, tmp_path: Path) -> tuple[int, str]:
    """Run `openssl s_client` against the server; returns (exit code, stdout + stderr)."""
    result = await trio.run_process(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", *args],
        stdin=b"ping\n", capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path)
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


# ------------------------------------------------------------------------------------------
# Contexts


def _options(ctx: SSL.Context) -> int:
    return ctx.set_options(0)


def test_contexts_release_buffers_and_follow_the_policy() -> None:
    contexts = [ctx_for(SERVER_A), ctx_for(SERVER_B, client_cert=True), client_context(),
                client_context(CLIENT.cert_pem, CLIENT.key_pem),
                switching_context(lambda sni, ip, port: None)]
    for ctx in contexts:
        assert ctx.set_mode(0) & SSL.MODE_RELEASE_BUFFERS
        assert _options(ctx) & SSL.OP_NO_COMPRESSION
        assert _options(ctx) & SSL.OP_NO_RENEGOTIATION
        assert not _options(ctx) & SSL.OP_CIPHER_SERVER_PREFERENCE  # Mozilla intermediate
    assert ctx_for(SERVER_B, client_cert=True).get_verify_mode() == SSL.VERIFY_PEER
    assert ctx_for(SERVER_A).get_verify_mode() == SSL.VERIFY_NONE
    no_tickets = server_context(SERVER_A.cert_pem, SERVER_A.key_pem, request_client_cert=False,
                                session_tickets=False)
    assert _options(no_tickets) & SSL.OP_NO_TICKET
    assert not _options(ctx_for(SERVER_A)) & SSL.OP_NO_TICKET


def test_client_context_needs_the_key() -> None:
    with pytest.raises(ValueError):
        client_context(CLIENT.cert_pem)


# ------------------------------------------------------------------------------------------
# Certificate selection (pure)


def test_selection_order() -> None:
    a, b, c, d, e = (object() for _ in range(5))
    selector = CertificateSelector([
        Binding("hostnameport", None, "www.Example.com", 443, a),  # type: ignore[arg-type]
        Binding("ipport", "10.0.0.5", None, 443, b),  # type: ignore[arg-type]
        Binding("ipport", "0.0.0.0", None, 443, c),  # type: ignore[arg-type]
        Binding("ipport", "[::]", None, 443, d),  # type: ignore[arg-type]
        Binding("ccs", None, None, 8443, e),  # type: ignore[arg-type]
    ])
    assert selector.select("WWW.example.COM", "10.0.0.5", 443) is a
    assert selector.select("www.example.com.", "10.0.0.5", 443) is a
    assert selector.select("other.example.com", "10.0.0.5", 443) is b
    assert selector.select(None, "10.0.0.5", 443) is b
    assert selector.select(None, "::ffff:10.0.0.5", 443) is b  # IPv4-mapped on a dual-stack socket
    assert selector.select(None, "10.0.0.6", 443) is c
    assert selector.select(None, "2001:db8::1", 443) is d
    assert selector.select("www.example.com", "10.0.0.5", 444) is None  # port must match
    assert selector.select("any.example", "10.0.0.5", 8443) is e  # ccs: lowest, needs SNI
    assert selector.select(None, "10.0.0.5", 8443) is None


def test_wildcard_of_one_family_covers_the_other() -> None:
    v4, v6 = object(), object()
    only_v4 = CertificateSelector([Binding("ipport", "0.0.0.0", None, 443, v4)])  # type: ignore[arg-type]
    assert only_v4.select(None, "2001:db8::1", 443) is v4
    only_v6 = CertificateSelector([Binding("ipport", "::", None, 443, v6)])  # type: ignore[arg-type]
    assert only_v6.select(None, "192.0.2.1", 443) is v6
    both = CertificateSelector([Binding("ipport", "0.0.0.0", None, 443, v4),  # type: ignore[arg-type]
                                Binding("ipport", "[::]", None, 443, v6)])  # type: ignore[arg-type]
    assert both.select(None, "192.0.2.1", 443) is v4
    assert both.select(None, "2001:db8::1", 443) is v6
    assert both.select(None, "::ffff:192.0.2.1", 443) is v4


def test_ccs_named_and_duplicates() -> None:
    named, anyname = object(), object()
    selector = CertificateSelector([Binding("ccs", None, "a.example", 443, named),  # type: ignore[arg-type]
                                    Binding("ccs", None, None, 443, anyname)])  # type: ignore[arg-type]
    assert selector.select("A.example", "127.0.0.1", 443) is named
    assert selector.select("b.example", "127.0.0.1", 443) is anyname
    with pytest.raises(ValueError):
        CertificateSelector([Binding("ipport", "0.0.0.0", None, 1, named),  # type: ignore[arg-type]
                             Binding("ipport", "0.0.0.0", None, 1, anyname)])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CertificateSelector([Binding("hostnameport", None, None, 1, named)])  # type: ignore[arg-type]
    assert normalise_ip("[::FFFF:127.0.0.1]") == "127.0.0.1"
    assert normalise_ip("2001:DB8:0::1") == "2001:db8::1"


# ------------------------------------------------------------------------------------------
# openssl s_client


async def test_tls13_and_tls12_handshakes(tmp_path: Path) -> None:
    async with tls_server() as server:
        code, out = await s_client(server, "-tls1_3", "-servername", "a.example", tmp_path=tmp_path)
        stream = await server.next_stream()
        assert code == 0, out
        assert stream.tls_version == "TLSv1.3"
        assert stream.cipher in {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                 "TLS_CHACHA20_POLY1305_SHA256"}
        assert stream.server_thumbprint == SERVER_A.thumbprint
        assert stream.sni == "a.example"

        code, out = await s_client(server, "-tls1_2", "-servername", "a.example", tmp_path=tmp_path)
        stream = await server.next_stream()
        assert code == 0, out
        assert stream.tls_version == "TLSv1.2"
        assert re.fullmatch(r"ECDHE-RSA-(AES128-GCM-SHA256|AES256-GCM-SHA384|CHACHA20-POLY1305)",
                            stream.cipher)


async def test_hello_retry_request_keeps_the_binding(tmp_path: Path) -> None:
    """A key share we do not take (ffdhe2048) makes the server ask again: two ClientHellos."""
    async with tls_server() as server:
        code, out = await s_client(server, "-tls1_3", "-groups", "ffdhe2048:X25519",
                                   "-servername", "b.example", tmp_path=tmp_path)
        stream = await server.next_stream()
        assert code == 0, out
        assert stream.server_thumbprint == SERVER_B.thumbprint


async def test_sni_picks_the_certificate(tmp_path: Path) -> None:
    async with tls_server() as server:
        code, out = await s_client(server, "-servername", "b.example", tmp_path=tmp_path)
        stream = await server.next_stream()
        assert "CN = b.example" in out
        assert stream.server_thumbprint == SERVER_B.thumbprint
        assert stream.context is not None and stream.handshake_info is not None
        assert stream.handshake_info.sni == "b.example"

        # No SNI, or an unbound name: the ipport wildcard binding.
        for args in (("-noservername",), ("-servername", "unbound.example")):
            code, out = await s_client(server, *args, tmp_path=tmp_path)
            stream = await server.next_stream()
            assert "CN = a.example" in out
            assert stream.server_thumbprint == SERVER_A.thumbprint


@pytest.mark.parametrize("cert", [CLIENT, CLIENT_EC, CLIENT_EXPIRED], ids=["rsa", "ec", "expired"])
async def test_client_certificate_is_accepted_and_thumbprinted(
        cert: TestCertificate, tmp_path: Path) -> None:
    cert_path, key_path = cert.write(tmp_path, "client")
    async with tls_server() as server:
        code, out = await s_client(server, "-servername", "b.example", "-cert", str(cert_path),
                                   "-key", str(key_path), tmp_path=tmp_path)
        stream = await server.next_stream()
        assert code == 0, out
        assert stream.peer_thumbprint == cert.thumbprint
        assert stream.peer_certificate_der == cert.cert_der


async def test_client_certificate_is_optional_and_only_asked_where_bound(tmp_path: Path) -> None:
    cert_path, key_path = CLIENT.write(tmp_path, "client")
    async with tls_server() as server:
        code, out = await s_client(server, "-servername", "b.example", tmp_path=tmp_path)
        stream = await server.next_stream()
        assert code == 0, out
        assert stream.peer_thumbprint is None
        # Binding A does not ask: the client has nothing to send even though it has a cert.
        code, out = await s_client(server, "-servername", "a.example", "-cert", str(cert_path),
                                   "-key", str(key_path), tmp_path=tmp_path)
        stream = await server.next_stream()
        assert stream.peer_thumbprint is None


@pytest.mark.parametrize("args", [
    ("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"),
    ("-tls1", "-cipher", "DEFAULT@SECLEVEL=0"),
    ("-tls1_2", "-cipher", "AES128-SHA:AES256-GCM-SHA384"),  # no ECDHE / no AEAD
    ("-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"),
    ("-tls1_3", "-groups", "ffdhe2048"),
], ids=["tls1.1", "tls1.0", "static-rsa-cbc", "dhe", "ffdhe-group"])
async def test_outside_the_policy_is_refused(args: tuple[str, ...], tmp_path: Path) -> None:
    async with tls_server() as server:
        code, out = await s_client(server, "-servername", "a.example", *args, tmp_path=tmp_path)
        outcome = await server.next_outcome()
        assert code != 0
        assert isinstance(outcome, trio.BrokenResourceError)


async def test_no_resumption_across_bindings(tmp_path: Path) -> None:
    async with tls_server() as server:
        await s_client(server, "-tls1_2", "-servername", "a.example", "-sess_out", "sess",
                       tmp_path=tmp_path)
        await server.next_stream()
        code, out = await s_client(server, "-tls1_2", "-servername", "b.example", "-sess_in",
                                   "sess", tmp_path=tmp_path)
        stream = await server.next_stream()
        assert "Reused" not in out and "New, TLSv1.2" in out
        assert stream.server_thumbprint == SERVER_B.thumbprint


async def test_no_binding_means_no_certificate(tmp_path: Path) -> None:
    def only_b(port: int) -> list[Binding]:
        return [Binding("hostnameport", None, "b.example", port, ctx_for(SERVER_B))]

    async with tls_server(only_b) as server:
        code, out = await s_client(server, "-servername", "a.example", tmp_path=tmp_path)
        outcome = await server.next_outcome()
        assert isinstance(outcome, NoCertificateBindingError)
        assert code != 0 and "no peer certificate available" in out

        client = await connect(server, "a.example")
        with pytest.raises(trio.BrokenResourceError):
            with trio.fail_after(TIMEOUT):
                await client.do_handshake()
        assert isinstance(await server.next_outcome(), NoCertificateBindingError)
        await client.aclose()


# ------------------------------------------------------------------------------------------
# Our client against our server


async def test_one_mebibyte_echo_both_ways_concurrently() -> None:
    payload = os.urandom(1 << 20)
    async with tls_server() as server:
        client = await connect(server, "b.example", CLIENT)
        received = bytearray()

        async def sender() -> None:
            view = memoryview(payload)
            for start in range(0, len(view), 100_000):
                await client.send_all(view[start:start + 100_000])

        async def receiver() -> None:
            while len(received) < len(payload):
                data = await client.receive_some()
                assert data
                received.extend(data)

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                nursery.start_soon(receiver)
        assert bytes(received) == payload
        stream = await server.next_stream()
        assert stream.peer_thumbprint == CLIENT.thumbprint
        assert client.server_thumbprint == SERVER_B.thumbprint
        assert client.sni == "b.example" and client.tls_version == "TLSv1.3"
        await client.aclose()


async def test_ip_literal_sends_no_sni() -> None:
    async with tls_server() as server:
        client = await connect(server, "127.0.0.1")
        await client.send_all(b"ping")
        with trio.fail_after(TIMEOUT):
            assert await client.receive_some() == b"ping"
        stream = await server.next_stream()
        assert stream.sni is None and client.sni is None
        assert stream.handshake_info is not None and stream.handshake_info.local_ip == "127.0.0.1"
        assert client.server_thumbprint == SERVER_A.thumbprint  # the ipport wildcard binding
        await client.aclose()


async def test_receive_some_honours_max_bytes_and_drains_records() -> None:
    async def send_then_close(stream: TLSStream) -> None:
        for _ in range(8):
            await stream.send_all(b"x" * 1000)  # eight records
        await stream.aclose()

    async with tls_server(handler=send_then_close) as server:
        client = await connect(server)
        with trio.fail_after(TIMEOUT):
            await client.do_handshake()
            await server.next_stream()
            await trio.sleep(0.2)  # let all records arrive
            assert await client.receive_some(10) == b"x" * 10
            rest = await client.receive_some()
            assert len(rest) == 7990  # one call drained every record already received
            assert await client.receive_some() == b""  # close_notify
            assert await client.receive_some() == b""
        with pytest.raises(ValueError):
            await client.receive_some(0)
        await client.aclose()


async def test_close_notify_is_eof() -> None:
    async with tls_server(handler=lambda s: trio.sleep_forever()) as server:
        client = await connect(server)
        await client.do_handshake()
        stream = await server.next_stream()
        await client.aclose()
        with trio.fail_after(TIMEOUT):
            assert await stream.receive_some() == b""
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"late")


async def test_tcp_close_without_close_notify_is_eof_after_the_handshake() -> None:
    async with tls_server(handler=lambda s: trio.sleep_forever()) as server:
        client = await connect(server)
        await client.do_handshake()
        stream = await server.next_stream()
        await client.transport_stream.aclose()  # abrupt: no close_notify
        with trio.fail_after(TIMEOUT):
            assert await stream.receive_some() == b""


async def test_truncated_handshake_is_broken() -> None:
    async with tls_server() as server:
        tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
        await tcp.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
        await tcp.aclose()
        assert isinstance(await server.next_outcome(), trio.BrokenResourceError)


async def test_plain_http_on_the_tls_port_is_closed() -> None:
    async with tls_server() as server:
        tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
        await tcp.send_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        assert isinstance(await server.next_outcome(), trio.BrokenResourceError)
        with trio.fail_after(TIMEOUT):
            while await tcp.receive_some():  # at most an alert, then EOF
                pass
        await tcp.aclose()


async def test_handshake_deadline_is_the_callers() -> None:
    """A silent client: the caller's deadline cancels the handshake; the stream is then broken."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    stream = TLSStream(await listener.accept(), switching_context(lambda *a: None),
                       server_side=True)
    with trio.move_on_after(0.2) as scope:
        await stream.do_handshake()
    assert scope.cancelled_caught
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()
    await stream.aclose()
    with trio.fail_after(TIMEOUT):
        assert await silent.receive_some() == b""  # closed, without a word of TLS
    await silent.aclose()
    await listener.aclose()


async def test_concurrent_receives_and_sends_are_busy() -> None:
    async with tls_server(handler=lambda s: trio.sleep_forever()) as server:
        client = await connect(server)
        await client.do_handshake()
        await server.next_stream()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await client.receive_some()
            # The server never reads: a large send blocks once the socket buffers are full.
            nursery.start_soon(client.send_all, b"x" * (32 << 20))
            await trio.sleep(0.3)
            with pytest.raises(trio.BusyResourceError):
                await client.send_all(b"y")
            with pytest.raises(trio.BusyResourceError):
                await client.wait_send_all_might_not_block()
            nursery.cancel_scope.cancel()
        await client.aclose()


async def test_details_before_the_handshake_raise() -> None:
    from httpsys_emu.tls import NeedHandshakeError

    async with tls_server() as server:
        client = await connect(server)
        with pytest.raises(NeedHandshakeError):
            client.peer_thumbprint  # noqa: B018
        await client.do_handshake()
        await client.do_handshake()  # idempotent
        await server.next_stream()
        await client.aclose()
        await client.aclose()  # idempotent


# ------------------------------------------------------------------------------------------
# curl against a tiny HTTPS responder built on TLSStream + RequestHeadReader


async def answer_one_request(stream: TLSStream) -> None:
    reader = RequestHeadReader()
    head = None
    while head is None:
        data = await stream.receive_some()
        if not data:
            return
        reader.feed(data)
        head = reader.next_head()
    body = (f"{head.method} {head.target} host={head.host} sni={stream.sni} "
            f"client={stream.peer_thumbprint}\n").encode()
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                          % len(body) + body)


async def test_curl(tmp_path: Path) -> None:
    cert_path, key_path = CLIENT.write(tmp_path, "client")
    async with tls_server(handler=answer_one_request) as server:
        for name, extra, expected_client in (("a.example", [], "None"),
                                             ("b.example", ["--cert", str(cert_path), "--key",
                                                            str(key_path)], CLIENT.thumbprint)):
            result = await trio.run_process(
                ["curl", "-sS", "-k", "--max-time", "5", "--resolve",
                 f"{name}:{server.port}:127.0.0.1", *extra,
                 f"https://{name}:{server.port}/hello?x=1"],
                capture_stdout=True, capture_stderr=True, check=False)
            assert result.returncode == 0, result.stderr
            assert result.stdout.decode() == (
                f"GET /hello?x=1 host={name}:{server.port} sni={name} client={expected_client}\n")
            await server.next_stream()

"""The whole agent polling a real server side built here from the protocol core.

The server: trio TCP → our TLSStream (server side, client certificate requested) → h11 reads the
upgrade, `wshandshake` answers it → `HalibutWebSocket.server` → text `MX` → `ServerExchange`.
Each accepted session is handed to the test, which plays Octopus Server: keep-alives, scripts,
uploads and downloads, a wrong thumbprint, dropped connections, silence, shutdown.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from httpsys_emu.tls import TLSStream
from httpsys_emu.tlsconfig import server_context
from octopus_comms.halibut import exchange as ex
from octopus_comms.halibut.contracts import (
    CapabilitiesResponseV2,
    CompleteScriptCommandV2,
    ProcessOutputSource,
    ProcessState,
    ScriptFile,
    ScriptStatusRequestV2,
    ScriptStatusResponseV2,
    ScriptTicket,
    StartScriptCommandV2,
    UploadResult,
)
from octopus_comms.halibut.framing import NEED_DATA
from octopus_comms.halibut.messages import DataStream, RequestMessage
from octopus_comms.wshandshake import UpgradeAccepted, accept_headers, check_upgrade
from octopus_comms.wsstream import HalibutWebSocket, WebSocketClosed
from tentacle.agent import AgentHandle, AgentOptions, run_agent
from tentacle.backoff import BackoffSettings
from tentacle.config import TentacleConfig, TrustedServer
from tentacle.poller import PollerSettings
from tentacle.services.scripts import Shells
from tentacle.wsclient import ConnectError, PollingAddress, connect_websocket
from tests.certs import make_certificate

SUBSCRIPTION = "poll://abcdefghijklmnopqrst/"
SERVER_CERT = make_certificate("octopus.test", sans=("localhost", "127.0.0.1"))
AGENT_CERT = make_certificate("tentacle.test", client=True)
FAST = AgentOptions(
    backoff=BackoffSettings(retry_interval=0.05, min_sleep=0.05, max_sleep=0.2, quick_session=0.0),
    poller=PollerSettings(connect_timeout=5, handshake_timeout=5, send_timeout=5, close_timeout=1),
    shutdown_grace=5.0,
    shells=Shells(pwsh=None),
    log_stream=None,
)


# -- the server side ----------------------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """One accepted polling connection, driven by the test as Octopus Server would."""

    ws: HalibutWebSocket
    tls: TLSStream
    headers: dict[str, str]
    mx: str
    exchange: ex.ServerExchange = field(default_factory=ex.ServerExchange)
    subscription_id: str | None = None
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def client_thumbprint(self) -> str | None:
        return self.tls.peer_thumbprint

    async def next_event(self) -> object:
        while True:
            event = self.exchange.next_event()
            if event is not NEED_DATA:
                return event
            with trio.fail_after(10):
                self.exchange.receive_data(await self.ws.receive_some())

    async def identify(self) -> None:
        event = await self.next_event()
        assert isinstance(event, ex.Identified), event
        self.subscription_id = event.subscription_id
        await self.ws.send_writes(self.exchange.send(ex.ServerIdentified()))

    async def keepalive(self) -> None:
        await self.ws.send_writes(self.exchange.send(ex.Request(None)))
        assert isinstance(await self.next_event(), ex.Next)
        await self.ws.send_writes(self.exchange.send(ex.Proceed()))

    async def call(self, service: str, method: str, *params: object) -> ex.Response:
        request = RequestMessage(id=f"{service}::{method}[{uuid.uuid4().hex[:6]}] / {uuid.uuid4()}",
                                 activity_id=uuid.uuid4(), service=service, method=method,
                                 params=list(params))
        await self.ws.send_writes(self.exchange.send(ex.Request(request)))
        response = await self.next_event()
        assert isinstance(response, ex.Response), response
        assert response.response.id == request.id
        assert isinstance(await self.next_event(), ex.Next)
        await self.ws.send_writes(self.exchange.send(ex.Proceed()))
        return response

    async def result(self, service: str, method: str, *params: object) -> object:
        response = (await self.call(service, method, *params)).response
        assert response.error is None, response.error
        return response.result


class FakeOctopus:
    """Accepts polling WebSockets and hands each session (after `MX`) to the test."""

    def __init__(self) -> None:
        self.sessions_in, self.sessions = trio.open_memory_channel[Session](10)
        self.refused: list[tuple[int | None, str]] = []
        self.port = 0

    async def run(self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.port)

    async def _connection(self, tcp: trio.SocketStream) -> None:
        context = server_context(SERVER_CERT.cert_pem, SERVER_CERT.key_pem, request_client_cert=True)
        tls = TLSStream(tcp, context, server_side=True)
        try:
            with trio.fail_after(10):
                await tls.do_handshake()
                http = h11.Connection(h11.SERVER)
                request = None
                while True:
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        http.receive_data(await tls.receive_some())
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert request is not None
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                accepted = check_upgrade(request.method.decode(), request.http_version.decode(), headers)
                assert isinstance(accepted, UpgradeAccepted), accepted
                chosen = "Octopus" if "Octopus" in accepted.subprotocols else None
                await tls.send_all(http.send(h11.InformationalResponse(
                    status_code=101, headers=accept_headers(accepted.key, chosen))))
                ws = HalibutWebSocket.server(tls, leftover=http.trailing_data[0])
                mx = await ws.receive_text()
        except WebSocketClosed as closed:
            self.refused.append((closed.code, closed.reason))
            await tls.aclose()
            return
        session = Session(ws, tls, headers, mx)
        await self.sessions_in.send(session)
        await session.done.wait()
        await ws.close(1000)

    async def next_session(self, timeout: float = 15) -> Session:
        with trio.fail_after(timeout):
            return await self.sessions.receive()


def make_config(tmp_path: Path, port: int, *, thumbprint: str = SERVER_CERT.thumbprint,
                connections: int = 1) -> TentacleConfig:
    home = tmp_path / "home"
    return TentacleConfig(
        instance="Tentacle",
        config_path=tmp_path / "Tentacle.config",
        home=home,
        app_dir=tmp_path / "apps",
        certificate_pem=AGENT_CERT.cert_pem,
        private_key_pem=AGENT_CERT.key_pem,
        thumbprint=AGENT_CERT.thumbprint,
        trusted_servers=(TrustedServer(thumbprint=thumbprint, communication_style=2,
                                       address=f"wss://localhost:{port}/OctopusComms", squid=None,
                                       subscription_id=SUBSCRIPTION),
                         TrustedServer(thumbprint="ABCDEF", communication_style=1, address=None,
                                       squid=None, subscription_id=None)),
        polling_connection_count=connections,
        no_listen=True,
        listen_port=10933,
        extra={},
    )


@asynccontextmanager
async def running(tmp_path: Path, *, port: int | None = None, options: AgentOptions = FAST,
                  **config_kw: object) -> AsyncIterator[tuple[FakeOctopus, AgentHandle, TentacleConfig]]:
    server = FakeOctopus()
    async with trio.open_nursery() as nursery:
        if port is None:
            port = await nursery.start(server.run)
        config = make_config(tmp_path, port, **config_kw)
        handle = await nursery.start(lambda task_status: run_agent(config, options=options, task_status=task_status))
        yield server, handle, config
        nursery.cancel_scope.cancel()


def log_text(config: TentacleConfig) -> str:
    path = config.home / "Logs" / "OctopusTentacle.txt"
    return path.read_text() if path.exists() else ""


async def until_logged(config: TentacleConfig, needle: str, timeout: float = 10) -> str:
    with trio.fail_after(timeout):
        while needle not in log_text(config):
            await trio.sleep(0.02)
    return log_text(config)


# -- tests --------------------------------------------------------------------------------------


async def test_the_agent_polls_and_serves_scripts_and_files(tmp_path):
    async with running(tmp_path) as (server, handle, config):
        session = await server.next_session()
        # the handshake as the real agent makes it
        assert session.headers["sec-websocket-protocol"] == "Octopus"
        uuid.UUID(session.headers["x-octopus-requestid"])
        assert session.headers["host"] == f"localhost:{server.port}"
        assert session.client_thumbprint == AGENT_CERT.thumbprint
        assert session.mx == "MX"
        await session.identify()
        assert session.subscription_id == SUBSCRIPTION
        await session.keepalive()

        capabilities = await session.result("ICapabilitiesServiceV2", "GetCapabilitiesAsync")
        assert capabilities == CapabilitiesResponseV2(
            supported_capabilities=["IScriptService", "IFileTransferService", "IScriptServiceV2"])

        # a script with a file, waited for
        ticket = ScriptTicket(task_id="ServerTasks-42_ABCDEFGHIJ")
        payload = DataStream.from_bytes(b"from the server\n")
        status = await session.result("IScriptServiceV2", "StartScript", StartScriptCommandV2(
            script_ticket=ticket, script_body='cat payload.txt; echo "arg=$1"; echo oops >&2; exit 7',
            task_id="ServerTasks-42", arguments=["x"],
            duration_to_wait_for_script_to_finish=_dt.timedelta(seconds=10),
            files=[ScriptFile(name="payload.txt", contents=payload)]))
        assert isinstance(status, ScriptStatusResponseV2)
        assert status.state == ProcessState.Complete and status.exit_code == 7
        out = [line.text for line in status.logs if line.source == ProcessOutputSource.StdOut]
        err = [line.text for line in status.logs if line.source == ProcessOutputSource.StdErr]
        assert (out, err) == (["from the server", "arg=x"], ["oops"])
        assert status.next_log_sequence == 3
        tail = await session.result("IScriptServiceV2", "GetStatus",
                                    ScriptStatusRequestV2(ticket=ticket, last_log_sequence=2))
        assert [line.text for line in tail.logs] == [status.logs[2].text]
        work = config.home / "Work" / ticket.task_id
        assert work.is_dir()
        assert await session.result("IScriptServiceV2", "CompleteScript",
                                    CompleteScriptCommandV2(ticket=ticket)) is None
        assert not work.exists()
        await session.keepalive()

        # upload and download, streamed through the spool
        data = os.urandom(300_000)
        uploaded = await session.result("IFileTransferService", "UploadFile", "uploads/app.zip",
                                        DataStream.from_bytes(data))
        target = config.home / "Files" / "uploads" / "app.zip"
        assert uploaded == UploadResult(full_path=str(target), hash=hashlib.sha1(data).hexdigest(),
                                        length=len(data))
        assert target.read_bytes() == data
        download = await session.call("IFileTransferService", "DownloadFile", str(target))
        stream = download.response.result
        assert isinstance(stream, DataStream) and stream.length == len(data)
        assert [s.data for s in download.streams if s.id == stream.id] == [data]

        # errors come back as Halibut errors and polling goes on
        missing = await session.call("IMissingService", "Anything")
        assert missing.response.error.halibut_error_type == "Halibut.Exceptions.ServiceNotFoundHalibutClientException"
        refused = await session.call("IFileTransferService", "UploadFile", "../../etc/x", DataStream.from_bytes(b"x"))
        assert "'..' segments are not allowed" in refused.response.error.message
        await session.keepalive()

        log = log_text(config)
        assert "polling as poll://abcdefghijklmnopqrst/: the server identified itself" in log
        assert "request IScriptServiceV2.StartScript (IScriptServiceV2::StartScript[" in log
        assert "request IFileTransferService.UploadFile" in log and ": OK in" in log
        assert "not polling trusted server ABCDEF: it is not a polling (Active) server" in log
        assert list((config.home / "Temp" / "Incoming").iterdir()) == []

        # an idle agent stops at once and says goodbye with 1001
        handle.stop()
        assert await session.ws.receive_some() == b""
        assert session.ws.closed is not None and session.ws.closed.code == 1001
        session.done.set()


async def test_a_busy_agent_finishes_the_request_then_sends_end(tmp_path):
    async with running(tmp_path) as (server, handle, config):
        session = await server.next_session()
        await session.identify()
        request = RequestMessage(id="IScriptServiceV2::StartScript[1] / 1", service="IScriptServiceV2",
                                 method="StartScript", params=[StartScriptCommandV2(
                                     script_ticket=ScriptTicket(task_id="slowish"), script_body="sleep 0.3; echo hi",
                                     duration_to_wait_for_script_to_finish=_dt.timedelta(seconds=10))])
        await session.ws.send_writes(session.exchange.send(ex.Request(request)))
        await until_logged(config, "connected (request id")
        handle.stop()
        response = await session.next_event()
        assert isinstance(response, ex.Response)
        assert [line.text for line in response.response.result.logs] == ["hi"]
        assert isinstance(await session.next_event(), ex.End)
        assert await session.ws.receive_some() == b""
        assert session.ws.closed.code == 1001
        session.done.set()


async def test_a_wrong_server_thumbprint_closes_with_1002_and_backs_off(tmp_path):
    slow = BackoffSettings(retry_interval=0.05, min_sleep=30, max_sleep=60)
    options = AgentOptions(**{**FAST.__dict__, "backoff": slow})
    async with running(tmp_path, options=options, thumbprint="0" * 40) as (server, handle, config):
        log = await until_logged(config, "trying again in")
        assert server.refused == [(1002, "Certificate thumbprint not recognised")]
        assert f"presented certificate thumbprint {SERVER_CERT.thumbprint} but this Tentacle trusts {'0' * 40}" in log
        assert "retrying in" not in log  # an auth error is never retried fast
        wait = float(log.split("trying again in ")[1].split(" s")[0])
        assert 30 <= wait <= 60
        assert handle.loops[0].sessions == 0


async def test_a_dropped_connection_is_reestablished(tmp_path):
    async with running(tmp_path) as (server, handle, config):
        first = await server.next_session()
        await first.identify()
        await first.keepalive()
        await first.tls.transport_stream.aclose()  # the server vanishes without a Close frame
        second = await server.next_session()
        await second.identify()
        await second.keepalive()
        assert handle.loops[0].sessions == 2
        await until_logged(config, "the server closed the connection (WebSocket closed with 1006")
        first.done.set()
        second.done.set()


async def test_a_server_that_closes_cleanly_is_polled_again(tmp_path):
    async with running(tmp_path) as (server, handle, config):
        first = await server.next_session()
        await first.identify()
        await first.ws.close(1000)
        second = await server.next_session()
        await second.identify()
        await second.keepalive()
        await until_logged(config, "the server closed the connection")
        first.done.set()
        second.done.set()


async def test_connect_failures_are_retried_until_the_server_comes_up(tmp_path):
    with socket.socket() as probe:  # a port with nothing listening (yet)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with running(tmp_path, port=port) as (server, handle, config):
        log = await until_logged(config, "(attempt 2 of 5)")
        assert f"could not connect to wss://localhost:{port}/OctopusComms: TCP connect failed" in log
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, port)
            session = await server.next_session()
            await session.identify()
            await session.keepalive()
            session.done.set()
            nursery.cancel_scope.cancel()


async def test_a_silent_server_cannot_hang_the_agent(tmp_path):
    timeouts = ex.ExchangeTimeouts(identity=0.5, request_first_byte=0.5, proceed=0.5)
    options = AgentOptions(**{**FAST.__dict__, "poller": PollerSettings(
        connect_timeout=5, handshake_timeout=5, send_timeout=5, close_timeout=0.5, exchange=timeouts)})
    async with running(tmp_path, options=options) as (server, handle, config):
        mute = await server.next_session()  # never identifies
        again = await server.next_session()
        await again.identify()  # identifies, then never sends a request
        third = await server.next_session()
        await third.identify()
        await third.keepalive()
        log = log_text(config)
        assert "TooSlowError" in log
        for session in (mute, again, third):
            session.done.set()


async def test_polling_connection_count_opens_several_loops(tmp_path):
    async with running(tmp_path, connections=2) as (server, handle, config):
        sessions = [await server.next_session(), await server.next_session()]
        for session in sessions:
            await session.identify()
            assert session.subscription_id == SUBSCRIPTION
            await session.keepalive()
        assert len(handle.loops) == 2
        for session in sessions:
            session.done.set()


async def test_an_agent_without_a_certificate_refuses_to_start(tmp_path):
    config = make_config(tmp_path, 1)
    config = TentacleConfig(**{**config.__dict__, "certificate_pem": None})
    from tentacle.agent import AgentError
    with pytest.raises(AgentError, match="no certificate"):
        await run_agent(config, options=FAST)


async def test_sigterm_stops_the_agent_and_closes_with_1001(tmp_path):
    server = FakeOctopus()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        config = make_config(tmp_path, port)
        agent_done = trio.Event()

        async def agent() -> None:
            await run_agent(config, options=FAST, handle_signals=True)
            agent_done.set()

        nursery.start_soon(agent)
        session = await server.next_session()
        await session.identify()
        await session.keepalive()
        os.kill(os.getpid(), signal.SIGTERM)  # caught by the agent's signal receiver
        assert await session.ws.receive_some() == b""
        assert session.ws.closed.code == 1001
        session.done.set()
        with trio.fail_after(10):
            await agent_done.wait()  # run_agent returned: the receiver is gone again
        log = log_text(config)
        assert "SIGTERM received" in log and "Tentacle stopped" in log
        nursery.cancel_scope.cancel()


# -- the client handshake on its own ------------------------------------------------------------


async def canned_tls_server(nursery: trio.Nursery, answer: bytes) -> int:
    """A TLS server that reads one request head and answers `answer` verbatim."""

    async def handler(tcp: trio.SocketStream) -> None:
        tls = TLSStream(tcp, server_context(SERVER_CERT.cert_pem, SERVER_CERT.key_pem,
                                            request_client_cert=True), server_side=True)
        head = b""
        with trio.move_on_after(5):
            while b"\r\n\r\n" not in head:
                head += await tls.receive_some()
            await tls.send_all(answer)
            await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


def client_context_for_tests():
    from httpsys_emu.tlsconfig import client_context
    return client_context(AGENT_CERT.cert_pem, AGENT_CERT.key_pem)


@pytest.mark.parametrize("answer, status", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 2\r\n\r\nhi", 200),
    (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 403),
])
async def test_a_server_that_does_not_upgrade_is_a_connect_error(nursery, answer, status):
    port = await canned_tls_server(nursery, answer)
    with pytest.raises(ConnectError) as caught:
        await connect_websocket(PollingAddress.parse(f"wss://127.0.0.1:{port}/OctopusComms"),
                                client_context_for_tests(), connect_timeout=5, handshake_timeout=5)
    assert caught.value.stage == "WebSocket upgrade" and caught.value.status == status
    assert f"HTTP {status}" in str(caught.value)


@pytest.mark.parametrize("answer, expected", [
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n", "Sec-WebSocket-Accept"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "bad HTTP response"),
])
async def test_a_bad_upgrade_answer_is_refused(nursery, answer, expected):
    port = await canned_tls_server(nursery, answer)
    with pytest.raises(ConnectError, match=expected):
        await connect_websocket(PollingAddress.parse(f"wss://127.0.0.1:{port}/"),
                                client_context_for_tests(), connect_timeout=5, handshake_timeout=5)


async def test_a_server_that_never_answers_times_out(nursery):
    port = await canned_tls_server(nursery, b"")
    with pytest.raises(ConnectError, match="no answer within 0.3 s"):
        await connect_websocket(PollingAddress.parse(f"wss://127.0.0.1:{port}/"),
                                client_context_for_tests(), connect_timeout=5, handshake_timeout=0.3)


@given(host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5}){0,2}", fullmatch=True),
       port=st.one_of(st.none(), st.integers(1, 65535)),
       path=st.from_regex(r"(/[A-Za-z0-9._~-]{0,10}){0,3}", fullmatch=True))
def test_polling_addresses_parse(host, port, path):
    url = f"wss://{host}{'' if port is None else f':{port}'}{path}"
    address = PollingAddress.parse(url)
    assert (address.host, address.port, address.target) == (host, port or 443, path or "/")
    assert address.host_header == (host if (port or 443) == 443 else f"{host}:{port}")


@pytest.mark.parametrize("url", ["https://host/OctopusComms", "ws://host/", "wss:///x", "wss://h:99999/", "host"])
def test_bad_polling_addresses(url):
    with pytest.raises(ValueError):
        PollingAddress.parse(url)


def test_ipv6_polling_address():
    address = PollingAddress.parse("wss://[::1]:8443/OctopusComms")
    assert (address.host, address.port, address.host_header) == ("::1", 8443, "[::1]:8443")


# -- the agent log ------------------------------------------------------------------------------


def test_agent_log_writes_stamped_lines_to_the_stream_and_the_file(tmp_path):
    import io

    from tentacle.agentlog import AgentLog

    stream = io.StringIO()
    stamp = _dt.datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=_dt.timezone.utc)
    log = AgentLog(tmp_path / "Logs" / "OctopusTentacle.txt", stream=stream, clock=lambda: stamp,
                   max_bytes=200, keep=2)
    log.info("hello")
    log.error("two\nlines")
    expected = ("2025-01-31 12:00:00.123 +00:00  INFO  hello\n"
                "2025-01-31 12:00:00.123 +00:00  ERROR two\n    lines\n")
    assert stream.getvalue() == expected
    assert (tmp_path / "Logs" / "OctopusTentacle.txt").read_text() == expected
    for i in range(20):
        log.warning(f"line {i}")
    log.close()
    files = sorted(p.name for p in (tmp_path / "Logs").iterdir())
    assert files == ["OctopusTentacle.1.txt", "OctopusTentacle.2.txt", "OctopusTentacle.txt"]
    assert all(p.stat().st_size <= 300 for p in (tmp_path / "Logs").iterdir())

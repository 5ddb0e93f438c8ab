"""The comms endpoint through the real front door, polled by an independent WebSocket client.

The agent side here is the `websockets` library (asyncio, in a thread) carrying bytes produced
and parsed by our pure SubscriberExchange; the server side is the real front door with the real
CommsEndpoint registered in-process. Real TLS with a client certificate on both ends.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

import pytest
import trio
import websockets

from httpsys_emu.frontdoor import FrontDoor
from octopus_comms.endpoint import FRIENDLY_TITLE, CommsEndpoint
from octopus_comms.halibut import contracts as c
from octopus_comms.halibut import exchange as ex
from octopus_comms.halibut.framing import NEED_DATA
from octopus_comms.halibut.messages import ResponseMessage
from octopus_comms.polling import LiveAgents, TrustedAgent
from octopus_comms.queue import CollectionTimeout, PendingRequestQueues
from octopus_comms.rpc import AgentClient
from tests.comms_fixtures import make_comms_site
from tests.certs import make_certificate

SUBSCRIPTION = "poll://abcdefghijklmnopqrst/"


class Agent(threading.Thread):
    """A polling agent: websockets for the WebSocket, our SubscriberExchange for Halibut."""

    def __init__(self, url: str, cert_dir: Path, *, answer: bool = True, polls: int = 3,
                 respond=None, subscription: str = SUBSCRIPTION) -> None:
        super().__init__(daemon=True)
        self.respond = respond or capabilities
        self.subscription = subscription
        self.url = url
        self.cert_dir = cert_dir
        self.answer = answer
        self.polls = polls
        self.events: list[object] = []
        self.close_code: int | None = None
        self.received_bytes = b""
        self.error: BaseException | None = None
        self.subprotocol: str | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to the test
            self.error = exc

    async def _run(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(self.cert_dir / "agent.crt", self.cert_dir / "agent.key")
        outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def frames():
            while True:
                item = await outgoing.get()
                if item is None:
                    return
                yield item

        async with websockets.connect(self.url, ssl=ctx, subprotocols=["Octopus"],
                                      additional_headers={"X-Octopus-RequestId": "test"},
                                      max_size=None, open_timeout=10) as ws:
            self.subprotocol = ws.subprotocol
            await ws.send("MX")
            sender = asyncio.ensure_future(ws.send(frames()))
            exchange = ex.SubscriberExchange()
            for write in exchange.send(ex.Identified(self.subscription)):
                await outgoing.put(write)
            fragments = ws.recv_streaming()
            polls = 0
            try:
                while polls < self.polls:
                    event = exchange.next_event()
                    if event is NEED_DATA:
                        data = await asyncio.wait_for(fragments.__anext__(), 20)
                        self.received_bytes += data
                        exchange.receive_data(data)
                        continue
                    self.events.append(event)
                    if isinstance(event, ex.Request):
                        if event.request is not None and self.answer:
                            result = self.respond(event.request)
                            response = ResponseMessage.from_result(event.request, result)
                            for write in exchange.send(ex.Response(response)):
                                await outgoing.put(write)
                        elif event.request is not None:
                            return        # drop the connection with the request collected
                        for write in exchange.send(ex.Next()):
                            await outgoing.put(write)
                        polls += 1
            except (websockets.ConnectionClosed, StopAsyncIteration) as exc:
                self.close_code = getattr(getattr(exc, "rcvd", None), "code", None)
                return
            finally:
                # flush what was queued (the last response) before leaving the connection
                await outgoing.put(None)
                try:
                    await asyncio.wait_for(sender, 5)
                except BaseException:
                    sender.cancel()


def capabilities(request: object) -> c.CapabilitiesResponseV2:
    return c.CapabilitiesResponseV2(supported_capabilities=["IScriptService", "IScriptServiceV2"])


@pytest.fixture
def comms_env(tmp_path: Path):
    site = make_comms_site(tmp_path, bind_ip="127.0.0.1")
    state, port = site.state, site.port
    agent_cert = make_certificate("agent", client=True)
    agent_cert.write(tmp_path, "agent")
    return state, port, agent_cert


async def _run(state: Path, trusted: dict[str, TrustedAgent], keepalive: float, body):
    queues = PendingRequestQueues()
    live = LiveAgents()
    endpoint = CommsEndpoint(trust=lambda t: trusted.get(t.upper()), queues=queues, live=live,
                             keepalive=keepalive)
    async with trio.open_nursery() as nursery:
        door = FrontDoor(state)
        await nursery.start(door.run)
        async with door.register_handler(f"https://+:{_port(door)}/OctopusComms", endpoint,
                                         client_cert=True):
            await body(queues, live)
        nursery.cancel_scope.cancel()


def _port(door: FrontDoor) -> int:
    return door.listening_addresses()[0][1]


async def test_friendly_page_for_browsers_and_the_probe(comms_env, tmp_path):
    state, port, _ = comms_env

    async def body(queues, live):
        for args in (["-sk", f"https://localhost:{port}/OctopusComms"],
                     ["-sk", "-X", "POST", "--data-binary", "", f"https://localhost:{port}/OctopusComms/"]):
            result = await trio.run_process(["curl", "-i", *args], capture_stdout=True)
            text = result.stdout.decode()
            assert text.startswith("HTTP/1.1 200 OK")
            assert "text/html; charset=utf-8" in text
            assert f"<title>{FRIENDLY_TITLE}</title>" in text

    await _run(state, {}, 30, body)


async def test_trusted_agent_polls_gets_keepalives_and_answers(comms_env, tmp_path):
    state, port, agent_cert = comms_env
    trusted = {agent_cert.thumbprint: TrustedAgent("Machines-1", "web01", agent_cert.thumbprint,
                                                   SUBSCRIPTION)}

    async def body(queues, live):
        agent = Agent(f"wss://localhost:{port}/OctopusComms", tmp_path, polls=3)
        agent.start()
        client = AgentClient(queues, SUBSCRIPTION, collection_timeout=10, response_timeout=10)
        with trio.fail_after(20):
            result = await client.get_capabilities()
        assert result.supported_capabilities == ["IScriptService", "IScriptServiceV2"]
        await trio.to_thread.run_sync(agent.join, 20)
        assert agent.error is None, agent.error
        assert agent.subprotocol == "Octopus"
        assert isinstance(agent.events[0], ex.ServerIdentified)
        requests = [e for e in agent.events if isinstance(e, ex.Request)]
        assert any(r.request is None for r in requests)          # a keep-alive came
        assert any(r.request is not None and r.request.service == "ICapabilitiesServiceV2"
                   for r in requests)
        assert agent.received_bytes.startswith(b"MX-SERVER 1.0\r\n\r\n")

    await _run(state, trusted, 0.3, body)


async def test_untrusted_agent_gets_no_identity_and_queue_untouched(comms_env, tmp_path):
    state, port, agent_cert = comms_env

    async def body(queues, live):
        queue = queues.queue(SUBSCRIPTION)
        client = AgentClient(queues, SUBSCRIPTION, collection_timeout=1.5)
        agent = Agent(f"wss://localhost:{port}/OctopusComms", tmp_path, polls=1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, agent.start)
            with pytest.raises(CollectionTimeout):
                await client.get_capabilities()
        await trio.to_thread.run_sync(agent.join, 20)
        assert agent.received_bytes == b""         # never an identity line
        assert agent.close_code == 1000
        assert len(queue) == 0 and not queue.in_flight
        assert live.count() == 0

    await _run(state, {}, 30, body)


async def test_draining_front_door_closes_polling_with_1001(comms_env, tmp_path):
    state, port, agent_cert = comms_env
    trusted = {agent_cert.thumbprint: TrustedAgent("Machines-1", "web01", agent_cert.thumbprint,
                                                   SUBSCRIPTION)}
    queues, live = PendingRequestQueues(), LiveAgents()
    endpoint = CommsEndpoint(trust=lambda t: trusted.get(t.upper()), queues=queues, live=live,
                             keepalive=30)
    agent = Agent(f"wss://localhost:{port}/OctopusComms", tmp_path, polls=5)
    async with trio.open_nursery() as nursery:
        door = FrontDoor(state)
        await nursery.start(door.run)
        async with door.register_handler(f"https://+:{_port(door)}/OctopusComms", endpoint,
                                         client_cert=True):
            agent.start()
            with trio.fail_after(15):
                while live.count() == 0:
                    await trio.sleep(0.05)
            with trio.fail_after(15):
                await door.drain()
            await trio.to_thread.run_sync(agent.join, 15)
        nursery.cancel_scope.cancel()
    assert agent.close_code == 1001
    assert live.count() == 0

"""The server side of one polling connection: trust, identity, then the request loop.

Runs after the WebSocket is open. The order of checks follows spec halibut.md §1 and the lesson
of CVE-2020-27155: the client certificate is checked before anything is read from or written to
the exchange, so an untrusted agent never sees an identity line and never touches a queue.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import trio

from .halibut import exchange as ex
from .halibut.errors import HalibutError
from .halibut.framing import NEED_DATA
from .queue import KEEPALIVE_INTERVAL, PendingRequest, PendingRequestQueues, SubscriptionQueue
from .wsstream import HalibutWebSocket, WebSocketClosed

log = logging.getLogger("octopus_comms.polling")

MX_TIMEOUT = 60.0


@dataclass(frozen=True)
class TrustedAgent:
    """A registered machine the server will talk to."""

    machine_id: str
    name: str
    thumbprint: str
    subscription_id: str | None       # poll://…/ from its endpoint, when registered


TrustLookup = Callable[[str], TrustedAgent | None]


@dataclass
class AgentConnection:
    """Live facts about one polling connection, for the portal and metrics."""

    machine_id: str
    subscription_id: str
    remote: str
    node: str
    connected_at: float = field(default_factory=time.time)
    last_poll: float = field(default_factory=time.time)
    requests: int = 0


class LiveAgents:
    """Which agents are connected now, to which node, and when they last polled."""

    def __init__(self) -> None:
        self._connections: dict[int, AgentConnection] = {}
        self._next = 0
        self.last_seen: dict[str, float] = {}

    def add(self, conn: AgentConnection) -> int:
        self._next += 1
        self._connections[self._next] = conn
        self.last_seen[conn.machine_id] = conn.last_poll
        return self._next

    def touch(self, key: int) -> None:
        conn = self._connections.get(key)
        if conn is not None:
            conn.last_poll = time.time()
            self.last_seen[conn.machine_id] = conn.last_poll

    def remove(self, key: int) -> None:
        self._connections.pop(key, None)

    def for_machine(self, machine_id: str) -> list[AgentConnection]:
        return [c for c in self._connections.values() if c.machine_id == machine_id]

    def count(self) -> int:
        return len(self._connections)


async def _next(exchange: ex.ServerExchange, ws: HalibutWebSocket) -> object:
    """The exchange's next event, reading from the WebSocket within the timeout it names."""
    while True:
        event = exchange.next_event()
        if event is not NEED_DATA:
            return event
        timeout = exchange.awaiting.timeout
        with trio.fail_after(timeout) if timeout is not None else nullcontext():
            data = await ws.receive_some()
        exchange.receive_data(data)


async def _collect_unless(queue: SubscriptionQueue, wait: float, collector: str,
                          shutdown: trio.Event | None) -> tuple[PendingRequest | None, bool]:
    """The next request (or None for a keep-alive), unless shutdown comes first."""
    if shutdown is None:
        return await queue.collect(wait, collector=collector), False
    if shutdown.is_set():
        return None, True
    result: list[PendingRequest | None] = []
    async with trio.open_nursery() as nursery:
        async def collect() -> None:
            result.append(await queue.collect(wait, collector=collector))
            nursery.cancel_scope.cancel()

        async def watch() -> None:
            await shutdown.wait()
            nursery.cancel_scope.cancel()
        nursery.start_soon(collect)
        nursery.start_soon(watch)
    if result:
        return result[0], False
    return None, True


async def serve_polling(ws: HalibutWebSocket, *, thumbprint: str | None, trust: TrustLookup,
                        queues: PendingRequestQueues, live: LiveAgents, node: str, remote: str,
                        keepalive: float = KEEPALIVE_INTERVAL, shutdown: trio.Event | None = None) -> None:
    """Run one polling connection to its end; never raises for a peer's misbehaviour.

    When `shutdown` is set (the front door is draining) the loop stops between requests and
    closes the WebSocket with 1001 (going away), so the agent reconnects to the next server.
    """
    try:
        with trio.fail_after(MX_TIMEOUT):
            hello = await ws.receive_text()
    except (WebSocketClosed, trio.TooSlowError) as exc:
        log.info("polling connection from %s ended before MX: %s", remote, exc)
        await ws.close(1000)
        return
    if not hello.startswith("MX"):
        log.warning("polling connection from %s sent %r instead of MX; closed", remote,
                    hello[:40])
        await ws.close(1002, "expected MX")
        return
    agent = trust(thumbprint) if thumbprint else None
    if agent is None:
        log.warning("polling connection from %s refused: client certificate %s is not trusted",
                    remote, thumbprint or "(none)")
        await ws.close(1000)
        return
    exchange = ex.ServerExchange()
    pending: PendingRequest | None = None
    key: int | None = None
    queue = None
    close_code = 1000
    try:
        event = await _next(exchange, ws)
        if not isinstance(event, ex.Identified):
            log.info("agent %s (%s) closed before identifying", agent.name, remote)
            return
        subscription = event.subscription_id
        if agent.subscription_id and subscription.lower() != agent.subscription_id.lower():
            log.warning("agent %s (%s) identified as %s but is registered as %s; closed",
                        agent.name, remote, subscription, agent.subscription_id)
            return
        await ws.send_writes(exchange.send(ex.ServerIdentified()))
        queue = queues.queue(subscription)
        key = live.add(AgentConnection(agent.machine_id, subscription, remote, node))
        log.info("agent %s (%s) polling as %s on %s", agent.name, remote, subscription, node)
        while True:
            pending, stopping = await _collect_unless(queue, keepalive, f"{node}:{remote}",
                                                      shutdown)
            if stopping:
                log.info("agent %s (%s): server node %s is shutting down", agent.name, remote,
                         node)
                close_code = 1001
                return
            live.touch(key)
            request = pending.request if pending else None
            await ws.send_writes(exchange.send(ex.Request(request)))
            if pending is not None:
                event = await _next(exchange, ws)
                if not isinstance(event, ex.Response):
                    raise HalibutError(f"expected a response, got {type(event).__name__}")
                queue.complete(event.response, tuple(event.streams))
                pending = None
            event = await _next(exchange, ws)
            if isinstance(event, ex.Next):
                await ws.send_writes(exchange.send(ex.Proceed()))
                continue
            if isinstance(event, ex.End):
                log.info("agent %s (%s) ended the conversation", agent.name, remote)
            else:
                log.info("agent %s (%s) disconnected", agent.name, remote)
            return
    except (HalibutError, WebSocketClosed, trio.TooSlowError, trio.BrokenResourceError,
            trio.ClosedResourceError, OSError) as exc:
        log.info("polling connection of %s (%s) ended: %s", agent.name, remote,
                 exc or type(exc).__name__)
    finally:
        if pending is not None and queue is not None:
            queue.lost(pending, "the polling connection was lost")
        if key is not None:
            live.remove(key)
        await ws.close(close_code)

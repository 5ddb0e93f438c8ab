"""Pending requests per polling subscription: the server side of "the agent calls us".

Octopus can only reach a polling agent by leaving work where the agent collects it. Rules (spec
halibut.md §2, hardening.md): at most once; a request nobody collects within the collection
timeout fails cleanly (safe to retry); a request collected and then lost with its connection is
never re-queued — the caller hears "outcome unknown"; responses are matched by id and duplicates
or strangers are dropped.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass, field

import trio

from httpsys_emu.exposition import Histogram

from .halibut.messages import DataStream, RequestMessage, ResponseMessage

log = logging.getLogger("octopus_comms.queue")

COLLECTION_TIMEOUT = 120.0      # PollingRequestQueueTimeout "00:02:00"
KEEPALIVE_INTERVAL = 30.0       # a null request when nothing came within this
# Seconds from enqueue to the end of `send`, by outcome (see `RPC_OUTCOMES`), for metrics.
RPC_DURATION_BUCKETS = (0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0)
RPC_OUTCOMES = ("answered", "collection_timeout", "outcome_unknown", "cancelled")


class RequestState(enum.Enum):
    QUEUED = "queued"
    COLLECTED = "collected"
    ANSWERED = "answered"
    FAILED = "failed"


class RequestFailed(Exception):
    """The request did not produce a response."""


class CollectionTimeout(RequestFailed):
    """No agent collected the request in time; it never ran, so it is safe to retry."""


class OutcomeUnknown(RequestFailed):
    """The agent collected the request and the connection was lost before it answered."""


class RequestCancelled(RequestFailed):
    """The caller cancelled the request before an agent collected it."""


@dataclass(eq=False)
class PendingRequest:
    request: RequestMessage
    streams: tuple[DataStream, ...] = ()
    state: RequestState = RequestState.QUEUED
    response: ResponseMessage | None = None
    response_streams: tuple[DataStream, ...] = ()
    error: RequestFailed | None = None
    done: trio.Event = field(default_factory=trio.Event)
    collected: trio.Event = field(default_factory=trio.Event)
    collected_by: str | None = None

    def answer(self, response: ResponseMessage, streams: tuple[DataStream, ...] = ()) -> bool:
        if self.state is not RequestState.COLLECTED:
            return False
        self.state = RequestState.ANSWERED
        self.response = response
        self.response_streams = streams
        self.done.set()
        return True

    def fail(self, error: RequestFailed) -> None:
        if self.state in (RequestState.ANSWERED, RequestState.FAILED):
            return
        self.state = RequestState.FAILED
        self.error = error
        self.done.set()


class SubscriptionQueue:
    """FIFO of requests for one subscription id, collected by that agent's polling loops."""

    def __init__(self, subscription_id: str) -> None:
        self.subscription_id = subscription_id
        self._items: deque[PendingRequest] = deque()
        self._changed = trio.Event()
        self.in_flight: dict[str, PendingRequest] = {}

    def __len__(self) -> int:
        return len(self._items)

    def put(self, pending: PendingRequest) -> None:
        self._items.append(pending)
        self._changed.set()
        self._changed = trio.Event()

    def remove(self, pending: PendingRequest) -> bool:
        try:
            self._items.remove(pending)
            return True
        except ValueError:
            return False

    async def collect(self, wait: float, collector: str) -> PendingRequest | None:
        """The next queued request, or None after `wait` seconds (the keep-alive)."""
        with trio.move_on_after(wait):
            while True:
                while self._items:
                    pending = self._items.popleft()
                    if pending.state is not RequestState.QUEUED:
                        continue
                    pending.state = RequestState.COLLECTED
                    pending.collected_by = collector
                    pending.collected.set()
                    self.in_flight[pending.request.id] = pending
                    return pending
                await self._changed.wait()
        return None

    def complete(self, response: ResponseMessage, streams: tuple[DataStream, ...] = ()) -> bool:
        """Hand a response to the request it answers; False (and a log line) when none waits."""
        pending = self.in_flight.pop(response.id, None)
        if pending is None or not pending.answer(response, streams):
            log.warning("dropped a response for %s on %s: no request waits for it",
                        response.id, self.subscription_id)
            return False
        return True

    def lost(self, pending: PendingRequest, why: str) -> None:
        """The connection that collected `pending` is gone: never re-queue, report unknown."""
        self.in_flight.pop(pending.request.id, None)
        pending.fail(OutcomeUnknown(f"{pending.request.id}: {why}; the outcome is unknown"))


class PendingRequestQueues:
    """All subscriptions' queues on this server node."""

    def __init__(self, collection_timeout: float = COLLECTION_TIMEOUT) -> None:
        self.collection_timeout = collection_timeout
        self._queues: dict[str, SubscriptionQueue] = {}
        self.rpc_durations = {outcome: Histogram(RPC_DURATION_BUCKETS)
                              for outcome in RPC_OUTCOMES}

    def queue(self, subscription_id: str) -> SubscriptionQueue:
        key = subscription_id.lower()
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = SubscriptionQueue(subscription_id)
        return q

    def depth(self) -> dict[str, int]:
        return {q.subscription_id: len(q) for q in self._queues.values()}

    def in_flight(self) -> int:
        """Requests collected by an agent and not answered yet, on every subscription."""
        return sum(len(q.in_flight) for q in self._queues.values())

    def _record(self, outcome: str, started: float) -> None:
        self.rpc_durations[outcome].observe(trio.current_time() - started)

    async def send(self, subscription_id: str, request: RequestMessage,
                   streams: tuple[DataStream, ...] = (), *,
                   collection_timeout: float | None = None,
                   response_timeout: float | None = None) -> PendingRequest:
        """Queue `request` and wait for its answer; RequestFailed subclasses on failure.

        Cancelling the caller before collection removes the request from the queue; after
        collection the request runs on and its answer is dropped when it comes.
        """
        q = self.queue(subscription_id)
        pending = PendingRequest(request, streams)
        started = trio.current_time()
        q.put(pending)
        timeout = self.collection_timeout if collection_timeout is None else collection_timeout
        try:
            with trio.move_on_after(timeout):
                await pending.collected.wait()
            if pending.state is RequestState.QUEUED:
                q.remove(pending)
                pending.fail(CollectionTimeout(
                    f"{request.id}: no agent on {subscription_id} collected the request within "
                    f"{timeout:g} s; it was not run"))
            if response_timeout is None:
                await pending.done.wait()
            else:
                with trio.move_on_after(response_timeout):
                    await pending.done.wait()
                if not pending.done.is_set():
                    q.lost(pending, f"no response within {response_timeout:g} s")
        except trio.Cancelled:
            if pending.state is RequestState.QUEUED:
                q.remove(pending)
                pending.fail(RequestCancelled(f"{request.id}: cancelled before collection"))
            self._record("cancelled", started)
            raise
        if pending.error is not None:
            self._record("collection_timeout" if isinstance(pending.error, CollectionTimeout)
                         else "outcome_unknown", started)
            raise pending.error
        self._record("answered", started)
        return pending

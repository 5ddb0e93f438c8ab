"""One polling loop: connect to one server node, identify, serve its requests, reconnect.

Why every wait has a deadline: the real Tentacle once hung forever on a WebSocket that was never
closed. Here each read uses the exchange's own timeout (`awaiting.timeout`: 60 s for the first
byte of a request and for PROCEED, longer while a message is arriving), each write a send
timeout, the connect 60 s, the close a few seconds; a timeout ends the session and the loop
reconnects under `ReconnectPolicy`.

Per session: TCP → TLS (our client certificate) → WebSocket upgrade (`Octopus`) → server
thumbprint pinned (mismatch: close 1002 "Certificate thumbprint not recognised", an auth error)
→ text `MX` → `SubscriberExchange`: identity, then request → dispatch → response → NEXT → PROCEED
until the connection ends. Incoming DataStreams are spooled to disk chunk by chunk
(`stream_data=True`); outgoing ones are streamed from their files.

Stopping (`stop()`): a loop that is idle (waiting to connect, sleeping, or waiting for the first
byte of a request or for PROCEED) stops at once; one that is busy with a request finishes it,
sends END instead of NEXT, and closes the WebSocket with 1001.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import trio
from OpenSSL import SSL

from octopus_comms.halibut import exchange as ex
from octopus_comms.halibut.errors import EncodeError, HalibutError, ProtocolError
from octopus_comms.halibut.framing import (
    MAX_WRITE,
    NEED_DATA,
    ReaderLimits,
    data_stream_prefix,
    data_stream_suffix,
    encode_data_stream,
)
from octopus_comms.halibut.messages import RequestMessage, ResponseMessage
from octopus_comms.halibut.serializer import Serializer
from octopus_comms.wsstream import HalibutWebSocket, WebSocketClosed

from .agentlog import AgentLog
from .backoff import Failure, ReconnectPolicy, Wait, WaitKind
from .dispatch import Dispatcher, DispatchOutcome, invocation_error
from .services import Call, OutgoingFile, SpoolWriter, StreamSpool
from .wsclient import ClientConnection, ConnectError, PollingAddress, connect_websocket

__all__ = [
    "GOING_AWAY",
    "THUMBPRINT_CLOSE_CODE",
    "THUMBPRINT_REASON",
    "AuthError",
    "PollerSettings",
    "PollingLoop",
    "SessionFailed",
]

THUMBPRINT_CLOSE_CODE = 1002
THUMBPRINT_REASON = "Certificate thumbprint not recognised"
GOING_AWAY = 1001
STOPPING_REASON = "Tentacle is stopping"

Connect = Callable[..., Awaitable[ClientConnection]]
Sleep = Callable[[float], Awaitable[None]]


class AuthError(Exception):
    """The server's certificate is not the one this agent trusts."""


class SessionFailed(Exception):
    """The conversation broke in a way the exchange itself does not report."""


class _Stopping(Exception):
    """stop() interrupted an idle wait."""


@dataclass(frozen=True)
class PollerSettings:
    """Deadlines and limits of a polling loop (defaults: the real agent's)."""

    connect_timeout: float = 60.0
    handshake_timeout: float = 60.0
    send_timeout: float = 60.0
    dispatch_timeout: float = 900.0
    """A service call that takes longer is answered with an error (the loop must not hang)."""
    close_timeout: float = 5.0
    exchange: ex.ExchangeTimeouts = field(default_factory=ex.ExchangeTimeouts)
    limits: ReaderLimits = field(default_factory=ReaderLimits)
    legacy_type_names: bool = True
    """Write the older contracts under `Octopus.Shared.Contracts` names, as a real Tentacle does."""


def _message(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PollingLoop:
    """Polls one server address until `stop()` or cancellation."""

    def __init__(
        self,
        *,
        address: str,
        thumbprint: str,
        subscription_id: str,
        context: SSL.Context,
        dispatcher: Dispatcher,
        spool: StreamSpool,
        log: AgentLog,
        policy: ReconnectPolicy,
        settings: PollerSettings = PollerSettings(),
        name: str = "",
        connect: Connect = connect_websocket,
        sleep: Sleep = trio.sleep,
    ) -> None:
        self.address = PollingAddress.parse(address)
        self.thumbprint = thumbprint.strip().upper()
        self.subscription_id = subscription_id
        self.context = context
        self.dispatcher = dispatcher
        self.spool = spool
        self.log = log
        self.policy = policy
        self.settings = settings
        self.name = name or self.address.url
        self._connect = connect
        self._sleep = sleep
        self._serializer = Serializer(legacy_type_names=settings.legacy_type_names)
        self._stopping = False
        self._idle_scope: trio.CancelScope | None = None
        self._identified = False
        self.sessions = 0
        """Sessions in which the server identified itself (for tests and status)."""
        self.requests = 0

    # -- control ----------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Finish the request in hand (if any), then END and close with 1001; stop at once if
        idle."""
        self._stopping = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    @contextmanager
    def _interruptible(self) -> Iterator[None]:
        """A wait that stop() may interrupt (raises _Stopping when it does)."""
        if self._stopping:
            raise _Stopping()
        with trio.CancelScope() as scope:
            self._idle_scope = scope
            try:
                yield
            finally:
                self._idle_scope = None
        if scope.cancelled_caught:
            raise _Stopping()

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect, until stopped."""
        prefix = f"[{self.name}]"
        while not self._stopping:
            self.policy.attempt()
            self._identified = False
            wait: Wait | None = None
            try:
                outcome = await self._session()
            except _Stopping:
                break
            except ConnectError as exc:
                wait = self.policy.failed(Failure.CONNECT)
                self._log_failure(f"could not connect to {self.address.url}: {exc}", wait)
            except AuthError as exc:
                wait = self.policy.failed(Failure.AUTH)
                self._log_failure(str(exc), wait)
            except (HalibutError, WebSocketClosed, SessionFailed, trio.TooSlowError,
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                wait = self._after_error(f"the connection to {self.address.url} failed: {_message(exc)}")
            except Exception as exc:  # a bug: keep the agent alive, say so loudly
                self.log.error(f"{prefix} unexpected error: {_message(exc)}")
                wait = self._after_error("the session ended after an unexpected error")
            else:
                if self._stopping:
                    break
                wait = self.policy.session_ended()
                self.log.info(f"{prefix} {outcome}; reconnecting"
                              + (f" in {wait.seconds:g} s" if wait.seconds else ""))
            if self._stopping:
                break
            if wait is not None and wait.seconds > 0:
                try:
                    with self._interruptible():
                        await self._sleep(wait.seconds)
                except _Stopping:
                    break
        self.log.info(f"{prefix} polling stopped")

    def _after_error(self, text: str) -> Wait:
        if self._identified:
            wait = self.policy.session_ended()
            self.log.warning(f"[{self.name}] {text}; reconnecting"
                             + (f" in {wait.seconds:g} s" if wait.seconds else ""))
            return wait
        wait = self.policy.failed(Failure.AFTER_CONNECT)
        self._log_failure(text, wait)
        return wait

    def _log_failure(self, text: str, wait: Wait) -> None:
        if wait.kind is WaitKind.RETRY:
            total = self.policy.settings.attempts_per_round
            self.log.warning(f"[{self.name}] {text}; retrying in {wait.seconds:g} s "
                             f"(attempt {wait.attempt + 1} of {total})")
        else:
            self.log.warning(f"[{self.name}] {text}; trying again in {wait.seconds:.1f} s")

    # -- one session ------------------------------------------------------------------------

    async def _session(self) -> str:
        s = self.settings
        self.log.info(f"[{self.name}] connecting to {self.address.url}")
        with self._interruptible():
            conn = await self._connect(
                self.address, self.context,
                connect_timeout=s.connect_timeout, handshake_timeout=s.handshake_timeout,
            )
        ws = conn.ws
        close_code, close_reason = 1000, ""
        try:
            seen = (conn.server_thumbprint or "").upper()
            if seen != self.thumbprint:
                close_code, close_reason = THUMBPRINT_CLOSE_CODE, THUMBPRINT_REASON
                raise AuthError(
                    f"the server at {self.address.url} presented certificate thumbprint "
                    f"{seen or '(none)'} but this Tentacle trusts {self.thumbprint}; closed with "
                    f"{THUMBPRINT_CLOSE_CODE} \"{THUMBPRINT_REASON}\""
                )
            self.log.info(f"[{self.name}] connected (request id {conn.request_id}, "
                          f"{conn.tls.tls_version}, server thumbprint {seen})")
            with trio.fail_after(s.send_timeout):
                await ws.send_text("MX")
            exchange = ex.SubscriberExchange(
                serializer=self._serializer, limits=s.limits, timeouts=s.exchange, stream_data=True,
            )
            await self._send(ws, exchange.send(ex.Identified(self.subscription_id)))
            event = await self._next(exchange, ws)
            if not isinstance(event, ex.ServerIdentified):
                raise SessionFailed(
                    "the server closed the connection instead of identifying itself (is this "
                    "Tentacle's certificate trusted by the server?)" + self._close_detail(ws))
            self._identified = True
            self.sessions += 1
            self.policy.identified()
            self.log.info(f"[{self.name}] polling as {self.subscription_id}: the server identified itself")
            return await self._serve(exchange, ws)
        except _Stopping:
            close_code, close_reason = GOING_AWAY, STOPPING_REASON
            raise
        except ProtocolError:
            close_code = 1002
            raise
        finally:
            if self._stopping and close_code == 1000:
                close_code, close_reason = GOING_AWAY, STOPPING_REASON
            with trio.CancelScope(shield=True), trio.move_on_after(s.close_timeout):
                await ws.close(close_code, close_reason)

    @staticmethod
    def _close_detail(ws: HalibutWebSocket) -> str:
        closed = ws.closed
        if closed is None or closed.code is None:
            return ""
        return f" (WebSocket closed with {closed.code}{': ' + closed.reason if closed.reason else ''})"

    async def _serve(self, exchange: ex.SubscriberExchange, ws: HalibutWebSocket) -> str:
        """Requests until the connection ends; returns why it ended."""
        while True:
            event = await self._next(exchange, ws)
            if isinstance(event, ex.ConnectionClosed):
                return "the server closed the connection" + self._close_detail(ws)
            if not isinstance(event, ex.Request):
                raise SessionFailed(f"expected a request, got {type(event).__name__}")
            if event.request is not None:
                await self._handle(exchange, ws, event)
            if self._stopping:
                await self._send(ws, exchange.send(ex.End()))
                return "stopping"
            await self._send(ws, exchange.send(ex.Next()))
            event = await self._next(exchange, ws)
            if isinstance(event, ex.ConnectionClosed):
                return "the server closed the connection" + self._close_detail(ws)
            if not isinstance(event, ex.Proceed):
                raise SessionFailed(f"expected PROCEED, got {type(event).__name__}")

    async def _handle(self, exchange: ex.SubscriberExchange, ws: HalibutWebSocket, event: ex.Request) -> None:
        request = event.request
        assert request is not None
        call = Call()
        try:
            await self._receive_streams(exchange, ws, event, call)
            outcome = None
            with trio.move_on_after(self.settings.dispatch_timeout):
                outcome = await self.dispatcher.dispatch(request, call)
            if outcome is None:
                late = TimeoutError(f"the Tentacle did not finish {request.service}.{request.method} "
                                    f"within {self.settings.dispatch_timeout:g} s")
                outcome = DispatchOutcome(invocation_error(request, late), request.method,
                                          self.settings.dispatch_timeout)
            self.requests += 1
            error = outcome.response.error
            result = "OK" if error is None else "error: " + ((error.message or "").splitlines() or [""])[0]
            self.log.info(f"[{self.name}] request {outcome.operation} ({request.id}): {result} "
                          f"in {outcome.elapsed * 1000:.0f} ms")
            await self._send_response(exchange, ws, request, outcome.response, call)
        finally:
            call.cleanup()

    async def _receive_streams(self, exchange: ex.SubscriberExchange, ws: HalibutWebSocket,
                               event: ex.Request, call: Call) -> None:
        """Spool the request's DataStreams to disk as their chunks arrive."""
        writers: dict[uuid.UUID, SpoolWriter] = {}
        try:
            for stream in event.streams:
                writers[stream.id] = self.spool.open(stream)
            while exchange.state is ex.SubscriberState.AWAIT_REQUEST:
                item = await self._next(exchange, ws)
                if isinstance(item, ex.DataStreamChunk):
                    await writers[item.stream_id].write(item.data)
                elif isinstance(item, ex.DataStreamEnd):
                    call.received[item.stream_id] = await writers.pop(item.stream_id).finish()
                elif isinstance(item, ex.ConnectionClosed):
                    raise SessionFailed("the connection closed in the middle of a request")
                else:
                    raise SessionFailed(f"unexpected {type(item).__name__} inside a request")
        finally:
            for writer in writers.values():
                writer.discard()

    async def _send_response(self, exchange: ex.SubscriberExchange, ws: HalibutWebSocket,
                             request: RequestMessage, response: ResponseMessage, call: Call) -> None:
        try:
            writes, streams = exchange.send_head(ex.Response(response))
        except EncodeError as exc:  # a service returned something Halibut cannot carry
            self.log.error(f"[{self.name}] cannot encode the response to {request.id}: {exc}")
            writes, streams = exchange.send_head(ex.Response(invocation_error(request, exc)))
        await self._send(ws, writes)
        for stream in streams:
            outgoing = call.outgoing.get(stream.id)
            if outgoing is not None:
                await self._send_file(ws, outgoing)
            else:
                await self._send(ws, encode_data_stream(stream))

    async def _send_file(self, ws: HalibutWebSocket, outgoing: OutgoingFile) -> None:
        stream = outgoing.stream
        await self._send(ws, data_stream_prefix(stream))
        remaining = stream.length
        while remaining > 0:
            piece = await trio.to_thread.run_sync(outgoing.file.read, min(MAX_WRITE, remaining))
            if not piece:  # the file shrank after we announced its length: cannot continue
                raise SessionFailed(f"a file being downloaded got shorter ({remaining} bytes missing)")
            remaining -= len(piece)
            await self._send(ws, [piece])
        await self._send(ws, [data_stream_suffix(stream)])

    # -- bytes in, bytes out ----------------------------------------------------------------

    async def _send(self, ws: HalibutWebSocket, writes: list[bytes]) -> None:
        for data in writes:
            with trio.fail_after(self.settings.send_timeout):
                await ws.send_part(data)

    def _idle(self, exchange: ex.SubscriberExchange) -> bool:
        """Nothing is in flight: waiting for PROCEED, or for the first byte of a request."""
        if exchange.state is ex.SubscriberState.AWAIT_PROCEED:
            return True
        t = exchange.timeouts
        return (exchange.state is ex.SubscriberState.AWAIT_REQUEST
                and t.request_first_byte != t.message_progress
                and exchange.awaiting.timeout == t.request_first_byte)

    async def _next(self, exchange: ex.SubscriberExchange, ws: HalibutWebSocket) -> object:
        """The exchange's next event, reading within the timeout it names."""
        while True:
            event = exchange.next_event()
            if event is ex.PAUSED:
                raise SessionFailed(f"the exchange waits for us ({exchange.state.value})")
            if event is not NEED_DATA:
                return event
            timeout = exchange.awaiting.timeout
            deadline = trio.fail_after(timeout) if timeout is not None else nullcontext()
            if self._idle(exchange):
                with deadline, self._interruptible():
                    data = await ws.receive_some()
            else:
                with deadline:
                    data = await ws.receive_some()
            exchange.receive_data(data)


def monotonic_clock() -> float:
    """The clock ReconnectPolicy uses in production."""
    return time.monotonic()

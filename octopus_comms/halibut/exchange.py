"""The Halibut polling conversation as two sans-IO state machines, h11 style.

`ServerExchange` is the Octopus side, `SubscriberExchange` the polling agent; both start after the
WebSocket `MX` text message and neither knows about sockets, WebSockets or services. Verbs:
`receive_data(bytes)` (b"" = end of stream), `next_event()` → an event, NEED_DATA or PAUSED (the
caller must `send` next), and `send(event) -> list[bytes]` (the separate writes to make).

    agent (SubscriberExchange)              server (ServerExchange)
    send(Identified(sub)) ── MX-SUBSCRIBER ─▶ Identified(sub)
    ServerIdentified()   ◀── MX-SERVER ──── send(ServerIdentified())
    loop:
    Request(req | None)  ◀── message ─────── send(Request(req | None))   (None = keep-alive)
    send(Response(resp)) ─── message ──────▶ Response(resp)               (real requests only)
    send(Next()) / End() ─── NEXT / END ───▶ Next() / End()
    Proceed()            ◀── PROCEED ─────── send(Proceed())              (after NEXT only)

`send_head(Request|Response)` sends only the compressed message and leaves the DataStream blocks
to the caller (large files). `awaiting` says who must act next, on what, and the read timeout
that applies (data only: the shell owns the clocks). A peer's violation raises ProtocolError and
the machine stays failed; a caller's misuse raises LocalProtocolError and changes nothing.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .errors import FramingError, LocalProtocolError, ProtocolError
from .framing import (
    DEFAULT_MAX_LINE,
    END,
    MX_CLIENT,
    MX_SERVER,
    MX_SUBSCRIBER,
    NEED_DATA,
    NEXT,
    PROCEED,
    SERVER_IDENTITY,
    DataStreamChunk,
    DataStreamEnd,
    MessageDecoded,
    MessageReader,
    ReaderLimits,
    Sentinel,
    encode_data_stream,
    encode_message_head,
    subscriber_identity,
    take_control_line,
)
from .messages import DataStream, RequestMessage, ResponseMessage
from .serializer import DEFAULT_SERIALIZER, Serializer

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Awaiting",
    "ConnectionClosed",
    "DataStreamChunk",
    "DataStreamEnd",
    "End",
    "ExchangeTimeouts",
    "Identified",
    "Next",
    "Party",
    "Proceed",
    "Request",
    "Response",
    "ServerExchange",
    "ServerIdentified",
    "ServerState",
    "SubscriberExchange",
    "SubscriberState",
]

PAUSED: Final = Sentinel("PAUSED")
"""No event until the caller sends what `awaiting` asks for."""

_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+", re.ASCII)


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identified:
    """The subscriber's identity line: `MX-SUBSCRIBER 1.0 <subscription_id>`."""

    subscription_id: str


@dataclass(frozen=True)
class ServerIdentified:
    """The server's identity line: `MX-SERVER 1.0`."""


@dataclass(frozen=True)
class Request:
    """A request from the server, or None for a keep-alive. `streams` lists its DataStreams when
    received (with bytes in buffered mode); it is ignored when sending."""

    request: RequestMessage | None
    streams: tuple[DataStream, ...] = ()


@dataclass(frozen=True)
class Response:
    """The agent's response to the request in flight (same `id`)."""

    response: ResponseMessage
    streams: tuple[DataStream, ...] = ()


@dataclass(frozen=True)
class Next:
    """The agent is ready for another request."""


@dataclass(frozen=True)
class Proceed:
    """The server's answer to NEXT."""


@dataclass(frozen=True)
class End:
    """The agent ends the conversation (instead of NEXT)."""


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed the stream at a point where that is not a violation."""


Event = (
    Identified
    | ServerIdentified
    | Request
    | Response
    | Next
    | Proceed
    | End
    | ConnectionClosed
    | DataStreamChunk
    | DataStreamEnd
)


# -- what we wait for ---------------------------------------------------------------------------


class Party(enum.Enum):
    """Who has to act next."""

    PEER = "peer"
    CALLER = "caller"
    NOBODY = "nobody"


@dataclass(frozen=True)
class Awaiting:
    """Who acts next, on what, and the read timeout (seconds, None = no limit) for the next bytes
    while the peer is expected to send."""

    party: Party
    what: str
    timeout: float | None


@dataclass(frozen=True)
class ExchangeTimeouts:
    """Read timeouts the shell applies to each wait (spec §2: the agent allows 60 s for the first
    byte of a request and for PROCEED). `message_progress` applies between bytes of a message
    once it has started, `response_first_byte` while a request is being processed."""

    identity: float = 60.0
    request_first_byte: float = 60.0
    proceed: float = 60.0
    response_first_byte: float | None = 600.0
    next_or_end: float = 60.0
    message_progress: float = 600.0


class ServerState(enum.Enum):
    """Where a ServerExchange is."""

    AWAIT_IDENTITY = "waiting for the subscriber's identity"
    SEND_IDENTITY = "must send ServerIdentified"
    IDLE = "must send a Request or a null keep-alive"
    AWAIT_RESPONSE = "waiting for the response"
    AWAIT_NEXT_OR_END = "waiting for NEXT or END"
    SEND_PROCEED = "must send Proceed"
    CLOSED = "closed"
    ERROR = "failed"


class SubscriberState(enum.Enum):
    """Where a SubscriberExchange is."""

    SEND_IDENTITY = "must send Identified"
    AWAIT_SERVER_IDENTITY = "waiting for the server's identity"
    AWAIT_REQUEST = "waiting for a request"
    SEND_RESPONSE = "must send the Response"
    SEND_NEXT = "must send Next or End"
    AWAIT_PROCEED = "waiting for PROCEED"
    CLOSED = "closed"
    ERROR = "failed"


# -- shared machinery ---------------------------------------------------------------------------


class _Exchange:
    """Buffering, control lines, the message reader and failure handling for both ends."""

    _CALLER_STATES: frozenset[enum.Enum] = frozenset()
    _CLOSED: enum.Enum
    _ERROR: enum.Enum

    def __init__(
        self,
        *,
        serializer: Serializer,
        limits: ReaderLimits,
        timeouts: ExchangeTimeouts,
        stream_data: bool,
        max_line: int,
    ) -> None:
        self.serializer = serializer
        self.limits = limits
        self.timeouts = timeouts
        self.stream_data = stream_data
        self.max_line = max_line
        self._buffer = bytearray()
        self._eof = False
        self._reader: MessageReader | None = None
        self._failure: ProtocolError | None = None
        self._identity_line: str | None = None
        self._state: enum.Enum

    # -- public verbs ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the transport, in order; b"" when the peer closed the stream."""
        if self._state in (self._CLOSED, self._ERROR):
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("data received after the end of the stream")
        if self._reader is not None:
            self._reader.receive_data(data)
        else:
            self._buffer += data

    def next_event(self) -> Event | Sentinel:
        """The next event, NEED_DATA (read more, within `awaiting.timeout`) or PAUSED."""
        if self._failure is not None:
            raise ProtocolError(f"the exchange already failed: {self._failure}")
        try:
            return self._next_event()
        except ProtocolError as exc:
            self._failure = exc
            self._state = self._ERROR
            self._reader = None
            raise

    @property
    def closed(self) -> bool:
        """True once the conversation is over (END, end of stream, or failure)."""
        return self._state in (self._CLOSED, self._ERROR)

    # -- helpers for subclasses --------------------------------------------------------------

    def _next_event(self) -> Event | Sentinel:
        raise NotImplementedError

    def _require(self, event: object, *states: enum.Enum) -> None:
        if self._state not in states:
            raise LocalProtocolError(
                f"cannot send {type(event).__name__} now: the exchange is {self._state.value}"
            )

    def _caller_turn(self) -> Event | Sentinel:
        if self._buffer:
            raise ProtocolError(
                f"the peer sent {len(self._buffer)} bytes out of turn "
                f"(the exchange {self._state.value})"
            )
        if self._eof:
            self._state = self._CLOSED
            return ConnectionClosed()
        return PAUSED

    def _line(self) -> str | None:
        return take_control_line(self._buffer, max_length=self.max_line)

    def _non_empty_line(self) -> str | None:
        while True:
            line = self._line()
            if line != "":
                return line

    def _peer_silent(self, what: str) -> ConnectionClosed | Sentinel:
        """No complete unit yet: NEED_DATA, or at end of stream a clean close or a violation."""
        if not self._eof:
            return NEED_DATA
        if self._buffer or (self._reader is not None and self._reader.started):
            raise FramingError(f"the connection closed in the middle of {what}")
        self._state = self._CLOSED
        self._reader = None
        return ConnectionClosed()

    def _identity(self, check: Callable[[list[str]], None]) -> list[str] | None:
        """An identity line followed by an empty line, split into words; None if incomplete.
        `check` vets the words as soon as the identity line is complete."""
        if self._identity_line is None:
            line = self._line()
            if line is None:
                return None
            if not line.split():
                raise ProtocolError(
                    "Unable to receive the remote identity; the identity line was empty."
                )
            check(line.split())
            self._identity_line = line
        blank = self._line()
        if blank is None:
            return None
        if blank:
            raise ProtocolError(
                "Unable to receive the remote identity; the following line was not empty."
            )
        words = self._identity_line.split()
        self._identity_line = None
        return words

    def _start_reader(self, expected: type) -> None:
        reader = MessageReader(
            expected=expected,
            serializer=self.serializer,
            limits=self.limits,
            stream_data=self.stream_data,
        )
        reader.receive_data(self._buffer)
        self._buffer.clear()
        self._reader = reader

    def _finish_reader(self) -> None:
        assert self._reader is not None
        self._buffer += self._reader.take_unused()
        self._reader = None

    def _read_timeout(self, first_byte: float | None) -> float | None:
        started = self._buffer or (self._reader is not None and self._reader.started)
        return self.timeouts.message_progress if started else first_byte


# -- the server ---------------------------------------------------------------------------------


def _check_subscriber_identity(words: list[str]) -> None:
    kind = words[0]
    if kind == MX_CLIENT:
        raise ProtocolError("a listening client identified itself; only subscribers poll here")
    if kind != MX_SUBSCRIBER:
        raise ProtocolError(f"unknown identity type {kind[:40]!r}, expected {MX_SUBSCRIBER}")
    if len(words) < 3:
        raise ProtocolError(
            "Unable to receive the remote identity; the client identified as a subscriber, "
            "but did not supply a subscription ID."
        )
    if not _URI.fullmatch(words[2]):
        raise ProtocolError(f"subscription id {words[2][:100]!r} is not a URI")


class ServerExchange(_Exchange):
    """The Octopus Server's side of one polling connection."""

    _CALLER_STATES = frozenset(
        {ServerState.SEND_IDENTITY, ServerState.IDLE, ServerState.SEND_PROCEED}
    )
    _CLOSED = ServerState.CLOSED
    _ERROR = ServerState.ERROR

    def __init__(
        self,
        *,
        serializer: Serializer = DEFAULT_SERIALIZER,
        limits: ReaderLimits = ReaderLimits(),
        timeouts: ExchangeTimeouts = ExchangeTimeouts(),
        stream_data: bool = False,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        super().__init__(
            serializer=serializer,
            limits=limits,
            timeouts=timeouts,
            stream_data=stream_data,
            max_line=max_line,
        )
        self._state = ServerState.AWAIT_IDENTITY
        self.subscription_id: str | None = None
        self.in_flight: RequestMessage | None = None
        """The request sent and not yet answered (fail it if the exchange breaks)."""

    @property
    def state(self) -> ServerState:
        """The current state."""
        assert isinstance(self._state, ServerState)
        return self._state

    @property
    def awaiting(self) -> Awaiting:
        """Who acts next, on what, within which read timeout."""
        state, t = self.state, self.timeouts
        if state is ServerState.AWAIT_IDENTITY:
            return Awaiting(Party.PEER, state.value, t.identity)
        if state is ServerState.AWAIT_RESPONSE:
            return Awaiting(Party.PEER, state.value, self._read_timeout(t.response_first_byte))
        if state is ServerState.AWAIT_NEXT_OR_END:
            return Awaiting(Party.PEER, state.value, t.next_or_end)
        if state in self._CALLER_STATES:
            return Awaiting(Party.CALLER, state.value, None)
        return Awaiting(Party.NOBODY, state.value, None)

    def send(self, event: ServerIdentified | Request | Proceed) -> list[bytes]:
        """The writes for `event`; LocalProtocolError if it is not the caller's turn for it.
        DataStreams in a request must carry their `data` (else see `send_head`)."""
        if isinstance(event, Request):
            head, streams = self._encode_request(event)
            blocks = [write for stream in streams for write in encode_data_stream(stream)]
            self._request_sent(event.request)
            return head + blocks
        if isinstance(event, ServerIdentified):
            self._require(event, ServerState.SEND_IDENTITY)
            self._state = ServerState.IDLE
            return [SERVER_IDENTITY]
        if isinstance(event, Proceed):
            self._require(event, ServerState.SEND_PROCEED)
            self._state = ServerState.IDLE
            return [PROCEED]
        raise LocalProtocolError(f"the server never sends {type(event).__name__}")

    def send_head(self, event: Request) -> tuple[list[bytes], list[DataStream]]:
        """Send a request but only its compressed message: the caller must then write, for each
        returned DataStream in order, `data_stream_prefix(s)`, exactly `s.length` body bytes and
        `data_stream_suffix(s)` (framing), e.g. streaming them from a file."""
        writes, streams = self._encode_request(event)
        self._request_sent(event.request)
        return writes, streams

    def _encode_request(self, event: Request) -> tuple[list[bytes], list[DataStream]]:
        self._require(event, ServerState.IDLE)
        request = event.request
        if request is not None and not isinstance(request, RequestMessage):
            raise LocalProtocolError(f"not a RequestMessage: {type(request).__name__}")
        return encode_message_head(request, serializer=self.serializer)

    def _request_sent(self, request: RequestMessage | None) -> None:
        if request is None:
            self._state = ServerState.AWAIT_NEXT_OR_END
        else:
            self.in_flight = request
            self._state = ServerState.AWAIT_RESPONSE
            self._start_reader(ResponseMessage)

    def _next_event(self) -> Event | Sentinel:
        state = self.state
        if state is ServerState.AWAIT_IDENTITY:
            return self._read_identity()
        if state is ServerState.AWAIT_RESPONSE:
            return self._read_response()
        if state is ServerState.AWAIT_NEXT_OR_END:
            line = self._non_empty_line()
            if line is None:
                return self._peer_silent("a control line")
            if line == "NEXT":
                self._state = ServerState.SEND_PROCEED
                return Next()
            if line == "END":
                self._state = ServerState.CLOSED
                return End()
            raise ProtocolError(f"Expected NEXT or END, got: {line[:100]!r}")
        if state in self._CALLER_STATES:
            return self._caller_turn()
        return ConnectionClosed()

    def _read_identity(self) -> Event | Sentinel:
        words = self._identity(_check_subscriber_identity)
        if words is None:
            return self._peer_silent("the identity")
        subscription_id = words[2]
        self.subscription_id = subscription_id
        self._state = ServerState.SEND_IDENTITY
        return Identified(subscription_id)

    def _read_response(self) -> Event | Sentinel:
        reader = self._reader
        assert reader is not None
        event = reader.next_event()
        if event is NEED_DATA:
            return self._peer_silent("the response")
        if isinstance(event, MessageDecoded):
            response = event.message
            if not isinstance(response, ResponseMessage):
                raise ProtocolError("expected a ResponseMessage, got a null message")
            assert self.in_flight is not None
            if response.id != self.in_flight.id:
                raise ProtocolError(
                    f"response id {response.id[:200]!r} does not match request "
                    f"{self.in_flight.id[:200]!r}"
                )
            if reader.done:
                self._response_complete()
            return Response(response, event.streams)
        if isinstance(event, DataStreamEnd) and event.message_complete:
            self._response_complete()
        assert isinstance(event, (DataStreamChunk, DataStreamEnd))
        return event

    def _response_complete(self) -> None:
        self._finish_reader()
        self.in_flight = None
        self._state = ServerState.AWAIT_NEXT_OR_END


# -- the polling agent --------------------------------------------------------------------------


def _check_server_identity(words: list[str]) -> None:
    if words[0] != MX_SERVER:
        raise ProtocolError(
            "Expected the remote endpoint to identify as a server. "
            f"Instead, it identified as: {words[0][:40]!r}"
        )


class SubscriberExchange(_Exchange):
    """The polling agent's side of one connection."""

    _CALLER_STATES = frozenset(
        {SubscriberState.SEND_IDENTITY, SubscriberState.SEND_RESPONSE, SubscriberState.SEND_NEXT}
    )
    _CLOSED = SubscriberState.CLOSED
    _ERROR = SubscriberState.ERROR

    def __init__(
        self,
        *,
        serializer: Serializer = DEFAULT_SERIALIZER,
        limits: ReaderLimits = ReaderLimits(),
        timeouts: ExchangeTimeouts = ExchangeTimeouts(),
        stream_data: bool = False,
        max_line: int = DEFAULT_MAX_LINE,
    ) -> None:
        super().__init__(
            serializer=serializer,
            limits=limits,
            timeouts=timeouts,
            stream_data=stream_data,
            max_line=max_line,
        )
        self._state = SubscriberState.SEND_IDENTITY
        self.in_flight: RequestMessage | None = None
        """The request received and not yet answered."""

    @property
    def state(self) -> SubscriberState:
        """The current state."""
        assert isinstance(self._state, SubscriberState)
        return self._state

    @property
    def awaiting(self) -> Awaiting:
        """Who acts next, on what, within which read timeout."""
        state, t = self.state, self.timeouts
        if state is SubscriberState.AWAIT_SERVER_IDENTITY:
            return Awaiting(Party.PEER, state.value, t.identity)
        if state is SubscriberState.AWAIT_REQUEST:
            return Awaiting(Party.PEER, state.value, self._read_timeout(t.request_first_byte))
        if state is SubscriberState.AWAIT_PROCEED:
            return Awaiting(Party.PEER, state.value, t.proceed)
        if state in self._CALLER_STATES:
            return Awaiting(Party.CALLER, state.value, None)
        return Awaiting(Party.NOBODY, state.value, None)

    def send(self, event: Identified | Response | Next | End) -> list[bytes]:
        """The writes for `event`; LocalProtocolError if it is not the caller's turn for it.
        DataStreams in a response must carry their `data` (else see `send_head`)."""
        if isinstance(event, Response):
            head, streams = self._encode_response(event)
            blocks = [write for stream in streams for write in encode_data_stream(stream)]
            self._response_sent()
            return head + blocks
        if isinstance(event, Identified):
            self._require(event, SubscriberState.SEND_IDENTITY)
            writes = [subscriber_identity(event.subscription_id)]
            self._state = SubscriberState.AWAIT_SERVER_IDENTITY
            return writes
        if isinstance(event, Next):
            self._require(event, SubscriberState.SEND_NEXT)
            self._state = SubscriberState.AWAIT_PROCEED
            return [NEXT]
        if isinstance(event, End):
            self._require(event, SubscriberState.SEND_NEXT)
            self._state = SubscriberState.CLOSED
            return [END]
        raise LocalProtocolError(f"the subscriber never sends {type(event).__name__}")

    def send_head(self, event: Response) -> tuple[list[bytes], list[DataStream]]:
        """Send a response but only its compressed message; the caller writes each returned
        DataStream block itself (see `ServerExchange.send_head`)."""
        writes, streams = self._encode_response(event)
        self._response_sent()
        return writes, streams

    def _encode_response(self, event: Response) -> tuple[list[bytes], list[DataStream]]:
        self._require(event, SubscriberState.SEND_RESPONSE)
        response = event.response
        if not isinstance(response, ResponseMessage):
            raise LocalProtocolError(f"not a ResponseMessage: {type(response).__name__}")
        assert self.in_flight is not None
        if response.id != self.in_flight.id:
            raise LocalProtocolError(
                f"response id {response.id!r} does not match request {self.in_flight.id!r}"
            )
        return encode_message_head(response, serializer=self.serializer)

    def _response_sent(self) -> None:
        self.in_flight = None
        self._state = SubscriberState.SEND_NEXT

    def _next_event(self) -> Event | Sentinel:
        state = self.state
        if state is SubscriberState.AWAIT_SERVER_IDENTITY:
            if self._identity(_check_server_identity) is None:
                return self._peer_silent("the server identity")
            self._state = SubscriberState.AWAIT_REQUEST
            self._start_reader(RequestMessage)
            return ServerIdentified()
        if state is SubscriberState.AWAIT_REQUEST:
            return self._read_request()
        if state is SubscriberState.AWAIT_PROCEED:
            line = self._non_empty_line()
            if line is None:
                return self._peer_silent("a control line")
            if line != "PROCEED":
                raise ProtocolError(f"Expected PROCEED, got: {line[:100]!r}")
            self._state = SubscriberState.AWAIT_REQUEST
            self._start_reader(RequestMessage)
            return Proceed()
        if state in self._CALLER_STATES:
            return self._caller_turn()
        return ConnectionClosed()

    def _read_request(self) -> Event | Sentinel:
        reader = self._reader
        assert reader is not None
        event = reader.next_event()
        if event is NEED_DATA:
            return self._peer_silent("a request")
        if isinstance(event, MessageDecoded):
            request = event.message
            if request is None:
                self._finish_reader()
                self._state = SubscriberState.SEND_NEXT
                return Request(None)
            assert isinstance(request, RequestMessage)
            self.in_flight = request
            if reader.done:
                self._request_complete()
            return Request(request, event.streams)
        if isinstance(event, DataStreamEnd) and event.message_complete:
            self._request_complete()
        assert isinstance(event, (DataStreamChunk, DataStreamEnd))
        return event

    def _request_complete(self) -> None:
        self._finish_reader()
        self._state = SubscriberState.SEND_RESPONSE

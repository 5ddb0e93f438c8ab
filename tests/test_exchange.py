"""The polling conversation: a ServerExchange and a SubscriberExchange talking in memory, any
split of the bytes, timeouts as data, and every violation either side can commit."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octopus_comms.halibut import framing
from octopus_comms.halibut.contracts import (
    CapabilitiesResponseV2,
    ScriptFile,
    StartScriptCommandV2,
    UploadResult,
)
from octopus_comms.halibut.errors import EncodeError, LocalProtocolError, ProtocolError
from octopus_comms.halibut.exchange import (
    NEED_DATA,
    PAUSED,
    Awaiting,
    ConnectionClosed,
    DataStreamChunk,
    DataStreamEnd,
    End,
    Identified,
    Next,
    Party,
    Proceed,
    Request,
    Response,
    ServerExchange,
    ServerIdentified,
    ServerState,
    SubscriberExchange,
    SubscriberState,
)
from octopus_comms.halibut.messages import DataStream, RequestMessage, ResponseMessage

SUB = "poll://abcdefghijklmnopqrst/"
ID_A = uuid.UUID(int=0xA)
ID_B = uuid.UUID(int=0xB)


def capabilities_request() -> RequestMessage:
    return RequestMessage(id="ICapabilitiesServiceV2::GetCapabilities[1] / 1",
                          service="ICapabilitiesServiceV2", method="GetCapabilities")  # fmt: skip


def upload_request() -> RequestMessage:
    return RequestMessage(
        id="IFileTransferService::UploadFile[2] / 2",
        service="IFileTransferService",
        method="UploadFile",
        params=["/tmp/x", DataStream.from_bytes(b"file body" * 50, id=ID_A)],
    )


def script_request() -> RequestMessage:
    files = [
        ScriptFile(name="a", contents=DataStream.from_bytes(b"aaa", id=ID_B)),
        ScriptFile(name="b", contents=DataStream.from_bytes(b"", id=uuid.UUID(int=0xC))),
    ]
    return RequestMessage(id="IScriptServiceV2::StartScript[3] / 3", service="IScriptServiceV2",
                          method="StartScript", params=[StartScriptCommandV2(files=files)])  # fmt: skip


def download_request() -> RequestMessage:
    return RequestMessage(id="IFileTransferService::DownloadFile[4] / 4",
                          service="IFileTransferService", method="DownloadFile", params=["/tmp/x"])  # fmt: skip


def respond(request: RequestMessage) -> ResponseMessage:
    if request.method == "GetCapabilities":
        result: Any = CapabilitiesResponseV2(supported_capabilities=["IScriptService", "IScriptServiceV2"])
    elif request.method == "UploadFile":
        result = UploadResult(full_path="/tmp/x", hash="0" * 40, length=450)
    elif request.method == "DownloadFile":
        result = DataStream.from_bytes(b"downloaded", id=uuid.UUID(int=0xD))
    else:
        return ResponseMessage.from_error(request, "no such script", details="trace")
    return ResponseMessage.from_result(request, result)


# -- drivers: a tiny shell around each exchange, with a fixed policy for its sends -------------


class Driver:
    """Feeds chunks when the exchange needs data and sends what its policy says when paused."""

    def __init__(self, exchange: Any, policy: Callable[[Any], Any]) -> None:
        self.exchange = exchange
        self.policy = policy
        self.events: list[Any] = []
        self.writes: list[bytes] = []
        self.received: list[bytes] = []

    def run(self, chunks: list[bytes]) -> None:
        pending = deque(chunks)
        while not self.exchange.closed:
            event = self.exchange.next_event()
            if event is NEED_DATA:
                if not pending:
                    return
                chunk = pending.popleft()
                self.received.append(chunk)
                self.exchange.receive_data(chunk)
            elif event is PAUSED:
                to_send = self.policy(self.exchange)
                if to_send is None:
                    return
                self.writes += self.exchange.send(to_send)
            else:
                self.events.append(event)


def server_policy(requests: list[RequestMessage | None]) -> Callable[[ServerExchange], Any]:
    queue = deque(requests)

    def policy(server: ServerExchange) -> Any:
        if server.state is ServerState.SEND_IDENTITY:
            return ServerIdentified()
        if server.state is ServerState.SEND_PROCEED:
            return Proceed()
        return Request(queue.popleft()) if queue else None

    return policy


def agent_policy(polls: int) -> Callable[[SubscriberExchange], Any]:
    answered = {"count": 0}

    def policy(agent: SubscriberExchange) -> Any:
        if agent.state is SubscriberState.SEND_IDENTITY:
            return Identified(SUB)
        if agent.state is SubscriberState.SEND_RESPONSE:
            assert agent.in_flight is not None
            return Response(respond(agent.in_flight))
        answered["count"] += 1
        return End() if answered["count"] >= polls else Next()

    return policy


REQUESTS: list[RequestMessage | None] = [
    None, capabilities_request(), upload_request(), None, script_request(), download_request(),
]  # fmt: skip


def converse(
    requests: list[RequestMessage | None], *, agent_streams: bool = False
) -> tuple[Driver, Driver]:
    """Run both ends against each other until neither has anything to say."""
    server = Driver(ServerExchange(), server_policy(requests))
    agent = Driver(SubscriberExchange(stream_data=agent_streams), agent_policy(len(requests)))
    to_server = to_agent = 0
    agent.run([])
    while True:
        server_in = b"".join(agent.writes[to_server:])
        to_server = len(agent.writes)
        server.run([server_in] if server_in else [])
        agent_in = b"".join(server.writes[to_agent:])
        to_agent = len(server.writes)
        if not server_in and not agent_in:
            return server, agent
        agent.run([agent_in] if agent_in else [])


def coalesce(events: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for event in events:
        if isinstance(event, DataStreamChunk) and merged and isinstance(merged[-1], DataStreamChunk):
            merged[-1] = DataStreamChunk(event.stream_id, merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def one_at_a_time(chunks: list[bytes]) -> list[bytes]:
    return [chunk[i : i + 1] for chunk in chunks for i in range(len(chunk))]


# -- the conversation ---------------------------------------------------------------------------


def test_full_conversation() -> None:
    server, agent = converse(REQUESTS)
    requests = [e for e in agent.events if isinstance(e, Request)]
    assert [r.request for r in requests] == REQUESTS
    upload = requests[2]
    assert [(s.id, s.data) for s in upload.streams] == [(ID_A, b"file body" * 50)]
    assert upload.request is not None
    assert upload.request.params[1].data == b"file body" * 50
    script = requests[4]
    assert [s.data for s in script.streams] == [b"aaa", b""]
    responses = [e for e in server.events if isinstance(e, Response)]
    real = [r for r in REQUESTS if r is not None]
    assert [r.response for r in responses] == [respond(r) for r in real]
    assert responses[3].streams[0].data == b"downloaded"
    error = responses[2].response.error
    assert error is not None and error.message == "no such script"
    assert [type(e) for e in server.events] == [
        Identified, Next, Response, Next, Response, Next, Next, Response, Next, Response, End,
    ]  # fmt: skip
    assert server.events[0] == Identified(SUB) and server.exchange.subscription_id == SUB
    assert [type(e) for e in agent.events].count(Proceed) == len(REQUESTS) - 1
    assert server.exchange.closed and agent.exchange.closed
    assert server.exchange.state is ServerState.CLOSED
    assert agent.writes[0] == framing.subscriber_identity(SUB)
    assert server.writes[0] == framing.SERVER_IDENTITY
    assert agent.writes[-1] == framing.END
    assert framing.NEXT in agent.writes and framing.PROCEED in server.writes


def test_agent_streaming_mode() -> None:
    _, agent = converse([upload_request()], agent_streams=True)
    kinds = [type(e) for e in coalesce(agent.events)]
    assert kinds == [ServerIdentified, Request, DataStreamChunk, DataStreamEnd]
    request = agent.events[1]
    assert request.streams[0].data is None
    assert coalesce(agent.events)[2] == DataStreamChunk(ID_A, b"file body" * 50)
    assert agent.events[-1] == DataStreamEnd(ID_A, message_complete=True)


@pytest.mark.parametrize("agent_streams", [False, True])
def test_byte_at_a_time_equals_one_shot(agent_streams: bool) -> None:
    server, agent = converse(REQUESTS, agent_streams=agent_streams)
    for original, make in (
        (server, lambda: Driver(ServerExchange(), server_policy(REQUESTS))),
        (agent, lambda: Driver(SubscriberExchange(stream_data=agent_streams), agent_policy(len(REQUESTS)))),
    ):
        replay = make()
        replay.run(one_at_a_time(original.received))
        assert coalesce(replay.events) == coalesce(original.events)
        assert replay.writes == original.writes


@given(st.data())
def test_any_split_equals_one_shot(data: Any) -> None:
    server, agent = converse(REQUESTS)
    for original, make in (
        (server, lambda: Driver(ServerExchange(), server_policy(REQUESTS))),
        (agent, lambda: Driver(SubscriberExchange(), agent_policy(len(REQUESTS)))),
    ):
        pieces: list[bytes] = []
        for chunk in original.received:
            cuts = sorted(data.draw(st.lists(st.integers(0, len(chunk)), max_size=3)))
            pieces += [chunk[a:b] for a, b in zip([0, *cuts], [*cuts, len(chunk)]) if b > a]
        replay = make()
        replay.run(pieces)
        assert replay.events == original.events
        assert replay.writes == original.writes


# -- waiting, as data ---------------------------------------------------------------------------


def test_awaiting_tells_who_and_which_timeout() -> None:
    server, agent = ServerExchange(), SubscriberExchange()
    assert agent.awaiting == Awaiting(Party.CALLER, SubscriberState.SEND_IDENTITY.value, None)
    assert server.awaiting == Awaiting(Party.PEER, ServerState.AWAIT_IDENTITY.value, 60.0)
    server.receive_data(agent.send(Identified(SUB))[0])
    assert server.next_event() == Identified(SUB)
    assert server.next_event() is PAUSED
    assert server.awaiting.party is Party.CALLER
    assert agent.awaiting == Awaiting(Party.PEER, SubscriberState.AWAIT_SERVER_IDENTITY.value, 60.0)
    agent.receive_data(server.send(ServerIdentified())[0])
    assert agent.next_event() == ServerIdentified()
    assert agent.next_event() is NEED_DATA
    assert agent.awaiting == Awaiting(Party.PEER, SubscriberState.AWAIT_REQUEST.value, 60.0)
    writes = server.send(Request(capabilities_request()))
    assert server.awaiting.timeout == 600.0 and server.in_flight == capabilities_request()
    agent.receive_data(writes[0][:3])
    assert agent.next_event() is NEED_DATA
    assert agent.awaiting.timeout == 600.0  # a message has started: progress timeout
    agent.receive_data(writes[0][3:])
    assert isinstance(agent.next_event(), Request)
    assert agent.awaiting.party is Party.CALLER
    for write in agent.send(Response(respond(capabilities_request()))):
        server.receive_data(write)
    assert isinstance(server.next_event(), Response)
    assert server.in_flight is None
    assert server.awaiting == Awaiting(Party.PEER, ServerState.AWAIT_NEXT_OR_END.value, 60.0)
    server.receive_data(agent.send(Next())[0])
    assert agent.awaiting == Awaiting(Party.PEER, SubscriberState.AWAIT_PROCEED.value, 60.0)
    assert server.next_event() == Next()
    agent.receive_data(server.send(Proceed())[0])
    assert agent.next_event() == Proceed()
    assert agent.awaiting.timeout == 60.0


# -- violations by the peer ---------------------------------------------------------------------


def identified_server() -> ServerExchange:
    server = ServerExchange()
    server.receive_data(framing.subscriber_identity(SUB))
    assert server.next_event() == Identified(SUB)
    server.send(ServerIdentified())
    return server


def waiting_agent() -> SubscriberExchange:
    agent = SubscriberExchange()
    agent.send(Identified(SUB))
    agent.receive_data(framing.SERVER_IDENTITY)
    assert agent.next_event() == ServerIdentified()
    return agent


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\r\n", "identity line was empty"),
        (b"   \r\n", "identity line was empty"),
        (b"MX-CLIENT 1.0\r\n\r\n", "listening client"),
        (b"MX-SUBSCRIBER 1.0\r\n\r\n", "subscription ID"),
        (b"MX-SUBSCRIBER 1.0 poll://x/\r\nmore\r\n", "following line was not empty"),
        (b"MX-SUBSCRIBER 1.0 not-a-uri\r\n\r\n", "not a URI"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", "unknown identity"),
        (b"MX-SUBSCRIBER 1.0 poll://x/\r\n\r\nextra", "out of turn"),
        (b"A" * 5000, "longer than"),
    ],
)
def test_server_rejects_bad_identities(data: bytes, error: str) -> None:
    server = ServerExchange()
    server.receive_data(data)
    with pytest.raises(ProtocolError, match=error):
        while server.next_event() is not NEED_DATA:
            pass
    with pytest.raises(ProtocolError, match="already failed"):
        server.next_event()
    assert server.state is ServerState.ERROR and server.closed
    with pytest.raises(LocalProtocolError):
        server.send(ServerIdentified())


def _response_writes(response: Any) -> bytes:
    return b"".join(framing.encode_message(response))


@pytest.mark.parametrize(
    ("incoming", "error"),
    [
        (lambda req: _response_writes(None), "null message"),
        (lambda req: _response_writes(ResponseMessage(id="other")), "does not match"),
        (lambda req: _response_writes(req), "expected a ResponseMessage"),  # type: ignore[arg-type]
        (lambda req: b"NEXT\r\n", "DEFLATE"),
        (lambda req: _response_writes(ResponseMessage(id=req.id)) + b"PROCEED\r\n", "Expected NEXT or END"),
        (lambda req: _response_writes(ResponseMessage(id=req.id)) + b"NEXT\r\nX", "out of turn"),
    ],
)
def test_server_rejects_bad_responses(incoming: Callable[[RequestMessage], bytes], error: str) -> None:
    server = identified_server()
    request = capabilities_request()
    server.send(Request(request))
    server.receive_data(incoming(request))
    with pytest.raises(ProtocolError, match=error):
        while server.next_event() is not NEED_DATA:
            pass


@pytest.mark.parametrize(
    ("incoming", "error"),
    [
        (b"MX-CLIENT 1.0\r\n\r\n", "identify as a server"),
        (b"\r\n\r\n", "identity line was empty"),
        (b"MX-SERVER 1.0\r\nX\r\n", "not empty"),
    ],
)
def test_agent_rejects_bad_server_identities(incoming: bytes, error: str) -> None:
    agent = SubscriberExchange()
    agent.send(Identified(SUB))
    agent.receive_data(incoming)
    with pytest.raises(ProtocolError, match=error):
        agent.next_event()


@pytest.mark.parametrize(
    ("incoming", "error"),
    [
        (_response_writes(ResponseMessage(id="x")), "expected a RequestMessage"),
        (b"PROCEED\r\n", "DEFLATE"),
        (_response_writes(None) + b"PROCEED\r\n", "out of turn"),
    ],
)
def test_agent_rejects_bad_requests(incoming: bytes, error: str) -> None:
    agent = waiting_agent()
    agent.receive_data(incoming)
    with pytest.raises(ProtocolError, match=error):
        while agent.next_event() is not NEED_DATA:
            pass


def test_agent_rejects_anything_but_proceed() -> None:
    agent = waiting_agent()
    agent.receive_data(_response_writes(None))
    assert agent.next_event() == Request(None)
    agent.send(Next())
    agent.receive_data(b"\r\n\r\nNEXT\r\n")
    with pytest.raises(ProtocolError, match="Expected PROCEED"):
        agent.next_event()


def test_empty_lines_before_control_lines_are_skipped() -> None:
    server = identified_server()
    server.send(Request(None))
    server.receive_data(b"\r\n\r\nNEXT\r\n")
    assert server.next_event() == Next()
    server.send(Proceed())
    server.send(Request(None))
    server.receive_data(b"\r\nEND\r\n")
    assert server.next_event() == End()
    assert server.closed and server.next_event() == ConnectionClosed()


# -- end of stream ------------------------------------------------------------------------------


def test_end_of_stream_at_clean_points_is_connection_closed() -> None:
    server = identified_server()
    server.send(Request(capabilities_request()))
    server.receive_data(b"")
    assert server.next_event() == ConnectionClosed()
    assert server.in_flight == capabilities_request()  # the shell fails it
    agent = waiting_agent()
    agent.receive_data(b"")
    assert agent.next_event() == ConnectionClosed()
    fresh = ServerExchange()
    fresh.receive_data(b"")
    assert fresh.next_event() == ConnectionClosed()
    next_or_end = identified_server()
    next_or_end.send(Request(None))
    next_or_end.receive_data(b"")
    assert next_or_end.next_event() == ConnectionClosed()
    paused = identified_server()
    paused.receive_data(b"")
    assert paused.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        paused.send(Request(None))


@pytest.mark.parametrize("cut", [1, 10, -1])
def test_end_of_stream_mid_message_is_a_violation(cut: int) -> None:
    agent = waiting_agent()
    agent.receive_data(b"".join(framing.encode_message(upload_request()))[:cut])
    agent.receive_data(b"")
    with pytest.raises(ProtocolError, match="closed in the middle"):
        while agent.next_event() is not NEED_DATA:
            pass


def test_end_of_stream_mid_line_is_a_violation() -> None:
    agent = waiting_agent()
    agent.receive_data(_response_writes(None))
    assert agent.next_event() == Request(None)
    agent.send(Next())
    agent.receive_data(b"PROC")
    agent.receive_data(b"")
    with pytest.raises(ProtocolError, match="middle of a control line"):
        agent.next_event()
    assert agent.closed and agent.state is SubscriberState.ERROR
    agent.receive_data(b"ignored once failed")


# -- misuse by the caller -----------------------------------------------------------------------


def test_sending_out_of_turn_is_a_local_error_and_changes_nothing() -> None:
    server = ServerExchange()
    for event in (ServerIdentified(), Request(None), Proceed(), Next()):
        with pytest.raises(LocalProtocolError):
            server.send(event)  # type: ignore[arg-type]
    assert server.state is ServerState.AWAIT_IDENTITY
    agent = waiting_agent()
    for bad in (Next(), End(), Response(ResponseMessage()), Identified(SUB), Proceed()):
        with pytest.raises(LocalProtocolError):
            agent.send(bad)  # type: ignore[arg-type]
    agent.receive_data(_response_writes(capabilities_request()))
    assert isinstance(agent.next_event(), Request)
    with pytest.raises(LocalProtocolError, match="does not match"):
        agent.send(Response(ResponseMessage(id="wrong")))
    with pytest.raises(LocalProtocolError, match="not a ResponseMessage"):
        agent.send(Response("nope"))  # type: ignore[arg-type]
    assert agent.state is SubscriberState.SEND_RESPONSE
    server = identified_server()
    with pytest.raises(LocalProtocolError, match="not a RequestMessage"):
        server.send(Request(ResponseMessage()))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"")
        server.receive_data(b"more")


# -- hostile bytes ------------------------------------------------------------------------------

valid_agent_bytes = b"".join(converse(REQUESTS)[1].writes)
valid_server_bytes = b"".join(converse(REQUESTS)[0].writes)


def _hostile_run(make: Callable[[], Driver], data: bytes, cuts: list[int]) -> None:
    pieces = [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)])]
    driver = make()
    try:
        driver.run(pieces + [b""])
    except ProtocolError:
        pass


@given(st.sampled_from(["random", "flipped", "truncated"]), st.binary(max_size=200), st.data())
def test_hostile_bytes_raise_only_protocol_errors(kind: str, noise: bytes, data: Any) -> None:
    for valid, make in (
        (valid_agent_bytes, lambda: Driver(ServerExchange(), server_policy(REQUESTS))),
        (valid_server_bytes, lambda: Driver(SubscriberExchange(), agent_policy(len(REQUESTS)))),
    ):
        if kind == "random":
            candidate = valid[: data.draw(st.integers(0, 60))] + noise
        else:
            damaged = bytearray(valid)
            if kind == "flipped":
                for bit in data.draw(st.lists(st.integers(0, len(damaged) * 8 - 1), min_size=1, max_size=3)):
                    damaged[bit // 8] ^= 1 << (bit % 8)
            candidate = bytes(damaged[: data.draw(st.integers(0, len(damaged)))])
        cuts = data.draw(st.lists(st.integers(0, len(candidate)), max_size=4))
        _hostile_run(make, candidate, cuts)


# -- sending DataStream bodies from elsewhere (files) ---------------------------------------------


def test_send_head_lets_the_caller_stream_bodies() -> None:
    server, agent = identified_server(), waiting_agent()
    request = RequestMessage(id="up", params=["/x", DataStream(id=ID_A, length=6)])  # no data
    with pytest.raises(EncodeError, match="no data"):
        server.send(Request(request))
    assert server.state is ServerState.IDLE  # a failed send changes nothing
    head, streams = server.send_head(Request(request))
    assert streams == [DataStream(id=ID_A, length=6)] and server.state is ServerState.AWAIT_RESPONSE
    body = [b"abc", b"def"]  # e.g. read from a file in pieces
    writes = head + framing.data_stream_prefix(streams[0]) + body + [framing.data_stream_suffix(streams[0])]
    for write in writes:
        agent.receive_data(write)
    received = agent.next_event()
    assert isinstance(received, Request) and received.streams[0].data == b"abcdef"
    download = DataStream(id=ID_B, length=2)
    head, streams = agent.send_head(Response(ResponseMessage(id="up", result=download)))
    assert agent.state is SubscriberState.SEND_NEXT and streams == [download]
    for write in head + framing.data_stream_prefix(download) + [b"ok", framing.data_stream_suffix(download)]:
        server.receive_data(write)
    response = server.next_event()
    assert isinstance(response, Response) and response.streams[0].data == b"ok"

"""Framing: control lines, subscription ids, compressed messages, DataStream blocks, MessageReader."""

from __future__ import annotations

import base64
import random
import struct
import uuid
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octopus_comms.halibut import bson, framing
from octopus_comms.halibut.contracts import ScriptFile, StartScriptCommandV2, UploadResult
from octopus_comms.halibut.errors import EncodeError, FramingError, ProtocolError
from octopus_comms.halibut.framing import (
    DONE,
    NEED_DATA,
    DataStreamChunk,
    DataStreamEnd,
    MessageDecoded,
    MessageReader,
    ReaderLimits,
)
from octopus_comms.halibut.messages import DataStream, RequestMessage, ResponseMessage

CAPTURE = base64.b64decode(
    "nY6xTgNBDESHDTR8xRakQ1dRICSaRIfSBCHIDyxZk1tpsz6tfQE+mP/AgQVRU7gYe96Mn06A2ZpEwo7Qm3AX+j4SrgCsQk7Pk3abGoqM"
    "XLV7qKy85dw9ki2KUCMvffPCpYgzYyVKxIxq5YoP027fOk5NvDDDRdKQsuD2T1P/tqVRkyV3a9KB4z3rHU8lNsMyJyr667rxX0nt2B/L"
    "Nsfnr/8fCbfIYfgZzC3JAC+8NziVnR++Mf+acvZ0oGqbAwHnlWTKav5P"
)
KEEP_ALIVE = bytes.fromhex("0e000000 0a 4d65737361676500 00")
ID_A = uuid.UUID("11111111-2222-3333-4444-555555555555")
ID_B = uuid.UUID("66666666-7777-8888-9999-000000000000")


def upload_request(body_a: bytes = b"hello", body_b: bytes = b"") -> RequestMessage:
    return RequestMessage(
        id="IScriptServiceV2::StartScript[1] / x",
        service="IScriptServiceV2",
        method="StartScript",
        params=[
            StartScriptCommandV2(
                files=[
                    ScriptFile(name="a", contents=DataStream.from_bytes(body_a, id=ID_A)),
                    ScriptFile(name="b", contents=DataStream.from_bytes(body_b, id=ID_B)),
                ]
            ),
        ],
    )


def events_of(reader: MessageReader) -> list[Any]:
    events: list[Any] = []
    while True:
        event = reader.next_event()
        if event is NEED_DATA or event is DONE:
            return events
        events.append(event)


def coalesce(events: list[Any]) -> list[Any]:
    """Merge consecutive chunks of the same stream, so differently split feeds compare equal."""
    merged: list[Any] = []
    for event in events:
        if isinstance(event, DataStreamChunk) and merged and isinstance(merged[-1], DataStreamChunk):
            if merged[-1].stream_id == event.stream_id:
                merged[-1] = DataStreamChunk(event.stream_id, merged[-1].data + event.data)
                continue
        merged.append(event)
    return merged


# -- control lines and identities ---------------------------------------------------------------


def test_control_line_vectors() -> None:
    assert framing.NEXT.hex() == "4e4558540d0a"
    assert framing.PROCEED.hex() == "50524f434545440d0a"
    assert framing.END.hex() == "454e440d0a"
    assert framing.SERVER_IDENTITY.hex() == "4d582d53455256455220312e300d0a0d0a"
    assert framing.subscriber_identity("poll://abcdefghijklmnopqrst/") == (
        b"MX-SUBSCRIBER 1.0 poll://abcdefghijklmnopqrst/\r\n\r\n"
    )
    with pytest.raises(EncodeError):
        framing.subscriber_identity("poll://a b/")


def test_take_control_line_consumes_exactly_one_line() -> None:
    buffer = bytearray(b"NEXT\r\n\r\nPRO")
    assert framing.take_control_line(buffer) == "NEXT"
    assert buffer == b"\r\nPRO"
    assert framing.take_control_line(buffer) == ""
    assert framing.take_control_line(buffer) is None
    buffer += b"CEED\r"
    assert framing.take_control_line(buffer) is None
    buffer += b"\n\x78\x9c"
    assert framing.take_control_line(buffer) == "PROCEED"
    assert buffer == b"\x78\x9c"


@pytest.mark.parametrize(
    "data", [b"NEXT\rX", b"NE\nXT\r\n", b"NE\nXT", b"\xff\xfe\r\n", b"A" * 40]
)
def test_bad_control_lines(data: bytes) -> None:
    with pytest.raises(FramingError):
        framing.take_control_line(bytearray(data), max_length=32)


def test_subscription_ids() -> None:
    first = framing.new_subscription_id(random.Random(7))
    assert first == framing.new_subscription_id(random.Random(7))
    assert framing.is_valid_subscription_id(first)
    assert len(first) == len("poll://") + 20 + 1
    assert framing.new_subscription_id() != framing.new_subscription_id()
    assert not framing.is_valid_subscription_id("poll://ABCDEFGHIJKLMNOPQRST/")
    assert not framing.is_valid_subscription_id("poll://abc/")
    assert framing.is_valid_subscription_id("poll://my-agent-01/", strict=False)
    assert not framing.is_valid_subscription_id("https://x/", strict=False)
    assert not framing.is_valid_subscription_id("poll://a b/", strict=False)


# -- writing ------------------------------------------------------------------------------------


def test_keep_alive_message() -> None:
    writes = framing.encode_message(None)
    assert len(writes) == 1
    assert zlib.decompress(writes[0], -15) == KEEP_ALIVE


def test_data_stream_parts_are_separate_writes() -> None:
    writes = framing.encode_message(upload_request(b"hello", b""))
    head = writes[: len(writes) - 7]
    assert len(head) == 1
    assert writes[-7:] == [
        ID_A.bytes_le, struct.pack("<q", 5), b"hello", struct.pack("<q", 5),
        ID_B.bytes_le, struct.pack("<q", 0), struct.pack("<q", 0),
    ]  # fmt: skip


def test_large_messages_and_bodies_are_split_into_64k_writes() -> None:
    noise = random.Random(1).randbytes(200_000)
    request = RequestMessage(id="r", params=[noise])
    writes = framing.encode_message(request)
    assert len(writes) == 4 and all(len(w) <= 65536 for w in writes)
    assert zlib.decompress(b"".join(writes), -15) == framing.DEFAULT_SERIALIZER.encode_envelope(request)[0]
    body_writes = framing.encode_data_stream(DataStream.from_bytes(noise, id=ID_A))
    assert [len(w) for w in body_writes] == [16, 8, 65536, 65536, 65536, 3392, 8]


def test_data_streams_need_consistent_data() -> None:
    with pytest.raises(EncodeError, match="no data"):
        framing.encode_message(RequestMessage(params=[DataStream(id=ID_A, length=1)]))
    with pytest.raises(EncodeError, match="declares"):
        framing.encode_message(RequestMessage(params=[DataStream(id=ID_A, length=2, data=b"x")]))
    twice = DataStream.from_bytes(b"x", id=ID_A)
    with pytest.raises(EncodeError, match="twice"):
        framing.encode_message(RequestMessage(params=[twice, twice]))
    head, streams = framing.encode_message_head(RequestMessage(params=[DataStream(id=ID_A, length=9)]))
    assert streams == [DataStream(id=ID_A, length=9)]
    assert framing.data_stream_prefix(streams[0]) == [ID_A.bytes_le, struct.pack("<q", 9)]
    assert framing.data_stream_suffix(streams[0]) == struct.pack("<q", 9)


# -- reading ------------------------------------------------------------------------------------


def test_reader_decodes_the_capture_and_keeps_what_follows() -> None:
    reader = MessageReader(expected=ResponseMessage)
    reader.receive_data(CAPTURE + b"NEXT\r\n")
    event = reader.next_event()
    assert isinstance(event, MessageDecoded)
    assert event.message.error.message == "foo" and event.streams == ()
    assert reader.done and reader.next_event() is DONE
    assert reader.take_unused() == b"NEXT\r\n"


def test_buffered_mode_fills_data_streams() -> None:
    stream = b"".join(framing.encode_message(upload_request(b"hello", b""))) + b"rest"
    message, streams, rest = framing.read_message(stream, expected=RequestMessage)
    assert rest == b"rest"
    assert [(s.id, s.data) for s in streams] == [(ID_A, b"hello"), (ID_B, b"")]
    files = message.params[0].files
    assert files[0].contents is streams[0] and files[0].contents.data == b"hello"


def test_streaming_mode_hands_out_chunks() -> None:
    stream = b"".join(framing.encode_message(upload_request(b"hello", b"xy")))
    reader = MessageReader(stream_data=True)
    reader.receive_data(stream[:-9])
    events = events_of(reader)
    assert isinstance(events[0], MessageDecoded)
    assert [s.data for s in events[0].streams] == [None, None]
    assert events[1:] == [
        DataStreamChunk(ID_A, b"hello"),
        DataStreamEnd(ID_A, message_complete=False),
        DataStreamChunk(ID_B, b"x"),
    ]
    assert not reader.done
    reader.receive_data(stream[-9:])
    assert events_of(reader) == [DataStreamChunk(ID_B, b"y"), DataStreamEnd(ID_B, True)]
    assert reader.done


def test_blocks_are_matched_by_id_in_any_order() -> None:
    request = upload_request(b"aaa", b"bb")
    writes = framing.encode_message(request)
    head, block_a, block_b = writes[:-8], writes[-8:-4], writes[-4:]
    message, streams, _ = framing.read_message(b"".join(head + block_b + block_a))
    assert {s.id: s.data for s in streams} == {ID_A: b"aaa", ID_B: b"bb"}


def _with_block(message_streams: list[DataStream], blocks: bytes) -> bytes:
    """A hostile sender: the envelope as written, bypassing the writer's own checks."""
    envelope, _ = framing.DEFAULT_SERIALIZER.encode_envelope(RequestMessage(params=list(message_streams)))
    return framing.compress(envelope) + blocks


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_with_block([DataStream(id=ID_A, length=1)], ID_B.bytes_le + struct.pack("<qB q", 1, 0, 1)), "unexpected"),
        (_with_block([DataStream(id=ID_A, length=1)], ID_A.bytes_le + struct.pack("<q", 2)), "message said"),
        (_with_block([DataStream(id=ID_A, length=1)], ID_A.bytes_le + struct.pack("<qBq", 1, 0, 2)), "trailer"),
        (_with_block([DataStream(id=ID_A, length=1), DataStream(id=ID_A, length=1)], b""), "twice"),
        (_with_block([DataStream(id=ID_A, length=-1)], b""), "negative"),
        (_with_block([DataStream(id=ID_A, length=2**40)], b""), "limit"),
        (b"\xff" * 10, "DEFLATE"),
        (framing.compress(b"\x05\x00\x00\x00\x00trailing"), "after the end"),
        (framing.compress(b""), "truncated"),
    ],
)
def test_reader_violations(data: bytes, error: str) -> None:
    reader = MessageReader()
    reader.receive_data(data)
    with pytest.raises(ProtocolError, match=error):
        events_of(reader)


def test_inflation_bomb_is_stopped() -> None:
    bomb = framing.compress(bson.encode_document({"Message": "A" * 2_000_000}))
    assert len(bomb) < 10_000
    reader = MessageReader(limits=ReaderLimits(max_inflated_bytes=1_000_000))
    reader.receive_data(bomb)
    with pytest.raises(FramingError, match="inflates to more than"):
        reader.next_event()


def test_stream_caps_per_mode() -> None:
    data = b"".join(framing.encode_message(RequestMessage(params=[DataStream.from_bytes(b"x" * 100)])))
    small = ReaderLimits(max_buffered_stream_bytes=99, max_streamed_stream_bytes=100)
    with pytest.raises(FramingError, match="limit"):
        framing.read_message(data, limits=small)
    streaming = MessageReader(limits=small, stream_data=True)
    streaming.receive_data(data)
    assert events_of(streaming)[-1] == DataStreamEnd(streaming._streams[0].id, True)
    with pytest.raises(FramingError, match="DataStreams"):
        framing.read_message(data, limits=ReaderLimits(max_streams=0))


def test_truncated_data_is_incomplete_not_an_error() -> None:
    data = b"".join(framing.encode_message(upload_request()))
    for cut in range(len(data)):
        reader = MessageReader()
        reader.receive_data(data[:cut])
        assert events_of(reader) == [] and not reader.done
    with pytest.raises(FramingError, match="ends in the middle"):
        framing.read_message(data[:-1])


# -- properties ---------------------------------------------------------------------------------

bodies = st.lists(st.binary(max_size=300), max_size=3)
messages = st.one_of(
    st.none(),
    bodies.map(
        lambda bs: RequestMessage(
            id="r", params=[DataStream.from_bytes(b, id=uuid.UUID(int=i + 1)) for i, b in enumerate(bs)]
        )
    ),
    bodies.map(
        lambda bs: ResponseMessage(id="r", result=UploadResult(full_path="/x", hash="0" * 40, length=len(bs)))
    ),
)


@given(messages, st.binary(max_size=20), st.booleans(), st.data())
def test_any_split_gives_the_same_events(message: Any, after: bytes, stream_data: bool, data: Any) -> None:
    stream = b"".join(framing.encode_message(message)) + after

    def feed(pieces: list[bytes]) -> tuple[list[Any], bytes]:
        reader = MessageReader(stream_data=stream_data)
        events: list[Any] = []
        for piece in pieces:
            reader.receive_data(piece)
            events += events_of(reader)
        assert reader.done
        return coalesce(events), reader.take_unused()

    one_shot = feed([stream])
    byte_at_a_time = feed([stream[i : i + 1] for i in range(len(stream))])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    random_splits = feed([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])])
    assert one_shot == byte_at_a_time == random_splits
    assert one_shot[1] == after
    decoded = one_shot[0][0]
    assert decoded.message == message
    if not stream_data and message is not None and isinstance(message, RequestMessage):
        assert [s.data for s in decoded.streams] == [p.data for p in message.params]


@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, stream_data: bool) -> None:
    for candidate in (data, zlib.compress(data)[2:-4], framing.compress(data)):
        reader = MessageReader(stream_data=stream_data)
        reader.receive_data(candidate)
        try:
            events_of(reader)
        except ProtocolError:
            pass


@given(messages, st.data())
def test_damaged_messages_raise_only_protocol_errors(message: Any, data: Any) -> None:
    stream = bytearray(b"".join(framing.encode_message(message)))
    for bit in data.draw(st.lists(st.integers(0, len(stream) * 8 - 1), min_size=1, max_size=3)):
        stream[bit // 8] ^= 1 << (bit % 8)
    cut = data.draw(st.integers(0, len(stream)))
    for candidate in (bytes(stream), bytes(stream[:cut])):
        reader = MessageReader(stream_data=data.draw(st.booleans()))
        reader.receive_data(candidate)
        try:
            events_of(reader)
        except ProtocolError:
            pass

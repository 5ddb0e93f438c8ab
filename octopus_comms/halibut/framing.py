"""Halibut's byte stream: control lines, raw-DEFLATE messages and the DataStream blocks after them.

Writing: a message is the BSON envelope compressed as one finished raw DEFLATE stream (no length
prefix), then one block per DataStream in serialization order: 16-byte Guid (.NET order), int64 LE
length, the bytes, the length again. `encode_message` returns the separate writes the transport must
make (a WebSocket frame each): compressed bytes in ≤ 64 KiB pieces, each DataStream part apart.

Reading: `MessageReader` is sans-IO. Feed it bytes; it inflates until the DEFLATE stream ends
(bomb-capped), decodes the envelope, then reads as many blocks as the message declared DataStreams,
matching them by id, and keeps whatever follows for the next reader (`take_unused`). Two modes:
  buffered (default): one `MessageDecoded` once every block arrived, each DataStream's `data` set;
    the DataStream bytes of one message are capped by `ReaderLimits.max_buffered_stream_bytes`;
  streaming (`stream_data=True`): `MessageDecoded` as soon as the envelope is decoded (DataStreams
    without data), then per block `DataStreamChunk`s and a `DataStreamEnd`, so large bodies can go
    straight to a sink; each is capped by `ReaderLimits.max_streamed_stream_bytes`.
The message is complete when `reader.done` (also `DataStreamEnd.message_complete`).
"""

from __future__ import annotations

import re
import secrets
import struct
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from random import Random
from typing import Any, Final

from .errors import EncodeError, FramingError, LocalProtocolError
from .messages import DataStream
from .serializer import DEFAULT_SERIALIZER, Serializer

# -- control lines ------------------------------------------------------------------------------

CRLF: Final = b"\r\n"
NEXT: Final = b"NEXT\r\n"
PROCEED: Final = b"PROCEED\r\n"
END: Final = b"END\r\n"
SERVER_IDENTITY: Final = b"MX-SERVER 1.0\r\n\r\n"
PROTOCOL_VERSION: Final = "1.0"
MX_SUBSCRIBER: Final = "MX-SUBSCRIBER"
MX_SERVER: Final = "MX-SERVER"
MX_CLIENT: Final = "MX-CLIENT"
DEFAULT_MAX_LINE: Final = 4096

MAX_WRITE: Final = 64 * 1024
DEFLATE_LEVEL: Final = 6

_SUBSCRIPTION_LETTERS: Final = "abcdefghijklmnopqrstuvwxyz"
_GENERATED_SUBSCRIPTION: Final = re.compile(r"poll://[a-z]{20}/", re.ASCII)
_ANY_SUBSCRIPTION: Final = re.compile(r"poll://[^\s/?#]+/", re.ASCII | re.IGNORECASE)


def subscriber_identity(subscription_id: str) -> bytes:
    """The agent's identity write: `MX-SUBSCRIBER 1.0 poll://…/` CRLF CRLF."""
    if not subscription_id or any(ch.isspace() for ch in subscription_id):
        raise EncodeError(f"subscription id {subscription_id!r} is empty or has white space")
    return f"{MX_SUBSCRIBER} {PROTOCOL_VERSION} {subscription_id}\r\n\r\n".encode()


def new_subscription_id(rng: Random | None = None) -> str:
    """`poll://` + 20 random lower-case letters + `/`; `rng` defaults to the system's CSPRNG."""
    chooser = rng if rng is not None else secrets.SystemRandom()
    return "poll://" + "".join(chooser.choice(_SUBSCRIPTION_LETTERS) for _ in range(20)) + "/"


def is_valid_subscription_id(value: str, *, strict: bool = True) -> bool:
    """strict: exactly the generated form. Otherwise any `poll://<name>/` (users may choose one)."""
    pattern = _GENERATED_SUBSCRIPTION if strict else _ANY_SUBSCRIPTION
    return pattern.fullmatch(value) is not None


def take_control_line(buffer: bytearray, *, max_length: int = DEFAULT_MAX_LINE) -> str | None:
    """Remove one CRLF-terminated line from the front of `buffer` and return it without the CRLF
    (possibly empty); None if the line is not complete yet. Consumes nothing past the CRLF.
    FramingError for CR not followed by LF, bare LF, invalid UTF-8 or a line over `max_length`."""
    cr = buffer.find(b"\r", 0, max_length + 1)
    if cr < 0:
        if len(buffer) > max_length:
            raise FramingError(f"control line longer than {max_length} bytes")
        if b"\n" in buffer:
            raise FramingError("bare LF in a control line")
        return None
    if cr + 1 >= len(buffer):
        return None
    if buffer[cr + 1] != 0x0A:
        raise FramingError(f"unexpected byte 0x{buffer[cr + 1]:02X} after CR in a control line")
    raw = bytes(buffer[:cr])
    if b"\n" in raw:
        raise FramingError("bare LF in a control line")
    del buffer[: cr + 2]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError("control line is not valid UTF-8") from None


# -- writing ------------------------------------------------------------------------------------

_I64 = struct.Struct("<q")


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def compress(data: bytes, level: int = DEFLATE_LEVEL) -> bytes:
    """A finished raw DEFLATE stream of `data` (level 6 reproduces .NET's bytes)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def encode_message_head(
    message: Any,
    *,
    serializer: Serializer = DEFAULT_SERIALIZER,
    level: int = DEFLATE_LEVEL,
    max_write: int = MAX_WRITE,
) -> tuple[list[bytes], list[DataStream]]:
    """The writes of the compressed message alone, and the DataStreams whose blocks must follow
    (for shells that stream DataStream bodies from files themselves)."""
    envelope, streams = serializer.encode_envelope(message)
    seen: set[uuid.UUID] = set()
    for stream in streams:
        if stream.id in seen:
            raise EncodeError(f"DataStream {stream.id} appears twice in one message")
        if stream.length < 0:
            raise EncodeError(f"DataStream {stream.id} has a negative length")
        seen.add(stream.id)
    return _pieces(compress(envelope, level), max_write), streams


def data_stream_prefix(stream: DataStream) -> list[bytes]:
    """The two writes before a DataStream's bytes: its Guid (.NET order), its int64 LE length."""
    return [stream.id.bytes_le, _I64.pack(stream.length)]


def data_stream_suffix(stream: DataStream) -> bytes:
    """The write after a DataStream's bytes: its length again."""
    return _I64.pack(stream.length)


def encode_data_stream(stream: DataStream, *, max_write: int = MAX_WRITE) -> list[bytes]:
    """All writes of one DataStream block; its `data` must be set and match its length."""
    if stream.data is None:
        raise EncodeError(f"DataStream {stream.id} has no data to send")
    if len(stream.data) != stream.length:
        raise EncodeError(
            f"DataStream {stream.id} declares {stream.length} bytes but holds {len(stream.data)}"
        )
    return [*data_stream_prefix(stream), *_pieces(stream.data, max_write), data_stream_suffix(stream)]


def encode_message(
    message: Any,
    *,
    serializer: Serializer = DEFAULT_SERIALIZER,
    level: int = DEFLATE_LEVEL,
    max_write: int = MAX_WRITE,
) -> list[bytes]:
    """Every write for `message` (None = the null keep-alive) and its DataStreams, in order."""
    writes, streams = encode_message_head(
        message, serializer=serializer, level=level, max_write=max_write
    )
    for stream in streams:
        writes += encode_data_stream(stream, max_write=max_write)
    return writes


# -- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReaderLimits:
    """What one incoming message may cost us."""

    max_inflated_bytes: int = 64 * 1024 * 1024
    max_buffered_stream_bytes: int = 64 * 1024 * 1024
    max_streamed_stream_bytes: int = 1 << 40
    max_streams: int = 1024
    max_depth: int = 64


@dataclass(frozen=True)
class MessageDecoded:
    """The message (None for a keep-alive) and its DataStreams in the order their blocks come."""

    message: Any
    streams: tuple[DataStream, ...] = ()


@dataclass(frozen=True)
class DataStreamChunk:
    """Streaming mode: the next bytes of a DataStream."""

    stream_id: uuid.UUID
    data: bytes


@dataclass(frozen=True)
class DataStreamEnd:
    """Streaming mode: a DataStream is complete (its trailer matched); `message_complete` when it
    was the message's last."""

    stream_id: uuid.UUID
    message_complete: bool


class Sentinel:
    """A named marker returned instead of an event (NEED_DATA, DONE, PAUSED)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = Sentinel("NEED_DATA")
"""No event until more bytes arrive."""

DONE: Final = Sentinel("DONE")
"""The reader finished its message; `take_unused()` returns what followed."""

ReaderEvent = MessageDecoded | DataStreamChunk | DataStreamEnd


class MessageReader:
    """Reads one message and its DataStream blocks from a byte stream (sans-IO).

    `expected` (RequestMessage, ResponseMessage or None for "whatever `$type` says") is passed to
    the serializer. Every malformation raises a ProtocolError subclass."""

    _INFLATE, _HEADER, _BODY, _TRAILER, _DONE = range(5)

    def __init__(
        self,
        *,
        expected: type | None = None,
        serializer: Serializer = DEFAULT_SERIALIZER,
        limits: ReaderLimits = ReaderLimits(),
        stream_data: bool = False,
    ) -> None:
        self._expected = expected
        self._serializer = serializer
        self._limits = limits
        self._stream_data = stream_data
        self._buffer = bytearray()
        self._inflater = zlib.decompressobj(-15)
        self._inflated = bytearray()
        self._phase = self._INFLATE
        self._started = False
        self._message: Any = None
        self._streams: tuple[DataStream, ...] = ()
        self._waiting: dict[uuid.UUID, DataStream] = {}
        self._current: DataStream | None = None
        self._remaining = 0
        self._body = bytearray()
        self._buffered_total = 0

    @property
    def done(self) -> bool:
        """True once the message and all its DataStream blocks were read."""
        return self._phase == self._DONE

    @property
    def started(self) -> bool:
        """True once any byte of the message arrived (for 'first byte' timeouts and clean EOF)."""
        return self._started

    @property
    def pending_bytes(self) -> int:
        """Bytes received and not yet consumed (over-read bytes after `done`)."""
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the transport."""
        if data:
            self._started = True
            self._buffer += data

    def take_unused(self) -> bytes:
        """After `done`: the bytes that followed the message, for whoever reads next."""
        if not self.done:
            raise LocalProtocolError("the message is not complete yet")
        unused = bytes(self._buffer)
        self._buffer.clear()
        return unused

    def next_event(self) -> ReaderEvent | Sentinel:
        """The next event, NEED_DATA, or DONE."""
        while True:
            if self._phase == self._INFLATE:
                if not self._inflate():
                    return NEED_DATA
                decoded = self._decoded()
                if decoded is not None:
                    return decoded
            elif self._phase == self._HEADER:
                if len(self._buffer) < 24:
                    return NEED_DATA
                self._header()
            elif self._phase == self._BODY:
                chunk = self._body_bytes()
                if chunk is None:
                    return NEED_DATA
                if chunk and self._stream_data:
                    assert self._current is not None
                    return DataStreamChunk(self._current.id, chunk)
            elif self._phase == self._TRAILER:
                if len(self._buffer) < 8:
                    return NEED_DATA
                finished = self._trailer()
                if finished is not None:
                    return finished
            else:
                return DONE

    # -- phases --------------------------------------------------------------------------------

    def _inflate(self) -> bool:
        """Feed buffered bytes to the inflater; True once the DEFLATE stream ended."""
        limit = self._limits.max_inflated_bytes
        data = bytes(self._buffer)
        self._buffer.clear()
        try:
            while data and not self._inflater.eof:
                room = limit - len(self._inflated)
                out = self._inflater.decompress(data, room + 1)
                self._inflated += out
                if len(self._inflated) > limit:
                    raise FramingError(f"message inflates to more than {limit} bytes")
                tail = self._inflater.unconsumed_tail
                if not out and tail == data:
                    break
                data = tail
        except zlib.error as exc:
            raise FramingError(f"corrupt DEFLATE stream: {exc}") from None
        if not self._inflater.eof:
            return False
        self._buffer += self._inflater.unused_data
        return True

    def _decoded(self) -> MessageDecoded | None:
        message, streams = self._serializer.decode_envelope(bytes(self._inflated), self._expected)
        self._inflated = bytearray()
        limits = self._limits
        if len(streams) > limits.max_streams:
            raise FramingError(f"message declares {len(streams)} DataStreams")
        cap = limits.max_streamed_stream_bytes if self._stream_data else limits.max_buffered_stream_bytes
        total = 0
        for stream in streams:
            if stream.id in self._waiting:
                raise FramingError(f"DataStream {stream.id} appears twice in one message")
            if stream.length < 0:
                raise FramingError(f"DataStream {stream.id} has a negative length")
            total = stream.length if self._stream_data else total + stream.length
            if total > cap:
                raise FramingError(f"DataStream bytes exceed the {cap}-byte limit")
            self._waiting[stream.id] = stream
        self._message = message
        self._streams = tuple(streams)
        self._phase = self._HEADER if streams else self._DONE
        if self._stream_data or not streams:
            return MessageDecoded(message, self._streams)
        return None

    def _header(self) -> None:
        stream_id = uuid.UUID(bytes_le=bytes(self._buffer[:16]))
        length = _I64.unpack_from(self._buffer, 16)[0]
        del self._buffer[:24]
        stream = self._waiting.get(stream_id)
        if stream is None:
            raise FramingError(f"unexpected DataStream block {stream_id}")
        if length != stream.length:
            raise FramingError(
                f"DataStream {stream_id} block has {length} bytes, the message said {stream.length}"
            )
        self._current = stream
        self._remaining = length
        self._phase = self._BODY

    def _body_bytes(self) -> bytes | None:
        """Take the next available body bytes (b"" when the body is complete), None if none."""
        if self._remaining == 0:
            self._phase = self._TRAILER
            return b""
        if not self._buffer:
            return None
        take = min(self._remaining, len(self._buffer))
        chunk = bytes(self._buffer[:take])
        del self._buffer[:take]
        self._remaining -= take
        if not self._stream_data:
            self._body += chunk
        if self._remaining == 0:
            self._phase = self._TRAILER
        return chunk

    def _trailer(self) -> MessageDecoded | DataStreamEnd | None:
        stream = self._current
        assert stream is not None
        length_again = _I64.unpack_from(self._buffer, 0)[0]
        del self._buffer[:8]
        if length_again != stream.length:
            raise FramingError(
                f"DataStream {stream.id} trailer says {length_again} bytes, expected {stream.length}"
            )
        del self._waiting[stream.id]
        self._current = None
        complete = not self._waiting
        self._phase = self._DONE if complete else self._HEADER
        if self._stream_data:
            return DataStreamEnd(stream.id, complete)
        stream.data = bytes(self._body)
        self._body = bytearray()
        if complete:
            return MessageDecoded(self._message, self._streams)
        return None


def read_message(
    data: bytes,
    *,
    expected: type | None = None,
    serializer: Serializer = DEFAULT_SERIALIZER,
    limits: ReaderLimits = ReaderLimits(),
) -> tuple[Any, tuple[DataStream, ...], bytes]:
    """One-shot buffered read: (message, streams with data, bytes after the message).
    FramingError if `data` ends before the message does."""
    reader = MessageReader(expected=expected, serializer=serializer, limits=limits)
    reader.receive_data(data)
    while True:
        event = reader.next_event()
        if isinstance(event, MessageDecoded):
            return event.message, event.streams, reader.take_unused()
        if event is NEED_DATA:
            raise FramingError("the data ends in the middle of a message")


def join_writes(writes: Iterable[bytes]) -> bytes:
    """The byte stream a list of writes makes (readers ignore frame boundaries)."""
    return b"".join(writes)

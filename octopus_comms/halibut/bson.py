"""BSON, the subset that Newtonsoft.Json.Bson writes for Halibut: order-preserving and strict.

Why our own codec: the decoder faces untrusted peers, so every length is checked against its
container, nesting depth and total size are bounded, and any malformation raises `BsonError` (a
`ProtocolError`), never IndexError, struct.error or UnicodeDecodeError.

Python values on both sides:
  double 0x01 ↔ float; string 0x02 ↔ str; document 0x03 ↔ BsonDocument (any Mapping on encode);
  array 0x04 ↔ list (tuple on encode); binary 0x05 subtype 0 ↔ bytes, subtype 4 with 16 bytes ↔
  uuid.UUID in .NET byte order (`UUID.bytes_le`), any other subtype (3 = legacy C# Guid, which is
  also .NET order) ↔ Binary(subtype, data); bool 0x08 ↔ bool; UTC datetime 0x09 ↔ aware datetime
  (milliseconds; naive datetimes are taken as UTC); null 0x0A ↔ None; int32 0x10 ↔ int; int64 0x12
  ↔ Int64 (a plain int is written as int32 when it fits, else int64).
"""

from __future__ import annotations

import datetime as _dt
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BsonError, EncodeError

TYPE_DOUBLE = 0x01
TYPE_STRING = 0x02
TYPE_DOCUMENT = 0x03
TYPE_ARRAY = 0x04
TYPE_BINARY = 0x05
TYPE_BOOL = 0x08
TYPE_DATETIME = 0x09
TYPE_NULL = 0x0A
TYPE_INT32 = 0x10
TYPE_INT64 = 0x12

SUBTYPE_GENERIC = 0x00
SUBTYPE_BINARY_OLD = 0x02
SUBTYPE_UUID_LEGACY = 0x03
SUBTYPE_UUID = 0x04

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_SIZE = 64 * 1024 * 1024

UTC = _dt.timezone.utc
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=UTC)

_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


class Int64(int):
    """An int that BSON writes as int64 (0x12) even when it would fit in an int32."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Int64({int(self)})"


@dataclass(frozen=True, slots=True)
class Binary:
    """BSON binary data whose subtype is not 0 (plain bytes) or 4 with 16 bytes (a UUID)."""

    subtype: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.subtype <= 0xFF:
            raise EncodeError(f"BSON binary subtype {self.subtype} is not a byte")


class BsonDocument(dict[str, Any]):
    """A decoded BSON document: a dict in wire order that can also find keys the way Newtonsoft
    does (the exact name first, then ignoring case)."""

    __slots__ = ()

    def lookup(self, name: str, default: Any = None) -> Any:
        """The value under `name`, matched exactly or else case-insensitively; `default` if absent."""
        if name in self:
            return self[name]
        folded = name.lower()
        for key, value in self.items():
            if key.lower() == folded:
                return value
        return default


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_document(document: Mapping[str, Any], *, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """The BSON bytes of `document`, keys in iteration order. Raises EncodeError for values that
    BSON cannot carry (keys with NUL, lone surrogates, ints beyond int64, unknown types)."""
    if not isinstance(document, Mapping):
        raise EncodeError(f"a BSON document must be a mapping, not {type(document).__name__}")
    out = bytearray()
    _write_document(out, document.items(), 1, max_depth)
    return bytes(out)


def _write_document(out: bytearray, items: Any, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise EncodeError(f"BSON nesting deeper than {max_depth}")
    start = len(out)
    out += b"\x00\x00\x00\x00"
    for key, value in items:
        _write_element(out, key, value, depth, max_depth)
    out.append(0)
    size = len(out) - start
    if size > INT32_MAX:
        raise EncodeError("BSON document larger than 2 GiB")
    _I32.pack_into(out, start, size)


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{what} is not valid Unicode: {exc}") from None


def _write_element(out: bytearray, key: Any, value: Any, depth: int, max_depth: int) -> None:
    if not isinstance(key, str):
        raise EncodeError(f"BSON keys must be str, not {type(key).__name__}")
    name = _utf8(key, "a BSON key")
    if b"\x00" in name:
        raise EncodeError(f"BSON key {key!r} contains NUL")
    kind, payload = _encode_value(value, depth, max_depth)
    out.append(kind)
    out += name
    out.append(0)
    if isinstance(payload, tuple):  # a nested document or array: (items, )
        _write_document(out, payload[0], depth + 1, max_depth)
    else:
        out += payload


def _encode_value(value: Any, depth: int, max_depth: int) -> tuple[int, bytes | tuple[Any]]:
    if value is None:
        return TYPE_NULL, b""
    if isinstance(value, bool):
        return TYPE_BOOL, b"\x01" if value else b"\x00"
    if isinstance(value, Int64):
        if not INT64_MIN <= value <= INT64_MAX:
            raise EncodeError(f"{int(value)} does not fit in an int64")
        return TYPE_INT64, _I64.pack(value)
    if isinstance(value, int):
        if INT32_MIN <= value <= INT32_MAX:
            return TYPE_INT32, _I32.pack(value)
        if INT64_MIN <= value <= INT64_MAX:
            return TYPE_INT64, _I64.pack(value)
        raise EncodeError(f"{int(value)} does not fit in an int64")
    if isinstance(value, float):
        return TYPE_DOUBLE, _F64.pack(value)
    if isinstance(value, str):
        data = _utf8(value, "a BSON string")
        if len(data) + 1 > INT32_MAX:
            raise EncodeError("BSON string longer than 2 GiB")
        return TYPE_STRING, _I32.pack(len(data) + 1) + data + b"\x00"
    if isinstance(value, Mapping):
        return TYPE_DOCUMENT, (value.items(),)
    if isinstance(value, (list, tuple)):
        return TYPE_ARRAY, ([(str(i), item) for i, item in enumerate(value)],)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return TYPE_BINARY, _binary(SUBTYPE_GENERIC, bytes(value))
    if isinstance(value, uuid.UUID):
        return TYPE_BINARY, _binary(SUBTYPE_UUID, value.bytes_le)
    if isinstance(value, Binary):
        return TYPE_BINARY, _binary(value.subtype, bytes(value.data))
    if isinstance(value, _dt.datetime):
        return TYPE_DATETIME, _I64.pack(datetime_to_millis(value))
    raise EncodeError(f"BSON cannot encode a {type(value).__name__}")


def _binary(subtype: int, data: bytes) -> bytes:
    if subtype == SUBTYPE_BINARY_OLD:
        data = _I32.pack(len(data)) + data
    if len(data) > INT32_MAX:
        raise EncodeError("BSON binary longer than 2 GiB")
    return _I32.pack(len(data)) + bytes([subtype]) + data


def datetime_to_millis(value: _dt.datetime) -> int:
    """Milliseconds since the Unix epoch, rounded down, as BSON (and .NET) store a UTC datetime."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def millis_to_datetime(millis: int) -> _dt.datetime:
    """The aware UTC datetime of a BSON datetime; ValueError outside years 1..9999 (as .NET)."""
    try:
        return EPOCH + _dt.timedelta(milliseconds=millis)
    except OverflowError:
        raise ValueError(f"BSON datetime {millis} ms is outside years 1..9999") from None


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_document(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> BsonDocument:
    """Decode exactly one BSON document filling all of `data`. Raises BsonError on anything
    malformed, on trailing bytes, on nesting deeper than `max_depth`, or on more than `max_size`
    bytes."""
    buf = bytes(data)
    if len(buf) > max_size:
        raise BsonError(f"BSON document of {len(buf)} bytes exceeds the {max_size}-byte limit")
    decoder = _Decoder(buf, max_depth)
    document, end = decoder.document(0, len(buf), 1, array=False)
    if end != len(buf):
        raise BsonError(f"{len(buf) - end} bytes after the end of the BSON document")
    assert isinstance(document, BsonDocument)
    return document


class _Decoder:
    """One pass over a buffer; every read checks `limit`, the end of the enclosing container."""

    __slots__ = ("buf", "max_depth")

    def __init__(self, buf: bytes, max_depth: int) -> None:
        self.buf = buf
        self.max_depth = max_depth

    def int32(self, pos: int, limit: int, what: str) -> int:
        if pos + 4 > limit:
            raise BsonError(f"truncated {what} at offset {pos}")
        return int(_I32.unpack_from(self.buf, pos)[0])

    def document(
        self, pos: int, limit: int, depth: int, *, array: bool
    ) -> tuple[BsonDocument | list[Any], int]:
        if depth > self.max_depth:
            raise BsonError(f"BSON nesting deeper than {self.max_depth}")
        size = self.int32(pos, limit, "document length")
        if size < 5:
            raise BsonError(f"BSON document length {size} at offset {pos} is too small")
        end = pos + size
        if end > limit:
            raise BsonError(
                f"BSON document at offset {pos} claims {size} bytes, only {limit - pos} remain"
            )
        last = end - 1
        if self.buf[last] != 0:
            raise BsonError(f"BSON document at offset {pos} does not end with NUL")
        items: list[Any] = []
        result: BsonDocument | list[Any] = items if array else BsonDocument()
        p = pos + 4
        while p < last:
            kind = self.buf[p]
            p += 1
            nul = self.buf.find(b"\x00", p, last)
            if nul < 0:
                raise BsonError(f"unterminated BSON key at offset {p}")
            key = self.text(p, nul, "key")
            p = nul + 1
            value, p = self.value(kind, p, last, depth, key)
            if array:
                items.append(value)
            else:
                assert isinstance(result, BsonDocument)
                if key in result:
                    raise BsonError(f"duplicate BSON key {key!r}")
                result[key] = value
        if p != last:
            raise BsonError(f"BSON element overruns its document at offset {pos}")
        return result, end

    def text(self, start: int, stop: int, what: str) -> str:
        try:
            return self.buf[start:stop].decode("utf-8")
        except UnicodeDecodeError:
            raise BsonError(f"BSON {what} at offset {start} is not valid UTF-8") from None

    def value(self, kind: int, p: int, limit: int, depth: int, key: str) -> tuple[Any, int]:
        buf = self.buf
        if kind == TYPE_STRING:
            length = self.int32(p, limit, "string length")
            start = p + 4
            if length < 1 or start + length > limit:
                raise BsonError(f"bad BSON string length {length} for key {key!r}")
            stop = start + length - 1
            if buf[stop] != 0:
                raise BsonError(f"BSON string for key {key!r} does not end with NUL")
            return self.text(start, stop, "string"), stop + 1
        if kind == TYPE_DOCUMENT or kind == TYPE_ARRAY:
            return self.document(p, limit, depth + 1, array=kind == TYPE_ARRAY)
        if kind == TYPE_INT32:
            return self.int32(p, limit, "int32"), p + 4
        if kind == TYPE_INT64:
            if p + 8 > limit:
                raise BsonError(f"truncated int64 for key {key!r}")
            return Int64(_I64.unpack_from(buf, p)[0]), p + 8
        if kind == TYPE_NULL:
            return None, p
        if kind == TYPE_BOOL:
            if p + 1 > limit:
                raise BsonError(f"truncated bool for key {key!r}")
            flag = buf[p]
            if flag > 1:
                raise BsonError(f"BSON bool for key {key!r} is {flag}, not 0 or 1")
            return flag == 1, p + 1
        if kind == TYPE_DOUBLE:
            if p + 8 > limit:
                raise BsonError(f"truncated double for key {key!r}")
            return float(_F64.unpack_from(buf, p)[0]), p + 8
        if kind == TYPE_DATETIME:
            if p + 8 > limit:
                raise BsonError(f"truncated datetime for key {key!r}")
            try:
                return millis_to_datetime(_I64.unpack_from(buf, p)[0]), p + 8
            except ValueError as exc:
                raise BsonError(str(exc)) from None
        if kind == TYPE_BINARY:
            return self.binary(p, limit, key)
        raise BsonError(f"unsupported BSON type 0x{kind:02x} for key {key!r}")

    def binary(self, p: int, limit: int, key: str) -> tuple[Any, int]:
        length = self.int32(p, limit, "binary length")
        if length < 0 or p + 5 + length > limit:
            raise BsonError(f"bad BSON binary length {length} for key {key!r}")
        subtype = self.buf[p + 4]
        start = p + 5
        end = start + length
        data = self.buf[start:end]
        if subtype == SUBTYPE_GENERIC:
            return data, end
        if subtype == SUBTYPE_UUID and length == 16:
            return uuid.UUID(bytes_le=data), end
        if subtype == SUBTYPE_BINARY_OLD:
            if length < 4 or _I32.unpack_from(data, 0)[0] != length - 4:
                raise BsonError(f"bad inner length in BSON binary subtype 2 for key {key!r}")
            return Binary(subtype, data[4:]), end
        return Binary(subtype, data), end

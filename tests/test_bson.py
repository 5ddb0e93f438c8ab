"""The BSON codec: vectors, round trips, strictness, and agreement with pymongo's independent codec."""

from __future__ import annotations

import base64
import datetime as dt
import struct
import uuid
import zlib
from typing import Any

import bson as pymongo_bson  # pymongo's codec, the independent reference (not ours)
import pytest
from bson.binary import Binary as PymongoBinary
from bson.codec_options import CodecOptions
from bson.int64 import Int64 as PymongoInt64
from hypothesis import given
from hypothesis import strategies as st

from octopus_comms.halibut import bson
from octopus_comms.halibut.bson import Binary, BsonDocument, Int64
from octopus_comms.halibut.errors import BsonError, EncodeError, ProtocolError

UTC = dt.timezone.utc
CAPTURE = base64.b64decode(
    "nY6xTgNBDESHDTR8xRakQ1dRICSaRIfSBCHIDyxZk1tpsz6tfQE+mP/AgQVRU7gYe96Mn06A2ZpEwo7Qm3AX+j4SrgCsQk7Pk3abGoqM"
    "XLV7qKy85dw9ki2KUCMvffPCpYgzYyVKxIxq5YoP027fOk5NvDDDRdKQsuD2T1P/tqVRkyV3a9KB4z3rHU8lNsMyJyr667rxX0nt2B/L"
    "Nsfnr/8fCbfIYfgZzC3JAC+8NziVnR++Mf+acvZ0oGqbAwHnlWTKav5P"
)
KEEP_ALIVE = bytes.fromhex("0e000000 0a 4d65737361676500 00")
PYMONGO_OPTIONS: CodecOptions[Any] = CodecOptions(tz_aware=True, tzinfo=UTC)  # uuid_representation UNSPECIFIED


# -- strategies ---------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=12)
keys = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)


def _ms(value: dt.datetime) -> dt.datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


datetimes = st.datetimes(timezones=st.just(UTC)).map(_ms)
binaries = st.one_of(
    st.builds(Binary, st.sampled_from([1, 3, 5, 0x80, 0xFF]), st.binary(max_size=20)),
    st.builds(Binary, st.just(4), st.binary(max_size=20).filter(lambda b: len(b) != 16)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(bson.INT32_MIN, bson.INT32_MAX),
    st.integers(bson.INT64_MIN, bson.INT64_MAX).map(Int64),
    st.floats(allow_nan=False),
    text,
    st.binary(max_size=20),
    st.uuids(),
    binaries,
    datetimes,
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4).map(BsonDocument),
    ),
    max_leaves=20,
)
documents = st.dictionaries(keys, values, max_size=6).map(BsonDocument)


def same(a: Any, b: Any) -> bool:
    """Equal in value, Python type and key order (dicts compare as documents)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return bool(a == b)


def to_pymongo(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: to_pymongo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_pymongo(v) for v in value]
    if isinstance(value, uuid.UUID):
        return PymongoBinary(value.bytes_le, 4)  # .NET order, compared as raw binary
    if isinstance(value, Binary):
        return PymongoBinary(value.data, value.subtype)
    if isinstance(value, Int64):
        return PymongoInt64(value)
    return value


def from_pymongo(value: Any) -> Any:
    if isinstance(value, dict):
        return BsonDocument((k, from_pymongo(v)) for k, v in value.items())
    if isinstance(value, list):
        return [from_pymongo(v) for v in value]
    if isinstance(value, PymongoBinary):
        if value.subtype == 4 and len(value) == 16:
            return uuid.UUID(bytes_le=bytes(value))
        return Binary(value.subtype, bytes(value))
    if isinstance(value, PymongoInt64):
        return Int64(value)
    return value


# -- vectors ------------------------------------------------------------------------------------


def test_null_keep_alive_vector() -> None:
    assert bson.encode_document({"Message": None}) == KEEP_ALIVE
    document = bson.decode_document(KEEP_ALIVE)
    assert list(document.items()) == [("Message", None)]


def test_capture_round_trips_byte_for_byte() -> None:
    raw = zlib.decompress(CAPTURE, -15)
    assert len(raw) == 339
    document = bson.decode_document(raw)
    assert list(document["Message"]) == ["$type", "id", "error", "result"]
    assert list(document["Message"]["error"])[-1] == "BlahBlahBlah"
    assert bson.encode_document(document) == raw


def test_types_and_byte_layout() -> None:
    guid = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    encoded = bson.encode_document(
        {"g": guid, "i": 1, "l": Int64(1), "big": 2**40, "b": b"\x01", "t": True, "d": 1.5}
    )
    assert b"\x05g\x00\x10\x00\x00\x00\x04" + guid.bytes_le in encoded
    assert guid.bytes_le.hex() == "33221100554477668899aabbccddeeff"
    assert b"\x10i\x00\x01\x00\x00\x00" in encoded
    assert b"\x12l\x00\x01\x00\x00\x00\x00\x00\x00\x00" in encoded
    assert b"\x12big\x00" in encoded
    assert b"\x05b\x00\x01\x00\x00\x00\x00\x01" in encoded
    decoded = bson.decode_document(encoded)
    assert decoded["g"] == guid and type(decoded["l"]) is Int64 and type(decoded["i"]) is int
    assert type(decoded["big"]) is Int64


def test_arrays_use_index_keys() -> None:
    encoded = bson.encode_document({"a": ["x", None]})
    assert b"\x020\x00\x02\x00\x00\x00x\x00\x0a1\x00" in encoded
    assert bson.decode_document(encoded)["a"] == ["x", None]


def test_legacy_and_other_binary_subtypes() -> None:
    legacy = uuid.uuid4().bytes_le
    encoded = pymongo_bson.encode({"a": PymongoBinary(legacy, 3), "b": PymongoBinary(b"abc", 4)})
    decoded = bson.decode_document(encoded)
    assert decoded["a"] == Binary(3, legacy)
    assert decoded["b"] == Binary(4, b"abc")
    old = bson.encode_document({"o": Binary(2, b"xyz")})
    assert b"\x07\x00\x00\x00\x02\x03\x00\x00\x00xyz" in old
    assert bson.decode_document(old)["o"] == Binary(2, b"xyz")


def test_datetimes_are_utc_milliseconds() -> None:
    naive = dt.datetime(2024, 5, 6, 7, 8, 9, 999_999)
    decoded = bson.decode_document(bson.encode_document({"d": naive}))["d"]
    assert decoded == dt.datetime(2024, 5, 6, 7, 8, 9, 999_000, tzinfo=UTC)
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC)
    assert bson.datetime_to_millis(before_epoch) == -1
    other_zone = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert bson.decode_document(bson.encode_document({"d": other_zone}))["d"] == dt.datetime(
        2024, 1, 1, 10, tzinfo=UTC
    )


def test_lookup_matches_exactly_then_ignoring_case() -> None:
    document = BsonDocument([("Message", 1), ("message", 2), ("Other", 3)])
    assert document.lookup("message") == 2
    assert document.lookup("MESSAGE") == 1
    assert document.lookup("other") == 3
    assert document.lookup("missing", "default") == "default"


# -- strictness ---------------------------------------------------------------------------------


def _doc(body: bytes) -> bytes:
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x04\x00\x00\x00",
        b"\x05\x00\x00\x00",  # no terminator
        b"\x05\x00\x00\x00\x01",  # terminator not NUL
        b"\x06\x00\x00\x00\x00",  # claims more than there is
        _doc(b"\x0aab"),  # key without NUL
        _doc(b"\x08a\x00\x02"),  # bool 2
        _doc(b"\x07a\x00" + b"\x00" * 12),  # ObjectId: unsupported
        _doc(b"\x02a\x00\x00\x00\x00\x00"),  # string length 0
        _doc(b"\x02a\x00\x05\x00\x00\x00ab\x00"),  # string length overruns
        _doc(b"\x02a\x00\x02\x00\x00\x00ab"),  # string without NUL
        _doc(b"\x02a\x00\x03\x00\x00\x00\xff\xfe\x00"),  # invalid UTF-8
        _doc(b"\x02\xff\x00\x02\x00\x00\x00a\x00"),  # invalid UTF-8 key
        _doc(b"\x05a\x00\xff\xff\xff\xff\x00"),  # negative binary length
        _doc(b"\x05a\x00\x05\x00\x00\x00\x02\x02\x00\x00\x00x"),  # subtype 2 bad inner length
        _doc(b"\x09a\x00" + struct.pack("<q", 2**62)),  # datetime beyond year 9999
        _doc(b"\x10a\x00\x01\x00"),  # truncated int32
        _doc(b"\x0aa\x00\x0aa\x00"),  # duplicate key
        _doc(b"\x03a\x00\x06\x00\x00\x00\x00"),  # nested document overruns its parent
        _doc(b"\x0aa\x00") + b"\x00",  # trailing byte
    ],
)
def test_malformed_documents_raise_bson_error(data: bytes) -> None:
    with pytest.raises(BsonError):
        bson.decode_document(data)


def test_depth_and_size_limits() -> None:
    nested: dict[str, Any] = {}
    for _ in range(10):
        nested = {"n": nested}
    encoded = bson.encode_document(nested)
    assert bson.decode_document(encoded, max_depth=11)
    with pytest.raises(BsonError, match="deeper"):
        bson.decode_document(encoded, max_depth=10)
    with pytest.raises(BsonError, match="limit"):
        bson.decode_document(encoded, max_size=len(encoded) - 1)
    with pytest.raises(EncodeError):
        bson.encode_document(nested, max_depth=5)


@pytest.mark.parametrize(
    "document",
    [
        {"a\x00b": 1},
        {"a": "\ud800"},
        {"a": 2**63},
        {"a": Int64(-(2**63) - 1)},
        {"a": object()},
        {1: "x"},
        {"a": dt.date(2020, 1, 1)},
    ],
)
def test_unencodable_values_raise_encode_error(document: dict[Any, Any]) -> None:
    with pytest.raises(EncodeError):
        bson.encode_document(document)


# -- properties ---------------------------------------------------------------------------------


@given(documents)
def test_round_trip_keeps_values_types_and_order(document: BsonDocument) -> None:
    encoded = bson.encode_document(document)
    decoded = bson.decode_document(encoded)
    assert same(decoded, document)
    assert bson.encode_document(decoded) == encoded


@given(documents)
def test_same_bytes_as_pymongo_and_each_reads_the_other(document: BsonDocument) -> None:
    ours = bson.encode_document(document)
    theirs = pymongo_bson.encode(to_pymongo(document))
    assert ours == theirs
    read_by_pymongo = pymongo_bson.decode(ours, codec_options=PYMONGO_OPTIONS)
    assert same(from_pymongo(read_by_pymongo), document)
    assert same(bson.decode_document(theirs), document)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        bson.decode_document(data)
    except ProtocolError:
        pass


@given(documents, st.data())
def test_damaged_documents_raise_only_protocol_errors(document: BsonDocument, data: Any) -> None:
    encoded = bytearray(bson.encode_document(document))
    cut = data.draw(st.integers(0, len(encoded)))
    flips = data.draw(st.lists(st.integers(0, len(encoded) * 8 - 1), max_size=4))
    for bit in flips:
        encoded[bit // 8] ^= 1 << (bit % 8)
    for candidate in (bytes(encoded), bytes(encoded[:cut])):
        try:
            bson.decode_document(candidate)
        except ProtocolError:
            pass

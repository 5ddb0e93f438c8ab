"""Newtonsoft.Json conventions (as Halibut configures them) ↔ typed Python objects.

Halibut serializes with `TypeNameHandling.Auto`: a `$type` ("Namespace.Type, Assembly") is the
first key of an object exactly where the declared .NET type is `object` (the envelope's message,
each `params` item, `result`), never where the type is declared (`endpoint`, `error`, nested
contracts) and never on null or primitives. Members are written in declaration order, nulls
included; readers match names ignoring case and skip unknown ones. TimeSpan travels as "c"-format
text, enums as int32, Guid as binary subtype 4 in .NET byte order, DateTime as a BSON datetime.

Reading is lenient where .NET is (int32 ↔ int64, enum names, Guid text, unknown `$type` kept as a
raw BsonDocument, null for a non-nullable member = the member's default) and strict everywhere else:
a value of the wrong kind raises SerializationError with the path to it. DataStreams are collected
in serialization order, which is the order their blocks follow the message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as _dt
import enum
import types
import typing
import uuid
from collections.abc import Mapping
from typing import Any, Union

from . import bson, contracts, wire  # noqa: F401  (contracts registers its types on import)
from .errors import EncodeError, ProtocolError, SerializationError
from .messages import DataStream
from .timespan import format_timespan, parse_timespan

TYPE_KEY = "$type"
VALUES_KEY = "$values"
ENVELOPE_KEY = "Message"

_MISSING = object()


class _Context:
    """Per-message state: the serializer's settings and the DataStreams met so far."""

    __slots__ = ("serializer", "streams")

    def __init__(self, serializer: Serializer) -> None:
        self.serializer = serializer
        self.streams: list[DataStream] = []


class _Codec:
    """Encodes one declared .NET type to a BSON-ready Python value and back."""

    nullable = False

    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        raise NotImplementedError

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        raise NotImplementedError


def _wrong(path: str, expected: str, raw: Any) -> SerializationError:
    return SerializationError(f"{path}: expected {expected}, got {type(raw).__name__}")


def _bad_value(path: str, expected: str, value: Any) -> EncodeError:
    return EncodeError(f"{path}: cannot write {type(value).__name__} {value!r:.60} as {expected}")


class _StrCodec(_Codec):
    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(value, str):
            raise _bad_value(path, "a string", value)
        return value

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(raw, str):
            raise _wrong(path, "a string", raw)
        return raw


class _BoolCodec(_Codec):
    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(value, bool):
            raise _bad_value(path, "a bool", value)
        return value

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int):
            return raw != 0
        raise _wrong(path, "a bool", raw)


def _integral(raw: Any, path: str, what: str) -> int:
    if isinstance(raw, bool):
        raise _wrong(path, what, raw)
    if isinstance(raw, int):
        return int(raw)
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    raise _wrong(path, what, raw)


class _IntCodec(_Codec):
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.low, self.high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.what = f"an int{bits}"

    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_value(path, self.what, value)
        if not self.low <= value <= self.high:
            raise _bad_value(path, self.what, value)
        return bson.Int64(value) if self.bits == 64 else int(value)

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        value = _integral(raw, path, self.what)
        if not self.low <= value <= self.high:
            raise SerializationError(f"{path}: {value} does not fit in {self.what}")
        return value


class _FloatCodec(_Codec):
    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad_value(path, "a double", value)
        return float(value)

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise _wrong(path, "a number", raw)
        return float(raw)


class _EnumCodec(_Codec):
    """Enums are int32 on the wire; unknown numbers (a newer peer) are kept as plain ints."""

    def __init__(self, enum_type: type[enum.IntEnum]) -> None:
        self.enum_type = enum_type
        self.by_name = {member.name.lower(): member for member in enum_type}

    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_value(path, self.enum_type.__name__, value)
        if not bson.INT32_MIN <= value <= bson.INT32_MAX:
            raise _bad_value(path, self.enum_type.__name__, value)
        return int(value)

    def from_number(self, number: int, path: str) -> Any:
        if not bson.INT32_MIN <= number <= bson.INT32_MAX:
            raise SerializationError(f"{path}: {number} does not fit in an enum")
        try:
            return self.enum_type(number)
        except ValueError:
            return number

    def from_name(self, name: str, path: str) -> Any:
        member = self.by_name.get(name.strip().lower())
        if member is not None:
            return member
        text = name.strip()
        if text[:1] == "-":
            text = text[1:]
        if text.isascii() and text.isdigit() and len(text) <= 11:
            return self.from_number(int(name), path)
        raise SerializationError(f"{path}: {name!r} is not a {self.enum_type.__name__}")

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if isinstance(raw, str):
            return self.from_name(raw, path)
        return self.from_number(_integral(raw, path, self.enum_type.__name__), path)


class _GuidCodec(_Codec):
    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(value, uuid.UUID):
            raise _bad_value(path, "a Guid", value)
        return value

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if isinstance(raw, uuid.UUID):
            return raw
        if isinstance(raw, bson.Binary) and len(raw.data) == 16:
            return uuid.UUID(bytes_le=raw.data)
        if isinstance(raw, bytes) and len(raw) == 16:
            return uuid.UUID(bytes_le=raw)
        if isinstance(raw, str):
            try:
                return uuid.UUID(raw)
            except ValueError:
                raise SerializationError(f"{path}: {raw!r:.60} is not a Guid") from None
        raise _wrong(path, "a Guid", raw)


class _TimeSpanCodec(_Codec):
    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(value, _dt.timedelta):
            raise _bad_value(path, "a TimeSpan", value)
        try:
            return format_timespan(value)
        except ValueError as exc:
            raise EncodeError(f"{path}: {exc}") from None

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(raw, str):
            raise _wrong(path, "a TimeSpan string", raw)
        try:
            return parse_timespan(raw)
        except ValueError as exc:
            raise SerializationError(f"{path}: {exc}") from None


class _DateTimeCodec(_Codec):
    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(value, _dt.datetime):
            raise _bad_value(path, "a DateTime", value)
        return value

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if isinstance(raw, str):
            try:
                raw = _dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
            except ValueError:
                raise SerializationError(f"{path}: {raw!r:.60} is not a date") from None
        if not isinstance(raw, _dt.datetime):
            raise _wrong(path, "a DateTime", raw)
        if raw.tzinfo is None:
            return raw.replace(tzinfo=bson.UTC)
        try:
            return raw.astimezone(bson.UTC)
        except OverflowError:
            raise SerializationError(f"{path}: {raw!r} is out of range in UTC") from None


class _BytesCodec(_Codec):
    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise _bad_value(path, "a byte[]", value)
        return bytes(value)

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if isinstance(raw, bytes):
            return raw
        if isinstance(raw, bson.Binary):
            return raw.data
        if isinstance(raw, str):
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise SerializationError(f"{path}: string is not base64") from None
        raise _wrong(path, "a byte[]", raw)


class _OptionalCodec(_Codec):
    nullable = True

    def __init__(self, inner: _Codec) -> None:
        self.inner = inner

    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        return None if value is None else self.inner.encode(value, ctx, path)

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        return None if raw is None else self.inner.decode(raw, ctx, path)


class _ListCodec(_Codec):
    def __init__(self, item: _Codec) -> None:
        self.item = item

    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _bad_value(path, "an array", value)
        return [self.item.encode(item, ctx, f"{path}[{i}]") for i, item in enumerate(value)]

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if isinstance(raw, Mapping) and isinstance(raw.get(VALUES_KEY), list):
            raw = raw[VALUES_KEY]
        if not isinstance(raw, list):
            raise _wrong(path, "an array", raw)
        items = []
        for i, item in enumerate(raw):
            if item is None and not self.item.nullable:
                raise SerializationError(f"{path}[{i}]: null is not allowed here")
            items.append(self.item.decode(item, ctx, f"{path}[{i}]"))
        return items


class _DictCodec(_Codec):
    """A .NET Dictionary: a BSON document whose keys are strings or enum names."""

    def __init__(self, key_enum: _EnumCodec | None, value: _Codec) -> None:
        self.key_enum = key_enum
        self.value = value

    def encode_key(self, key: Any, path: str) -> str:
        if self.key_enum is None:
            if not isinstance(key, str):
                raise _bad_value(path, "a string key", key)
            return key
        if isinstance(key, self.key_enum.enum_type):
            return key.name
        if isinstance(key, int) and not isinstance(key, bool):
            return str(int(key))
        raise _bad_value(path, f"a {self.key_enum.enum_type.__name__} key", key)

    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise _bad_value(path, "a dictionary", value)
        document = bson.BsonDocument()
        for key, item in value.items():
            name = self.encode_key(key, path)
            document[name] = self.value.encode(item, ctx, f"{path}.{name}")
        return document

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(raw, Mapping):
            raise _wrong(path, "a dictionary", raw)
        result: dict[Any, Any] = {}
        for name, item in raw.items():
            key = name if self.key_enum is None else self.key_enum.from_name(name, path)
            if item is None and not self.value.nullable:
                raise SerializationError(f"{path}.{name}: null is not allowed here")
            result[key] = self.value.decode(item, ctx, f"{path}.{name}")
        return result


@dataclasses.dataclass(frozen=True)
class _Member:
    attribute: str
    wire_name: str
    codec: _Codec


class _ContractCodec(_Codec):
    """A dataclass declared by type: its members in order, no `$type` unless in an object slot."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self._members: list[_Member] | None = None
        self._exact: dict[str, _Member] = {}
        self._folded: dict[str, _Member] = {}

    @property
    def members(self) -> list[_Member]:
        if self._members is None:
            hints = typing.get_type_hints(self.cls, include_extras=True)
            members = [
                _Member(f.name, wire.wire_name_of(f), codec_for(hints[f.name]))
                for f in dataclasses.fields(self.cls)
                if wire.is_on_wire(f)
            ]
            self._exact = {m.wire_name: m for m in members}
            self._folded = {}
            for member in members:
                self._folded.setdefault(member.wire_name.lower(), member)
            self._members = members
        return self._members

    def encode(self, value: Any, ctx: _Context, path: str, *, type_name: str | None = None) -> Any:
        if not isinstance(value, self.cls):
            raise _bad_value(path, self.cls.__name__, value)
        document = bson.BsonDocument()
        if type_name is not None:
            document[TYPE_KEY] = type_name
        for member in self.members:
            document[member.wire_name] = member.codec.encode(
                getattr(value, member.attribute), ctx, f"{path}.{member.wire_name}"
            )
        if isinstance(value, DataStream):
            ctx.streams.append(value)
        return document

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if not isinstance(raw, Mapping):
            raise _wrong(path, f"an object ({self.cls.__name__})", raw)
        members = self.members
        assert members is not None
        values: dict[str, Any] = {}
        for name, item in raw.items():
            member = self._exact.get(name) or self._folded.get(name.lower())
            if member is None:
                continue  # unknown members (and $type) are ignored, as Newtonsoft does
            if item is None and not member.codec.nullable:
                values.pop(member.attribute, None)  # null for a non-nullable member: default
                continue
            values[member.attribute] = member.codec.decode(item, ctx, f"{path}.{member.wire_name}")
        result = self.cls(**values)
        if isinstance(result, DataStream):
            ctx.streams.append(result)
        return result


class _ObjectCodec(_Codec):
    """A member declared `object`: `$type` on objects, primitives as they are."""

    nullable = True

    def encode(self, value: Any, ctx: _Context, path: str) -> Any:
        if value is None or isinstance(
            value, (bool, str, float, bson.Int64, uuid.UUID, _dt.datetime, bytes, bson.Binary)
        ):
            return value
        if isinstance(value, int):
            return int(value)  # enums too: never strings
        if isinstance(value, _dt.timedelta):
            return _TimeSpanCodec().encode(value, ctx, path)
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            serializer = ctx.serializer
            type_name = serializer.registry.type_name(
                type(value), legacy=serializer.legacy_type_names
            )
            if type_name is None:
                raise EncodeError(f"{path}: {type(value).__name__} has no registered .NET type")
            codec = _contract_codec(type(value))
            return codec.encode(value, ctx, path, type_name=type_name)
        if isinstance(value, Mapping):
            document = bson.BsonDocument()
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _bad_value(path, "an object with string keys", value)
                document[key] = self.encode(item, ctx, f"{path}.{key}")
            return document
        if isinstance(value, (list, tuple)):
            return [self.encode(item, ctx, f"{path}[{i}]") for i, item in enumerate(value)]
        raise _bad_value(path, "an object", value)

    def decode(self, raw: Any, ctx: _Context, path: str) -> Any:
        if isinstance(raw, list):
            return [self.decode(item, ctx, f"{path}[{i}]") for i, item in enumerate(raw)]
        if not isinstance(raw, Mapping):
            return raw
        type_name = raw.get(TYPE_KEY)
        if not isinstance(type_name, str):
            return raw  # an object without $type: kept as a raw document
        if VALUES_KEY in raw:
            values = raw[VALUES_KEY]
            if not isinstance(values, list):
                raise _wrong(f"{path}.{VALUES_KEY}", "an array", values)
            return self.decode(values, ctx, path)
        cls = ctx.serializer.registry.resolve(type_name)
        if cls is None or not dataclasses.is_dataclass(cls):
            return raw  # an unknown $type: kept as a raw document, not an error
        return _contract_codec(cls).decode(raw, ctx, path)


_CODECS: dict[Any, _Codec] = {}
_CONTRACT_CODECS: dict[type, _ContractCodec] = {}
_SIMPLE: dict[Any, _Codec] = {
    str: _StrCodec(),
    bool: _BoolCodec(),
    int: _IntCodec(32),
    float: _FloatCodec(),
    bytes: _BytesCodec(),
    uuid.UUID: _GuidCodec(),
    _dt.timedelta: _TimeSpanCodec(),
    _dt.datetime: _DateTimeCodec(),
    Any: _ObjectCodec(),
    object: _ObjectCodec(),
}


def _contract_codec(cls: type) -> _ContractCodec:
    codec = _CONTRACT_CODECS.get(cls)
    if codec is None:
        codec = _CONTRACT_CODECS[cls] = _ContractCodec(cls)
    return codec


def _is_int_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.IntEnum)


def codec_for(declared: Any) -> _Codec:
    """The codec of a declared member type (a type hint of a contract dataclass)."""
    cached = _CODECS.get(declared)
    if cached is not None:
        return cached
    codec = _build_codec(declared)
    _CODECS[declared] = codec
    return codec


def _build_codec(declared: Any) -> _Codec:
    if declared in _SIMPLE:
        return _SIMPLE[declared]
    origin = typing.get_origin(declared)
    args = typing.get_args(declared)
    if origin is typing.Annotated:
        for extra in args[1:]:
            if isinstance(extra, wire.IntWidth):
                return _IntCodec(extra.bits)
        return codec_for(args[0])
    if origin is Union or origin is types.UnionType:
        present = [arg for arg in args if arg is not type(None)]
        enums = [arg for arg in present if _is_int_enum(arg)]
        if len(enums) == 1 and set(present) <= {enums[0], int}:
            inner: _Codec = _EnumCodec(enums[0])
        elif len(present) == 1:
            inner = codec_for(present[0])
        else:
            raise TypeError(f"no Halibut encoding for the union {declared!r}")
        return _OptionalCodec(inner) if len(present) < len(args) else inner
    if origin is list:
        return _ListCodec(codec_for(args[0]))
    if origin is dict:
        key = codec_for(args[0])
        if isinstance(key, _EnumCodec):
            return _DictCodec(key, codec_for(args[1]))
        if isinstance(key, _StrCodec):
            return _DictCodec(None, codec_for(args[1]))
        raise TypeError(f"no Halibut encoding for dictionary keys of {args[0]!r}")
    if _is_int_enum(declared):
        return _EnumCodec(declared)
    if isinstance(declared, type) and dataclasses.is_dataclass(declared):
        return _contract_codec(declared)
    raise TypeError(f"no Halibut encoding for {declared!r}")


class Serializer:
    """Writes and reads Halibut messages as BSON, Newtonsoft style.

    `legacy_type_names=True` writes the `Octopus.Shared.Contracts.X, Octopus.Shared` names of the
    older contract types, as a real Tentacle does; reading always accepts both spellings."""

    def __init__(
        self,
        registry: wire.TypeRegistry = wire.DEFAULT_REGISTRY,
        *,
        legacy_type_names: bool = False,
        max_depth: int = bson.DEFAULT_MAX_DEPTH,
        max_size: int = bson.DEFAULT_MAX_SIZE,
    ) -> None:
        self.registry = registry
        self.legacy_type_names = legacy_type_names
        self.max_depth = max_depth
        self.max_size = max_size

    # -- whole messages ---------------------------------------------------------------------

    def encode_envelope(self, message: Any) -> tuple[bytes, list[DataStream]]:
        """BSON of `{"Message": message}` and the DataStreams in it, in serialization order.
        `message=None` gives the 14-byte null keep-alive."""
        ctx = _Context(self)
        value = _SIMPLE[Any].encode(message, ctx, ENVELOPE_KEY)
        data = bson.encode_document({ENVELOPE_KEY: value}, max_depth=self.max_depth)
        return data, ctx.streams

    def decode_envelope(
        self, data: bytes | bytearray | memoryview, expected: type | None = None
    ) -> tuple[Any, list[DataStream]]:
        """The message of a BSON envelope and its DataStreams in serialization order.

        With `expected` (RequestMessage or ResponseMessage) a message without `$type` is read as
        that type and one with another known `$type` is an error; without it the `$type` decides.
        Raises only ProtocolError subclasses on bad input."""
        document = bson.decode_document(data, max_size=self.max_size, max_depth=self.max_depth)
        raw = document.lookup(ENVELOPE_KEY, _MISSING)
        if raw is _MISSING:
            raise SerializationError("the envelope has no Message member")
        ctx = _Context(self)
        message = self._decode_guarded(raw, expected, ctx)
        return message, ctx.streams

    def _decode_guarded(self, raw: Any, expected: type | None, ctx: _Context) -> Any:
        try:
            if raw is None:
                return None
            if expected is None:
                return _SIMPLE[Any].decode(raw, ctx, ENVELOPE_KEY)
            if not isinstance(raw, Mapping):
                raise _wrong(ENVELOPE_KEY, f"a {expected.__name__}", raw)
            type_name = raw.get(TYPE_KEY)
            if isinstance(type_name, str) and self.registry.resolve(type_name) is not expected:
                raise SerializationError(
                    f"expected a {expected.__name__}, got $type {type_name!r:.100}"
                )
            return _contract_codec(expected).decode(raw, ctx, ENVELOPE_KEY)
        except ProtocolError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # safety net
            raise SerializationError(f"cannot read the message: {exc}") from None

    # -- single values (for tests and tools) ------------------------------------------------

    def to_bson(self, value: Any) -> Any:
        """`value` as an `object` member: a BsonDocument with `$type` for contracts."""
        return _SIMPLE[Any].encode(value, _Context(self), "value")

    def from_bson(self, raw: Any, declared: Any = Any) -> Any:
        """Read a decoded BSON value as the declared type (default `object`: `$type` decides)."""
        ctx = _Context(self)
        try:
            return codec_for(declared).decode(raw, ctx, "value")
        except ProtocolError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise SerializationError(f"cannot read the value: {exc}") from None


DEFAULT_SERIALIZER = Serializer()


def encode_envelope(message: Any) -> tuple[bytes, list[DataStream]]:
    """`DEFAULT_SERIALIZER.encode_envelope`."""
    return DEFAULT_SERIALIZER.encode_envelope(message)


def decode_envelope(
    data: bytes | bytearray | memoryview, expected: type | None = None
) -> tuple[Any, list[DataStream]]:
    """`DEFAULT_SERIALIZER.decode_envelope`."""
    return DEFAULT_SERIALIZER.decode_envelope(data, expected)

"""How a Python dataclass declares its Halibut wire shape: .NET type name, member names, int widths.

Contracts stay plain dataclasses; the serializer reads these declarations. Member names default to
the PascalCase of the attribute (`task_id` → `TaskId`), as Newtonsoft writes .NET properties; a
`[JsonProperty("id")]` becomes `wire.field("id")`. `wire.Int32` / `wire.Int64` say which integer
width .NET declares, because Newtonsoft writes a `long` as BSON int64 even when it is small.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

T = TypeVar("T")


class IntWidth:
    """Marker inside `Annotated[int, …]`: the .NET integer type of a member."""

    __slots__ = ("bits",)

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def __repr__(self) -> str:
        return f"IntWidth({self.bits})"


INT32 = IntWidth(32)
INT64 = IntWidth(64)

Int32 = Annotated[int, INT32]
"""A .NET `int`: BSON int32."""

Int64 = Annotated[int, INT64]
"""A .NET `long`: BSON int64, always."""

WIRE_NAME = "halibut_wire_name"
LOCAL_ONLY = "halibut_local_only"


def field(wire_name: str | None = None, **kwargs: Any) -> Any:
    """A dataclass field with an explicit wire name (for `[JsonProperty("…")]` members)."""
    return dataclasses.field(metadata={WIRE_NAME: wire_name}, **kwargs)


def local(**kwargs: Any) -> Any:
    """A dataclass field that never goes on the wire (not compared, not shown in repr)."""
    kwargs.setdefault("compare", False)
    kwargs.setdefault("repr", False)
    return dataclasses.field(metadata={LOCAL_ONLY: True}, **kwargs)


def pascal_case(attribute: str) -> str:
    """`script_isolation_mutex_timeout` → `ScriptIsolationMutexTimeout`."""
    return "".join(part[:1].upper() + part[1:] for part in attribute.split("_"))


def wire_name_of(f: dataclasses.Field[Any]) -> str:
    """The member name a dataclass field has on the wire."""
    explicit = f.metadata.get(WIRE_NAME)
    return explicit if explicit else pascal_case(f.name)


def is_on_wire(f: dataclasses.Field[Any]) -> bool:
    """False for fields declared with `wire.local()`."""
    return not f.metadata.get(LOCAL_ONLY, False)


def split_type_name(type_name: str) -> tuple[str, str]:
    """`"Ns.Type, Assembly"` → (`"Ns.Type"`, `"Assembly"`); the comma is the first one outside
    generic brackets (`List`1[[System.String, mscorlib]], mscorlib`)."""
    depth = 0
    for index, char in enumerate(type_name):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            return type_name[:index].strip(), type_name[index + 1 :].strip()
    return type_name.strip(), ""


def short_type_name(type_name: str) -> str:
    """The class name without namespace or assembly: `"Octopus.Shared.Contracts.X, Y"` → `"X"`."""
    full, _ = split_type_name(type_name)
    generic = full.find("[")
    if generic >= 0:
        full = full[:generic]
    return full.rsplit(".", 1)[-1]


class TypeRegistry:
    """Maps `$type` names to classes and back. Reading matches on the short name (so both the
    `Octopus.Tentacle.Contracts` and the legacy `Octopus.Shared.Contracts` spellings resolve);
    writing uses the canonical name, or the legacy one when asked to write like a real Tentacle."""

    def __init__(self) -> None:
        self._by_short: dict[str, type] = {}
        self._by_short_folded: dict[str, type] = {}
        self._names: dict[type, tuple[str, str | None]] = {}

    def register(self, cls: type, type_name: str, legacy_type_name: str | None = None) -> None:
        """Register `cls` under `type_name` ("Namespace.Type, Assembly")."""
        short = short_type_name(type_name)
        existing = self._by_short.get(short)
        if existing is not None and existing is not cls:
            raise ValueError(f"two classes registered with the short type name {short!r}")
        self._by_short[short] = cls
        self._by_short_folded.setdefault(short.lower(), cls)
        self._names[cls] = (type_name, legacy_type_name)

    def resolve(self, type_name: str) -> type | None:
        """The class registered for a `$type` value, by short name (exact, then ignoring case)."""
        short = short_type_name(type_name)
        return self._by_short.get(short) or self._by_short_folded.get(short.lower())

    def type_name(self, cls: type, *, legacy: bool = False) -> str | None:
        """The `$type` to write for `cls` (None if unregistered)."""
        names = self._names.get(cls)
        if names is None:
            return None
        canonical, legacy_name = names
        return legacy_name if legacy and legacy_name else canonical

    def classes(self) -> list[type]:
        """Every registered class, in registration order."""
        return list(self._names)


DEFAULT_REGISTRY = TypeRegistry()


def contract(
    type_name: str, *, legacy: str | None = None, registry: TypeRegistry = DEFAULT_REGISTRY
) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a dataclass (or enum) under its .NET type name."""

    def register(cls: type[T]) -> type[T]:
        registry.register(cls, type_name, legacy)
        return cls

    return register

"""Tentacle's command-line option grammar (its fork of Mono.Options), as a pure parser.

Why our own parser: Tentacle's CLI is not POSIX. Scripts written for the real one must work here:
  - an option is `--name`, `-name` or `/name`; names match case-insensitively
    (`--pollingConnectionCount` = `--POLLINGCONNECTIONCOUNT`); aliases (`--home` / `--homedir`);
  - a value follows `=` or `:` in the same argument, or is the next argument whatever it looks like
    (`--server https://x`, `--server=https://x`, `--server:https://x`);
  - a switch is bare (`--force`), may carry a boolean (`--force=false`, `--force:true`, `--force-`,
    `--force+`), and consumes a following `true`/`false` (`--noListen True`, as the real install
    scripts write it);
  - repeatable options collect every value (`--environment A --environment B`); for the others the
    last occurrence wins, as in Mono.Options;
  - anything else is an error: `Unrecognized command line arguments: …`, and a value option at the
    end: `Missing required value for option '--server'.`
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tentacle import TentacleError

_OPTION_TOKEN = re.compile(r"(?P<flag>--|-|/)(?P<name>[^:=]+)(?:(?P<sep>[:=])(?P<value>.*))?",
                           re.DOTALL)
_TRUE_WORDS = frozenset({"true"})
_FALSE_WORDS = frozenset({"false"})


class OptionError(TentacleError):
    """The arguments do not fit the command's options."""


@dataclass(frozen=True)
class OptionSpec:
    """One option of a command; help prints `names` in order, `name` is the canonical one.

    `takes_value=False` makes a switch (a boolean); `repeatable` collects every value.
    """

    names: tuple[str, ...]
    takes_value: bool
    description: str = ""
    repeatable: bool = False
    value_name: str = "VALUE"
    hidden: bool = False

    @property
    def name(self) -> str:
        """The canonical name: the first long one (`force` for `-f|--force`)."""
        return next((n for n in self.names if len(n) > 1), self.names[0])


def value_option(*names: str, description: str = "", repeatable: bool = False,
                 value_name: str = "VALUE", hidden: bool = False) -> OptionSpec:
    return OptionSpec(names=names, takes_value=True, description=description,
                      repeatable=repeatable, value_name=value_name, hidden=hidden)


def switch(*names: str, description: str = "", hidden: bool = False) -> OptionSpec:
    return OptionSpec(names=names, takes_value=False, description=description, hidden=hidden)


@dataclass(frozen=True)
class ParsedOptions:
    """The result: every occurrence in order, keyed by canonical name.

    Switch values are "true"/"false"; `flag()` reads them as bools.
    """

    occurrences: tuple[tuple[str, str], ...] = ()
    _by_name: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def given(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str, default: str | None = None) -> str | None:
        """The last value given for `name` (Mono.Options: the last occurrence wins)."""
        values = self._by_name.get(name)
        return values[-1] if values else default

    def get_all(self, name: str) -> tuple[str, ...]:
        return self._by_name.get(name, ())

    def flag(self, name: str) -> bool:
        return self.get(name) == "true"


def parse_bool_word(text: str) -> bool | None:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return None


def build_index(specs: Iterable[OptionSpec]) -> dict[str, OptionSpec]:
    """Lower-cased name → spec; ValueError when two specs claim the same name."""
    index: dict[str, OptionSpec] = {}
    for spec in specs:
        for name in spec.names:
            key = name.lower()
            if key in index and index[key] is not spec:
                raise ValueError(f"option name {name!r} is defined twice")
            index[key] = spec
    return index


def parse_options(specs: Sequence[OptionSpec], args: Sequence[str]) -> ParsedOptions:
    """Parse `args` (the arguments after the command name) against `specs`."""
    index = build_index(specs)
    occurrences: list[tuple[str, str]] = []
    unrecognized: list[str] = []
    position = 0
    count = len(args)
    while position < count:
        argument = args[position]
        position += 1
        if argument == "--":
            unrecognized.extend(args[position:])
            break
        match = _OPTION_TOKEN.fullmatch(argument)
        if match is None:
            unrecognized.append(argument)
            continue
        flag, name = match.group("flag"), match.group("name")
        attached = match.group("value") if match.group("sep") is not None else None
        spec = index.get(name.lower())
        if spec is None:
            if name[-1:] in ("+", "-") and attached is None:
                base = index.get(name[:-1].lower())
                if base is not None and not base.takes_value:
                    occurrences.append((base.name, "true" if name[-1] == "+" else "false"))
                    continue
            unrecognized.append(argument)
            continue
        typed = flag + name
        if spec.takes_value:
            if attached is None:
                if position >= count:
                    raise OptionError(f"Missing required value for option '{typed}'.")
                attached = args[position]
                position += 1
            occurrences.append((spec.name, attached))
            continue
        if attached is not None:
            value = parse_bool_word(attached)
            if value is None:
                raise OptionError(f"The value '{attached}' of option '{typed}' is not true or "
                                  "false.")
        else:
            value = True
            if position < count:
                following = parse_bool_word(args[position])
                if following is not None:
                    value = following
                    position += 1
        occurrences.append((spec.name, "true" if value else "false"))
    if unrecognized:
        raise OptionError("Unrecognized command line arguments: " + " ".join(unrecognized))
    by_name: dict[str, tuple[str, ...]] = {}
    for name, text in occurrences:
        by_name[name] = (*by_name.get(name, ()), text)
    return ParsedOptions(occurrences=tuple(occurrences), _by_name=by_name)


def format_option_help(specs: Sequence[OptionSpec], width: int = 29) -> str:
    """Mono.Options' option table: `      --name=VALUE` padded to `width`, then the description."""
    lines = []
    for spec in specs:
        if spec.hidden:
            continue
        names = ", ".join(("-" if len(n) == 1 else "--") + n for n in spec.names)
        prototype = ("  " if len(spec.names[0]) == 1 else "      ") + names.lstrip()
        if spec.takes_value:
            prototype += "=" + spec.value_name
        if len(prototype) < width:
            lines.append(prototype.ljust(width) + spec.description)
        else:
            lines.append(prototype)
            lines.append(" " * width + spec.description)
    return "\n".join(lines)

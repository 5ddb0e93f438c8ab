""".NET TimeSpan text, as Newtonsoft writes it ("c" format) and reads it (TimeSpan.Parse).

Halibut carries every TimeSpan as a string such as "00:02:00", "1.02:03:04" or "00:00:00.5000000";
Python's timedelta is the natural value, exact to the microsecond (a .NET tick is 100 ns, so
sub-microsecond digits are dropped when reading).
"""

from __future__ import annotations

import datetime as _dt
import re

TICKS_PER_MICROSECOND = 10
TICKS_PER_SECOND = 10_000_000
TICKS_PER_MINUTE = 60 * TICKS_PER_SECOND
TICKS_PER_HOUR = 60 * TICKS_PER_MINUTE
TICKS_PER_DAY = 24 * TICKS_PER_HOUR
MAX_TICKS = 2**63 - 1
MIN_TICKS = -(2**63)

_PATTERN = re.compile(
    r"""\s*(?P<sign>-)?
    (?:
        (?P<only_days>[0-9]{1,8})
      | (?:(?P<days>[0-9]{1,8})\.)?
        (?P<hours>[0-9]{1,2}):(?P<minutes>[0-9]{1,2})
        (?::(?P<seconds>[0-9]{1,2})(?:\.(?P<fraction>[0-9]{1,7}))?)?
    )\s*""",
    re.VERBOSE | re.ASCII,
)


def to_ticks(value: _dt.timedelta) -> int:
    """The .NET tick count (100 ns units) of a timedelta."""
    return (value.days * 86_400 + value.seconds) * TICKS_PER_SECOND + (
        value.microseconds * TICKS_PER_MICROSECOND
    )


def format_timespan(value: _dt.timedelta) -> str:
    """The constant ("c") format of .NET: [-][d.]hh:mm:ss[.fffffff]. ValueError beyond the
    TimeSpan range (about ±10.7 million days)."""
    ticks = to_ticks(value)
    if not MIN_TICKS <= ticks <= MAX_TICKS:
        raise ValueError(f"{value!r} is outside the range of a .NET TimeSpan")
    sign = "-" if ticks < 0 else ""
    days, rest = divmod(abs(ticks), TICKS_PER_DAY)
    hours, rest = divmod(rest, TICKS_PER_HOUR)
    minutes, rest = divmod(rest, TICKS_PER_MINUTE)
    seconds, fraction = divmod(rest, TICKS_PER_SECOND)
    text = f"{sign}{f'{days}.' if days else ''}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{text}.{fraction:07d}" if fraction else text


def parse_timespan(text: str) -> _dt.timedelta:
    """Read the forms TimeSpan.Parse accepts in the invariant culture: "d", "hh:mm",
    "[d.]hh:mm:ss[.fffffff]", with an optional leading "-". ValueError for anything else."""
    match = _PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a TimeSpan")
    if match["only_days"] is not None:
        ticks = int(match["only_days"]) * TICKS_PER_DAY
    else:
        hours, minutes = int(match["hours"]), int(match["minutes"])
        seconds = int(match["seconds"] or 0)
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ValueError(f"{text!r} has a component out of range")
        fraction = (match["fraction"] or "").ljust(7, "0")
        ticks = (
            int(match["days"] or 0) * TICKS_PER_DAY
            + hours * TICKS_PER_HOUR
            + minutes * TICKS_PER_MINUTE
            + seconds * TICKS_PER_SECOND
            + int(fraction)
        )
    if match["sign"]:
        ticks = -ticks
    if not MIN_TICKS <= ticks <= MAX_TICKS:
        raise ValueError(f"{text!r} is outside the range of a .NET TimeSpan")
    micros = abs(ticks) // TICKS_PER_MICROSECOND
    return _dt.timedelta(microseconds=-micros if ticks < 0 else micros)

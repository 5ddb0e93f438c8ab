"""The Prometheus text exposition format (version 0.0.4), pure: counters in, text out.

Why our own: the format is small and fixed, and a dependency for a few dozen lines of escaping is
not worth it. The front door and the comms server both build `MetricFamily` values from the
counters they already keep and call `render`; `Histogram` is the one piece of state kept only
for metrics (a few cumulative buckets, a sum and a count).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Labels = tuple[tuple[str, str], ...]


def format_value(value: float | int) -> str:
    """A sample value as Prometheus writes it: integers plainly, `+Inf`, `-Inf`, `NaN`."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Histogram:
    """Observations counted into fixed upper bounds (plus +Inf), with their sum and count."""

    def __init__(self, buckets: Sequence[float]) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or any(math.isnan(b) or math.isinf(b) for b in bounds) \
                or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be distinct finite numbers")
        self.bounds: tuple[float, ...] = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)      # the last one is +Inf only
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound), ending with (+Inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(frozen=True)
class Sample:
    """One line: the family name plus `suffix`, its labels, its value."""

    suffix: str
    labels: Labels
    value: float | int


@dataclass
class MetricFamily:
    """One `# HELP` / `# TYPE` block and its samples."""

    name: str
    kind: str
    help: str
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"invalid metric type {self.kind!r}")

    @staticmethod
    def _labels(labels: dict[str, str]) -> Labels:
        for name in labels:
            if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"invalid label name {name!r}")
        return tuple((name, str(value)) for name, value in labels.items())

    def add(self, value: float | int, **labels: str) -> MetricFamily:
        """A sample of a counter, gauge or untyped family."""
        if self.kind == "histogram":
            raise ValueError("use add_histogram for a histogram family")
        self.samples.append(Sample("", self._labels(labels), value))
        return self

    def add_histogram(self, histogram: Histogram, **labels: str) -> MetricFamily:
        """The `_bucket` lines (cumulative, `le` last), `_sum` and `_count` of one histogram."""
        if self.kind != "histogram":
            raise ValueError(f"{self.name} is not a histogram")
        if "le" in labels:
            raise ValueError("`le` is reserved for histogram buckets")
        base = self._labels(labels)
        for bound, count in histogram.cumulative():
            self.samples.append(Sample("_bucket", (*base, ("le", format_value(bound))), count))
        self.samples.append(Sample("_sum", base, histogram.sum))
        self.samples.append(Sample("_count", base, histogram.count))
        return self


def render_family(family: MetricFamily) -> str:
    lines = [f"# HELP {family.name} {escape_help(family.help)}",
             f"# TYPE {family.name} {family.kind}"]
    for sample in family.samples:
        label_text = ",".join(f'{name}="{escape_label_value(value)}"'
                              for name, value in sample.labels)
        braces = f"{{{label_text}}}" if label_text else ""
        lines.append(f"{family.name}{sample.suffix}{braces} {format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def render(families: Iterable[MetricFamily]) -> str:
    """The whole exposition; every family name appears once."""
    seen: set[str] = set()
    parts: list[str] = []
    for family in families:
        if family.name in seen:
            raise ValueError(f"metric family {family.name} appears twice")
        seen.add(family.name)
        parts.append(render_family(family))
    return "".join(parts)

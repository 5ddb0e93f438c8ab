"""The access log and the HTTPERR log.

HTTP.sys writes the errors it produced itself to `HTTPERR` with a reason word; operators grep
those reasons, so we keep the Windows field order and words. Lines are appended with one write
each, so concurrent tasks never interleave within a line.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from .metrics import new_request_duration_histogram

HTTPERR_FIELDS = ("#Fields: date time c-ip c-port s-ip s-port cs-version cs-method cs-uri "
                  "streamid sc-status s-siteid s-reason s-queuename")


_utc_cache: tuple[int, tuple[str, str]] = (-1, ("", ""))


def _utc(ts: float) -> tuple[str, str]:
    """Date and time of day (UTC) of `ts`; formatted once per second, not once per line."""
    global _utc_cache
    second = int(ts // 1)
    cached_second, cached = _utc_cache
    if second == cached_second:
        return cached
    t = time.gmtime(second)
    result = time.strftime("%Y-%m-%d", t), time.strftime("%H:%M:%S", t)
    _utc_cache = (second, result)
    return result


def _field(value: object) -> str:
    """One space-free log field; '-' when empty, like W3C logs."""
    if value is None or value == "":
        return "-"
    text = value if type(value) is str else str(value)
    # A printable string's only possible whitespace is U+0020 (every other space character is
    # non-printable), so this is the "no whitespace, nothing unprintable" test without a regex.
    if " " not in text and text.isprintable():
        return text                     # the common case, without a per-character loop
    return "".join("+" if c.isspace() else (c if c.isprintable() else "?") for c in text)


class FrontDoorLog:
    """Writes `access.log` and `httperr.log` under the state directory's `logs/`."""

    def __init__(self, log_dir: Path | None, echo: TextIO | None = sys.stderr) -> None:
        self.echo = echo
        self.errors_by_reason: Counter[str] = Counter()
        self.requests_by_status: Counter[int] = Counter()
        self.requests_by_route_status: Counter[tuple[str, int]] = Counter()
        self.request_duration = new_request_duration_histogram()
        self._access: int | None = None
        self._httperr: int | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self._access = os.open(log_dir / "access.log",
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            path = log_dir / "httperr.log"
            new = not path.exists()
            self._httperr = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            if new:
                os.write(self._httperr, (HTTPERR_FIELDS + "\n").encode())

    def close(self) -> None:
        for fd in (self._access, self._httperr):
            if fd is not None:
                os.close(fd)
        self._access = self._httperr = None

    def _write(self, fd: int | None, line: str) -> None:
        data = (line + "\n").encode("utf-8", "replace")
        if fd is not None:
            os.write(fd, data)
        if self.echo is not None:
            try:
                self.echo.write(line + "\n")
                self.echo.flush()
            except (OSError, ValueError):
                pass

    def access(self, *, client: str, host: str, method: str, path: str, status: int,
               nbytes: int, duration: float, route: str, target: str) -> None:
        self.requests_by_status[status] += 1
        self.requests_by_route_status[(route, status)] += 1
        self.request_duration.observe(duration)
        date, clock = _utc(time.time())
        self._write(self._access, " ".join(_field(v) for v in (
            f"{date}T{clock}Z", client, host, method, path, status, nbytes,
            f"{duration * 1000:.1f}ms", route, target)))

    def httperr(self, *, client_ip: str, client_port: int, server_ip: str, server_port: int,
                version: str | None, method: str | None, uri: str | None, status: int | None,
                reason: str, queue: str | None = None) -> None:
        self.errors_by_reason[reason] += 1
        date, clock = _utc(time.time())
        self._write(self._httperr, " ".join(_field(v) for v in (
            date, clock, client_ip, client_port, server_ip, server_port,
            f"HTTP/{version}" if version else None, method, uri, None, status, None, reason,
            queue)))

    def info(self, message: str) -> None:
        if self.echo is not None:
            date, clock = _utc(time.time())
            try:
                self.echo.write(f"{date}T{clock}Z httpsys-emu: {message}\n")
                self.echo.flush()
            except (OSError, ValueError):
                pass

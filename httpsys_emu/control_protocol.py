"""The control-socket protocol, pure: newline-delimited JSON requests and answers.

A process registers prefixes by sending `{"id": 1, "op": "register", "prefix": "...",
"deliver": "unix:/run/app.sock", "client_cert": true}` and gets `{"id": 1, "ok": true}` or
`{"id": 1, "ok": false, "error": 183, "message": "...", "detail": "..."}`. Line length is capped,
so a peer cannot make the daemon buffer without bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_LINE = 64 * 1024
OPS = frozenset({"hello", "register", "unregister", "servicestate", "reload", "metrics"})


class ControlProtocolError(Exception):
    """A peer spoke something that is not our protocol; the connection is closed."""


@dataclass(frozen=True)
class ControlRequest:
    id: int
    op: str
    args: dict[str, Any]


class LineBuffer:
    """Splits a byte stream into lines of at most MAX_LINE bytes."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self.max_line = max_line

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines: list[bytes] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    raise ControlProtocolError(f"line longer than {self.max_line} bytes")
                return lines
            if nl > self.max_line:
                raise ControlProtocolError(f"line longer than {self.max_line} bytes")
            lines.append(bytes(self._buf[:nl]))
            del self._buf[: nl + 1]


def parse_request(line: bytes) -> ControlRequest:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlProtocolError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ControlProtocolError("a request must be a JSON object")
    rid = obj.get("id", 0)
    op = obj.get("op")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ControlProtocolError("id must be an integer")
    if op not in OPS:
        raise ControlProtocolError(f"unknown op {op!r}")
    args = {k: v for k, v in obj.items() if k not in ("id", "op")}
    return ControlRequest(rid, op, args)


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"


def ok(rid: int, **extra: Any) -> bytes:
    return encode({"id": rid, "ok": True, **extra})


def failure(rid: int, code: int, message: str, detail: str = "") -> bytes:
    return encode({"id": rid, "ok": False, "error": code, "message": message, "detail": detail})

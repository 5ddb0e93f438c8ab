"""Serialising responses towards the client (pure).

Requests are parsed by our strict reader; responses we write ourselves, so the framing we send
(Content-Length, chunked, or close-delimited) is decided in one place from what the client can
take and what the application gave.
"""

from __future__ import annotations

import enum
import time
from email.utils import formatdate
from http import HTTPStatus

SERVER_HEADER = "Microsoft-HTTPAPI/2.0"

# RFC 9110 §7.6.1: hop-by-hop fields are never forwarded as they are.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})


class Framing(enum.Enum):
    NONE = "none"            # HEAD, 1xx, 204, 304: no body at all
    LENGTH = "length"        # Content-Length
    CHUNKED = "chunked"      # Transfer-Encoding: chunked (HTTP/1.1 clients only)
    CLOSE = "close"          # body ends when the connection closes (HTTP/1.0 clients)


_date_cache: tuple[int, str] = (-1, "")


def http_date() -> str:
    """The `Date` value for now (IMF-fixdate); formatted once per second, not per response."""
    global _date_cache
    now = time.time()
    second = int(now // 1)
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True))
    return _date_cache[1]


def reason_phrase(status: int) -> str:
    """The standard reason phrase; load tools count `HTTP/1.1 200 ` without one as a failure."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def has_no_body(method: str, status: int) -> bool:
    return method == "HEAD" or 100 <= status < 200 or status in (204, 304)


def choose_framing(method: str, status: int, content_length: int | None,
                   client_version: str) -> Framing:
    """How the body goes to the client, given what we know of its length."""
    if has_no_body(method, status):
        return Framing.NONE
    if content_length is not None:
        return Framing.LENGTH
    if client_version == "1.1":
        return Framing.CHUNKED
    return Framing.CLOSE


def format_head(status: int, headers: list[tuple[str, str]], *, reason: str | None = None,
                version: str = "1.1") -> bytes:
    """Status line and header block, CRLF-terminated; values are checked for CR/LF."""
    lines = [f"HTTP/{version} {status} {reason or reason_phrase(status)}"]
    for name, value in headers:
        if ("\r" in name or "\n" in name or ":" in name
                or "\r" in value or "\n" in value or "\0" in value):
            raise ValueError(f"header {name!r} carries a line break or NUL")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def build_response_head(method: str, status: int, headers: list[tuple[str, str]],
                        client_version: str, keep_alive: bool, *,
                        reason: str | None = None) -> tuple[bytes, Framing, bool]:
    """Filter the application's headers, add framing and connection fields.

    Returns the head bytes, the framing to use for the body and whether the connection stays open
    after this response.
    """
    content_length: int | None = None
    out: list[tuple[str, str]] = []
    has_date = has_server = False
    for name, value in headers:
        lname = name.lower()
        if lname == "connection" and "close" in (t.strip().lower() for t in value.split(",")):
            keep_alive = False          # the application asked to end the connection
        if lname in HOP_BY_HOP:
            continue
        if lname == "content-length":
            content_length = int(value)
            continue
        has_date |= lname == "date"
        has_server |= lname == "server"
        out.append((name, value))
    framing = choose_framing(method, status, content_length, client_version)
    if framing is Framing.CLOSE:
        keep_alive = False
    if not has_server:
        out.append(("Server", SERVER_HEADER))
    if not has_date:
        out.append(("Date", http_date()))
    if framing is Framing.LENGTH:
        out.append(("Content-Length", str(content_length)))
    elif framing is Framing.CHUNKED:
        out.append(("Transfer-Encoding", "chunked"))
    elif framing is Framing.NONE and content_length is not None and method == "HEAD":
        out.append(("Content-Length", str(content_length)))
    if not keep_alive:
        out.append(("Connection", "close"))
    elif client_version == "1.0":
        out.append(("Connection", "keep-alive"))
    return format_head(status, out, reason=reason), framing, keep_alive


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (empty input gives nothing: the last chunk is separate)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

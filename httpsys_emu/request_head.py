"""Reading one HTTP/1.1 request off the wire, strictly: the head, then its body framing.

Why our own reader instead of h11 for requests: h11 0.16 (measured, hardening.md) accepts bare
LF line ends, obs-fold (silently joined), Content-Length together with Transfer-Encoding,
Transfer-Encoding on HTTP/1.0, duplicate equal Content-Lengths, `HTTP/1.2`, and a 40 KB header
that arrives in a single read (its 16 KiB limit only applies to incomplete heads, h11 #182). The
front door forwards what it parsed to another hop, so every one of those is a smuggling risk and
is refused here with the page HTTP.sys would send. h11 stays in use where we are the client or
only write: responses to clients and the proxy's upstream connections.

Shape (like h11, no I/O): the front door `feed`s bytes and asks `next_head()`; a head with a body
is followed by a `ChunkedDecoder` or `ContentLengthBody`, fed with `take_remaining()`; what the
body decoder does not need (a pipelined request) goes back into the reader with `feed`.

Limits (httpsys.md §5) are enforced while bytes arrive, so memory stays bounded: the buffered
head never exceeds MaxRequestBytes plus one read. Which limit is reported does not depend on how
the bytes were split into reads: the limit crossed at the lower byte offset wins (MaxRequestBytes
on a tie), and syntax is only judged on complete lines, after the limits.
- MaxFieldLength applies to each field line (→ 400 Header Field Too Long) and to the request line
  (→ 414, as HTTP.sys's URL limit is MaxFieldLength).
- MaxRequestBytes covers the request line, the fields and the blank line (→ 400 Request Too Long);
  more than `max_headers` field lines is refused the same way.

Choices: empty lines before the request line are skipped (RFC 9112 §2.2) and do not count
towards MaxRequestBytes (they are dropped at once; HeaderWait bounds a flood of them). POST and PUT without Content-Length or chunked framing get 411, as HTTP.sys does
(RFC 9112 would read them as empty), on HTTP/1.0 too. `Expect: 100-continue` and `Upgrade` only
count on HTTP/1.1 (RFC 9110 says to ignore them on 1.0). Missing, empty or repeated Host → 400
Invalid Hostname.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .headcheck import (
    check_trailer_name,
    check_transfer_encoding,
    connection_options,
    parse_content_length,
    parse_field_line,
    parse_request_line,
)
from .pages import ErrorPage, HttpSysError

_LF = 0x0A
_CR = 0x0D
_LENGTH_REQUIRED_METHODS = frozenset({"POST", "PUT"})


@dataclass(frozen=True)
class RequestHead:
    """A validated request head. `headers` holds (lower-case name, name as sent, value) in order."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[bytes, bytes, bytes], ...]
    head_length: int
    content_length: int | None
    chunked: bool
    keep_alive: bool
    upgrade: str | None
    expect_continue: bool
    host: str | None

    @property
    def target_bytes(self) -> bytes:
        """The request target exactly as received."""
        return self.target.encode("latin-1")

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of the field `name` (compared case-insensitively)."""
        wanted = name.lower()
        return [value for lower, _, value in self.headers if lower == wanted]

    def get(self, name: bytes) -> bytes | None:
        """The first value of the field `name`, or None."""
        values = self.get_all(name)
        return values[0] if values else None


def _limit_error(page: ErrorPage, reason: str, detail: str) -> HttpSysError:
    return HttpSysError(page, reason, detail)


class RequestHeadReader:
    """Finds, bounds and validates request heads in a byte stream (pure; see module docstring)."""

    def __init__(
        self,
        max_request_bytes: int = 16384,
        max_field_length: int = 16384,
        max_headers: int = 100,
    ) -> None:
        self.max_request_bytes = max_request_bytes
        self.max_field_length = max_field_length
        self.max_headers = max_headers
        self._buffer = bytearray()
        self._line_start = 0  # offset of the line being read
        self._searched_to = 0  # no LF in _buffer[_line_start:_searched_to]
        self._lines: list[tuple[int, int]] = []  # (start, end) of complete non-empty lines
        self._error: HttpSysError | None = None

    def feed(self, data: bytes) -> None:
        """Append received bytes (dropped once the stream has been refused)."""
        if self._error is None:
            self._buffer += data

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered and not yet part of a returned head (a request has begun when > 0)."""
        return len(self._buffer)

    def take_remaining(self) -> bytes:
        """Everything buffered after the last head (body bytes, pipelined requests); clears it."""
        if self._lines or self._line_start:
            raise RuntimeError("take_remaining() in the middle of a head")
        data = bytes(self._buffer)
        self._buffer.clear()
        self._searched_to = 0
        return data

    def next_head(self) -> RequestHead | None:
        """The next complete head, None if more bytes are needed; HttpSysError to refuse."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_head()
        except HttpSysError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    # ---------------------------------------------------------------- scanning

    def _check_limits(self, start: int, content_end: int, total: int) -> None:
        """Limits for the line at `start` with `content_end - start` bytes of content, when
        `total` bytes of this head have been seen (offsets count from the head's first byte)."""
        field_over = content_end - start > self.max_field_length
        request_over = total > self.max_request_bytes
        if not (field_over or request_over):
            return
        field_offset = start + self.max_field_length + 1 if field_over else None
        request_offset = self.max_request_bytes + 1 if request_over else None
        if field_offset is not None and (request_offset is None or field_offset < request_offset):
            if not self._lines:
                raise _limit_error(ErrorPage.URL_TOO_LONG, "URL_Length",
                                   f"request line longer than {self.max_field_length} bytes")
            raise _limit_error(ErrorPage.HEADER_FIELD_TOO_LONG, "FieldLength",
                               f"field line longer than {self.max_field_length} bytes")
        raise _limit_error(ErrorPage.REQUEST_TOO_LONG, "RequestLength",
                           f"request head longer than {self.max_request_bytes} bytes")

    def _next_head(self) -> RequestHead | None:
        buffer = self._buffer
        while True:
            newline = buffer.find(b"\n", max(self._line_start, self._searched_to))
            if newline < 0:
                self._searched_to = len(buffer)
                end = len(buffer)
                # A trailing CR may be the first half of CRLF: not field content yet.
                content_end = end - 1 if end > self._line_start and buffer[end - 1] == _CR else end
                self._check_limits(self._line_start, content_end, end)
                return None
            start = self._line_start
            has_cr = newline > start and buffer[newline - 1] == _CR
            content_end = newline - 1 if has_cr else newline
            self._check_limits(start, content_end, newline + 1)
            if not has_cr:
                raise HttpSysError(ErrorPage.BAD_REQUEST, "Invalid_CR/LF", "bare LF line ending")
            self._line_start = newline + 1
            if content_end == start:
                if not self._lines:
                    # An empty line before the request line (RFC 9112 §2.2): drop it; the limits
                    # count from the request line.
                    del buffer[:newline + 1]
                    self._line_start = self._searched_to = 0
                    continue
                return self._complete(newline + 1)
            self._lines.append((start, content_end))
            if len(self._lines) - 1 > self.max_headers:
                raise _limit_error(ErrorPage.REQUEST_TOO_LONG, "RequestLength",
                                   f"more than {self.max_headers} header fields")

    def _complete(self, head_end: int) -> RequestHead:
        buffer = self._buffer
        lines = [bytes(buffer[start:end]) for start, end in self._lines]
        del buffer[:head_end]
        self._lines = []
        self._line_start = 0
        self._searched_to = 0
        return build_head(lines[0], lines[1:], head_end)


def build_head(request_line: bytes, field_lines: list[bytes], head_length: int) -> RequestHead:
    """Validate a split head (lines without CRLF) and settle its framing."""
    line = parse_request_line(request_line)
    headers: list[tuple[bytes, bytes, bytes]] = []
    for raw in field_lines:
        name, value = parse_field_line(raw)
        headers.append((name.lower(), name, value))

    def values(wanted: bytes) -> list[bytes]:
        return [value for lower, _, value in headers if lower == wanted]

    http11 = line.version == "1.1"
    lengths = values(b"content-length")
    codings = values(b"transfer-encoding")
    if lengths and codings:
        raise HttpSysError(ErrorPage.BAD_REQUEST, "BadRequest",
                           "both Content-Length and Transfer-Encoding")
    chunked = False
    content_length: int | None = None
    if codings:
        if not http11:
            raise HttpSysError(ErrorPage.BAD_REQUEST, "BadRequest", "Transfer-Encoding on HTTP/1.0")
        check_transfer_encoding(codings)
        chunked = True
    if lengths:
        content_length = parse_content_length(lengths)
    options = connection_options(values(b"connection"))

    hosts = values(b"host")
    if len(hosts) > 1:
        raise HttpSysError(ErrorPage.INVALID_HOSTNAME, "Hostname", "more than one Host")
    host = hosts[0].decode("latin-1") if hosts and hosts[0] else None
    if http11 and host is None:
        raise HttpSysError(ErrorPage.INVALID_HOSTNAME, "Hostname", "HTTP/1.1 without a Host")

    if line.method in _LENGTH_REQUIRED_METHODS and not chunked and content_length is None:
        raise HttpSysError(ErrorPage.LENGTH_REQUIRED, "LengthRequired",
                           f"{line.method} without Content-Length or chunked")

    upgrades = values(b"upgrade")
    if len(upgrades) > 1:
        raise HttpSysError(ErrorPage.BAD_REQUEST, "BadRequest", "more than one Upgrade")
    upgrade = None
    if http11 and upgrades and b"upgrade" in options:
        upgrade = upgrades[0].decode("latin-1")

    if http11:
        keep_alive = b"close" not in options
    else:
        keep_alive = b"keep-alive" in options and b"close" not in options
    expect_continue = http11 and any(v.lower() == b"100-continue" for v in values(b"expect"))
    return RequestHead(
        method=line.method,
        target=line.target,
        version=line.version,
        headers=tuple(headers),
        head_length=head_length,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        upgrade=upgrade,
        expect_continue=expect_continue,
        host=host,
    )


# ------------------------------------------------------------------------------------------
# Bodies


@dataclass(frozen=True)
class EndOfBody:
    """The body is complete; `trailers` holds (lower-case name, name, value) of chunked trailers."""

    trailers: tuple[tuple[bytes, bytes, bytes], ...] = field(default=())


BodyEvent = bytes | EndOfBody


class ContentLengthBody:
    """A body of exactly `length` bytes: yields data as it arrives, then EndOfBody."""

    def __init__(self, length: int) -> None:
        self._remaining = length
        self._buffer = bytearray()
        self._ended = False

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def done(self) -> bool:
        return self._ended

    def next_event(self) -> BodyEvent | None:
        """Data (bytes), EndOfBody once, or None when more bytes are needed (or after the end)."""
        if self._ended:
            return None
        if self._remaining == 0:
            self._ended = True
            return EndOfBody()
        if not self._buffer:
            return None
        size = min(self._remaining, len(self._buffer))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._remaining -= size
        return data

    def take_remaining(self) -> bytes:
        """Bytes after the body (the next pipelined request); only after EndOfBody."""
        if not self._ended:
            raise RuntimeError("take_remaining() before the end of the body")
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class ChunkedDecoder:
    """Strict `Transfer-Encoding: chunked` (RFC 9112 §7.1) with bounded buffering.

    Refused with 400: sizes that are not 1–16 hex digits (`0x1`, `+1`, `-0`, `1_0`, ` 0`, `Z`),
    a bare LF or stray CR, chunk extensions that are not `;name[=token|"quoted"]`, chunk data not
    followed by CRLF, malformed trailers and trailers carrying Content-Length, Transfer-Encoding
    or Host. A size line longer than `max_size_line`, or trailers over `max_trailer_bytes`, are
    refused as well, so the buffered framing never grows with attacker input.
    """

    def __init__(self, max_size_line: int = 4096, max_trailer_bytes: int = 16384) -> None:
        self.max_size_line = max_size_line
        self.max_trailer_bytes = max_trailer_bytes
        self._buffer = bytearray()
        self._state = "size"  # size | data | data_crlf | trailer | done
        self._remaining = 0
        self._trailer_start = 0  # bytes of trailer section already consumed
        self._trailers: list[tuple[bytes, bytes, bytes]] = []
        self._ended = False
        self._error: HttpSysError | None = None
        self.body_bytes = 0

    def feed(self, data: bytes) -> None:
        if self._error is None:
            self._buffer += data

    @property
    def done(self) -> bool:
        return self._ended

    def take_remaining(self) -> bytes:
        """Bytes after the body (the next pipelined request); only after EndOfBody."""
        if not self._ended:
            raise RuntimeError("take_remaining() before the end of the body")
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def next_event(self) -> BodyEvent | None:
        """Data (bytes), EndOfBody once, or None when more bytes are needed (or after the end)."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except HttpSysError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def _next_event(self) -> BodyEvent | None:
        while True:
            if self._state == "done":
                if self._ended:
                    return None
                self._ended = True
                return EndOfBody(tuple(self._trailers))
            if self._state == "size":
                line = self._take_size_line()
                if line is None:
                    return None
                size = _parse_chunk_size_line(line)
                if size == 0:
                    self._state = "trailer"
                else:
                    self._remaining = size
                    self._state = "data"
            elif self._state == "data":
                if not self._buffer:
                    return None
                size = min(self._remaining, len(self._buffer))
                data = bytes(self._buffer[:size])
                del self._buffer[:size]
                self._remaining -= size
                self.body_bytes += size
                if self._remaining == 0:
                    self._state = "data_crlf"
                return data
            elif self._state == "data_crlf":
                if self._buffer[:1] not in (b"", b"\r") or self._buffer[1:2] not in (b"", b"\n"):
                    raise HttpSysError(ErrorPage.BAD_REQUEST, "BadRequest",
                                       "chunk data not followed by CRLF")
                if len(self._buffer) < 2:
                    return None
                del self._buffer[:2]
                self._state = "size"
            else:  # trailer
                line = self._take_trailer_line()
                if line is None:
                    return None
                if not line:
                    self._state = "done"
                    continue
                name, value = parse_field_line(line)
                check_trailer_name(name.lower())
                self._trailers.append((name.lower(), name, value))

    def _size_line_too_long(self) -> HttpSysError:
        return HttpSysError(ErrorPage.BAD_REQUEST, "BadRequest",
                            f"chunk size line longer than {self.max_size_line} bytes")

    def _take_size_line(self) -> bytes | None:
        """The size line without its CRLF, or None; refuses content over `max_size_line`."""
        buffer = self._buffer
        cap = self.max_size_line
        newline = buffer.find(b"\n", 0, cap + 2)
        if newline < 0:
            end = min(len(buffer), cap + 2)
            content_end = end - 1 if end and buffer[end - 1] == _CR else end
            if content_end > cap:
                raise self._size_line_too_long()
            return None
        has_cr = newline > 0 and buffer[newline - 1] == _CR
        content_end = newline - 1 if has_cr else newline
        if content_end > cap:
            raise self._size_line_too_long()
        if not has_cr:
            raise HttpSysError(ErrorPage.BAD_REQUEST, "Invalid_CR/LF", "bare LF in chunked framing")
        line = bytes(buffer[:content_end])
        del buffer[:newline + 1]
        return line

    def _take_trailer_line(self) -> bytes | None:
        """Like _take_line, with one budget (`max_trailer_bytes`) for the whole trailer section."""
        buffer = self._buffer
        budget = self.max_trailer_bytes - self._trailer_start
        newline = buffer.find(b"\n", 0, budget)  # the line with its LF must fit in the budget
        if newline < 0:
            if buffer and len(buffer) >= budget:
                raise HttpSysError(ErrorPage.REQUEST_TOO_LONG, "RequestLength",
                                   f"trailers longer than {self.max_trailer_bytes} bytes")
            return None
        has_cr = newline > 0 and buffer[newline - 1] == _CR
        if not has_cr:
            raise HttpSysError(ErrorPage.BAD_REQUEST, "Invalid_CR/LF", "bare LF in trailers")
        line = bytes(buffer[:newline - 1])
        del buffer[:newline + 1]
        self._trailer_start += newline + 1
        return line


_HEX = b"0123456789abcdefABCDEF"
_EXT_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_EXT_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_EXTENSION = (rb"[ \t]*;[ \t]*" + _EXT_TOKEN
              + rb"(?:[ \t]*=[ \t]*(?:" + _EXT_TOKEN + rb"|" + _EXT_QUOTED + rb"))?")
# What may follow the size digits: zero or more `;name[=value]` with optional blanks (BWS).
_CHUNK_EXTENSIONS = re.compile(rb"(?:" + _EXTENSION + rb")*\Z")


def _parse_chunk_size_line(line: bytes) -> int:
    digits = 0
    while digits < len(line) and line[digits] in _HEX:
        digits += 1
    if digits == 0 or digits > 16 or line[digits:digits + 1] not in (b"", b";", b" ", b"\t"):
        raise HttpSysError(ErrorPage.BAD_REQUEST, "Number", f"invalid chunk size {line[:32]!r}")
    if not _CHUNK_EXTENSIONS.match(line, digits):
        raise HttpSysError(ErrorPage.BAD_REQUEST, "BadRequest",
                           f"invalid chunk extension {line[digits:digits + 64]!r}")
    size = int(line[:digits], 16)
    if size > 2**63 - 1:
        raise HttpSysError(ErrorPage.BAD_REQUEST, "Number", "chunk size too large")
    return size

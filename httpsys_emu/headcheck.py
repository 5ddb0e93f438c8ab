"""Strict checks on the pieces of an HTTP/1.1 request head; each refusal names its HTTP.sys page.

Pure functions over bytes, used by `request_head.RequestHeadReader` (request line, field lines,
framing) and `request_head.ChunkedDecoder` (trailer fields). The front door owns both hops, so
anything ambiguous is refused here rather than normalised (hardening.md, "Request smuggling").

HTTPERR reasons used: "BadRequest", "Invalid_CR/LF", "Verb", "URL", "Version_N/S", "Header",
"Number", "N/I", "Hostname", "LengthRequired".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .pages import ErrorPage, HttpSysError

_DIGITS = b"0123456789"
_ALPHA_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALPHA_LOWER = b"abcdefghijklmnopqrstuvwxyz"
_TOKEN_PUNCT = b"!#$%&'*+-.^_`|~"
TOKEN_BYTES = _DIGITS + _ALPHA_UPPER + _ALPHA_LOWER + _TOKEN_PUNCT
# HTTP.sys compares verbs case-sensitively and refuses lower-case ones (httpsys.md §4).
METHOD_BYTES = _DIGITS + _ALPHA_UPPER + _TOKEN_PUNCT
# Field values: HTAB, SP, VCHAR and obs-text; never CR, LF, NUL, other controls or DEL.
FIELD_VALUE_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
# Request targets: visible ASCII and raw non-ASCII (UTF-8 is decoded by canonicalisation).
TARGET_BYTES = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))

_OWS = b" \t"
_VERSION = re.compile(rb"HTTP/([0-9]+)\.([0-9]+)\Z")
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,19}\Z")
_MAX_CONTENT_LENGTH = 2**63 - 1

FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding"})
# Transfer codings HTTP.sys knows but does not implement for requests → 501. Anything else that
# is not exactly `chunked` (lists, parameters, look-alikes such as `xchunked`) → 400.
KNOWN_UNSUPPORTED_CODINGS = frozenset(
    {b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress", b"identity", b"br", b"zstd"})
# Connection may name hop-by-hop fields only; naming these would let a hop strip framing or Host.
_CONNECTION_FORBIDDEN = frozenset({b"content-length", b"transfer-encoding", b"host"})


def _bad(page: ErrorPage, reason: str, detail: str) -> HttpSysError:
    return HttpSysError(page, reason, detail)


def only_bytes_from(data: bytes, allowed: bytes) -> bool:
    """True when every byte of `data` is in `allowed`."""
    return not data.translate(None, allowed)


def strip_ows(value: bytes) -> bytes:
    return value.strip(_OWS)


@dataclass(frozen=True)
class RequestLine:
    method: str
    target: str  # latin-1 decoded, so every byte survives; canonicalisation decodes UTF-8
    version: str  # "1.0" or "1.1"


def parse_request_line(line: bytes) -> RequestLine:
    """`METHOD SP target SP HTTP/x.y` with single spaces; `line` has no CRLF."""
    if b"\r" in line:
        raise _bad(ErrorPage.BAD_REQUEST, "Invalid_CR/LF", "CR inside the request line")
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise _bad(ErrorPage.BAD_REQUEST, "BadRequest", "request line is not METHOD SP target SP version")
    method, target, version = parts
    if not only_bytes_from(method, METHOD_BYTES):
        raise _bad(ErrorPage.INVALID_VERB, "Verb", f"invalid method {method!r}")
    match = _VERSION.match(version)
    if match is None:
        raise _bad(ErrorPage.BAD_REQUEST, "BadRequest", f"malformed version {version[:32]!r}")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _bad(ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S",
                   f"unsupported version {version[:32]!r}")
    if not only_bytes_from(target, TARGET_BYTES):
        raise _bad(ErrorPage.INVALID_URL, "URL", "control byte in the request target")
    if not (target.startswith(b"/")
            or (target == b"*" and method == b"OPTIONS")
            or _ABSOLUTE_FORM.match(target)
            or method == b"CONNECT"):
        raise _bad(ErrorPage.INVALID_URL, "URL", f"unusable request target {target[:64]!r}")
    return RequestLine(method.decode("ascii"), target.decode("latin-1"), version[5:].decode("ascii"))


def parse_field_line(line: bytes) -> tuple[bytes, bytes]:
    """`name: value` → (name as sent, value without surrounding OWS); `line` has no CRLF."""
    if line[:1] in (b" ", b"\t"):
        raise _bad(ErrorPage.BAD_REQUEST, "Header",
                   "line starts with whitespace (obs-fold or whitespace before the first field)")
    if b"\r" in line:
        raise _bad(ErrorPage.BAD_REQUEST, "Invalid_CR/LF", "CR inside a field line")
    colon = line.find(b":")
    if colon <= 0:
        raise _bad(ErrorPage.INVALID_HEADER, "Header", "field line without a name and colon")
    name = line[:colon]
    if not only_bytes_from(name, TOKEN_BYTES):
        raise _bad(ErrorPage.INVALID_HEADER, "Header", f"invalid field name {name[:64]!r}")
    if b"_" in name and name.replace(b"_", b"-").lower() in FRAMING_FIELDS:
        raise _bad(ErrorPage.INVALID_HEADER, "Header", f"field name {name!r} imitates framing")
    value = strip_ows(line[colon + 1:])
    if not only_bytes_from(value, FIELD_VALUE_BYTES):
        raise _bad(ErrorPage.BAD_REQUEST, "Header", f"control byte in the value of {name!r}")
    return name, value


def parse_content_length(values: Sequence[bytes]) -> int:
    """The one Content-Length: 1–19 decimal digits below 2^63, nothing else."""
    if len(values) != 1:
        raise _bad(ErrorPage.BAD_REQUEST, "BadRequest", "more than one Content-Length")
    value = values[0]
    if not _CONTENT_LENGTH.match(value):
        raise _bad(ErrorPage.BAD_REQUEST, "Number", f"invalid Content-Length {value[:32]!r}")
    length = int(value)
    if length > _MAX_CONTENT_LENGTH:
        raise _bad(ErrorPage.BAD_REQUEST, "Number", "Content-Length too large")
    return length


def check_transfer_encoding(values: Sequence[bytes]) -> None:
    """Accept exactly one `Transfer-Encoding: chunked` (any case); refuse everything else."""
    if len(values) != 1:
        raise _bad(ErrorPage.BAD_REQUEST, "BadRequest", "more than one Transfer-Encoding")
    coding = values[0].lower()
    if coding == b"chunked":
        return
    if coding in KNOWN_UNSUPPORTED_CODINGS:
        raise _bad(ErrorPage.NOT_IMPLEMENTED, "N/I", f"transfer coding {coding!r}")
    raise _bad(ErrorPage.BAD_REQUEST, "BadRequest", f"refused Transfer-Encoding {coding[:64]!r}")


def connection_options(values: Sequence[bytes]) -> frozenset[bytes]:
    """The lower-cased tokens of every Connection field; framing fields and Host are refused."""
    options: set[bytes] = set()
    for value in values:
        for element in value.split(b","):
            option = strip_ows(element).lower()
            if not option:
                continue
            if not only_bytes_from(option, TOKEN_BYTES):
                raise _bad(ErrorPage.BAD_REQUEST, "BadRequest", f"invalid Connection option {option[:64]!r}")
            if option in _CONNECTION_FORBIDDEN:
                raise _bad(ErrorPage.BAD_REQUEST, "BadRequest",
                           f"Connection names the end-to-end field {option!r}")
            options.add(option)
    return frozenset(options)


def check_trailer_name(lower_name: bytes) -> None:
    """Trailers may not carry framing or routing fields."""
    if lower_name in FRAMING_FIELDS or lower_name == b"host":
        raise _bad(ErrorPage.BAD_REQUEST, "BadRequest", f"{lower_name!r} in a trailer")

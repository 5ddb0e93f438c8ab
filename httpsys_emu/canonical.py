"""Request-target splitting and path canonicalisation, as HTTP.sys does before routing (§3).

Pure functions. The router matches prefixes against the *canonical* path only, so every
spelling of a path that HTTP.sys treats as the same (`/a%2Fb`, `/a\\b`, `/x/../a/b`) routes the
same way, and everything ambiguous is refused with a 400 page instead of being guessed at.

Decisions (where §3 leaves room):
- Input: `bytes` are the raw octets of the request target; a `str` is Unicode text whose
  non-ASCII characters stand for themselves (it is encoded to UTF-8 first). Both give a `str`.
- Escapes are decoded exactly once. `%XX` bytes and raw non-ASCII bytes are decoded as UTF-8,
  strictly: an invalid UTF-8 sequence is 400 Invalid URL. (HTTP.sys falls back to the system ANSI
  code page; that depends on the machine's locale and makes one URL mean two things, so we refuse.)
  `%uNNNN` gives that UTF-16 code unit; a surrogate pair of two `%u` escapes gives one character;
  a lone surrogate is 400.
- The canonical form is the *decoded* path with one exception: a `%` (which can only come from
  `%25` or `%u0025`) is written back as `%25`. That makes `canonicalize_path` idempotent
  (canonicalising a canonical path returns it unchanged) while escapes are still decoded only
  once: `/%252F` stays the one segment `%2F` (written `/%252F`), it never becomes `/`. Prefixes
  cannot contain `%`, so a `%25` can never be the part of a path that a prefix matches.
- Limits are counted on the decoded path: segment length in characters (a `%25` counts as one),
  the segment count excludes a trailing empty segment (`/a/b/` has 2). The URL length limit is on
  the raw path in bytes (UTF-8 for `str`), before decoding; its default, 16384 bytes, is HTTP.sys'
  default MaxFieldLength / MaxRequestBytes (so the head-size check may fire first).
- `.`/`..` are removed after decoding (`/%2e%2e/` is `..`), RFC 3986 §5.2.4 style; a final
  `.`/`..` leaves a trailing `/`; `..` at the root stays at the root. `//` is kept.
"""

from __future__ import annotations

from typing import overload

from httpsys_emu.pages import ErrorPage, HttpSysError
from httpsys_emu.routing import parse_host_header

__all__ = [
    "DEFAULT_MAX_URL_LENGTH",
    "DEFAULT_MAX_SEGMENT_LENGTH",
    "DEFAULT_MAX_SEGMENT_COUNT",
    "canonicalize_path",
    "split_target",
]

DEFAULT_MAX_SEGMENT_LENGTH = 260
DEFAULT_MAX_SEGMENT_COUNT = 255
DEFAULT_MAX_URL_LENGTH = 16384

_HEX = b"0123456789abcdefABCDEF"
_PERCENT, _SLASH, _BACKSLASH, _U_LOWER, _U_UPPER = 0x25, 0x2F, 0x5C, 0x75, 0x55


def _bad_url(detail: str) -> HttpSysError:
    return HttpSysError(ErrorPage.INVALID_URL, "URL", detail)


def _is_control(code: int) -> bool:
    return code < 0x20 or 0x7F <= code <= 0x9F


def _hex_value(data: bytes, start: int, count: int) -> int | None:
    chunk = data[start:start + count]
    if len(chunk) != count or any(b not in _HEX for b in chunk):
        return None
    return int(chunk, 16)


def _decode(raw: bytes) -> str:
    """Decode every escape once; the result may contain any character but controls."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        byte = raw[i]
        if byte != _PERCENT:
            if byte < 0x20 or byte == 0x7F:   # raw C1 controls are caught after decoding
                raise _bad_url(f"raw control character 0x{byte:02X} in the URL")
            out.append(_SLASH if byte == _BACKSLASH else byte)
            i += 1
            continue
        if i + 1 < n and raw[i + 1] in (_U_LOWER, _U_UPPER):
            unit = _hex_value(raw, i + 2, 4)
            if unit is None:
                raise _bad_url("bad %u escape")
            i += 6
            if 0xD800 <= unit <= 0xDBFF:
                low = None
                if raw[i:i + 2] in (b"%u", b"%U"):
                    low = _hex_value(raw, i + 2, 4)
                if low is None or not 0xDC00 <= low <= 0xDFFF:
                    raise _bad_url("%u escape with an unpaired high surrogate")
                unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                i += 6
            elif 0xDC00 <= unit <= 0xDFFF:
                raise _bad_url("%u escape with an unpaired low surrogate")
            out += chr(unit).encode("utf-8")
            continue
        value = _hex_value(raw, i + 1, 2)
        if value is None:
            raise _bad_url("bare '%' or bad percent-escape")
        out.append(value)
        i += 3
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_url(f"invalid UTF-8 after decoding: {exc.reason}") from None
    for ch in text:
        code = ord(ch)
        if _is_control(code):
            raise _bad_url(f"escape decodes to control character U+{code:04X}")
    # A decoded %5C (or %u005C) becomes '/' like a raw backslash.
    return text.replace("\\", "/")


def _remove_dot_segments(segments: list[str]) -> list[str]:
    out: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "." or segment == "..":
            if segment == ".." and out:
                out.pop()
            if index == last:
                out.append("")
        else:
            out.append(segment)
    return out


def canonicalize_path(raw_path: str | bytes, *,
                      max_segment_length: int = DEFAULT_MAX_SEGMENT_LENGTH,
                      max_segment_count: int = DEFAULT_MAX_SEGMENT_COUNT,
                      max_url_length: int = DEFAULT_MAX_URL_LENGTH) -> str:
    """The canonical path of the path part of a request target (the query already split off).

    Raises HttpSysError: INVALID_URL ("URL") for bad escapes, controls, invalid UTF-8, a path
    not starting with '/', a segment over `max_segment_length` characters or more than
    `max_segment_count` segments; URL_TOO_LONG ("URL") over `max_url_length` raw bytes.
    Idempotent: canonicalize_path(canonicalize_path(x)) == canonicalize_path(x).
    """
    if isinstance(raw_path, str):
        raw = raw_path.encode("utf-8", "surrogatepass")
    elif isinstance(raw_path, (bytes, bytearray, memoryview)):
        raw = bytes(raw_path)
    else:
        raise TypeError("raw_path must be str or bytes")
    if len(raw) > max_url_length:
        raise HttpSysError(ErrorPage.URL_TOO_LONG, "URL",
                           f"path of {len(raw)} bytes exceeds {max_url_length}")
    if not raw.startswith(b"/"):
        raise _bad_url("the path does not start with '/'")
    text = _decode(raw)
    segments = _remove_dot_segments(text[1:].split("/"))
    count = len(segments) - (1 if segments and segments[-1] == "" else 0)
    if count > max_segment_count:
        raise _bad_url(f"{count} segments exceed {max_segment_count}")
    for segment in segments:
        if len(segment) > max_segment_length:
            raise _bad_url(f"a segment of {len(segment)} characters exceeds {max_segment_length}")
    return "/" + "/".join(segments).replace("%", "%25")


@overload
def split_target(target: str) -> tuple[str, str, str | None]: ...
@overload
def split_target(target: bytes) -> tuple[bytes, bytes, str | None]: ...


def split_target(target: str | bytes) -> tuple[str | bytes, str | bytes, str | None]:
    """Split a request target into (path, query, authority).

    - origin-form `/p?q` → ('/p', 'q', None)
    - absolute-form `http://host:port/p?q` (scheme http or https, any case) → ('/p', 'q',
      'host:port'); an empty path is '/'. The authority is returned as written (check it with
      `routing.parse_host_header`); userinfo, an empty authority or another scheme → 400.
    - asterisk-form `*` → ('*', '', None): only valid for OPTIONS; the caller decides.
    - authority-form (`host:port`, for CONNECT) and anything else → 400 Invalid URL.
    The query is '' when there is none (or it is empty). A fragment (`#`), whitespace or control
    characters anywhere in the target → 400 Invalid URL. `path` and `query` have the type of
    `target` (raw bytes stay bytes for `canonicalize_path`); the authority is always `str`.
    """
    if isinstance(target, (bytes, bytearray, memoryview)):
        as_bytes, text = True, bytes(target).decode("latin-1")
    elif isinstance(target, str):
        as_bytes, text = False, target
    else:
        raise TypeError("target must be str or bytes")
    if not text:
        raise _bad_url("empty request target")
    for ch in text:
        code = ord(ch)
        # Raw bytes 0x80-0xFF are UTF-8 for canonicalize_path to judge; in text, C1 controls
        # and Unicode white space are refused here.
        if as_bytes:
            bad = code < 0x20 or code == 0x7F or ch == " "
        else:
            bad = _is_control(code) or ch.isspace()
        if bad:
            raise _bad_url(f"control or white-space character U+{code:04X} in the request target")
    if "#" in text:
        raise _bad_url("a fragment ('#') in the request target")

    authority: str | None = None
    if text == "*":
        path, query = "*", ""
    elif text.startswith("/"):
        path, _, query = text.partition("?")
    else:
        scheme, sep, rest = text.partition("://")
        if not sep:
            if ":" in text and "/" not in text:
                raise _bad_url("authority-form request target (CONNECT is not supported)")
            raise _bad_url("request target is neither origin-form nor absolute-form")
        if scheme.lower() not in ("http", "https"):
            raise _bad_url(f"absolute-form target with scheme {scheme!r}")
        end = len(rest)
        for stop in ("/", "?"):
            found = rest.find(stop)
            if 0 <= found < end:
                end = found
        authority = rest[:end]
        if not authority:
            raise HttpSysError(ErrorPage.INVALID_HOSTNAME, "Hostname",
                               "absolute-form target without a host")
        parse_host_header(authority)
        path, _, query = rest[end:].partition("?")
        if not path:
            path = "/"
    if as_bytes:
        return path.encode("latin-1"), query.encode("latin-1"), authority
    return path, query, authority

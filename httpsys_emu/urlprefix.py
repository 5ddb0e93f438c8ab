"""UrlPrefix strings of HTTP.sys (spec httpsys.md §1): parsing, validation and identity.

One strict parser so that the CLI, the store and the router agree on what a prefix *is*: two
spellings of the same prefix (`/barfoo` vs `/BarFoo/`, `Example.com` vs `example.com`,
`[0::1]` vs `[::1]`) have one `key`, and every ambiguous spelling is refused with error 87.

The scheme must be lower-case `http` or `https` (`HTTP://` is error 87): HttpAddUrl's
documentation says no other substring is valid. Choices where Windows is not documented:
- A DNS name must be ASCII letters, digits, `-` and `_` in dot-separated labels of 1..63
  characters (no label starts or ends with `-`), 253 characters at most. IDNs must be written in
  punycode (`xn--...`). A trailing dot (`example.com.`) is error 87: one name, one spelling.
- A name whose last label is numeric (`1.2.3`, `192.`, `10.1`, `0x7f.1`, `example.123`) looks like
  an IPv4 address but is not a dotted quad: error 87 (resolvers read `1.2.3` as `1.2.0.3`).
  IPv4 literals are exactly four decimal octets without leading zeros (`010.0.0.1` would be octal
  to some parsers).
- IPv6 literals: `[...]`, no zone id, not `::`, and not IPv4-mapped (`[::ffff:1.2.3.4]`: write
  `1.2.3.4`). Their key is the compressed form.
- No userinfo (`user@host`). The path must not contain `?`, `#`, `%`, `\\`, whitespace,
  control characters (C0, DEL, C1), lone surrogates, `.`/`..` segments or empty segments (`//`):
  a canonical request path (§3) never has dot segments or backslashes, so such a prefix could
  never match the way it reads, and `/a//` would match `/a/` (too surprising to allow).
- Paths compare case-insensitively by per-character simple case mapping (`path_key`), like
  Windows' upcase table: `/ΑΣ/` equals `/ας/`, `/straße/` does not equal `/strasse/`.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field

from httpsys_emu.winerror import ERROR_INVALID_PARAMETER, WinError

__all__ = [
    "Category",
    "classify_host",
    "UrlPrefix",
    "parse_prefix",
    "host_key",
    "normalize_ip",
    "path_key",
    "path_segments",
]

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}


class Category(enum.IntEnum):
    """The four host categories, numbered in the order HTTP.sys searches them (§2.1)."""

    STRONG = 0      # '+'
    EXPLICIT = 1    # DNS name
    IP_BOUND = 2    # IPv4 literal or [IPv6] literal
    WEAK = 3        # '*'


_LABEL_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_NUMERIC_LABEL_RE = re.compile(r"^(?:[0-9]+|0[xX][0-9A-Fa-f]*)$")
_OCTET_RE = re.compile(r"^(?:0|[1-9][0-9]{0,2})$")
_PORT_RE = re.compile(r"^[1-9][0-9]{0,4}$")
# Characters refused anywhere in a prefix (the path is further checked by _check_path).
_FORBIDDEN = {"?": "a query ('?')", "#": "a fragment ('#')", "%": "a '%'",
              "\\": "a backslash"}


def _invalid(detail: str) -> WinError:
    return WinError(ERROR_INVALID_PARAMETER, detail)


def _is_control_or_space(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or ch.isspace() or unicodedata.category(ch) in (
        "Cs", "Zl", "Zp", "Zs")


def _check_text(text: str) -> None:
    for ch in text:
        if _is_control_or_space(ch):
            raise _invalid(f"invalid character U+{ord(ch):04X} in URL prefix {text!r}")
        what = _FORBIDDEN.get(ch)
        if what is not None:
            raise _invalid(f"URL prefix {text!r} contains {what}")


def _ipv4_key(host: str) -> str | None:
    """The key of a strict dotted-quad IPv4 literal, or None if `host` is not one."""
    parts = host.split(".")
    if len(parts) != 4 or not all(_OCTET_RE.match(p) for p in parts):
        return None
    if any(int(p) > 255 for p in parts):
        return None
    return host


def classify_host(host: str, *, allow_unspecified: bool = False,
                  allow_mapped: bool = False) -> tuple[Category, str]:
    """(category, host key) for a host as written in a prefix; WinError(87) if invalid.

    The flags relax the two prefix-only rules for hosts that come from requests, where
    `0.0.0.0`, `[::]` and `[::ffff:a.b.c.d]` are odd but unambiguous.
    """
    if host == "+":
        return Category.STRONG, "+"
    if host == "*":
        return Category.WEAK, "*"
    if not host:
        raise _invalid("empty host in URL prefix")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise _invalid(f"malformed IPv6 literal {host!r}")
        inner = host[1:-1]
        try:
            addr = ipaddress.IPv6Address(inner)
        except ValueError:
            raise _invalid(f"malformed IPv6 literal {host!r}") from None
        if addr.is_unspecified and not allow_unspecified:
            raise _invalid(f"unspecified address {host!r}: use '+' or '*'")
        if addr.ipv4_mapped is not None and not allow_mapped:
            raise _invalid(f"IPv4-mapped IPv6 literal {host!r}: write {addr.ipv4_mapped}")
        return Category.IP_BOUND, f"[{addr.compressed}]"
    if "[" in host or "]" in host or ":" in host:
        raise _invalid(f"malformed host {host!r} (IPv6 literals need brackets)")
    if not host.isascii():
        raise _invalid(f"non-ASCII host {host!r}: write internationalised names in punycode")
    v4 = _ipv4_key(host)
    if v4 is not None:
        if v4 == "0.0.0.0" and not allow_unspecified:
            raise _invalid("unspecified address '0.0.0.0': use '+' or '*'")
        return Category.IP_BOUND, v4
    labels = host.rstrip(".").split(".")
    if _NUMERIC_LABEL_RE.match(labels[-1]):
        raise _invalid(f"host {host!r} looks like an IPv4 address but is not a dotted quad")
    if host.endswith("."):
        raise _invalid(f"host {host!r} ends with a dot")
    if len(host) > 253:
        raise _invalid("host name longer than 253 characters")
    for label in labels:
        if not _LABEL_RE.match(label):
            raise _invalid(f"invalid DNS label {label!r} in host {host!r}")
    return Category.EXPLICIT, host.lower()


def _check_path(path: str) -> None:
    if not path.startswith("/"):
        raise _invalid(f"path {path!r} must start with '/'")
    _check_text(path)
    if path == "/":
        return
    inner = path[1:-1] if path.endswith("/") else path[1:]
    for segment in inner.split("/"):
        if segment == "":
            raise _invalid(f"empty segment ('//') in path {path!r}")
        if segment in (".", ".."):
            raise _invalid(f"dot segment {segment!r} in path {path!r}")


@functools.lru_cache(maxsize=8192)
def _fold_char(ch: str) -> str:
    """Simple (one-to-one) upper-casing, as Windows' upcase table does, then back to lower case.

    `str.lower()` on a whole string is context-sensitive (Greek final sigma) and full case
    mappings change lengths (`ß` → `SS`); per-character simple mappings are neither, so prefix
    and request paths fold the same way and `/ας/` equals `/ΑΣ/` and `/ασ/` as on Windows.
    """
    upper = ch.upper()
    if len(upper) != 1:
        upper = ch
    folded = upper.lower()
    return folded if len(folded) == 1 else upper


def path_key(path: str) -> str:
    """Case-folded form of a path used for identity and matching (prefix and request alike)."""
    if path.isascii():
        return path.lower()
    return "".join(map(_fold_char, path))


def path_segments(path: str) -> tuple[str, ...]:
    """Segments of a prefix path (trailing '/' present) as matched: '/' → (), '/a/b/' → (a, b)."""
    if path == "/":
        return ()
    return tuple(path_key(path[1:-1]).split("/"))


@functools.lru_cache(maxsize=4096)
def normalize_ip(address: str) -> str | None:
    """The IP-bound host key for a local socket address, or None if it is not an IP address.

    IPv4 stays dotted-quad; IPv6 becomes `[compressed]`; an IPv4-mapped IPv6 address
    (`::ffff:1.2.3.4`, what a dual-stack socket reports) is the IPv4 address `1.2.3.4`, so an
    IPv4-bound prefix matches connections on a dual-stack listener. A zone id (`fe80::1%eth0`)
    is dropped. Brackets around an IPv6 address are accepted. Cached: a server has few local
    addresses and this runs on every request.
    """
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return f"[{addr.compressed}]"
    return str(addr)


def host_key(host: str) -> str:
    """The normalised host of a prefix host as written (raises WinError(87) if invalid)."""
    return classify_host(host)[1]


@dataclass(frozen=True, eq=False)
class UrlPrefix:
    """One validated UrlPrefix; equality and hashing use `key` (the canonical identity)."""

    scheme: str   # 'http' | 'https'
    host: str     # as written, for display: '+', '*', 'Example.COM', '10.0.0.1', '[::1]'
    port: int
    path: str     # as written, starts with '/', a trailing '/' always added
    _category: Category = field(init=False, repr=False, compare=False)
    _key: tuple[str, str, int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise _invalid(f"scheme {self.scheme!r} is not 'http' or 'https'")
        if not isinstance(self.port, int) or isinstance(self.port, bool) \
                or not 1 <= self.port <= 65535:
            raise _invalid(f"port {self.port!r} out of range 1..65535")
        if not isinstance(self.host, str):
            raise _invalid("host must be a string")
        _check_text(self.host)
        category, hkey = classify_host(self.host)
        if not isinstance(self.path, str):
            raise _invalid("path must be a string")
        path = self.path if self.path.endswith("/") else self.path + "/"
        _check_path(path)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "_category", category)
        object.__setattr__(self, "_key", (self.scheme, hkey, self.port, path_key(path)))

    @property
    def category(self) -> Category:
        return self._category

    @property
    def key(self) -> tuple[str, str, int, str]:
        """(scheme, host key, port, lower-cased path): the prefix's identity."""
        return self._key

    @property
    def host_key(self) -> str:
        """Normalised host: '+', '*', lower-case DNS name, IPv4 dotted quad or '[compressed v6]'."""
        return self._key[1]

    @property
    def segments(self) -> tuple[str, ...]:
        """Lower-cased path segments, the unit of matching: '/' → (), '/App/X/' → ('app', 'x')."""
        return path_segments(self.path)

    def canonical(self) -> str:
        """Normalised string form (lower-case host and path), usable as a storage key."""
        scheme, hkey, port, pkey = self._key
        return f"{scheme}://{hkey}:{port}{pkey}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UrlPrefix):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    def __repr__(self) -> str:
        return f"UrlPrefix({str(self)!r})"


def parse_prefix(text: str) -> UrlPrefix:
    """Parse `scheme://host:port/relativeURI`; WinError(87) with a detail for every invalid form.

    Valid: `http://+:80/`, `https://*:443/a/b`, `http://Example.com:8080/x/`,
    `http://10.0.0.1:80/`, `https://[::1]:443/api/`. Invalid: no scheme or another scheme,
    upper-case scheme, no port, `:0`, port > 65535, leading zero or sign in the port, `*`/`+` as
    port, no `/` after the port, `?`, `#`, `%`, userinfo, `\\`, whitespace or control characters,
    empty host, `0.0.0.0`, `[::]`, `[]`, `192.`, `1.2.3`, malformed IPv6, a trailing-dot name,
    `.`/`..`/empty path segments.
    """
    if not isinstance(text, str):
        raise _invalid("URL prefix must be a string")
    if not text:
        raise _invalid("empty URL prefix")
    _check_text(text)
    sep = text.find("://")
    if sep < 0:
        raise _invalid(f"URL prefix {text!r} has no scheme (expected http:// or https://)")
    scheme = text[:sep]
    if scheme not in SCHEMES:
        if scheme.lower() in SCHEMES:
            raise _invalid(f"scheme {scheme!r} must be written in lower case")
        raise _invalid(f"scheme {scheme!r} is not 'http' or 'https'")
    rest = text[sep + 3:]
    slash = rest.find("/")
    if slash < 0:
        raise _invalid(f"URL prefix {text!r} has no '/' after the port")
    authority, path = rest[:slash], rest[slash:]
    if "@" in authority:
        raise _invalid(f"URL prefix {text!r} contains userinfo ('@')")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise _invalid(f"unterminated IPv6 literal in {text!r}")
        host, after = authority[:close + 1], authority[close + 1:]
        if not after.startswith(":"):
            raise _invalid(f"URL prefix {text!r} has no port")
        port_text = after[1:]
    else:
        if ":" not in authority:
            raise _invalid(f"URL prefix {text!r} has no port")
        host, port_text = authority.rsplit(":", 1)
    if not port_text:
        raise _invalid(f"URL prefix {text!r} has an empty port")
    if port_text in ("*", "+"):
        raise _invalid(f"wildcard port {port_text!r} in {text!r}")
    if port_text == "0":
        raise _invalid("port 0 is not allowed")
    if not _PORT_RE.match(port_text):
        if port_text.isdigit() and port_text.startswith("0"):
            raise _invalid(f"port {port_text!r} has a leading zero")
        raise _invalid(f"port {port_text!r} is not a number in 1..65535")
    port = int(port_text)
    if port > 65535:
        raise _invalid(f"port {port} out of range 1..65535")
    return UrlPrefix(scheme, host, port, path)

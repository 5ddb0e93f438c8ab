"""The route table (spec httpsys.md §2, §6) and Host parsing, end to end with §3 canonicalisation."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from httpsys_emu.canonical import canonicalize_path, split_target
from httpsys_emu.pages import ErrorPage, HttpSysError
from httpsys_emu.routing import RouteRequest, RouteTable, parse_host_header
from httpsys_emu.urlprefix import Category, UrlPrefix, normalize_ip, parse_prefix
from httpsys_emu.winerror import (
    ERROR_ACCESS_DENIED,
    ERROR_ALREADY_EXISTS,
    ERROR_FILE_NOT_FOUND,
    WinError,
)

HOST400 = "400 Invalid Hostname"
NOTFOUND = "404"
RESERVED = "400 Reserved"
URL400 = "400 Invalid URL"
URL414 = "414"

_LABELS = {
    (ErrorPage.INVALID_HOSTNAME, "Hostname"): HOST400,
    (ErrorPage.NOT_FOUND, "NotFound"): NOTFOUND,
    (ErrorPage.BAD_REQUEST, "BadRequest"): RESERVED,
    (ErrorPage.INVALID_URL, "URL"): URL400,
    (ErrorPage.URL_TOO_LONG, "URL"): URL414,
}


@dataclass
class Acl:
    """A test ACL: the uids granted listen."""

    uids: set[int] = field(default_factory=set)

    def grants_listen(self, uid: int) -> bool:
        return uid in self.uids


def build(regs: Sequence[str], res: Sequence[str] = ()) -> RouteTable[str]:
    table: RouteTable[str] = RouteTable()
    for text in regs:
        table.register(parse_prefix(text), text)
    for text in res:
        table.reserve(parse_prefix(text), Acl())
    return table


def outcome(table: RouteTable[str], target: str | bytes, host_header: str | None, *,
            ip: str = "192.0.2.1", port: int = 80, scheme: str = "http") -> str:
    """What the front door does with one request: the target string or an error label."""
    try:
        path, _query, authority = split_target(target)
        host_value = authority if authority is not None else host_header
        host = "" if host_value is None else parse_host_header(host_value)[0]
        canonical = path if path in ("*", b"*") else canonicalize_path(path)
        if isinstance(canonical, bytes):
            canonical = canonical.decode()
        return table.route(RouteRequest(scheme, ip, port, host, canonical)).target
    except HttpSysError as exc:
        return _LABELS[(exc.page, exc.reason)]


def row(rule: str, regs: list[str], target: str, expect: str, *, res: Sequence[str] = (),
        host: str | None = "h.com", ip: str = "192.0.2.1", port: int = 80,
        scheme: str = "http") -> object:
    return pytest.param(regs, list(res), target, host, ip, port, scheme, expect, id=rule)


S, E, I, W = "http://+:80/", "http://h.com:80/", "http://192.0.2.1:80/", "http://*:80/"
FOUR = ["http://+:80/a/", "http://h.com:80/b/", "http://192.0.2.1:80/c/", "http://*:80/"]

ROUTES = [
    # §2.1 categories are searched + → explicit → IP-bound → *; the first with a match wins
    row("2.1 strong beats explicit", [S, E], "/x", S),
    row("2.1 strong beats a longer explicit", [S, "http://h.com:80/a/b/"], "/a/b/c", S),
    row("2.1 strong beats a longer ip-bound", [S, "http://192.0.2.1:80/a/"], "/a/x", S),
    row("2.1 strong beats a longer weak", [S, "http://*:80/a/b/c/"], "/a/b/c/d", S),
    row("2.1 explicit beats a longer ip-bound", [E, "http://192.0.2.1:80/a/"], "/a/", E),
    row("2.1 explicit beats a longer weak", [E, "http://*:80/a/"], "/a/x", E),
    row("2.1 ip-bound beats a longer weak", [I, "http://*:80/a/"], "/a/x", I),
    row("2.1 strong without a path match falls to explicit", ["http://+:80/a/", E], "/b", E),
    row("2.1 falls through every category to weak", FOUR, "/d", W),
    row("2.1 falls through to ip-bound", FOUR, "/c/x", "http://192.0.2.1:80/c/"),
    row("2.1 falls through to explicit", FOUR, "/b", "http://h.com:80/b/"),
    row("2.1 strong first among four", FOUR, "/a/b/c", "http://+:80/a/"),
    row("2.1 explicit for another host is skipped", ["http://other.com:80/", W], "/", W),
    row("2.1 ip-bound for another address is skipped", ["http://192.0.2.99:80/", W], "/", W),
    row("2.1 weak alone catches everything", [W], "/anything/at/all", W),
    # §2.2 scheme, host, port must match; longest relativeURI by whole segments
    row("2.2 /app/ matches /app", ["http://+:80/app/"], "/app", "http://+:80/app/"),
    row("2.2 /app/ matches /app/", ["http://+:80/app/"], "/app/", "http://+:80/app/"),
    row("2.2 /app/ matches /app/x", ["http://+:80/app/"], "/app/x", "http://+:80/app/"),
    row("2.2 /app/ matches /APP/x", ["http://+:80/app/"], "/APP/x", "http://+:80/app/"),
    row("2.2 /app/ does not match /application", ["http://+:80/app/"], "/application", NOTFOUND),
    row("2.2 /app/ does not match /ap", ["http://+:80/app/"], "/ap", NOTFOUND),
    row("2.2 /app/ does not match /", ["http://+:80/app/"], "/", NOTFOUND),
    row("2.2 upper-case prefix matches lower-case path", ["http://+:80/App/Sub"], "/app/SUB/x",
        "http://+:80/App/Sub"),
    row("2.2 longest wins (deepest)", [S, "http://+:80/a/", "http://+:80/a/b/"], "/a/b/c",
        "http://+:80/a/b/"),
    row("2.2 longest wins by whole segments", [S, "http://+:80/a/", "http://+:80/a/b/"], "/a/bc",
        "http://+:80/a/"),
    row("2.2 root prefix takes the rest", [S, "http://+:80/a/", "http://+:80/a/b/"], "/x", S),
    row("2.2 /a matches prefix /a/ not /a/b/", [S, "http://+:80/a/", "http://+:80/a/b/"], "/a",
        "http://+:80/a/"),
    row("2.2 longest wins inside weak", [W, "http://*:80/a/"], "/a/x", "http://*:80/a/"),
    row("2.2 longest wins inside explicit", [E, "http://h.com:80/a/"], "/a/x",
        "http://h.com:80/a/"),
    row("2.2 explicit host is case-insensitive", ["http://H.Com:80/"], "/", "http://H.Com:80/",
        host="h.COM"),
    row("2.2 explicit host with a trailing dot", [E], "/", E, host="h.com."),
    row("2.2 scheme must match", [S], "/", HOST400, scheme="https"),
    row("2.2 https on its port", ["https://+:443/"], "/", "https://+:443/", scheme="https",
        port=443),
    row("2.2 port must match (local port)", [S], "/", HOST400, port=81),
    row("2.2 the query never takes part", ["http://+:80/a/", "http://+:80/b/"], "/a?/b/c",
        "http://+:80/a/"),
    row("2.2 a query that looks like a path", ["http://+:80/a/", "http://+:80/b/"], "/b?x=/a/",
        "http://+:80/b/"),
    row("2.2 ip-bound IPv6", ["http://[::1]:80/"], "/", "http://[::1]:80/", ip="::1"),
    row("2.2 ip-bound IPv6 other spelling", ["http://[0::1]:80/"], "/", "http://[0::1]:80/",
        ip="0:0:0:0:0:0:0:1"),
    row("2.2 ip-bound via an IPv4-mapped local address", [I], "/", I, ip="::ffff:192.0.2.1"),
    row("2.2 ip-bound takes any host name", [I], "/", I, host="whatever.example"),
    row("2.2 ip-bound takes an IP Host", [I], "/", I, host="192.0.2.1"),
    row("2.2 ip-bound on another address", ["http://192.0.2.1:80/", W], "/", W, ip="192.0.2.2"),
    row("2.2 explicit does not match an IP Host", [E], "/", HOST400, host="192.0.2.1"),
    # §2.3 reservations sit in the categories; a reservation nobody registered → 400
    row("2.3 reservation alone → 400", [], "/", RESERVED, res=[S]),
    row("2.3 strong reservation blocks a weak registration", [W], "/a/x", RESERVED,
        res=["http://+:80/a/"]),
    row("2.3 strong reservation elsewhere lets weak have it", [W], "/b", W,
        res=["http://+:80/a/"]),
    row("2.3 longer reservation beats shorter registration", ["http://+:80/app/"], "/app/long/x",
        RESERVED, res=["http://+:80/app/long/"]),
    row("2.3 shorter registration outside the reservation", ["http://+:80/app/"], "/app/other",
        "http://+:80/app/", res=["http://+:80/app/long/"]),
    row("2.3 registration of the reserved prefix", ["http://+:80/a/"], "/a/", "http://+:80/a/",
        res=["http://+:80/a/"]),
    row("2.3 longer registration under a reservation", ["http://+:80/a/b/"], "/a/b/c",
        "http://+:80/a/b/", res=["http://+:80/a/"]),
    row("2.3 reservation above a registration blocks its siblings", ["http://+:80/a/b/"], "/a/c",
        RESERVED, res=["http://+:80/a/"]),
    row("2.3 reservation for another host does not block", [W], "/", W,
        res=["http://other.com:80/"]),
    row("2.3 reservation in a lower category changes nothing", [S], "/a/x", S,
        res=["http://*:80/a/"]),
    row("2.3 explicit reservation blocks ip-bound registration", [I], "/", RESERVED, res=[E]),
    row("2.3 ip-bound reservation on another address", [W], "/", W,
        res=["http://192.0.2.99:80/"]),
    # §2.4 the host comes from an absolute-form target, else from Host; port from the socket
    row("2.4 absolute-form authority beats Host", [E, W], "http://h.com/x", E, host="other.com"),
    row("2.4 absolute-form with another host", [E, W], "http://other.com/x", W, host="h.com"),
    row("2.4 absolute-form authority port is ignored", [E], "http://h.com:9999/x", E),
    row("2.4 Host port is ignored", [E], "/", E, host="h.com:8080"),
    row("2.4 empty Host → 400", [S], "/", HOST400, host=""),
    row("2.4 Host with '/' → 400 Invalid Hostname", [S], "/", HOST400, host="h.com/x"),
    row("2.4 HTTP/1.0 without Host: strong accepts", [S], "/", S, host=None),
    row("2.4 HTTP/1.0 without Host: explicit cannot match", [E], "/", HOST400, host=None),
    row("2.4 Host with a bad port", [S], "/", HOST400, host="h.com:abc"),
    row("2.4 Host with userinfo", [S], "/", HOST400, host="u@h.com"),
    # §2.5 nothing accepts the host → 400 Invalid Hostname; host accepted, no path → 404
    row("2.5 explicit only, another host", [E], "/", HOST400, host="other.com"),
    row("2.5 explicit accepts its host, no path", ["http://h.com:80/a/"], "/b", NOTFOUND),
    row("2.5 nothing registered on the port (choice)", [], "/", HOST400),
    row("2.5 registered only on another port", ["http://+:81/"], "/", HOST400),
    row("2.5 ip-bound on another address does not accept", ["http://192.0.2.99:80/a/"], "/b",
        HOST400),
    row("2.5 ip-bound accepts any host → 404", ["http://192.0.2.1:80/a/"], "/b", NOTFOUND,
        host="x.example"),
    row("2.5 weak accepts any host → 404", ["http://*:80/a/"], "/b", NOTFOUND, host="o.com"),
    row("2.5 strong accepts any host → 404", ["http://+:80/a/"], "/b", NOTFOUND, host="o.com"),
    row("2.5 host accepted by one category, path by none", ["http://h.com:80/a/",
                                                          "http://192.0.2.99:80/"], "/b", NOTFOUND),
    row("2.5 reservations alone do not accept a host (choice)", ["http://192.0.2.99:80/"], "/b",
        HOST400, res=["http://h.com:80/a/"]),
    row("2.5 a reservation still answers its own paths", [], "/a/", RESERVED,
        res=["http://h.com:80/a/"]),
    # §3 canonicalisation happens before routing
    row("3 %2F is decoded", ["http://+:80/a/b/", W], "/a%2Fb", "http://+:80/a/b/"),
    row("3 backslash is '/'", ["http://+:80/a/b/", W], "/a\\b", "http://+:80/a/b/"),
    row("3 %5C is '/'", ["http://+:80/a/b/", W], "/a%5Cb/c", "http://+:80/a/b/"),
    row("3 '..' cannot escape a prefix", ["http://+:80/a/", W], "/a/../b", W),
    row("3 encoded '..' cannot escape a prefix", ["http://+:80/a/", W], "/a/%2e%2e/b", W),
    row("3 '..' can lead into a prefix", ["http://+:80/a/", W], "/b/../a/x", "http://+:80/a/"),
    row("3 '..' clamps at the root", ["http://+:80/a/", W], "/../../a/", "http://+:80/a/"),
    row("3 '.' is removed", ["http://+:80/a/b/", W], "/a/./b", "http://+:80/a/b/"),
    row("3 '//' is kept", ["http://+:80/a/b/", W], "/a//b", W),
    row("3 UTF-8 escapes", ["http://+:80/café/"], "/caf%C3%A9/x", "http://+:80/café/"),
    row("3 %u escapes", ["http://+:80/café/"], "/caf%u00E9", "http://+:80/café/"),
    row("3 non-ASCII is case-insensitive", ["http://+:80/café/"], "/CAF%C3%89",
        "http://+:80/café/"),
    row("3 %25 is decoded once only", ["http://+:80/a/", W], "/%2561/", W),
    row("3 bare '%' → 400", [S], "/a%", URL400),
    row("3 bad escape → 400", [S], "/a%zz", URL400),
    row("3 escape to a control → 400", [S], "/a%00", URL400),
    row("3 escape to a C1 control → 400", [S], "/a%C2%85", URL400),
    row("3 invalid UTF-8 → 400 (choice)", [S], "/%E9", URL400),
    row("3 segment over 260 → 400", [S], "/" + "a" * 261, URL400),
    row("3 segment of 260 is fine", [S], "/" + "a" * 260, S),
    row("3 over 255 segments → 400", [S], "/a" * 256, URL400),
    row("3 over-long URL → 414", [S], ("/" + "x" * 200) * 100, URL414),
    row("3 OPTIONS * routes as / (choice)", [S], "*", S),
]


@pytest.mark.parametrize("regs,res,target,host,ip,port,scheme,expect", ROUTES)
def test_routing_table(regs: list[str], res: list[str], target: str, host: str | None, ip: str,
                       port: int, scheme: str, expect: str) -> None:
    table = build(regs, res)
    assert outcome(table, target, host, ip=ip, port=port, scheme=scheme) == expect
    # registration order never matters
    shuffled = build(list(reversed(regs)), list(reversed(res)))
    assert outcome(shuffled, target, host, ip=ip, port=port, scheme=scheme) == expect


def test_there_are_enough_routing_rows() -> None:
    assert len(ROUTES) >= 60


def test_match_reports_category_and_prefix() -> None:
    table = build(FOUR)
    match = table.route(RouteRequest("http", "192.0.2.1", 80, "h.com", "/c/d"))
    assert match.category is Category.IP_BOUND
    assert match.prefix == parse_prefix("http://192.0.2.1:80/c/")
    assert match.target == "http://192.0.2.1:80/c/"


# ---- §6 registration and reservation ------------------------------------------------------

def _code(fn: Callable[..., object], *args: object) -> int:
    with pytest.raises(WinError) as info:
        fn(*args)
    return info.value.code


def test_register_twice_is_183_for_any_spelling() -> None:
    table = build(["http://+:80/App"])
    assert _code(table.register, parse_prefix("http://+:80/app/"), "x") == ERROR_ALREADY_EXISTS
    table.register(parse_prefix("http://*:80/app/"), "weak")       # another category: fine
    table.register(parse_prefix("http://+:8080/app/"), "port")     # another port: fine
    assert len(table) == 3


def test_unregister() -> None:
    table = build(["http://+:80/a/", "http://+:80/a/b/"])
    assert table.unregister(parse_prefix("http://+:80/A")) == "http://+:80/a/"
    assert _code(table.unregister, parse_prefix("http://+:80/a/")) == ERROR_FILE_NOT_FOUND
    assert outcome(table, "/a/x", "h.com") == NOTFOUND
    assert outcome(table, "/a/b/x", "h.com") == "http://+:80/a/b/"
    table.unregister(parse_prefix("http://+:80/a/b/"))
    assert len(table) == 0
    assert outcome(table, "/a/b/x", "h.com") == HOST400
    table.register(parse_prefix("http://+:80/a/"), "again")
    assert outcome(table, "/a/b", "h.com") == "again"


def test_reserve_and_unreserve() -> None:
    table: RouteTable[str] = RouteTable()
    prefix = parse_prefix("http://+:80/a/")
    table.reserve(prefix, Acl())
    assert _code(table.reserve, parse_prefix("http://+:80/A"), Acl()) == ERROR_ALREADY_EXISTS
    assert [p for p, _ in table.reservations()] == [prefix]
    table.register(prefix, "app")
    table.unreserve(prefix)
    assert _code(table.unreserve, prefix) == ERROR_FILE_NOT_FOUND
    assert outcome(table, "/a/", "h.com") == "app"     # the registration outlives the urlacl
    table.unregister(prefix)
    assert outcome(table, "/a/", "h.com") == HOST400
    assert list(table.registrations()) == [] and list(table.reservations()) == []


def test_one_scheme_per_port() -> None:
    table = build(["https://+:443/a/"])
    assert table.port_scheme(443) == "https"
    assert _code(table.register, parse_prefix("http://+:443/b/"), "x") == ERROR_ALREADY_EXISTS
    assert _code(table.register, parse_prefix("http://h.com:443/"), "x") == ERROR_ALREADY_EXISTS
    assert _code(table.reserve, parse_prefix("http://*:443/"), Acl()) == ERROR_ALREADY_EXISTS
    table.register(parse_prefix("https://*:443/"), "same scheme")
    table.unregister(parse_prefix("https://+:443/a/"))
    assert _code(table.register, parse_prefix("http://+:443/"), "x") == ERROR_ALREADY_EXISTS
    table.unregister(parse_prefix("https://*:443/"))
    assert table.port_scheme(443) is None
    table.reserve(parse_prefix("http://+:443/"), Acl())       # now free: a reservation ties it
    assert _code(table.register, parse_prefix("https://+:443/"), "x") == ERROR_ALREADY_EXISTS
    table.unreserve(parse_prefix("http://+:443/"))
    table.register(parse_prefix("https://+:443/"), "ok")


def test_check_may_register() -> None:
    table: RouteTable[str] = RouteTable()
    table.reserve(parse_prefix("https://+:443/"), Acl({1}))
    table.reserve(parse_prefix("https://+:443/app/"), Acl({2}))
    table.reserve(parse_prefix("https://h.com:443/"), Acl({3}))
    ok, denied = table.check_may_register, ERROR_ACCESS_DENIED

    ok(parse_prefix("https://+:443/anything/"), 0)              # root always
    ok(parse_prefix("http://+:9/"), 0)
    ok(parse_prefix("https://+:443/x/"), 1)                     # covered by '/'
    ok(parse_prefix("https://+:443/"), 1)                       # exactly the reservation
    ok(parse_prefix("https://+:443/app/"), 2)                   # the longest covering one wins
    ok(parse_prefix("https://+:443/APP/deep/"), 2)
    assert _code(ok, parse_prefix("https://+:443/app/x/"), 1) == denied   # not the longest
    ok(parse_prefix("https://+:443/application/"), 1)           # whole segments only
    assert _code(ok, parse_prefix("https://+:443/application/"), 2) == denied
    ok(parse_prefix("https://H.COM:443/z/"), 3)
    # reservations never cross categories, schemes or ports
    assert _code(ok, parse_prefix("https://h.com:443/"), 1) == denied
    assert _code(ok, parse_prefix("https://*:443/"), 1) == denied
    assert _code(ok, parse_prefix("https://10.0.0.1:443/"), 1) == denied
    assert _code(ok, parse_prefix("https://+:444/"), 1) == denied
    assert _code(ok, parse_prefix("https://other.com:443/"), 3) == denied
    assert _code(ok, parse_prefix("http://+:80/"), 1) == denied


# ---- Host header --------------------------------------------------------------------------

HOSTS = [
    ("example.com", ("example.com", None)),
    ("Example.COM:8443", ("example.com", 8443)),
    ("example.com.", ("example.com", None)),          # choice: one trailing dot is the same name
    ("example.com.:80", ("example.com", 80)),
    ("localhost", ("localhost", None)),
    ("10.0.0.1", ("10.0.0.1", None)),
    ("10.0.0.1:8080", ("10.0.0.1", 8080)),
    ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    ("[::1]", ("[::1]", None)),
    ("[::1]:443", ("[::1]", 443)),
    ("[0:0::1]:443", ("[::1]", 443)),
    ("[::]", ("[::]", None)),
    ("[::ffff:10.0.0.1]", ("[::ffff:a00:1]", None)),
    (" example.com ", ("example.com", None)),
    (b"example.com:1", ("example.com", 1)),
    ("my_host:65535", ("my_host", 65535)),
]
BAD_HOSTS = ["", " ", "example.com/x", "/", "a/b:80", "user@example.com", "example.com:",
             "example.com:0", "example.com:65536", "example.com:080", "example.com:8a",
             "example.com:-1", "example.com:+80", "exa mple.com", "example.com:80:80",
             "::1", "[::1", "[::1]x", "[::1]:", "[::g]", "[]", "+", "*", "*:80",
             "1.2.3", "192.", "010.0.0.1", "example..com", ".", "..", "-a.com",
             "café.example", b"caf\xc3\xa9", "exa%6dple.com", "a\x00b", "a\tb",
             "example.com:１２"]


@pytest.mark.parametrize("value,expected", HOSTS, ids=[repr(h[0]) for h in HOSTS])
def test_parse_host_header(value: str | bytes, expected: tuple[str, int | None]) -> None:
    assert parse_host_header(value) == expected


@pytest.mark.parametrize("value", BAD_HOSTS, ids=[repr(h) for h in BAD_HOSTS])
def test_bad_host_header(value: str | bytes) -> None:
    with pytest.raises(HttpSysError) as info:
        parse_host_header(value)
    assert info.value.page is ErrorPage.INVALID_HOSTNAME and info.value.reason == "Hostname"


@given(st.one_of(st.text(max_size=40), st.binary(max_size=40),
                 st.lists(st.sampled_from(["[", "]", ":", ".", "a", "1", "0", "::", "ffff",
                                           "@", "/", "%", "-", "_"]), max_size=12).map("".join)))
def test_parse_host_header_raises_only_invalid_hostname(value: str | bytes) -> None:
    try:
        host, port = parse_host_header(value)
    except HttpSysError as exc:
        assert exc.page is ErrorPage.INVALID_HOSTNAME
    else:
        assert host == host.lower() and host
        assert port is None or 1 <= port <= 65535
        assert parse_host_header(host if port is None else f"{host}:{port}") == (host, port)


# ---- properties against a naive reference ------------------------------------------------

def reference_route(regs: dict[UrlPrefix, str], res: set[UrlPrefix], req: RouteRequest) -> str:
    """§2 read literally, as a scan over every prefix: the oracle for the indexed table."""
    ip = normalize_ip(req.local_ip)
    path = "/" if req.path == "*" else req.path.lower()

    def host_ok(p: UrlPrefix) -> bool:
        if p.category is Category.EXPLICIT:
            return p.host_key == req.host
        if p.category is Category.IP_BOUND:
            return p.host_key == ip
        return True

    def path_ok(p: UrlPrefix) -> bool:
        prefix_path = p.path.lower()
        return path == prefix_path[:-1] or path.startswith(prefix_path)

    def on_port(p: UrlPrefix) -> bool:
        return p.scheme == req.scheme and p.port == req.local_port

    for category in Category:
        candidates = [p for p in set(regs) | res
                      if p.category is category and on_port(p) and host_ok(p) and path_ok(p)]
        if candidates:
            best = max(candidates, key=lambda p: len(p.path))
            return regs[best] if best in regs else RESERVED
    if any(on_port(p) and host_ok(p) for p in regs):
        return NOTFOUND
    return HOST400


HOST_CHOICES = ["+", "*", "a.com", "B.com", "192.0.2.1", "[2001:db8::1]"]
PATH_CHOICES = ["/", "/a/", "/a/b/", "/A/b/c/", "/ab/", "/b/", "/a/b/c/d/e/"]
prefixes = st.builds(lambda h, p, port: parse_prefix(f"http://{h}:{port}{p}"),
                     st.sampled_from(HOST_CHOICES), st.sampled_from(PATH_CHOICES),
                     st.sampled_from([80, 81]))
entries = st.lists(st.tuples(prefixes, st.sampled_from(["reg", "res", "both"])),
                   max_size=14, unique_by=lambda e: e[0])
requests = st.builds(
    RouteRequest, st.just("http"),
    st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "::ffff:192.0.2.1"]),
    st.sampled_from([80, 81]), st.sampled_from(["a.com", "b.com", "c.com", ""]),
    st.sampled_from(["/", "/a", "/a/", "/a/b", "/a/b/c/d", "/ab", "/b/x", "/c", "/A/B/C/D/E/F",
                     "*", "/a//b"]))


def _fill(entries_in_order: list[tuple[UrlPrefix, str]]) -> RouteTable[str]:
    table: RouteTable[str] = RouteTable()
    for prefix, kind in entries_in_order:
        if kind in ("reg", "both"):
            table.register(prefix, str(prefix))
        if kind in ("res", "both"):
            table.reserve(prefix, Acl())
    return table


def _route(table: RouteTable[str], req: RouteRequest) -> str:
    try:
        return table.route(req).target
    except HttpSysError as exc:
        return _LABELS[(exc.page, exc.reason)]


@given(entries, st.lists(requests, min_size=1, max_size=8))
def test_index_agrees_with_the_literal_reading_of_the_spec(
        items: list[tuple[UrlPrefix, str]], reqs: list[RouteRequest]) -> None:
    table = _fill(items)
    regs = {p: str(p) for p, kind in items if kind in ("reg", "both")}
    res = {p for p, kind in items if kind in ("res", "both")}
    for req in reqs:
        assert _route(table, req) == reference_route(regs, res, req)


@given(entries, st.randoms(use_true_random=False), st.lists(requests, min_size=1, max_size=8))
def test_routing_never_depends_on_registration_order(
        items: list[tuple[UrlPrefix, str]], rng: random.Random, reqs: list[RouteRequest]) -> None:
    shuffled = list(items)
    rng.shuffle(shuffled)
    first, second = _fill(items), _fill(shuffled)
    for req in reqs:
        assert _route(first, req) == _route(second, req)


@given(entries, requests)
def test_a_longer_matching_prefix_in_the_winning_category_wins(
        items: list[tuple[UrlPrefix, str]], req: RouteRequest) -> None:
    table = _fill(items)
    try:
        match = table.route(req)
    except HttpSysError:
        return
    request_segments = req.path.lower()[1:].split("/") if req.path != "*" else [""]
    depth = len(match.prefix.segments)
    assume(len(request_segments) > depth + 1 or
           (len(request_segments) == depth + 1 and request_segments[-1] != ""))
    deeper = request_segments[:depth + 1]
    assume("" not in deeper)
    longer = UrlPrefix("http", match.prefix.host, match.prefix.port, "/" + "/".join(deeper) + "/")
    if table.registration(longer) is None:
        table.register(longer, "longer")
    winner = table.route(req)
    event("a longer prefix was added")
    assert winner.prefix == longer and winner.category is match.category


@given(st.lists(st.tuples(prefixes, st.sampled_from(["reg", "res", "both"])),
                min_size=1, max_size=14, unique_by=lambda e: e[0]))
def test_removing_everything_leaves_an_empty_table(items: list[tuple[UrlPrefix, str]]) -> None:
    table = _fill(items)
    for prefix, kind in reversed(items):
        if kind in ("reg", "both"):
            assert table.unregister(prefix) == str(prefix)
        if kind in ("res", "both"):
            table.unreserve(prefix)
    assert len(table) == 0 and table.port_scheme(80) is None and table.port_scheme(81) is None
    assert _route(table, RouteRequest("http", "192.0.2.1", 80, "a.com", "/")) == HOST400


# ---- lookup cost does not grow with the number of prefixes --------------------------------

def _big_table(count: int) -> RouteTable[int]:
    rng = random.Random(count)
    table: RouteTable[int] = RouteTable()
    hosts = ["+", "*", "192.0.2.1"] + [f"h{i}.example" for i in range(50)]
    while len(table) < count:
        host = rng.choice(hosts)
        depth = rng.randint(0, 5)
        path = "/" + "".join(f"s{rng.randint(0, 9)}/" for _ in range(depth))
        prefix = parse_prefix(f"http://{host}:80{path}")
        if table.registration(prefix) is None:
            table.register(prefix, len(table))
    return table


def test_lookup_visits_at_most_one_node_per_segment_per_category() -> None:
    paths = ["/s1/s2/s3/s4/s5/s6/s7", "/s0", "/zzz/yyy", "/s1/s1/s1/s1/s1/s1/s1/s1/s1/s1"]
    for count in (10, 20_000):
        table = _big_table(count)
        for path in paths:
            before = table.node_visits
            try:
                table.route(RouteRequest("http", "192.0.2.1", 80, "h7.example", path))
            except HttpSysError:
                pass
            segments = len(path[1:].split("/"))
            assert table.node_visits - before <= len(Category) * segments

"""UrlPrefix parsing (spec httpsys.md §1): every valid form, every invalid form, identity rules."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpsys_emu.urlprefix import Category, UrlPrefix, normalize_ip, parse_prefix, path_key
from httpsys_emu.winerror import ERROR_INVALID_PARAMETER, WinError

# (text, str(parsed), category, canonical())
VALID = [
    ("http://+:80/", "http://+:80/", Category.STRONG, "http://+:80/"),
    ("https://+:443/OctopusComms/", "https://+:443/OctopusComms/", Category.STRONG,
     "https://+:443/octopuscomms/"),
    ("https://*:443/a/b", "https://*:443/a/b/", Category.WEAK, "https://*:443/a/b/"),
    ("http://Example.COM:8080/X", "http://Example.COM:8080/X/", Category.EXPLICIT,
     "http://example.com:8080/x/"),
    ("http://localhost:1/", "http://localhost:1/", Category.EXPLICIT, "http://localhost:1/"),
    ("http://my_host-1.internal:65535/", "http://my_host-1.internal:65535/", Category.EXPLICIT,
     "http://my_host-1.internal:65535/"),
    ("http://xn--caf-dma.example:80/", "http://xn--caf-dma.example:80/", Category.EXPLICIT,
     "http://xn--caf-dma.example:80/"),
    ("http://1example.com:80/", "http://1example.com:80/", Category.EXPLICIT,
     "http://1example.com:80/"),
    ("http://10.0.0.1:80/", "http://10.0.0.1:80/", Category.IP_BOUND, "http://10.0.0.1:80/"),
    ("http://255.255.255.255:80/", "http://255.255.255.255:80/", Category.IP_BOUND,
     "http://255.255.255.255:80/"),
    ("https://[::1]:443/api/", "https://[::1]:443/api/", Category.IP_BOUND,
     "https://[::1]:443/api/"),
    ("https://[0:0:0:0:0:0:0:1]:443/", "https://[0:0:0:0:0:0:0:1]:443/", Category.IP_BOUND,
     "https://[::1]:443/"),
    ("http://[FE80::A]:80/x", "http://[FE80::A]:80/x/", Category.IP_BOUND,
     "http://[fe80::a]:80/x/"),
    ("http://+:80/café/Ünïcode", "http://+:80/café/Ünïcode/", Category.STRONG,
     "http://+:80/café/ünïcode/"),
    ("http://+:80/users/@me/", "http://+:80/users/@me/", Category.STRONG,
     "http://+:80/users/@me/"),                   # '@' is only userinfo in the authority
    ("http://+:80/a.b/...;x=1/~u/", "http://+:80/a.b/...;x=1/~u/", Category.STRONG,
     "http://+:80/a.b/...;x=1/~u/"),
]


@pytest.mark.parametrize("text,shown,category,canonical", VALID, ids=[v[0] for v in VALID])
def test_valid_prefixes(text: str, shown: str, category: Category, canonical: str) -> None:
    prefix = parse_prefix(text)
    assert str(prefix) == shown
    assert prefix.category is category
    assert prefix.canonical() == canonical
    assert parse_prefix(prefix.canonical()) == prefix
    assert prefix.path.endswith("/")


# (text, a fragment of the detail that says what is wrong)
INVALID = [
    ("", "empty"),
    ("+:80/", "no scheme"),
    ("//+:80/", "no scheme"),
    ("ftp://+:80/", "not 'http' or 'https'"),
    ("ws://+:80/", "not 'http' or 'https'"),
    ("HTTP://+:80/", "lower case"),              # choice: Windows wants lower-case schemes
    ("Https://+:443/", "lower case"),
    ("http:/+:80/", "no scheme"),
    ("http://+/", "no port"),
    ("http://example.com/", "no port"),
    ("http://+:/", "empty port"),
    ("http://+:0/", "port 0"),
    ("http://+:65536/", "out of range"),
    ("http://+:99999/", "out of range"),
    ("http://+:123456/", "not a number"),
    ("http://+:080/", "leading zero"),
    ("http://+:00080/", "leading zero"),
    ("http://+:*/", "wildcard port"),
    ("http://+:+/", "wildcard port"),
    ("http://+:-1/", "not a number"),
    ("http://+:8a/", "not a number"),
    ("http://+:80", "no '/' after the port"),
    ("http://example.com:80", "no '/' after the port"),
    ("http://+:80/a?b", "query"),
    ("http://+:80?x", "query"),
    ("http://+:80/?", "query"),
    ("http://+:80/a%20b/", "'%'"),
    ("http://+:80/%", "'%'"),
    ("http://[fe80::1%25eth0]:80/", "'%'"),
    ("http://+:80/a#b", "fragment"),
    ("http://user@host:80/", "userinfo"),
    ("http://user:pw@host:80/", "userinfo"),
    ("http://+:80/a\\b/", "backslash"),
    ("http://+:80/a b/", "U+0020"),
    ("http://ex ample:80/", "U+0020"),
    (" http://+:80/", "U+0020"),
    ("http://+:80/\t", "U+0009"),
    ("http://+:80/\x00", "U+0000"),
    ("http://+:80/\x7f", "U+007F"),
    ("http://+:80/\x85", "U+0085"),
    ("http://+:80/\u00a0", "U+00A0"),
    ("http://+:80/\u2028", "U+2028"),
    ("http://+:80/\ud800", "U+D800"),
    ("http://:80/", "empty host"),
    ("http://0.0.0.0:80/", "unspecified"),
    ("http://[::]:80/", "unspecified"),
    ("http://[0:0:0:0:0:0:0:0]:80/", "unspecified"),
    ("http://[]:80/", "malformed IPv6"),
    ("http://[:80/", "unterminated"),
    ("http://[::1:80/", "unterminated"),
    ("http://[::1]80/", "no port"),
    ("http://[::g]:80/", "malformed IPv6"),
    ("http://[1:2:3:4:5:6:7:8:9]:80/", "malformed IPv6"),
    ("http://[10.0.0.1]:80/", "malformed IPv6"),
    ("http://[::ffff:10.0.0.1]:80/", "IPv4-mapped"),
    ("http://::1:80/", "brackets"),
    ("http://a]:80/", "brackets"),
    ("http://192.:80/", "dotted quad"),           # §1 example
    ("http://1.2.3:80/", "dotted quad"),          # choice: numeric-looking, not a dotted quad
    ("http://10.1:80/", "dotted quad"),
    ("http://123:80/", "dotted quad"),
    ("http://0x7f.1:80/", "dotted quad"),
    ("http://example.123:80/", "dotted quad"),
    ("http://1.2.3.4.5:80/", "dotted quad"),
    ("http://256.1.1.1:80/", "dotted quad"),
    ("http://010.0.0.1:80/", "dotted quad"),      # leading zero octet (octal to some parsers)
    ("http://example.com.:80/", "ends with a dot"),  # choice: one name, one spelling
    ("http://.example.com:80/", "DNS label"),
    ("http://a..b:80/", "DNS label"),
    ("http://-a.com:80/", "DNS label"),
    ("http://a-.com:80/", "DNS label"),
    ("http://" + "a" * 64 + ".com:80/", "DNS label"),
    ("http://" + ("a" * 60 + ".") * 5 + "com:80/", "longer than 253"),
    ("http://exa$mple:80/", "DNS label"),
    ("http://café.example:80/", "punycode"),
    ("http://++:80/", "DNS label"),
    ("http://**:80/", "DNS label"),
    ("http://+:80/a//b/", "empty segment"),
    ("http://+:80//", "empty segment"),
    ("http://+:80/a/./b/", "dot segment"),
    ("http://+:80/a/../", "dot segment"),
    ("http://+:80/..", "dot segment"),
]


@pytest.mark.parametrize("text,detail", INVALID, ids=[repr(v[0])[:60] for v in INVALID])
def test_invalid_prefixes_are_error_87(text: str, detail: str) -> None:
    with pytest.raises(WinError) as info:
        parse_prefix(text)
    assert info.value.code == ERROR_INVALID_PARAMETER
    assert detail in info.value.detail
    assert info.value.message == "The parameter is incorrect."


SAME = [
    ("http://+:80/barfoo", "http://+:80/barfoo/"),          # §1 trailing '/'
    ("http://+:80/BarFoo/", "http://+:80/barfoo"),          # case-insensitive path
    ("http://Example.COM:80/", "http://example.com:80/"),   # case-insensitive host
    ("http://[::1]:80/", "http://[0::0:1]:80/"),            # IPv6 spellings
    ("http://[FE80::1]:80/", "http://[fe80::1]:80/"),
    ("https://*:443/x", "https://*:443/X/"),
    ("http://+:80/ΑΣ/", "http://+:80/ασ/"),                # per-character folding: no final-sigma
    ("http://+:80/ας/", "http://+:80/ΑΣ/"),                # context, as Windows' upcase table
    ("http://+:80/Ärger/", "http://+:80/äRGER/"),
]
DIFFERENT = [
    ("http://+:80/", "https://+:80/"),      # scheme
    ("http://+:80/", "http://+:81/"),       # port
    ("http://+:80/", "http://*:80/"),       # strong vs weak
    ("http://+:80/a/", "http://+:80/a/b/"),  # path
    ("http://a.com:80/", "http://b.com:80/"),
    ("http://10.0.0.1:80/", "http://10.0.0.2:80/"),
    ("http://[::1]:80/", "http://127.0.0.1:80/"),
    ("http://+:80/straße/", "http://+:80/strasse/"),       # no full case mapping (ß ≠ ss)
]


@pytest.mark.parametrize("a,b", SAME)
def test_same_prefix(a: str, b: str) -> None:
    pa, pb = parse_prefix(a), parse_prefix(b)
    assert pa == pb and hash(pa) == hash(pb) and pa.key == pb.key
    assert pa.canonical() == pb.canonical()
    assert len({pa, pb}) == 1


@pytest.mark.parametrize("a,b", DIFFERENT)
def test_different_prefix(a: str, b: str) -> None:
    pa, pb = parse_prefix(a), parse_prefix(b)
    assert pa != pb and pa.key != pb.key


def test_display_keeps_case_and_key_folds_it() -> None:
    prefix = parse_prefix("https://Example.COM:8443/Some/Path")
    assert str(prefix) == "https://Example.COM:8443/Some/Path/"
    assert prefix.key == ("https", "example.com", 8443, "/some/path/")
    assert prefix.host == "Example.COM" and prefix.path == "/Some/Path/"
    assert prefix.segments == ("some", "path")
    assert parse_prefix("http://+:80/").segments == ()


def test_direct_construction_validates_and_adds_slash() -> None:
    assert str(UrlPrefix("http", "+", 80, "/x")) == "http://+:80/x/"
    for bad in [("HTTP", "+", 80, "/"), ("http", "+", 0, "/"), ("http", "0.0.0.0", 80, "/"),
                ("http", "+", 80, "x/"), ("http", "+", 80, "/a?b"), ("http", "+", True, "/")]:
        with pytest.raises(WinError) as info:
            UrlPrefix(*bad)  # type: ignore[arg-type]
        assert info.value.code == ERROR_INVALID_PARAMETER


def test_prefix_is_not_equal_to_strings() -> None:
    assert parse_prefix("http://+:80/") != "http://+:80/"


@pytest.mark.parametrize("address,expected", [
    ("10.0.0.1", "10.0.0.1"),
    ("::ffff:10.0.0.1", "10.0.0.1"),       # dual-stack socket
    ("::FFFF:a00:1", "10.0.0.1"),
    ("::1", "[::1]"),
    ("[0::1]", "[::1]"),
    ("fe80::1%eth0", "[fe80::1]"),
    ("not-an-ip", None),
    ("", None),
])
def test_normalize_ip(address: str, expected: str | None) -> None:
    assert normalize_ip(address) == expected


# ---- properties ---------------------------------------------------------------------------

_label = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,10}[A-Za-z0-9]\Z|\A[a-zA-Z]\Z")
dns_names = st.lists(_label, min_size=1, max_size=4).map(".".join).filter(lambda h: len(h) <= 253)
ipv4_hosts = st.integers(1, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))


def _ipv6_text(value: int, style: int) -> str:
    addr = ipaddress.IPv6Address(value)
    text = [addr.compressed, addr.exploded, addr.compressed.upper()][style]
    return f"[{text}]"


ipv6_hosts = st.builds(
    _ipv6_text,
    st.integers(1, 2**128 - 1).filter(
        lambda n: ipaddress.IPv6Address(n).ipv4_mapped is None),
    st.integers(0, 2),
)
hosts = st.one_of(st.sampled_from(["+", "*"]), dns_names, ipv4_hosts, ipv6_hosts)
_segment_chars = st.characters(
    blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Cn"),
    blacklist_characters="/?#%@\\",
)
segments = st.text(_segment_chars, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
paths = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(segments, max_size=5), st.booleans())
prefix_texts = st.builds(lambda scheme, host, port, path: f"{scheme}://{host}:{port}{path}",
                         st.sampled_from(["http", "https"]), hosts, st.integers(1, 65535), paths)


@given(prefix_texts)
def test_parse_format_identity(text: str) -> None:
    prefix = parse_prefix(text)
    shown = str(prefix)
    assert shown == (text if text.endswith("/") else text + "/")
    again = parse_prefix(shown)
    assert again == prefix
    assert str(again) == shown
    assert parse_prefix(prefix.canonical()) == prefix
    assert parse_prefix(prefix.canonical()).canonical() == prefix.canonical()


@given(prefix_texts)
def test_case_variants_are_the_same_prefix(text: str) -> None:
    scheme, rest = text.split("://", 1)
    variant = scheme + "://" + rest.upper()
    try:
        other = parse_prefix(variant)
    except WinError:
        return   # upper-casing a Unicode path can produce an invalid character (rare)
    if rest.lower() == rest.upper().lower():
        assert other == parse_prefix(text)


@given(st.text(max_size=40))
def test_path_folding_is_idempotent_and_keeps_length(text: str) -> None:
    once = path_key(text)
    assert path_key(once) == once
    assert len(once) == len(text)
    assert path_key(text.upper()) == path_key(text.lower()) or not text.isascii()


@given(st.text(max_size=60))
def test_arbitrary_text_only_raises_error_87(text: str) -> None:
    try:
        prefix = parse_prefix(text)
    except WinError as exc:
        assert exc.code == ERROR_INVALID_PARAMETER
    else:
        assert parse_prefix(str(prefix)) == prefix


@given(st.text(alphabet="htps:/+*[]0123456789.abcxyz%?#@-_\\ ", max_size=40))
def test_structured_junk_only_raises_error_87(text: str) -> None:
    try:
        prefix = parse_prefix(text)
    except WinError as exc:
        assert exc.code == ERROR_INVALID_PARAMETER
    else:
        assert parse_prefix(str(prefix)) == prefix

"""Request-target splitting and path canonicalisation (spec httpsys.md §3)."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpsys_emu.canonical import canonicalize_path, split_target
from httpsys_emu.pages import ErrorPage, HttpSysError

# (raw path, canonical path)
CANONICAL = [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),
    ("/A/B", "/A/B"),                              # case is kept (matching folds it)
    # escapes decoded once, %2F included
    ("/a%2Fb", "/a/b"),
    ("/a%2fb", "/a/b"),
    ("/%61%62%63", "/abc"),
    ("/a%20b", "/a b"),
    ("/a%3Fb%23c", "/a?b#c"),                      # decoded '?' and '#' are path characters
    # UTF-8 first
    ("/caf%C3%A9", "/café"),
    ("/%E2%82%AC", "/€"),
    ("/%F0%9F%98%80", "/😀"),
    ("/café", "/café"),                            # str input: characters are themselves
    (b"/caf\xc3\xa9", "/café"),                    # bytes input: raw UTF-8
    (b"/caf%C3\xa9", "/café"),                     # mixed escape and raw byte
    ("/%C2%A0", "/\u00a0"),                        # U+00A0 is not a control character
    # %uNNNN
    ("/%u00e9", "/é"),
    ("/%U00E9", "/é"),
    ("/%u20AC", "/€"),
    ("/%uD83D%uDE00", "/😀"),                      # surrogate pair
    ("/a%u002Fb", "/a/b"),
    # backslashes
    ("/a\\b", "/a/b"),
    ("/a%5Cb", "/a/b"),
    ("/a%5cb", "/a/b"),
    ("/a%u005Cb", "/a/b"),
    ("\\", None),                                  # must start with '/' (raw)
    # dot segments
    ("/a/./b", "/a/b"),
    ("/a/../b", "/b"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/..", "/"),                                  # choice: clamp at the root
    ("/../../a", "/a"),
    ("/a/../../../b", "/b"),
    ("/.", "/"),
    ("/a/%2e%2e/b", "/b"),                         # decoded before removal
    ("/a/%2E/b", "/a/b"),
    ("/a/.%2e/b", "/b"),
    ("/a%2F..%2Fb", "/b"),
    ("/a\\..\\b", "/b"),
    ("/a/%u002e%u002e/b", "/b"),
    ("/.../a", "/.../a"),                          # not a dot segment
    ("/a/.b/c.", "/a/.b/c."),
    ("/a//b", "/a//b"),                            # choice: '//' kept
    ("//", "//"),
    ("/a//../b", "/a/b"),
    # %25 stays written as %25 (idempotence), never decoded twice
    ("/a%25b", "/a%25b"),
    ("/%252F", "/%252F"),
    ("/%252e%252e/x", "/%252e%252e/x"),
    ("/%u0025", "/%25"),
]


@pytest.mark.parametrize("raw,expected", CANONICAL, ids=[repr(c[0]) for c in CANONICAL])
def test_canonical_form(raw: str | bytes, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(HttpSysError) as info:
            canonicalize_path(raw)
        assert info.value.page is ErrorPage.INVALID_URL
        return
    assert canonicalize_path(raw) == expected
    assert canonicalize_path(expected) == expected


INVALID_URL = [
    "/%",                       # bare '%'
    "/a%",
    "/a%2",
    "/a%zz",
    "/a%%41",
    "/%g0",
    "/%u",
    "/%u12",
    "/%u12G4",
    "/%uD800",                  # lone high surrogate
    "/%uD800x",
    "/%uD800%u0041",            # high surrogate not followed by a low one
    "/%uDC00",                  # lone low surrogate
    "/%E9",                     # choice: invalid UTF-8 is refused (no code-page fallback)
    "/%C3",
    "/%C3%28",
    "/%C0%AF",                  # overlong '/' (the classic traversal)
    "/%ED%A0%80",               # UTF-8-encoded surrogate
    "/%F8%88%80%80%80",
    b"/\xe9",                   # raw invalid UTF-8 byte
    "/%00",                     # escapes decoding to controls
    "/%01",
    "/%0A",
    "/%0d",
    "/%1F",
    "/%7F",
    "/%C2%80",
    "/%C2%85",
    "/%C2%9F",
    "/%u0000",
    "/%u001f",
    "/%u0085",
    "/a\x00",                   # raw controls
    "/a\tb",
    "/a\r",
    "/a\n",
    "/\x7f",
    "/\x85",
    b"/\xc2\x85",
    "",                         # not a path
    "a/b",
    "*",
    "%2Fa",
]


@pytest.mark.parametrize("raw", INVALID_URL, ids=[repr(c) for c in INVALID_URL])
def test_invalid_url(raw: str | bytes) -> None:
    with pytest.raises(HttpSysError) as info:
        canonicalize_path(raw)
    assert info.value.page is ErrorPage.INVALID_URL
    assert info.value.reason == "URL"


def test_segment_length_limit() -> None:
    assert canonicalize_path("/" + "a" * 260) == "/" + "a" * 260
    assert canonicalize_path("/" + "%41" * 260 + "/x") == "/" + "A" * 260 + "/x"  # decoded length
    assert canonicalize_path("/" + "é" * 260) == "/" + "é" * 260               # characters
    for raw in ["/" + "a" * 261, "/x/" + "a" * 261 + "/y", "/" + "%41" * 261,
                "/" + "a" * 130 + "%2e" + "a" * 130]:
        with pytest.raises(HttpSysError) as info:
            canonicalize_path(raw)
        assert info.value.page is ErrorPage.INVALID_URL and info.value.reason == "URL"
    assert canonicalize_path("/" + "a" * 20, max_segment_length=20) == "/" + "a" * 20
    with pytest.raises(HttpSysError):
        canonicalize_path("/" + "a" * 21, max_segment_length=20)


def test_segment_count_limit() -> None:
    assert canonicalize_path("/a" * 255) == "/a" * 255
    assert canonicalize_path("/a" * 255 + "/") == "/a" * 255 + "/"   # trailing '/' not counted
    assert canonicalize_path("/a" * 300 + "/.." * 45) == "/a" * 255 + "/"  # after '..'
    with pytest.raises(HttpSysError) as info:
        canonicalize_path("/a" * 256)
    assert info.value.page is ErrorPage.INVALID_URL and info.value.reason == "URL"
    with pytest.raises(HttpSysError):
        canonicalize_path("/" * 257)                     # empty segments count too
    with pytest.raises(HttpSysError):
        canonicalize_path("/a/b/c", max_segment_count=2)


def test_url_length_limit_is_414() -> None:
    path = (("/" + "x" * 200) * 82)[:16384]       # exactly the default limit, 16384 bytes
    assert canonicalize_path(path) == path
    with pytest.raises(HttpSysError) as info:
        canonicalize_path(path + "x")
    assert info.value.page is ErrorPage.URL_TOO_LONG and info.value.reason == "URL"
    assert info.value.page.status == 414
    with pytest.raises(HttpSysError) as info:
        canonicalize_path("/" + "é" * 10, max_url_length=20)   # 21 UTF-8 bytes
    assert info.value.page is ErrorPage.URL_TOO_LONG
    assert canonicalize_path("/" + "%41" * 6, max_url_length=19) == "/AAAAAA"
    with pytest.raises(HttpSysError) as info:
        canonicalize_path("/" + "%41" * 7, max_url_length=19)  # raw length, before decoding
    assert info.value.page is ErrorPage.URL_TOO_LONG


# ---- split_target -------------------------------------------------------------------------

SPLIT = [
    ("/", ("/", "", None)),
    ("/a/b?x=1&y=2", ("/a/b", "x=1&y=2", None)),
    ("/a?", ("/a", "", None)),
    ("/a?b?c", ("/a", "b?c", None)),
    ("/a%3Fb?c", ("/a%3Fb", "c", None)),
    ("*", ("*", "", None)),
    ("http://Example.com:8080/a/b?q=1", ("/a/b", "q=1", "Example.com:8080")),
    ("https://example.com/x", ("/x", "", "example.com")),
    ("HTTP://example.com/x", ("/x", "", "example.com")),
    ("http://example.com", ("/", "", "example.com")),
    ("http://example.com?q", ("/", "q", "example.com")),
    ("http://[::1]:443/p", ("/p", "", "[::1]:443")),
    ("http://10.0.0.1/p?", ("/p", "", "10.0.0.1")),
]


@pytest.mark.parametrize("target,expected", SPLIT, ids=[s[0] for s in SPLIT])
def test_split_target(target: str, expected: tuple[str, str, str | None]) -> None:
    assert split_target(target) == expected
    raw_path, raw_query, authority = split_target(target.encode("ascii"))
    assert (raw_path.decode(), raw_query.decode(), authority) == expected


def test_split_target_keeps_raw_bytes() -> None:
    assert split_target(b"/caf\xc3\xa9?q=\xff") == (b"/caf\xc3\xa9", b"q=\xff", None)
    assert split_target(b"/\xe2\x82\xac\xc2\xa0") == (b"/\xe2\x82\xac\xc2\xa0", b"", None)
    assert canonicalize_path(split_target(b"/\xe2\x82\xac")[0]) == "/€"
    with pytest.raises(HttpSysError):
        split_target("/\x85")                       # a C1 control as text


SPLIT_ERRORS = [
    ("", ErrorPage.INVALID_URL),
    ("example.com:443", ErrorPage.INVALID_URL),          # authority-form (CONNECT)
    ("[::1]:443", ErrorPage.INVALID_URL),
    ("a/b", ErrorPage.INVALID_URL),                      # relative
    ("?x", ErrorPage.INVALID_URL),
    ("ftp://example.com/", ErrorPage.INVALID_URL),       # other scheme
    ("ws://example.com/", ErrorPage.INVALID_URL),
    ("/a#frag", ErrorPage.INVALID_URL),
    ("/a b", ErrorPage.INVALID_URL),
    ("/a\x00", ErrorPage.INVALID_URL),
    ("/a\tb", ErrorPage.INVALID_URL),
    ("/a\u3000b", ErrorPage.INVALID_URL),
    ("http:///x", ErrorPage.INVALID_HOSTNAME),           # empty authority
    ("http://user@example.com/", ErrorPage.INVALID_HOSTNAME),
    ("http://example.com:99999/", ErrorPage.INVALID_HOSTNAME),
    ("http://exa%6dple.com/", ErrorPage.INVALID_HOSTNAME),
]


@pytest.mark.parametrize("target,page", SPLIT_ERRORS, ids=[repr(s[0]) for s in SPLIT_ERRORS])
def test_split_target_errors(target: str, page: ErrorPage) -> None:
    with pytest.raises(HttpSysError) as info:
        split_target(target)
    assert info.value.page is page


# ---- properties ---------------------------------------------------------------------------

_path_alphabet = st.sampled_from(
    list("/\\.%aAzZ09uU-_~") + ["%2F", "%2f", "%5C", "%2E", "%25", "%u002F", "%uD83D",
                                "%uDE00", "%C3", "%A9", "%00", "..", "./", "/.."])
paths = st.lists(_path_alphabet, max_size=30).map(lambda parts: "/" + "".join(parts))


def _assert_canonical_shape(result: str) -> None:
    assert result.startswith("/")
    assert "\\" not in result
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in result)
    segments = result[1:].split("/")
    assert "." not in segments and ".." not in segments
    assert result.replace("%25", "").find("%") < 0


@given(st.one_of(paths, st.text(max_size=80), st.binary(max_size=80)))
def test_canonicalize_is_idempotent_and_raises_only_httpsys_errors(raw: str | bytes) -> None:
    try:
        once = canonicalize_path(raw)
    except HttpSysError as exc:
        assert exc.page in (ErrorPage.INVALID_URL, ErrorPage.URL_TOO_LONG)
        return
    _assert_canonical_shape(once)
    assert canonicalize_path(once) == once
    assert canonicalize_path(once.encode("utf-8")) == once


_plain_segment = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\%"),
    min_size=1, max_size=10).filter(lambda s: s not in (".", ".."))


@given(st.lists(_plain_segment, min_size=1, max_size=6))
def test_percent_encoding_everything_decodes_once(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    assert canonicalize_path(path) == path
    assert canonicalize_path(urllib.parse.quote(path, safe="/")) == path
    all_escaped = "/" + urllib.parse.quote(path, safe="")[3:]   # every later '/' as %2F
    assert canonicalize_path(all_escaped) == path


@given(st.lists(_plain_segment, min_size=1, max_size=6))
def test_percent_is_never_decoded_twice(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    once = urllib.parse.quote(path, safe="/")
    twice = once.replace("%", "%25")
    assert canonicalize_path(twice) == twice
    assert canonicalize_path(twice) != canonicalize_path(once) or "%" not in once


@given(st.one_of(st.text(max_size=80), st.binary(max_size=80),
                 st.lists(st.sampled_from(["http://", "https://", "/", "?", "#", "*", ":", "@",
                                           "[", "]", "::1", "h.com", "80", "%"]),
                          max_size=10).map("".join)))
def test_split_target_raises_only_httpsys_errors(target: str | bytes) -> None:
    try:
        path, query, authority = split_target(target)
    except HttpSysError as exc:
        assert exc.page in (ErrorPage.INVALID_URL, ErrorPage.INVALID_HOSTNAME)
        return
    assert type(path) is type(target) and type(query) is type(target)

"""The piecewise request-head checks: each refusal carries the HTTP.sys page and HTTPERR reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpsys_emu.headcheck import (
    RequestLine,
    check_trailer_name,
    check_transfer_encoding,
    connection_options,
    parse_content_length,
    parse_field_line,
    parse_request_line,
)
from httpsys_emu.pages import ErrorPage, HttpSysError

BAD = ErrorPage.BAD_REQUEST


def refusal(call, *args) -> tuple[ErrorPage, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(HttpSysError) as info:
        call(*args)
    return info.value.page, info.value.reason


@pytest.mark.parametrize("line, expected", [
    (b"GET / HTTP/1.1", RequestLine("GET", "/", "1.1")),
    (b"POST /a?b=c HTTP/1.0", RequestLine("POST", "/a?b=c", "1.0")),
    (b"OPTIONS * HTTP/1.1", RequestLine("OPTIONS", "*", "1.1")),
    (b"GET http://h.example:80/x HTTP/1.1", RequestLine("GET", "http://h.example:80/x", "1.1")),
    (b"CONNECT h.example:443 HTTP/1.1", RequestLine("CONNECT", "h.example:443", "1.1")),
    (b"PROPFIND /dav HTTP/1.1", RequestLine("PROPFIND", "/dav", "1.1")),
    (b"GET /caf\xc3\xa9 HTTP/1.1", RequestLine("GET", "/caf\xc3\xa9", "1.1")),  # raw UTF-8 kept
])
def test_request_line_accepted(line: bytes, expected: RequestLine) -> None:
    assert parse_request_line(line) == expected


@pytest.mark.parametrize("line, page, reason", [
    (b"get / HTTP/1.1", ErrorPage.INVALID_VERB, "Verb"),
    (b"Get / HTTP/1.1", ErrorPage.INVALID_VERB, "Verb"),
    (b"G\x01ET / HTTP/1.1", ErrorPage.INVALID_VERB, "Verb"),
    (b"G\x00ET / HTTP/1.1", ErrorPage.INVALID_VERB, "Verb"),
    (b"GE(T / HTTP/1.1", ErrorPage.INVALID_VERB, "Verb"),
    (b"G\xc3\x89T / HTTP/1.1", ErrorPage.INVALID_VERB, "Verb"),
    (b"GET / HTTP/1.32", ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    (b"GET / HTTP/1.2", ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    (b"GET / HTTP/2.0", ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    (b"GET / HTTP/0.9", ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    (b"GET / HTTP/01.1", ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    (b"GET / HTTP/" + b"9" * 40 + b".1", ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    (b"GET / HTTP/1", BAD, "BadRequest"),
    (b"GET / http/1.1", BAD, "BadRequest"),
    (b"GET / HTTP/1.1x", BAD, "BadRequest"),
    (b"GET / HTTP/-1.1", BAD, "BadRequest"),
    (b"GET /", BAD, "BadRequest"),
    (b"GET", BAD, "BadRequest"),
    (b"", BAD, "BadRequest"),
    (b"GET  / HTTP/1.1", BAD, "BadRequest"),
    (b"GET / HTTP/1.1 ", BAD, "BadRequest"),
    (b" GET / HTTP/1.1", BAD, "BadRequest"),
    (b"GET\t/\tHTTP/1.1", BAD, "BadRequest"),
    (b"GET /a b HTTP/1.1", BAD, "BadRequest"),
    (b"GET /\rx HTTP/1.1", BAD, "Invalid_CR/LF"),
    (b"GET /\x00 HTTP/1.1", ErrorPage.INVALID_URL, "URL"),
    (b"GET /\x7f HTTP/1.1", ErrorPage.INVALID_URL, "URL"),
    (b"GET /\x0b HTTP/1.1", ErrorPage.INVALID_URL, "URL"),
    (b"GET a HTTP/1.1", ErrorPage.INVALID_URL, "URL"),
    (b"GET * HTTP/1.1", ErrorPage.INVALID_URL, "URL"),
])
def test_request_line_refused(line: bytes, page: ErrorPage, reason: str) -> None:
    assert refusal(parse_request_line, line) == (page, reason)


@pytest.mark.parametrize("line, expected", [
    (b"Host: a.example", (b"Host", b"a.example")),
    (b"X:  spaced \t", (b"X", b"spaced")),
    (b"X:", (b"X", b"")),
    (b"X_Custom: 1", (b"X_Custom", b"1")),  # underscores are fine unless they imitate framing
    (b"X: a\tb \xa0 \xff", (b"X", b"a\tb \xa0 \xff")),  # obs-text is allowed in values
    (b"!#$%&'*+-.^_`|~09azAZ: v", (b"!#$%&'*+-.^_`|~09azAZ", b"v")),
])
def test_field_line_accepted(line: bytes, expected: tuple[bytes, bytes]) -> None:
    assert parse_field_line(line) == expected


@pytest.mark.parametrize("line, page, reason", [
    (b" X: a", BAD, "Header"),
    (b"\tX: a", BAD, "Header"),
    (b"X : a", ErrorPage.INVALID_HEADER, "Header"),
    (b"Transfer-Encoding : chunked", ErrorPage.INVALID_HEADER, "Header"),
    (b": a", ErrorPage.INVALID_HEADER, "Header"),
    (b"no colon", ErrorPage.INVALID_HEADER, "Header"),
    (b"H\xc3\xa9: a", ErrorPage.INVALID_HEADER, "Header"),
    (b"X\x00: a", ErrorPage.INVALID_HEADER, "Header"),
    (b"X(y): a", ErrorPage.INVALID_HEADER, "Header"),
    (b"Content_Length: 5", ErrorPage.INVALID_HEADER, "Header"),
    (b"content_length: 5", ErrorPage.INVALID_HEADER, "Header"),
    (b"Transfer_Encoding: chunked", ErrorPage.INVALID_HEADER, "Header"),
    (b"X: a\x00b", BAD, "Header"),
    (b"X: a\x0bb", BAD, "Header"),
    (b"X: a\x7fb", BAD, "Header"),
    (b"X: a\x1b", BAD, "Header"),
    (b"X: a\rb", BAD, "Invalid_CR/LF"),
])
def test_field_line_refused(line: bytes, page: ErrorPage, reason: str) -> None:
    assert refusal(parse_field_line, line) == (page, reason)


@pytest.mark.parametrize("value, length", [
    (b"0", 0), (b"5", 5), (b"005", 5), (b"9223372036854775807", 2**63 - 1)])
def test_content_length_accepted(value: bytes, length: int) -> None:
    assert parse_content_length([value]) == length


@pytest.mark.parametrize("value", [
    b"+5", b"-1", b"0x10", b"5 5", b"5.0", b"1_0", b"", b"5, 5", b"5,5", b" 5", b"\xd9\xa5",
    b"18446744073709551616", b"9223372036854775808", b"1" * 20, b"1" * 21, b"five", b"\x005"])
def test_content_length_refused(value: bytes) -> None:
    assert refusal(parse_content_length, [value]) == (BAD, "Number")


def test_content_length_twice_refused_even_when_equal() -> None:
    assert refusal(parse_content_length, [b"5", b"5"]) == (BAD, "BadRequest")
    assert refusal(parse_content_length, [b"5", b"6"]) == (BAD, "BadRequest")


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED"])
def test_transfer_encoding_accepted(value: bytes) -> None:
    check_transfer_encoding([value])


@pytest.mark.parametrize("values, page, reason", [
    ([b"gzip"], ErrorPage.NOT_IMPLEMENTED, "N/I"),
    ([b"identity"], ErrorPage.NOT_IMPLEMENTED, "N/I"),
    ([b"deflate"], ErrorPage.NOT_IMPLEMENTED, "N/I"),
    ([b"xchunked"], BAD, "BadRequest"),
    ([b"chunkedx"], BAD, "BadRequest"),
    ([b"gzip, chunked"], BAD, "BadRequest"),
    ([b"chunked, chunked"], BAD, "BadRequest"),
    ([b"chunked,"], BAD, "BadRequest"),
    ([b"chunked;q=1"], BAD, "BadRequest"),
    ([b"chunked\xa0"], BAD, "BadRequest"),
    ([b"\xa0chunked"], BAD, "BadRequest"),
    ([b""], BAD, "BadRequest"),
    ([b"chunked", b"chunked"], BAD, "BadRequest"),
])
def test_transfer_encoding_refused(values: list[bytes], page: ErrorPage, reason: str) -> None:
    assert refusal(check_transfer_encoding, values) == (page, reason)


def test_connection_options() -> None:
    assert connection_options([b"Keep-Alive, Upgrade", b" , close"]) == {
        b"keep-alive", b"upgrade", b"close"}
    assert connection_options([]) == frozenset()
    for bad in (b"close, Content-Length", b"transfer-encoding", b"Host", b"close, a b"):
        assert refusal(connection_options, [bad]) == (BAD, "BadRequest")


def test_trailer_names() -> None:
    check_trailer_name(b"x-checksum")
    for name in (b"content-length", b"transfer-encoding", b"host"):
        assert refusal(check_trailer_name, name) == (BAD, "BadRequest")


@given(st.binary(max_size=200))
def test_arbitrary_lines_only_raise_http_sys_errors(line: bytes) -> None:
    for call in (parse_request_line, parse_field_line):
        try:
            call(line)
        except HttpSysError:
            pass
    for call in (parse_content_length, check_transfer_encoding, connection_options):
        try:
            call([line])
        except HttpSysError:
            pass


@given(st.binary(max_size=100))
def test_accepted_field_values_have_no_line_breaks_or_nul(line: bytes) -> None:
    try:
        name, value = parse_field_line(line)
    except HttpSysError:
        return
    assert name and not set(value) & {0, 10, 13}
    assert value == value.strip(b" \t")

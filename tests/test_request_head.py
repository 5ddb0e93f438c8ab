"""RequestHeadReader, ChunkedDecoder and ContentLengthBody: the strict request reader.

Every case in hardening.md's smuggling list and every page of httpsys.md §4 that a head can earn
is in a table with its exact page and HTTPERR reason; each table is also fed byte by byte.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from httpsys_emu.pages import ErrorPage, HttpSysError
from httpsys_emu.request_head import (
    ChunkedDecoder,
    ContentLengthBody,
    EndOfBody,
    RequestHead,
    RequestHeadReader,
)

BAD = ErrorPage.BAD_REQUEST
Outcome = tuple[tuple[RequestHead, ...], tuple[ErrorPage, str] | None]


def read_heads(pieces: list[bytes], **limits: int) -> Outcome:
    """Feed `pieces` one by one, collecting heads; stop at the first refusal."""
    reader = RequestHeadReader(**limits)
    heads: list[RequestHead] = []
    try:
        for piece in pieces:
            reader.feed(piece)
            while (head := reader.next_head()) is not None:
                heads.append(head)
    except HttpSysError as exc:
        return tuple(heads), (exc.page, exc.reason)
    return tuple(heads), None


def one_read(data: bytes, **limits: int) -> Outcome:
    return read_heads([data], **limits)


def byte_at_a_time(data: bytes, **limits: int) -> Outcome:
    return read_heads([data[i:i + 1] for i in range(len(data))], **limits)


def refusal_of(data: bytes, **limits: int) -> tuple[ErrorPage, str] | None:
    heads, error = one_read(data, **limits)
    assert byte_at_a_time(data, **limits) == (heads, error)
    return error


def head_of(data: bytes, **limits: int) -> RequestHead:
    heads, error = one_read(data, **limits)
    assert error is None and len(heads) == 1, (heads, error)
    assert byte_at_a_time(data, **limits) == (heads, error)
    return heads[0]


def get(*fields: bytes, version: bytes = b"1.1", start: bytes = b"GET / HTTP/") -> bytes:
    return start + version + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


HOST = b"Host: a.example"

# ------------------------------------------------------------------------------------------
# The smuggling list (hardening.md) and the §4 pages, whole heads.

REFUSED: list[tuple[str, bytes, ErrorPage, str]] = [
    # CL + TE, either order; duplicate or malformed Content-Length
    ("cl+te", get(HOST, b"Content-Length: 5", b"Transfer-Encoding: chunked"), BAD, "BadRequest"),
    ("te+cl", get(HOST, b"Transfer-Encoding: chunked", b"Content-Length: 5"), BAD, "BadRequest"),
    ("cl twice equal", get(HOST, b"Content-Length: 5", b"Content-Length: 5"), BAD, "BadRequest"),
    ("cl twice different", get(HOST, b"Content-Length: 5", b"Content-Length: 6"), BAD,
     "BadRequest"),
    ("cl list", get(HOST, b"Content-Length: 5, 5"), BAD, "Number"),
    *[(f"cl {v!r}", get(HOST, b"Content-Length: " + v), BAD, "Number") for v in (
        b"+5", b"-1", b"0x10", b"5 5", b"5.0", b"1_0", b"", b"18446744073709551616", b"1" * 21,
        b"9223372036854775808")],
    # Transfer-Encoding other than one `chunked`
    ("te xchunked", get(HOST, b"Transfer-Encoding: xchunked"), BAD, "BadRequest"),
    ("te gzip, chunked", get(HOST, b"Transfer-Encoding: gzip, chunked"), BAD, "BadRequest"),
    ("te chunked, chunked", get(HOST, b"Transfer-Encoding: chunked, chunked"), BAD, "BadRequest"),
    ("te twice", get(HOST, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), BAD,
     "BadRequest"),
    ("te space before colon", get(HOST, b"Transfer-Encoding : chunked"),
     ErrorPage.INVALID_HEADER, "Header"),
    ("te vertical tab", get(HOST, b"Transfer-Encoding: \x0bchunked"), BAD, "Header"),
    ("te nbsp", get(HOST, b"Transfer-Encoding: \xa0chunked"), BAD, "BadRequest"),
    ("te unknown coding", get(HOST, b"Transfer-Encoding: gzip"), ErrorPage.NOT_IMPLEMENTED,
     "N/I"),
    ("te on 1.0", get(b"Transfer-Encoding: chunked", version=b"1.0"), BAD, "BadRequest"),
    # names, whitespace, folding, line ends, NUL
    ("underscore CL", get(HOST, b"Content_Length: 5"), ErrorPage.INVALID_HEADER, "Header"),
    ("underscore TE", get(HOST, b"transfer_encoding: chunked"), ErrorPage.INVALID_HEADER,
     "Header"),
    ("non-ascii name", get(HOST, b"X-\xc3\xa9: 1"), ErrorPage.INVALID_HEADER, "Header"),
    ("whitespace before first header", get(b" " + HOST), BAD, "Header"),
    ("obs-fold", get(HOST, b"X: a", b" b"), BAD, "Header"),
    ("obs-fold tab", get(HOST, b"X: a", b"\tb"), BAD, "Header"),
    ("bare LF everywhere", b"GET / HTTP/1.1\nHost: a\n\n", BAD, "Invalid_CR/LF"),
    ("bare LF after a header", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", BAD, "Invalid_CR/LF"),
    ("bare LF at the end", b"GET / HTTP/1.1\r\nHost: a\r\n\n", BAD, "Invalid_CR/LF"),
    ("bare CR in value", get(HOST, b"X: a\rb"), BAD, "Invalid_CR/LF"),
    ("CR CR LF", b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", BAD, "Invalid_CR/LF"),
    ("NUL in value", get(HOST, b"X: a\x00b"), BAD, "Header"),
    ("NUL in name", get(HOST, b"X\x00: a"), ErrorPage.INVALID_HEADER, "Header"),
    ("leading bare LF", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", BAD, "Invalid_CR/LF"),
    # request line
    ("HTTP/1.32", get(HOST, version=b"1.32"), ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    ("HTTP/1.2", get(HOST, version=b"1.2"), ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    ("HTTP/2.0", get(HOST, version=b"2.0"), ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    ("huge version", get(HOST, version=b"4294967296.4294967296"),
     ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    ("LF inside request line", b"GET /\nHTTP/1.1\r\nHost: a\r\n\r\n", BAD, "Invalid_CR/LF"),
    ("control byte in method", get(HOST, start=b"G\x01T / HTTP/"), ErrorPage.INVALID_VERB,
     "Verb"),
    ("lower-case method", get(HOST, start=b"get / HTTP/"), ErrorPage.INVALID_VERB, "Verb"),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", BAD, "BadRequest"),
    ("no version", b"GET /\r\n\r\n", BAD, "BadRequest"),
    ("control byte in target", get(HOST, start=b"GET /\x01 HTTP/"), ErrorPage.INVALID_URL, "URL"),
    # hop-by-hop abuse
    ("connection names CL", get(HOST, b"Connection: close, Content-Length"), BAD, "BadRequest"),
    ("connection names TE", get(HOST, b"Connection: Transfer-Encoding"), BAD, "BadRequest"),
    ("connection names Host", get(HOST, b"Connection: host"), BAD, "BadRequest"),
    # Host
    ("no host on 1.1", get(), ErrorPage.INVALID_HOSTNAME, "Hostname"),
    ("empty host", get(b"Host:"), ErrorPage.INVALID_HOSTNAME, "Hostname"),
    ("blank host", get(b"Host:   "), ErrorPage.INVALID_HOSTNAME, "Hostname"),
    ("two hosts", get(HOST, b"Host: b.example"), ErrorPage.INVALID_HOSTNAME, "Hostname"),
    ("two hosts on 1.0", get(HOST, HOST, version=b"1.0"), ErrorPage.INVALID_HOSTNAME, "Hostname"),
    # 411
    ("POST without length", get(HOST, start=b"POST / HTTP/"), ErrorPage.LENGTH_REQUIRED,
     "LengthRequired"),
    ("PUT without length", get(HOST, start=b"PUT / HTTP/"), ErrorPage.LENGTH_REQUIRED,
     "LengthRequired"),
    ("POST 1.0 without length", get(start=b"POST / HTTP/", version=b"1.0"),
     ErrorPage.LENGTH_REQUIRED, "LengthRequired"),
    ("two upgrades", get(HOST, b"Upgrade: websocket", b"Upgrade: h2c"), BAD, "BadRequest"),
]


@pytest.mark.parametrize("data, page, reason", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(data: bytes, page: ErrorPage, reason: str) -> None:
    assert refusal_of(data) == (page, reason)


# ------------------------------------------------------------------------------------------
# Limits


def test_max_field_length_boundary() -> None:
    limits = {"max_field_length": 40, "max_request_bytes": 1000}
    at_limit = b"X: " + b"v" * 37  # 40 bytes
    assert len(at_limit) == 40
    head_of(get(HOST, at_limit), **limits)
    assert refusal_of(get(HOST, at_limit + b"v"), **limits) == (
        ErrorPage.HEADER_FIELD_TOO_LONG, "FieldLength")


def test_max_request_bytes_boundary() -> None:
    data = get(HOST, b"X: " + b"v" * 20)
    head_of(data, max_request_bytes=len(data))
    assert refusal_of(data, max_request_bytes=len(data) - 1) == (
        ErrorPage.REQUEST_TOO_LONG, "RequestLength")
    # Many small fields: each within MaxFieldLength, together over MaxRequestBytes.
    many = get(HOST, *[b"X-%d: 123456789" % i for i in range(50)])
    assert refusal_of(many, max_request_bytes=400, max_field_length=40) == (
        ErrorPage.REQUEST_TOO_LONG, "RequestLength")


def test_request_line_over_max_field_length_is_414() -> None:
    data = get(HOST, start=b"GET /" + b"a" * 100 + b" HTTP/")
    assert refusal_of(data, max_field_length=64) == (ErrorPage.URL_TOO_LONG, "URL_Length")


def test_too_many_headers() -> None:
    head_of(get(HOST, *[b"X: 1"] * 4), max_headers=5)
    assert refusal_of(get(HOST, *[b"X: 1"] * 5), max_headers=5) == (
        ErrorPage.REQUEST_TOO_LONG, "RequestLength")


def test_the_limit_crossed_first_wins_whatever_the_reads() -> None:
    # The field line starts at offset 25: its own cap is crossed at 25+41, the head's at 61.
    data = get(HOST, b"X: " + b"v" * 100)
    assert refusal_of(data, max_field_length=40, max_request_bytes=60) == (
        ErrorPage.REQUEST_TOO_LONG, "RequestLength")
    assert refusal_of(data, max_field_length=40, max_request_bytes=80) == (
        ErrorPage.HEADER_FIELD_TOO_LONG, "FieldLength")


def test_a_40kb_header_in_one_read_is_refused_before_the_head_ends() -> None:
    reader = RequestHeadReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + b"c" * 40_000)  # no end of head yet
    with pytest.raises(HttpSysError) as info:
        reader.next_head()
    # With the default caps (16384 each) the head's cap is crossed first, as HTTP.sys reports.
    assert (info.value.page, info.value.reason) == (ErrorPage.REQUEST_TOO_LONG, "RequestLength")
    assert reader.pending_bytes == 0  # the buffer is released ...
    reader.feed(b"x" * 100_000)
    assert reader.pending_bytes == 0  # ... and stays empty
    with pytest.raises(HttpSysError):  # the refusal sticks
        reader.next_head()


def test_dripped_head_is_refused_as_soon_as_it_is_over() -> None:
    reader = RequestHeadReader(max_request_bytes=100, max_field_length=100)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    fed = reader.pending_bytes
    with pytest.raises(HttpSysError):
        while True:
            assert reader.next_head() is None
            reader.feed(b"v")
            fed += 1
    assert fed == 101


# ------------------------------------------------------------------------------------------
# Accepted heads and their settled framing


def test_accepted_head_details() -> None:
    head = head_of(b"\r\n\r\nPOST /x?y=%20 HTTP/1.1\r\nHost: a.example:8443\r\n"
                   b"Content-Length: 0005\r\nX-Multi: 1\r\nx-multi: 2\r\nExpect: 100-Continue\r\n\r\n")
    assert (head.method, head.target, head.version) == ("POST", "/x?y=%20", "1.1")
    assert head.host == "a.example:8443"
    assert head.content_length == 5 and not head.chunked and head.has_body
    assert head.keep_alive and head.expect_continue and head.upgrade is None
    assert head.get_all(b"X-MULTI") == [b"1", b"2"] and head.get(b"x-multi") == b"1"
    assert head.get(b"absent") is None
    assert head.headers[0] == (b"host", b"Host", b"a.example:8443")
    assert head.head_length == len(b"POST /x?y=%20 HTTP/1.1\r\nHost: a.example:8443\r\n"
                                   b"Content-Length: 0005\r\nX-Multi: 1\r\nx-multi: 2\r\n"
                                   b"Expect: 100-Continue\r\n\r\n")


@pytest.mark.parametrize("version, connection, keep_alive", [
    (b"1.1", None, True), (b"1.1", b"close", False), (b"1.1", b"Keep-Alive", True),
    (b"1.0", None, False), (b"1.0", b"keep-alive", True), (b"1.0", b"keep-alive, close", False),
])
def test_keep_alive(version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    fields = [HOST] + ([b"Connection: " + connection] if connection else [])
    assert head_of(get(*fields, version=version)).keep_alive is keep_alive


def test_upgrade_expect_and_http10() -> None:
    ws = head_of(get(HOST, b"Connection: keep-alive, Upgrade", b"Upgrade: websocket"))
    assert ws.upgrade == "websocket"
    assert head_of(get(HOST, b"Upgrade: websocket")).upgrade is None  # not named in Connection
    old = head_of(get(b"Connection: upgrade", b"Upgrade: websocket", b"Expect: 100-continue",
                      version=b"1.0"))
    assert old.upgrade is None and not old.expect_continue and old.host is None
    assert head_of(get(b"Host:", version=b"1.0")).host is None
    chunked = head_of(get(HOST, b"Transfer-Encoding: CHUNKED", start=b"POST / HTTP/"))
    assert chunked.chunked and chunked.content_length is None and chunked.has_body
    assert not head_of(get(HOST)).has_body
    assert head_of(get(HOST, start=b"GET /caf\xc3\xa9 HTTP/")).target_bytes == b"/caf\xc3\xa9"
    assert head_of(get(HOST, start=b"DELETE / HTTP/")).method == "DELETE"  # no 411 for DELETE


def test_pipelined_heads_and_bodies() -> None:
    stream = (get(HOST) + get(HOST, b"Content-Length: 5", start=b"POST /p HTTP/") + b"hello"
              + get(HOST, b"Transfer-Encoding: chunked", start=b"PUT /c HTTP/")
              + b"3\r\nabc\r\n0\r\n\r\n" + get(HOST, start=b"GET /last HTTP/"))
    reader = RequestHeadReader()
    reader.feed(stream)
    seen = []
    while (head := reader.next_head()) is not None:
        body: ContentLengthBody | ChunkedDecoder | None = None
        if head.chunked:
            body = ChunkedDecoder()
        elif head.content_length:
            body = ContentLengthBody(head.content_length)
        data = b""
        if body is not None:
            body.feed(reader.take_remaining())
            while not isinstance(event := body.next_event(), EndOfBody):
                assert event is not None
                data += event
            reader.feed(body.take_remaining())
        seen.append((head.method, head.target, data))
    assert seen == [("GET", "/", b""), ("POST", "/p", b"hello"), ("PUT", "/c", b"abc"),
                    ("GET", "/last", b"")]
    assert reader.pending_bytes == 0


def test_take_remaining_keeps_what_follows_the_head() -> None:
    reader = RequestHeadReader()
    reader.feed(get(HOST, b"Content-Length: 3", start=b"POST / HTTP/") + b"abcGET")
    assert reader.next_head() is not None
    assert reader.take_remaining() == b"abcGET"
    assert reader.pending_bytes == 0
    reader.feed(b"GET / HTTP/1.1\r\n")
    assert reader.next_head() is None
    with pytest.raises(RuntimeError):
        reader.take_remaining()  # in the middle of a head


# ------------------------------------------------------------------------------------------
# Bodies


def decode_chunked(pieces: list[bytes], **limits: int) -> tuple[bytes, EndOfBody | None,
                                                                  tuple[ErrorPage, str] | None]:
    decoder = ChunkedDecoder(**limits)
    data = b""
    end: EndOfBody | None = None
    try:
        for piece in pieces:
            decoder.feed(piece)
            while (event := decoder.next_event()) is not None:
                if isinstance(event, EndOfBody):
                    end = event
                else:
                    assert event
                    data += event
    except HttpSysError as exc:
        return data, end, (exc.page, exc.reason)
    return data, end, None


def chunked_both_ways(body: bytes, **limits: int) -> tuple[bytes, EndOfBody | None,
                                                            tuple[ErrorPage, str] | None]:
    whole = decode_chunked([body], **limits)
    assert decode_chunked([body[i:i + 1] for i in range(len(body))], **limits) == whole
    return whole


@pytest.mark.parametrize("body, data, trailers", [
    (b"0\r\n\r\n", b"", ()),
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello", ()),
    (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", ()),
    (b"000a\r\n0123456789\r\n0000\r\n\r\n", b"0123456789", ()),
    (b"3;name\r\nabc\r\n0\r\n\r\n", b"abc", ()),
    (b"3 ; a=b ;c=\"q \\\" d\"\r\nabc\r\n0;x=y\r\n\r\n", b"abc", ()),
    (b"3\r\nabc\r\n0\r\nX-Sum: 1\r\ny: 2\r\n\r\n", b"abc",
     ((b"x-sum", b"X-Sum", b"1"), (b"y", b"y", b"2"))),
])
def test_chunked_accepted(body: bytes, data: bytes, trailers: tuple) -> None:  # type: ignore[type-arg]
    assert chunked_both_ways(body + b"NEXT") == (data, EndOfBody(trailers), None)
    decoder = ChunkedDecoder()
    decoder.feed(body + b"NEXT")
    while not isinstance(decoder.next_event(), EndOfBody):
        pass
    assert decoder.done and decoder.next_event() is None
    assert decoder.take_remaining() == b"NEXT"
    assert decoder.body_bytes == len(data)


CHUNKED_REFUSED: list[tuple[str, bytes, ErrorPage, str]] = [
    *[(f"size {s!r}", s + b"\r\nx\r\n0\r\n\r\n", BAD, "Number")
      for s in (b"0x1", b"+1", b"-0", b" 0", b"Z", b"", b";a", b"1" * 17, b"1" * 21)],
    ("size 1_0", b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", BAD, "Number"),
    ("size 1\\v", b"1\x0b\r\nx\r\n0\r\n\r\n", BAD, "Number"),
    ("size then junk", b"1 x\r\nx\r\n0\r\n\r\n", BAD, "BadRequest"),
    ("trailing space", b"1 \r\nx\r\n0\r\n\r\n", BAD, "BadRequest"),
    ("bare LF after size", b"1\nx\r\n0\r\n\r\n", BAD, "Invalid_CR/LF"),
    ("CR in extension", b"1;a\rb\r\nx\r\n0\r\n\r\n", BAD, "BadRequest"),
    ("LF in extension", b"1;a\nb\r\nx\r\n0\r\n\r\n", BAD, "Invalid_CR/LF"),
    ("extension without name", b"1;\r\nx\r\n0\r\n\r\n", BAD, "BadRequest"),
    ("NUL in extension", b"1;a=\x00\r\nx\r\n0\r\n\r\n", BAD, "BadRequest"),
    ("data not followed by CRLF", b"1\r\nxy\r\n0\r\n\r\n", BAD, "BadRequest"),
    ("data followed by LF", b"1\r\nx\n0\r\n\r\n", BAD, "BadRequest"),
    ("data followed by CR x", b"1\r\nx\rx0\r\n\r\n", BAD, "BadRequest"),
    ("trailer CL", b"0\r\nContent-Length: 5\r\n\r\n", BAD, "BadRequest"),
    ("trailer TE", b"0\r\nTransfer-Encoding: chunked\r\n\r\n", BAD, "BadRequest"),
    ("trailer Host", b"0\r\nHost: x\r\n\r\n", BAD, "BadRequest"),
    ("trailer underscore CL", b"0\r\ncontent_length: 5\r\n\r\n", ErrorPage.INVALID_HEADER,
     "Header"),
    ("trailer obs-fold", b"0\r\nX: a\r\n b\r\n\r\n", BAD, "Header"),
    ("trailer bare LF", b"0\r\nX: a\n\r\n", BAD, "Invalid_CR/LF"),
    ("trailer space before colon", b"0\r\nX : a\r\n\r\n", ErrorPage.INVALID_HEADER, "Header"),
]


@pytest.mark.parametrize("body, page, reason", [c[1:] for c in CHUNKED_REFUSED],
                         ids=[c[0] for c in CHUNKED_REFUSED])
def test_chunked_refused(body: bytes, page: ErrorPage, reason: str) -> None:
    assert chunked_both_ways(body)[2] == (page, reason)


def test_chunked_caps() -> None:
    long_extension = b"1" + b";a=b" * 30 + b"\r\nx\r\n0\r\n\r\n"
    assert chunked_both_ways(long_extension, max_size_line=200)[2] is None
    assert chunked_both_ways(long_extension, max_size_line=100)[2] == (BAD, "BadRequest")
    trailers = b"0\r\n" + b"".join(b"X-%d: vvvvvvvv\r\n" % i for i in range(10)) + b"\r\n"
    size = len(trailers) - 3  # the trailer section, its final CRLF included
    assert chunked_both_ways(trailers, max_trailer_bytes=size)[2] is None
    assert chunked_both_ways(trailers, max_trailer_bytes=size - 1)[2] == (
        ErrorPage.REQUEST_TOO_LONG, "RequestLength")
    # An endless size line is refused while it is still arriving; the buffer is released.
    decoder = ChunkedDecoder(max_size_line=64)
    decoder.feed(b"1" + b";" * 10_000)
    with pytest.raises(HttpSysError):
        decoder.next_event()
    decoder.feed(b"x" * 1000)
    with pytest.raises(HttpSysError):
        decoder.next_event()


def test_content_length_body() -> None:
    body = ContentLengthBody(5)
    body.feed(b"he")
    assert body.next_event() == b"he"
    assert body.next_event() is None
    with pytest.raises(RuntimeError):
        body.take_remaining()
    body.feed(b"lloGET")
    assert body.next_event() == b"llo"
    assert body.next_event() == EndOfBody()
    assert body.done and body.next_event() is None
    assert body.take_remaining() == b"GET"
    empty = ContentLengthBody(0)
    assert empty.next_event() == EndOfBody()


# ------------------------------------------------------------------------------------------
# Properties

SMALL = {"max_request_bytes": 120, "max_field_length": 50, "max_headers": 4}
FRAGMENTS = [b"GET", b"POST", b"get", b" ", b"/", b"/a", b"*", b"HTTP/1.1", b"HTTP/1.0",
             b"HTTP/2.0", b"\r\n", b"\n", b"\r", b"Host: a", b"Host:", b":", b"Content-Length: 5",
             b"Transfer-Encoding: chunked", b"Connection: close", b"\x00", b"\t", b"x" * 30,
             b"X_Y: 1", b"\xc3\xa9", b"\r\n\r\n"]


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


head_soup = st.one_of(st.binary(max_size=300),
                      st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join))


@given(head_soup, st.lists(st.integers(min_value=0), max_size=8))
def test_any_bytes_any_split_same_verdict(data: bytes, cuts: list[int]) -> None:
    expected = one_read(data, **SMALL)  # raises nothing but HttpSysError (caught inside)
    assert read_heads(splits(data, cuts), **SMALL) == expected


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join))
def test_byte_at_a_time_same_verdict(data: bytes) -> None:
    assert byte_at_a_time(data, **SMALL) == one_read(data, **SMALL)


token = st.text(alphabet="!#$%&'*+-.^`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                min_size=1, max_size=12)
method = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=10)
path = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@%/?", max_size=40)
field_value = st.text(alphabet="".join(chr(c) for c in range(0x21, 0x7F)) + " \t", max_size=40).map(
    lambda v: v.strip(" \t"))
_SPECIAL = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect"}
field_name = token.filter(lambda n: n.lower() not in _SPECIAL and "_" not in n)


@given(method.filter(lambda m: m not in ("POST", "PUT", "CONNECT")), path,
       st.lists(st.tuples(field_name, field_value), max_size=10),
       st.sampled_from(["1.0", "1.1"]), st.lists(st.integers(min_value=0), max_size=5))
def test_valid_head_round_trips_and_h11_agrees(
        method: str, path: str, fields: list[tuple[str, str]], version: str, cuts: list[int]) -> None:
    target = "/" + path
    lines = [f"{method} {target} HTTP/{version}", "Host: h.example"]
    lines += [f"{name}: {value}" for name, value in fields]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode()
    heads, error = read_heads(splits(data, cuts))
    assert error is None and len(heads) == 1
    head = heads[0]
    assert (head.method, head.target, head.version) == (method, target, version)
    expected = [(b"host", b"Host", b"h.example")] + [
        (n.lower().encode(), n.encode(), v.encode()) for n, v in fields]
    assert list(head.headers) == expected
    assert head.head_length == len(data)
    # What we accept, h11 reads the same way (the lead hands bodies and upstreams to h11).
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    event = connection.next_event()
    assert isinstance(event, h11.Request)
    assert (event.method, event.target) == (method.encode(), target.encode())
    assert [(n, v) for n, v in event.headers] == [(n, v) for n, _, v in expected]


@given(st.lists(st.binary(max_size=300), max_size=6),
       st.lists(st.tuples(field_name, field_value), max_size=3),
       st.booleans(), st.lists(st.integers(min_value=0), max_size=10))
def test_chunked_encode_decode_identity(chunks: list[bytes], trailers: list[tuple[str, str]],
                                        extensions: bool, cuts: list[int]) -> None:
    chunks = [c for c in chunks if c]
    wire = b""
    for i, chunk in enumerate(chunks):
        extension = b';n%d="v;x"' % i if extensions else b""
        wire += b"%x%s\r\n%s\r\n" % (len(chunk), extension, chunk)
    wire += b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in trailers) + b"\r\nREST"
    data, end, error = decode_chunked(splits(wire, cuts))
    assert error is None
    assert data == b"".join(chunks)
    assert end == EndOfBody(tuple((n.lower().encode(), n.encode(), v.encode()) for n, v in trailers))


chunk_soup = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"0", b"1", b"a", b"F", b"x", b";", b"=", b"\"", b" ", b"\r\n",
                              b"\n", b"\r", b"X: 1", b"Content-Length: 1", b"\x00"]),
             max_size=40).map(b"".join))


@given(chunk_soup, st.lists(st.integers(min_value=0), max_size=8))
def test_chunked_any_bytes_any_split_same_verdict(data: bytes, cuts: list[int]) -> None:
    limits = {"max_size_line": 20, "max_trailer_bytes": 30}
    expected = decode_chunked([data], **limits)
    assume(expected is not None)
    assert decode_chunked(splits(data, cuts), **limits) == expected

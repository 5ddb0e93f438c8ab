"""Every malformed request of hardening.md, sent raw over TLS through the real front door.

Each case is pipelined behind a good request on the same connection. The client must get the
good answer, then exactly the HTTP.sys page, then the end of the connection; nothing after the
refused request is read as a request. On the other side, the recording upstream must have
received exactly the requests that the access log shows: no more (a smuggled request), no fewer.
Malformations inside a chunked body are only visible once the head has gone upstream: that
request then reaches the application cut off (never complete) and is logged with the 400.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from httpsys_emu.frontdoor import FrontDoor
from httpsys_emu.pages import ErrorPage
from tests.frontdoor_fixtures import (
    RecordingUpstream,
    Site,
    applied,
    assert_error_page,
    front_door,
    http_request,
    parse_responses,
    read_until_closed,
    site,
    tls_connect,
    upstream,
)

__all__ = ["front_door", "site", "upstream"]

HOST = b"Host: localhost\r\n"
SMUGGLED = b"GET /app/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
MAX_FIELD = 1024          # maxfieldlength for this module, so field and URL limits are reachable


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    page: ErrorPage
    reason: str
    method: str = "GET"
    in_body: bool = False       # the error is in a chunked body: the head went upstream


def post(headers: bytes, rest: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST /app/bad HTTP/" + version + b"\r\n" + HOST + headers + b"\r\n" + rest


def get(headers: bytes = b"", target: bytes = b"/app/bad", version: bytes = b"1.1",
        method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/" + version + b"\r\n" + HOST + headers + b"\r\n"


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", body)


BAD = ErrorPage.BAD_REQUEST
CASES = [
    # Content-Length and Transfer-Encoding together, either order, with a smuggled request
    Case("cl-then-te", post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                            b"0\r\n\r\n" + SMUGGLED), BAD, "BadRequest", "POST"),
    Case("te-then-cl", post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                            b"0\r\n\r\n" + SMUGGLED), BAD, "BadRequest", "POST"),
    Case("two-equal-cl", post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
         BAD, "BadRequest", "POST"),
    Case("two-different-cl", post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
         BAD, "BadRequest", "POST"),
    Case("cl-list", post(b"Content-Length: 5, 5\r\n", b"hello"), BAD, "Number", "POST"),
    *[Case(f"cl-{label}", post(b"Content-Length: " + value + b"\r\n", b"hello"), BAD,
           "Number", "POST")
      for label, value in [("plus", b"+5"), ("minus", b"-1"), ("hex", b"0x10"),
                           ("two-numbers", b"5 5"), ("decimal", b"5.0"),
                           ("underscore", b"1_0"), ("empty", b""),
                           ("2^64", str(2**64).encode()), ("21-digits", b"1" * 21)]],
    # Transfer-Encoding other than one plain `chunked`
    *[Case(f"te-{label}", post(b"Transfer-Encoding: " + value + b"\r\n",
                               b"0\r\n\r\n" + SMUGGLED), BAD, reason, "POST")
      for label, value, reason in [("xchunked", b"xchunked", "BadRequest"),
                                   ("gzip-chunked", b"gzip, chunked", "BadRequest"),
                                   ("chunked-chunked", b"chunked, chunked", "BadRequest"),
                                   ("vtab", b"chunked\x0b", "Header"),
                                   ("nbsp", b"\xa0chunked", "BadRequest")]],
    Case("te-twice", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                          b"0\r\n\r\n"), BAD, "BadRequest", "POST"),
    Case("te-space-before-colon", post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
         ErrorPage.INVALID_HEADER, "Header", "POST"),
    Case("te-on-http10", post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"1.0"),
         BAD, "BadRequest", "POST"),
    Case("te-gzip-unsupported", post(b"Transfer-Encoding: gzip\r\n", b"xx"),
         ErrorPage.NOT_IMPLEMENTED, "N/I", "POST"),
    # header names and field syntax
    Case("cl-with-underscore", post(b"Content_Length: 5\r\n", b"hello"),
         ErrorPage.INVALID_HEADER, "Header", "POST"),
    Case("te-with-underscore", post(b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n",
                                    b"hello"), ErrorPage.INVALID_HEADER, "Header", "POST"),
    Case("non-ascii-name", get(b"X-\xc3\xa9: 1\r\n"), ErrorPage.INVALID_HEADER, "Header"),
    Case("space-before-first-header", b"GET /app/bad HTTP/1.1\r\n " + HOST + b"\r\n", BAD,
         "Header"),
    Case("obs-fold", get(b"X-A: 1\r\n folded\r\n"), BAD, "Header"),
    Case("bare-lf-request-line", b"GET /app/bad HTTP/1.1\n" + HOST + b"\r\n", BAD,
         "Invalid_CR/LF"),
    Case("bare-lf-header", b"GET /app/bad HTTP/1.1\r\nHost: localhost\n\r\n", BAD,
         "Invalid_CR/LF"),
    Case("cr-in-value", get(b"X-A: a\rb\r\n"), BAD, "Invalid_CR/LF"),
    Case("cr-in-name", get(b"X-\rA: b\r\n"), BAD, "Invalid_CR/LF"),
    Case("nul-in-value", get(b"X-A: a\x00b\r\n"), BAD, "Header"),
    Case("nul-in-name", get(b"X-\x00A: b\r\n"), ErrorPage.INVALID_HEADER, "Header"),
    Case("connection-names-content-length", get(b"Connection: close, Content-Length\r\n"),
         BAD, "BadRequest"),
    # the request line
    Case("http-1.32", get(version=b"1.32"), ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    Case("huge-version", get(version=b"99999999999999999999.1"),
         ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    Case("http-2.0", get(version=b"2.0"), ErrorPage.VERSION_NOT_SUPPORTED, "Version_N/S"),
    Case("lf-inside-request-line", b"GET /\nHTTP/1.1\r\n" + HOST + b"\r\n", BAD,
         "Invalid_CR/LF"),
    Case("control-byte-in-method", get(method=b"G\x01T"), ErrorPage.INVALID_VERB, "Verb"),
    Case("lower-case-method", get(method=b"get"), ErrorPage.INVALID_VERB, "Verb"),
    Case("garbage", b"\x16\x03\x01\x02\x00garbage\r\n\r\n", BAD, "BadRequest"),
    Case("connect", b"CONNECT localhost:443 HTTP/1.1\r\n" + HOST + b"\r\n",
         ErrorPage.INVALID_URL, "URL"),
    # host, URL and size limits
    Case("no-host", b"GET /app/bad HTTP/1.1\r\n\r\n", ErrorPage.INVALID_HOSTNAME, "Hostname"),
    Case("two-hosts", get(HOST), ErrorPage.INVALID_HOSTNAME, "Hostname"),
    Case("empty-host", b"GET /app/bad HTTP/1.1\r\nHost:\r\n\r\n", ErrorPage.INVALID_HOSTNAME,
         "Hostname"),
    Case("host-with-slash", b"GET /app/bad HTTP/1.1\r\nHost: a/b\r\n\r\n",
         ErrorPage.INVALID_HOSTNAME, "Hostname"),
    Case("host-with-userinfo", b"GET /app/bad HTTP/1.1\r\nHost: user@localhost\r\n\r\n",
         ErrorPage.INVALID_HOSTNAME, "Hostname"),
    Case("post-without-length", post(b""), ErrorPage.LENGTH_REQUIRED, "LengthRequired", "POST"),
    Case("field-too-long", get(b"X-A: " + b"a" * MAX_FIELD + b"\r\n"),
         ErrorPage.HEADER_FIELD_TOO_LONG, "FieldLength"),
    Case("head-too-long", get(b"".join(b"X-%d: %s\r\n" % (i, b"a" * 900) for i in range(20))),
         ErrorPage.REQUEST_TOO_LONG, "RequestLength"),
    Case("too-many-headers", get(b"X-A: 1\r\n" * 101), ErrorPage.REQUEST_TOO_LONG,
         "RequestLength"),
    Case("url-too-long", get(target=b"/app/" + b"a" * MAX_FIELD), ErrorPage.URL_TOO_LONG,
         "URL_Length"),
    Case("bad-escape", get(target=b"/app/%zz"), ErrorPage.INVALID_URL, "URL"),
    Case("escaped-control", get(target=b"/app/%01"), ErrorPage.INVALID_URL, "URL"),
    Case("invalid-utf8", get(target=b"/app/%c3%28"), ErrorPage.INVALID_URL, "URL"),
    Case("segment-too-long", get(target=b"/app/" + b"a" * 261), ErrorPage.INVALID_URL, "URL"),
    Case("too-many-segments", get(target=b"/app" + b"/a" * 256), ErrorPage.INVALID_URL, "URL"),
    Case("head-not-found", get(target=b"/elsewhere", method=b"HEAD"), ErrorPage.NOT_FOUND,
         "NotFound", "HEAD"),
    Case("not-found", get(target=b"/elsewhere"), ErrorPage.NOT_FOUND, "NotFound"),
    Case("reserved-not-registered", get(target=b"/reserved/x"), BAD, "BadRequest"),
    # malformed chunked bodies: found after the head went upstream
    *[Case(f"chunk-size-{label}", chunked(size + b"\r\nx\r\n0\r\n\r\n" + SMUGGLED), BAD,
           reason, "POST", in_body=True)
      for label, size, reason in [("0x1", b"0x1", "Number"), ("plus", b"+1", "Number"),
                                  ("minus-zero", b"-0", "Number"),
                                  ("underscore", b"1_0", "Number"),
                                  ("leading-space", b" 0", "Number"), ("Z", b"Z", "Number"),
                                  ("21-hex-digits", b"1" * 21, "Number")]],
    Case("chunk-size-bare-lf", chunked(b"1\nx\r\n0\r\n\r\n"), BAD, "Invalid_CR/LF", "POST",
         in_body=True),
    Case("chunk-extension-cr", chunked(b"1;a=b\rc\r\nx\r\n0\r\n\r\n"), BAD, "BadRequest",
         "POST", in_body=True),
    Case("chunk-extension-lf", chunked(b"1;a\nb\r\nx\r\n0\r\n\r\n"), BAD, "Invalid_CR/LF",
         "POST", in_body=True),
    Case("chunk-data-without-crlf", chunked(b"5\r\nhelloXX0\r\n\r\n" + SMUGGLED), BAD,
         "BadRequest", "POST", in_body=True),
    Case("trailer-content-length", chunked(b"1\r\nx\r\n0\r\nContent-Length: 5\r\n\r\nhello"),
         BAD, "BadRequest", "POST", in_body=True),
    Case("trailer-transfer-encoding",
         chunked(b"1\r\nx\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"), BAD, "BadRequest",
         "POST", in_body=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_malformed_request_is_refused_and_nothing_after_it_is_delivered(
        case: Case, site: Site, front_door: FrontDoor, upstream: RecordingUpstream) -> None:
    site.store.add_forward(site.prefix("/app/"), upstream.target)
    site.store.add_urlacl(site.prefix("/reserved/"), _acl())
    site.store.set_setting("maxfieldlength", MAX_FIELD)
    await applied(front_door, site)
    stream = await tls_connect(site.port)
    await stream.send_all(http_request("/app/good") + case.data)
    data = await read_until_closed(stream)
    responses, rest = parse_responses(data, ["GET", case.method])
    assert [r.status for r in responses] == [200, case.page.status], data[:2000]
    assert_error_page(responses[1], case.page, head_only=case.method == "HEAD")
    assert rest == b""                                   # and then the connection closed

    await upstream.settle(front_door)
    logged = [(a["path"], a["status"]) for a in site.access_log()]
    if case.in_body:
        assert logged == [("/app/good", "200"), ("/app/bad", "400")]
        assert upstream.targets() == ["/app/good", "/app/bad"]
        assert [r.complete for r in upstream.requests] == [True, False]
    else:
        assert logged == [("/app/good", "200")]
        assert upstream.targets() == ["/app/good"]
    [error] = site.httperr_log()
    assert (error["sc-status"], error["s-reason"]) == (str(case.page.status), case.reason)


def _acl():  # type: ignore[no-untyped-def]
    from httpsys_emu.urlacl import UrlAcl, unix_user_sid
    return UrlAcl.for_user(unix_user_sid(0))

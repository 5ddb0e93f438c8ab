"""The error responses HTTP.sys itself generates, byte for byte (spec httpsys.md §4).

Pure code: `render_error` returns the complete response (status line, headers, body); the caller
writes it and closes the connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from email.utils import formatdate

_BODY = (
    '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
    "<HTML><HEAD><TITLE>{title}</TITLE>\r\n"
    '<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
    "<BODY><h2>{heading}</h2>\r\n"
    "<hr><p>{text}</p>\r\n"
    "</BODY></HTML>\r\n"
)


@dataclass(frozen=True)
class PageSpec:
    status: int
    reason: str
    heading: str
    text: str


class ErrorPage(enum.Enum):
    """Every page the front door can answer with; the value holds status, title and text."""

    BAD_REQUEST = PageSpec(400, "Bad Request", "Bad Request",
                           "HTTP Error 400. The request is badly formed.")
    INVALID_HOSTNAME = PageSpec(400, "Bad Request", "Bad Request - Invalid Hostname",
                                "HTTP Error 400. The request hostname is invalid.")
    INVALID_URL = PageSpec(400, "Bad Request", "Bad Request - Invalid URL",
                           "HTTP Error 400. The request URL is invalid.")
    INVALID_VERB = PageSpec(400, "Bad Request", "Bad Request - Invalid Verb",
                            "HTTP Error 400. The request verb is invalid.")
    INVALID_HEADER = PageSpec(400, "Bad Request", "Bad Request - Invalid Header",
                              "HTTP Error 400. The request has an invalid header name.")
    REQUEST_TOO_LONG = PageSpec(400, "Bad Request", "Bad Request - Request Too Long",
                                "HTTP Error 400. The size of the request headers is too long.")
    HEADER_FIELD_TOO_LONG = PageSpec(400, "Bad Request", "Bad Request - Header Field Too Long",
                                     "HTTP Error 400. A request header field is too long.")
    NOT_FOUND = PageSpec(404, "Not Found", "Not Found",
                         "HTTP Error 404. The requested resource is not found.")
    LENGTH_REQUIRED = PageSpec(411, "Length Required", "Length Required",
                               "HTTP Error 411. The request must be chunked or have a content length.")
    URL_TOO_LONG = PageSpec(414, "Request URL Too Long", "Request URL Too Long",
                            "HTTP Error 414. The request URL is too long.")
    NOT_IMPLEMENTED = PageSpec(501, "Not Implemented", "Not Implemented",
                               "HTTP Error 501. The request is not supported.")
    SERVICE_UNAVAILABLE = PageSpec(503, "Service Unavailable", "Service Unavailable",
                                   "HTTP Error 503. The service is unavailable.")
    VERSION_NOT_SUPPORTED = PageSpec(505, "HTTP Version Not Supported",
                                     "HTTP Version Not Supported",
                                     "HTTP Error 505. The HTTP version is not supported.")

    @property
    def status(self) -> int:
        return self.value.status


def error_body(page: ErrorPage) -> bytes:
    """The HTML body of `page`, CRLF line ends, us-ascii."""
    spec = page.value
    return _BODY.format(title=spec.reason, heading=spec.heading, text=spec.text).encode("ascii")


def render_error(page: ErrorPage, *, date: str | None = None, head_only: bool = False) -> bytes:
    """The whole response for `page`: status line, headers in HTTP.sys order, then the body."""
    spec = page.value
    body = error_body(page)
    if date is None:
        date = formatdate(usegmt=True)
    head = (
        f"HTTP/1.1 {spec.status} {spec.reason}\r\n"
        "Content-Type: text/html; charset=us-ascii\r\n"
        "Server: Microsoft-HTTPAPI/2.0\r\n"
        f"Date: {date}\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode("ascii")
    return head if head_only else head + body


class HttpSysError(Exception):
    """A request the front door refuses itself: which page to send, and the HTTPERR reason to log."""

    def __init__(self, page: ErrorPage, reason: str, detail: str = "") -> None:
        self.page = page
        self.reason = reason
        self.detail = detail
        super().__init__(f"{page.value.status} {page.value.heading} [{reason}]"
                         + (f": {detail}" if detail else ""))

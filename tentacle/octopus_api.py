"""A small HTTPS JSON client for the Octopus REST API, as `register-with` and `poll-server` use it.

Why not urllib: registration needs to see the server's certificate (its SHA-1 thumbprint is what
the agent will trust) and to pin later calls to it; the standard library can neither accept an
unverified certificate *and* report it, nor pin by thumbprint. So: trio + h11, one connection per
request (`Connection: close`), TLS by `httpsys_emu.tls.TLSStream` (pyOpenSSL) or `trio.SSLStream`.

Certificate policy (`TlsPolicy`):
  - `accept_any()`: the probe of the comms endpoint; any certificate, the thumbprint is reported;
  - `pinned(thumbprints)`: the REST API on the same host as the comms endpoint (reached through the
    same front door, so normally the same certificate): accepted when the thumbprint is one of
    `thumbprints`; otherwise the connection is retried with the system trust store and hostname
    verification, and fails if that fails too;
  - `system()`: ordinary HTTPS verification against the system trust store (any other host).
Plain `http://` servers are spoken to without TLS, as the real Tentacle allows.

Octopus conventions kept here: the API key travels in `X-Octopus-ApiKey`; PUT and DELETE are sent
as POST with `X-HTTP-Method-Override` (some proxies drop other verbs); links in resources are
RFC 6570 URI templates (`/api/Spaces-1/machines{/id}{?skip,take,name}`), expanded by
`expand_template`; `~/` links are relative to the server's base URL, `/` links to its origin.
Errors come back as `{ErrorMessage, Errors[], HelpText, …}` and become `OctopusApiError`, whose text
is what Octopus.Client shows (message, a blank line, ` - error` lines).
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import h11
import trio

from httpsys_emu.tls import TLSStream
from httpsys_emu.tlsconfig import client_context
from tentacle import TentacleError, __version__

DEFAULT_TIMEOUT = 60.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
USER_AGENT = f"tentacle-linux/{__version__}"
API_KEY_HEADER = "X-Octopus-ApiKey"
METHOD_OVERRIDE_HEADER = "X-HTTP-Method-Override"

_TEMPLATE_EXPRESSION = re.compile(r"\{([+#./;?&]?)([^{}]*)\}")
_UNRESERVED = "-._~"


class ApiConnectionError(TentacleError):
    """The server could not be reached, or the TLS/HTTP exchange broke off."""


class CertificateRejected(TentacleError):
    """The server's certificate is neither pinned nor trusted by the system store."""


class OctopusApiError(TentacleError):
    """A non-2xx answer from the Octopus REST API, with its `ErrorMessage` and `Errors[]`."""

    def __init__(self, status: int, error_message: str, errors: Sequence[str] = (),
                 help_text: str | None = None) -> None:
        self.status = status
        self.error_message = error_message
        self.errors = tuple(errors)
        self.help_text = help_text
        super().__init__(format_api_error(error_message, self.errors, help_text))


def format_api_error(message: str, errors: Sequence[str], help_text: str | None) -> str:
    """Octopus.Client's text: the message; then, if any, a blank line and ` - error` lines."""
    text = message
    if errors:
        text += "\n\n" + "\n".join(f" - {error}" for error in errors)
    if help_text:
        text += "\n\n" + help_text
    return text


# ------------------------------------------------------------------ URI templates and links

def _encode(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        return ",".join(_encode(item) for item in value)
    else:
        text = str(value)
    return quote(text, safe=_UNRESERVED)


def expand_template(template: str, values: Mapping[str, Any] | None = None) -> str:
    """Expand the RFC 6570 subset Octopus uses: `{var}`, `{/var}`, `{?a,b}`, `{&a,b}`.

    Variables missing from `values` (or None) vanish with their operator. Lists are joined with
    commas. Names match exactly first, then ignoring case (Octopus mixes `spaceId` and `id`).
    """
    supplied = dict(values or {})
    folded = {k.lower(): v for k, v in supplied.items()}

    def lookup(name: str) -> Any:
        bare = name.rstrip("*").split(":", 1)[0]
        if bare in supplied:
            return supplied[bare]
        return folded.get(bare.lower())

    def replace(match: re.Match[str]) -> str:
        operator, names = match.group(1), [n.strip() for n in match.group(2).split(",")]
        present = [(n.rstrip("*").split(":", 1)[0], lookup(n)) for n in names if n]
        present = [(n, v) for n, v in present if v is not None]
        if not present:
            return ""
        if operator == "/":
            return "".join("/" + _encode(v) for _, v in present)
        if operator in ("?", "&"):
            return operator + "&".join(f"{quote(n, safe=_UNRESERVED)}={_encode(v)}"
                                       for n, v in present)
        if operator == ".":
            return "".join("." + _encode(v) for _, v in present)
        return ",".join(_encode(v) for _, v in present)

    return _TEMPLATE_EXPRESSION.sub(replace, template)


def resolve_link(server_url: str, link: str) -> str:
    """An absolute URL for `link` as found in a resource's `Links` (or a path we build)."""
    if link.startswith(("http://", "https://")):
        return link
    parts = urlsplit(server_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    if link.startswith("~/"):
        return server_url.rstrip("/") + link[1:]
    if link.startswith("/"):
        return origin + link
    return server_url.rstrip("/") + "/" + link


def api_root_url(server_url: str) -> str:
    """`https://host[/virtual-dir]` + `/api`."""
    return server_url.rstrip("/") + "/api"


def normalize_server_url(text: str) -> str:
    """`--server` as an absolute http(s) URL without a trailing slash; TentacleError otherwise."""
    candidate = text.strip()
    parts = urlsplit(candidate)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise TentacleError(f"The Octopus Server address '{text}' is not an http:// or https:// "
                            "URL, e.g. --server=https://octopus.example.com")
    if parts.query or parts.fragment:
        raise TentacleError(f"The Octopus Server address '{text}' must not have a query or "
                            "fragment.")
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path}".rstrip("/")


def same_host(left_url: str, right_url: str) -> bool:
    """Whether two URLs name the same host (ignoring case, scheme and port)."""
    left, right = urlsplit(left_url).hostname, urlsplit(right_url).hostname
    return bool(left) and left == right


# ------------------------------------------------------------------ HTTP over TLS

@dataclass(frozen=True)
class TlsPolicy:
    """How a server certificate is judged; see the module docstring."""

    mode: Literal["any", "pinned", "system"]
    thumbprints: frozenset[str] = frozenset()

    @classmethod
    def accept_any(cls) -> TlsPolicy:
        return cls("any")

    @classmethod
    def pinned(cls, thumbprints: Sequence[str]) -> TlsPolicy:
        return cls("pinned", frozenset(t.upper() for t in thumbprints))

    @classmethod
    def system(cls) -> TlsPolicy:
        return cls("system")


@dataclass(frozen=True)
class HttpResponse:
    """A complete response; `server_thumbprint` is None over plain HTTP or system-verified TLS
    where the certificate was not inspected."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    server_thumbprint: str | None

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


def _target(parts: Any) -> str:
    path = parts.path or "/"
    return path + (f"?{parts.query}" if parts.query else "")


async def _open_tls_any(host: str, port: int) -> tuple[trio.abc.Stream, str | None]:
    tcp = await trio.open_tcp_stream(host, port)
    stream = TLSStream(tcp, client_context(), server_hostname=host)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, stream.server_thumbprint


async def _open_tls_system(host: str, port: int) -> trio.abc.Stream:
    tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=host,
                            https_compatible=True)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def _open(url: str, policy: TlsPolicy) -> tuple[trio.abc.Stream, str | None]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    if scheme == "http":
        return await trio.open_tcp_stream(host, port), None
    if scheme != "https":
        raise ApiConnectionError(f"Unsupported URL scheme in {url}")
    if policy.mode == "system":
        return await _open_tls_system(host, port), None
    stream, thumbprint = await _open_tls_any(host, port)
    if policy.mode == "any" or (thumbprint or "").upper() in policy.thumbprints:
        return stream, thumbprint
    await trio.aclose_forcefully(stream)
    try:
        return await _open_tls_system(host, port), None
    except (ssl.SSLError, trio.BrokenResourceError) as exc:
        pinned = ", ".join(sorted(policy.thumbprints))
        raise CertificateRejected(
            f"The certificate of {parts.scheme}://{parts.netloc} (thumbprint {thumbprint}) is "
            f"neither the one the Octopus Server's comms endpoint presented ({pinned}) nor "
            f"trusted by this machine's certificate store: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(exc) or type(exc).__name__


async def _exchange(stream: trio.abc.Stream, request_bytes: bytes, connection: h11.Connection,
                    max_body: int) -> tuple[h11.Response, bytes]:
    await stream.send_all(request_bytes)
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            connection.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise ApiConnectionError(f"The response is larger than {max_body} bytes.")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            if response is None:
                raise ApiConnectionError("The connection closed before a response arrived.")
            return response, bytes(body)


async def http_request(url: str, method: str = "GET", *, body: bytes = b"",
                       headers: Sequence[tuple[str, str]] = (), policy: TlsPolicy | None = None,
                       timeout: float = DEFAULT_TIMEOUT,
                       max_body: int = MAX_RESPONSE_BYTES) -> HttpResponse:
    """One HTTP/1.1 request on a fresh connection, bounded by `timeout` as a whole.

    ApiConnectionError (or CertificateRejected) when no response could be had.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        raise ApiConnectionError(f"'{url}' has no host name.")
    chosen = policy or TlsPolicy.system()
    host_header = parts.netloc.rsplit("@", 1)[-1]
    all_headers = [("Host", host_header), ("User-Agent", USER_AGENT),
                   ("Accept", "application/json"), ("Connection", "close")]
    if body or method not in ("GET", "HEAD"):
        all_headers.append(("Content-Length", str(len(body))))
    all_headers.extend(headers)
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
    request = h11.Request(method=method, target=_target(parts), headers=all_headers)
    wire = connection.send(request) + connection.send(h11.Data(data=body)) + connection.send(
        h11.EndOfMessage())
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(timeout):
            stream, thumbprint = await _open(url, chosen)
            response, payload = await _exchange(stream, wire, connection, max_body)
    except trio.TooSlowError:
        raise ApiConnectionError(f"No response from {parts.scheme}://{parts.netloc} within "
                                 f"{timeout:g} seconds.") from None
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        raise ApiConnectionError(f"The secure connection to {parts.scheme}://{parts.netloc} "
                                 f"failed: {_reason(exc)}.") from None
    except OSError as exc:
        raise ApiConnectionError(f"Unable to connect to {parts.scheme}://{parts.netloc}: "
                                 f"{exc.strerror or exc}.") from None
    except h11.RemoteProtocolError as exc:
        raise ApiConnectionError(f"{parts.scheme}://{parts.netloc} sent an invalid HTTP "
                                 f"response: {exc}.") from None
    finally:
        if stream is not None:
            with trio.move_on_after(1):
                await trio.aclose_forcefully(stream)
    return HttpResponse(
        status=response.status_code, reason=response.reason.decode("latin-1"),
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers),
        body=payload, server_thumbprint=thumbprint)


# ------------------------------------------------------------------ the Octopus client

def error_from_response(response: HttpResponse) -> OctopusApiError:
    """The `OctopusApiError` for a non-2xx response (the error document, else the raw text)."""
    document: Any = None
    try:
        document = json.loads(response.body.decode("utf-8-sig")) if response.body else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        document = None
    if isinstance(document, dict):
        fields = {str(k).lower(): v for k, v in document.items()}
        message = fields.get("errormessage")
        errors = fields.get("errors") or []
        help_text = fields.get("helptext")
        if isinstance(message, str) and message:
            return OctopusApiError(response.status, message,
                                   [str(e) for e in errors] if isinstance(errors, list) else [],
                                   help_text if isinstance(help_text, str) else None)
    text = response.body[:2000].decode("utf-8", "replace").strip()
    return OctopusApiError(response.status, f"The server returned a status code of "
                                            f"{response.status}: {text or response.reason}")


class OctopusClient:
    """The REST API of one Octopus Server (`server_url` without `/api`), with an API key."""

    def __init__(self, server_url: str, api_key: str, *, policy: TlsPolicy | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.server_url = normalize_server_url(server_url)
        self.api_key = api_key
        self.policy = policy or TlsPolicy.system()
        self.timeout = timeout

    def url(self, link: str, params: Mapping[str, Any] | None = None) -> str:
        return resolve_link(self.server_url, expand_template(link, params))

    async def request(self, method: str, link: str, *, params: Mapping[str, Any] | None = None,
                      document: Any = None, accept_status: Sequence[int] = ()) -> Any:
        """Send one request; the decoded JSON body, or None for an empty one.

        Non-2xx raises OctopusApiError, except statuses in `accept_status`, which return None.
        PUT and DELETE travel as POST with `X-HTTP-Method-Override`.
        """
        url = self.url(link, params)
        wire_method, headers = method, [(API_KEY_HEADER, self.api_key)]
        if method in ("PUT", "DELETE"):
            wire_method = "POST"
            headers.append((METHOD_OVERRIDE_HEADER, method))
        body = b""
        if document is not None:
            body = json.dumps(document, ensure_ascii=False).encode("utf-8")
            headers.append(("Content-Type", "application/json"))
        response = await http_request(url, wire_method, body=body, headers=headers,
                                      policy=self.policy, timeout=self.timeout)
        if response.status in accept_status:
            return None
        if 300 <= response.status < 400:
            location = response.header("Location") or "another address"
            raise OctopusApiError(response.status, f"The Octopus Server at {self.server_url} "
                                                   f"redirected the request for {url} to "
                                                   f"{location}; use that address with --server.")
        if not 200 <= response.status < 300:
            raise error_from_response(response)
        if not response.body.strip():
            return None
        try:
            return json.loads(response.body.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise OctopusApiError(
                response.status, f"The response from {url} is not JSON; is {self.server_url} an "
                                 "Octopus Server?") from None

    async def get(self, link: str, params: Mapping[str, Any] | None = None, *,
                  accept_status: Sequence[int] = ()) -> Any:
        return await self.request("GET", link, params=params, accept_status=accept_status)

    async def post(self, link: str, document: Any) -> Any:
        return await self.request("POST", link, document=document)

    async def put(self, link: str, document: Any) -> Any:
        return await self.request("PUT", link, document=document)

    async def get_all_pages(self, link: str, params: Mapping[str, Any] | None = None, *,
                            max_pages: int = 100) -> list[Any]:
        """Every item of a paged collection, following `Links["Page.Next"]`."""
        items: list[Any] = []
        page = await self.get(link, params)
        for _ in range(max_pages):
            if isinstance(page, list):  # an `/all` endpoint answers with a bare array
                items.extend(page)
                return items
            if not isinstance(page, dict):
                return items
            items.extend(get_member(page, "Items") or [])
            next_link = get_link(page, "Page.Next")
            if not next_link:
                return items
            page = await self.get(next_link)
        return items


def get_member(document: Any, name: str) -> Any:
    """A member of a JSON object, matching the name case-insensitively (Newtonsoft readers)."""
    if not isinstance(document, dict):
        return None
    if name in document:
        return document[name]
    lowered = name.lower()
    for key, value in document.items():
        if str(key).lower() == lowered:
            return value
    return None


def get_link(document: Any, name: str) -> str | None:
    links = get_member(document, "Links")
    value = get_member(links, name)
    return value if isinstance(value, str) and value else None

"""A loopback-only HTTP/1.1 endpoint for Prometheus scrapes: `GET /metrics` and nothing else.

Why loopback only: the metrics name routes, subscription ids and error reasons, which is
reconnaissance for anyone on the network, and this endpoint is plain HTTP beside a TLS front
door. A scraper on another host goes through an SSH tunnel or a local agent; a non-loopback
address is refused before anything binds. The endpoint is bounded like everything else here: a
few connections at a time, a deadline for every read and write, small requests only.
Used by `httpsys-emu serve --metrics-port` and by `octopus_comms.metrics.serve_metrics`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import h11
import trio

from .exposition import CONTENT_TYPE

METRICS_PATH = b"/metrics"
MAX_CONNECTIONS = 16
REQUEST_DEADLINE = 10.0          # idle keep-alive and reading one request, each
SEND_DEADLINE = 10.0
MAX_REQUEST_BYTES = 16384


class MetricsBindRefused(ValueError):
    """The metrics endpoint was asked to listen on an address that is not loopback."""


def loopback_host(host: str) -> str:
    """`host` as an IP literal if it is a loopback address; MetricsBindRefused otherwise."""
    text = host.strip()
    if text.lower() == "localhost":
        return "127.0.0.1"
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(inner)
    except ValueError:
        raise MetricsBindRefused(f"{host!r} is not an IP address; the metrics endpoint listens "
                                 "on a loopback address only") from None
    if not address.is_loopback:
        raise MetricsBindRefused(f"{host} is not a loopback address; the metrics endpoint "
                                 "listens on 127.0.0.1 or ::1 only")
    return address.compressed


def parse_listen(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[V6]:PORT` → (loopback host, port); ValueError when malformed,
    MetricsBindRefused when the host is not loopback. The default host is 127.0.0.1."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    elif ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not PORT or HOST:PORT (port 0..65535)")
    return loopback_host(host), int(port_text)


def _response(conn: h11.Connection, status: int, body: bytes, *, head: bool,
              content_type: str = "text/plain; charset=utf-8",
              extra: list[tuple[str, str]] | None = None) -> bytes:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store"), *(extra or [])]
    data = conn.send(h11.Response(status_code=status, headers=headers,
                                  reason=_REASONS.get(status, b"")))
    if not head:
        data += conn.send(h11.Data(data=body))
    return data + conn.send(h11.EndOfMessage())


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found",
            405: b"Method Not Allowed", 500: b"Internal Server Error"}


class MetricsEndpoint:
    """Serves `render()` at /metrics on the connections it is handed."""

    def __init__(self, render: Callable[[], str], *, log: Callable[[str], None] | None = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.render = render
        self.log = log
        self.max_connections = max_connections
        self.open_connections = 0
        self.scrapes = 0

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        if self.open_connections >= self.max_connections:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        self.open_connections += 1
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                h11.ProtocolError, OSError):
            pass
        finally:
            self.open_connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        with trio.fail_after(REQUEST_DEADLINE):
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                conn.receive_data(await stream.receive_some(65536))

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        while True:
            try:
                event = await self._next_event(conn, stream)
            except h11.RemoteProtocolError:
                if conn.our_state is h11.IDLE:
                    with trio.fail_after(SEND_DEADLINE):
                        await stream.send_all(_response(conn, 400, b"Bad Request\n",
                                                         head=False))
                return
            if not isinstance(event, h11.Request):
                return                      # ConnectionClosed, or the client went away
            body = 0
            while True:                     # a scrape has no body; never buffer one
                more = await self._next_event(conn, stream)
                if isinstance(more, h11.EndOfMessage):
                    break
                if not isinstance(more, h11.Data):
                    return
                body += len(more.data)
                if body > MAX_REQUEST_BYTES:
                    return
            data = self._answer(conn, event)
            with trio.fail_after(SEND_DEADLINE):
                await stream.send_all(data)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    def _answer(self, conn: h11.Connection, request: h11.Request) -> bytes:
        head = request.method == b"HEAD"
        path = request.target.split(b"?", 1)[0]
        if path != METRICS_PATH:
            return _response(conn, 404, b"Not Found: metrics are at /metrics\n", head=head)
        if request.method not in (b"GET", b"HEAD"):
            return _response(conn, 405, b"Method Not Allowed\n", head=False,
                             extra=[("Allow", "GET, HEAD")])
        try:
            text = self.render()
        except Exception as exc:        # a bug in a collector must not end the endpoint
            if self.log is not None:
                self.log(f"metrics rendering failed: {exc!r}")
            return _response(conn, 500, b"metrics rendering failed\n", head=head)
        self.scrapes += 1
        return _response(conn, 200, text.encode("utf-8"), head=head,
                         content_type=CONTENT_TYPE)


async def serve_metrics_http(host: str, port: int, render: Callable[[], str], *,
                             log: Callable[[str], None] | None = None,
                             task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on loopback `host`:`port` (0 = any free port) and serve until cancelled.

    `task_status.started(port)` reports the port bound. MetricsBindRefused for a non-loopback
    host (before binding); OSError when the port cannot be bound.
    """
    address = loopback_host(host)
    listeners = await trio.open_tcp_listeners(port, host=address)
    bound = listeners[0].socket.getsockname()[1]
    endpoint = MetricsEndpoint(render, log=log)
    if log is not None:
        shown = f"[{address}]" if ":" in address else address
        log(f"metrics on http://{shown}:{bound}/metrics")
    task_status.started(bound)
    await trio.serve_listeners(endpoint.serve_connection, listeners)

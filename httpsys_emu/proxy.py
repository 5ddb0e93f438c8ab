"""The reverse proxy: one routed request to an upstream over HTTP/1.1, bodies streamed both ways.

h11 drives the upstream side (it writes our request and parses the upstream's response); the
client side goes through `ClientChannel`. The request target sent upstream is the canonical path
the router matched (re-encoded) plus the raw query, so the application never sees a form the
front door interpreted differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import h11
import trio

from .channel import ClientChannel, ConnectionAbort
from .limits import Limits
from .pages import ErrorPage, HttpSysError
from .request import RequestInfo
from .response_writer import HOP_BY_HOP
from .upstream import UpstreamPool, UpstreamTarget, _close_quietly

# Headers only the front door may set: removed from what the client sent, then set again.
FRONT_DOOR_HEADERS = frozenset({
    "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
    "x-forwarded-prefix", "x-real-ip", "x-client-cert", "x-client-cert-thumbprint",
    "x-original-url",
})
OUR_PREFIX = "x-httpsys-"
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class UpstreamUnavailable(Exception):
    """The upstream refused, timed out or broke before answering: the client gets a 503."""


@dataclass
class _Upstream:
    stream: trio.SocketStream
    conn: h11.Connection
    reused: bool


def upstream_headers(info: RequestInfo, body_length: int | None, chunked: bool,
                     upgrade: str | None) -> list[tuple[str, str]]:
    """The header list sent upstream: hop-by-hop and forgeable fields out, ours in."""
    connection_tokens: set[str] = set()
    for value in info.header_values("connection"):
        connection_tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    out: list[tuple[str, str]] = []
    for name, value in info.headers:
        lname = name.lower()
        if (lname in HOP_BY_HOP or lname in connection_tokens or lname in FRONT_DOOR_HEADERS
                or lname.startswith(OUR_PREFIX) or lname in ("content-length", "expect")):
            continue
        out.append((name, value))
    conn = info.conn
    client = conn.remote_ip
    client_node = f'"[{client}]:{conn.remote_port}"' if ":" in client else f'"{client}:{conn.remote_port}"'
    local = conn.local_ip
    by_node = f'"[{local}]:{conn.local_port}"' if ":" in local else f'"{local}:{conn.local_port}"'
    host_value = info.header("host") or info.host
    out += [
        ("Forwarded", f'for={client_node};by={by_node};host="{host_value}";proto={info.scheme}'),
        ("X-Forwarded-For", client),
        ("X-Forwarded-Proto", info.scheme),
        ("X-Forwarded-Host", host_value),
        ("X-Forwarded-Port", str(conn.local_port)),
        ("X-Original-URL", info.target),
        ("X-HttpSys-Prefix", str(info.prefix)),
        ("X-HttpSys-Local-Address", f"{local}:{conn.local_port}" if ":" not in local else f"[{local}]:{conn.local_port}"),
        ("X-HttpSys-Remote-Address", f"{client}:{conn.remote_port}" if ":" not in client else f"[{client}]:{conn.remote_port}"),
    ]
    if conn.sni:
        out.append(("X-HttpSys-SNI", conn.sni))
    if conn.tls_version:
        out.append(("X-HttpSys-TLS-Version", conn.tls_version))
    if conn.client_cert_der is not None:
        out.append(("X-Client-Cert-Thumbprint", conn.client_cert_thumbprint or ""))
        out.append(("X-Client-Cert", quote(conn.client_cert_pem or "", safe="")))
    if body_length is not None:
        out.append(("Content-Length", str(body_length)))
    elif chunked:
        out.append(("Transfer-Encoding", "chunked"))
    if info.header("expect") and info.header("expect").lower() == "100-continue":
        out.append(("Expect", "100-continue"))
    if upgrade:
        out.append(("Connection", "Upgrade"))
        out.append(("Upgrade", upgrade))
    return out


def upstream_target_path(info: RequestInfo) -> str:
    path = quote(info.path, safe=_PATH_SAFE)
    return f"{path}?{info.query}" if info.query else path


def tunnelable_upgrade(info: RequestInfo) -> str | None:
    """The Upgrade value to pass on, or None; `h2c` is never tunnelled."""
    if not info.upgrade:
        return None
    tokens = [t.strip().lower() for t in info.upgrade.split(",")]
    if any(t.startswith("h2c") for t in tokens):
        return None
    return info.upgrade


class ReverseProxy:
    """Delivers requests to upstream targets, reusing connections from a pool."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    async def _open(self, target: UpstreamTarget) -> _Upstream:
        try:
            stream, reused = await self.pool.acquire(target)
        except (OSError, trio.TooSlowError) as exc:
            raise self._unavailable(f"cannot connect to {target}: {exc}") from None
        return _Upstream(stream, h11.Connection(h11.CLIENT), reused)

    async def forward(self, info: RequestInfo, channel: ClientChannel, target: UpstreamTarget,
                      limits: Limits) -> None:
        """Forward one request; raises HttpSysError (503) before the response starts, or
        ConnectionAbort once bytes have gone to the client."""
        head = channel.head
        upgrade = tunnelable_upgrade(info)
        has_body = not channel.body_done
        body_length = head.content_length if has_body and not head.chunked else None
        headers = upstream_headers(info, body_length if has_body else None,
                                   has_body and head.chunked, upgrade)
        request = h11.Request(method=head.method, target=upstream_target_path(info),
                              headers=headers)
        up: _Upstream | None = None
        for attempt in (1, 2):
            up = await self._open(target)
            try:
                await up.stream.send_all(up.conn.send(request))
                break
            except (OSError, trio.BrokenResourceError) as exc:
                await _close_quietly(up.stream)
                if not up.reused or attempt == 2:
                    raise self._unavailable(f"upstream {target} failed: {exc}") from None
        assert up is not None
        reusable = False
        try:
            reusable = await self._exchange(info, channel, up, limits, upgrade is not None)
        finally:
            if reusable:
                await self.pool.release(target, up.stream)
            elif not channel.switched:
                await _close_quietly(up.stream)

    @staticmethod
    def _unavailable(detail: str) -> HttpSysError:
        return HttpSysError(ErrorPage.SERVICE_UNAVAILABLE, "AppOffline", detail)

    async def _exchange(self, info: RequestInfo, channel: ClientChannel, up: _Upstream,
                        limits: Limits, upgrading: bool) -> bool:
        body_sent = trio.Event()
        result: dict[str, bool] = {"upstream_ok": False}

        async def pump_body() -> None:
            try:
                while True:
                    data = await channel.read_body()
                    if not data:
                        break
                    await up.stream.send_all(up.conn.send(h11.Data(data=data)))
                await up.stream.send_all(up.conn.send(h11.EndOfMessage()))
            except (OSError, trio.BrokenResourceError, h11.LocalProtocolError):
                pass             # the response side reports what went wrong
            body_sent.set()

        channel.auto_continue = False
        async with trio.open_nursery() as nursery:
            if channel.body_done:
                await up.stream.send_all(up.conn.send(h11.EndOfMessage()))
                body_sent.set()
            else:
                nursery.start_soon(pump_body)
            try:
                result["upstream_ok"] = await self._relay_response(info, channel, up, limits,
                                                                   upgrading)
            finally:
                nursery.cancel_scope.cancel()
        if channel.switched:
            return False
        if not channel.body_done:
            channel.keep_alive = False
            return False
        return (result["upstream_ok"] and up.conn.our_state is h11.DONE
                and up.conn.their_state is h11.DONE)

    async def _next_event(self, up: _Upstream, timeout: float) -> h11.Event:
        while True:
            try:
                event = up.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamUnavailable(f"upstream sent a bad response: {exc}") from None
            if event is h11.NEED_DATA:
                with trio.move_on_after(timeout) as scope:
                    try:
                        data = await up.stream.receive_some(65536)
                    except (OSError, trio.BrokenResourceError) as exc:
                        raise UpstreamUnavailable(f"upstream connection failed: {exc}") from None
                if scope.cancelled_caught:
                    raise UpstreamUnavailable("upstream did not answer in time")
                up.conn.receive_data(data)
                continue
            return event

    async def _relay_response(self, info: RequestInfo, channel: ClientChannel, up: _Upstream,
                              limits: Limits, upgrading: bool) -> bool:
        try:
            while True:
                event = await self._next_event(up, limits.upstream_response_timeout)
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 100:
                        await channel.send_continue()
                        continue
                    if event.status_code == 101 and upgrading:
                        await self._tunnel(channel, up, event, limits)
                        return False
                    continue
                if isinstance(event, h11.Response):
                    break
                if isinstance(event, h11.ConnectionClosed):
                    raise UpstreamUnavailable("upstream closed without a response")
        except UpstreamUnavailable as exc:
            raise self._unavailable(str(exc)) from None
        raw = event.headers.raw_items()
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw
                   if n.lower().decode("latin-1") not in HOP_BY_HOP]
        conn_tokens = {t.strip().lower() for n, v in raw if n.lower() == b"connection"
                       for t in v.decode("latin-1").split(",")}
        headers = [(n, v) for n, v in headers if n.lower() not in conn_tokens]
        await channel.start_response(event.status_code, headers,
                                     reason=event.reason.decode("latin-1") or None)
        try:
            while True:
                ev = await self._next_event(up, limits.upstream_response_timeout)
                if isinstance(ev, h11.Data):
                    await channel.send_body(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    break
                elif isinstance(ev, h11.ConnectionClosed):
                    break
        except UpstreamUnavailable as exc:
            raise ConnectionAbort("Connection_Abandoned_By_AppPool", str(exc)) from None
        await channel.end_response()
        return True

    async def _tunnel(self, channel: ClientChannel, up: _Upstream,
                      event: h11.InformationalResponse, limits: Limits) -> None:
        """After the upstream's real 101: relay bytes both ways until both sides are done."""
        headers = [(n.decode("latin-1"), v.decode("latin-1"))
                   for n, v in event.headers.raw_items()]
        if not any(n.lower() == "connection" for n, _ in headers):
            headers.append(("Connection", "Upgrade"))
        client = await channel.switch_protocols(headers)
        leftover, _closed = up.conn.trailing_data
        upstream = up.stream
        try:
            if leftover:
                await client.send_all(bytes(leftover))
            await relay_both_ways(client, upstream, limits.tunnel_idle)
        finally:
            await _close_quietly(upstream)


async def relay_both_ways(a: trio.abc.Stream, b: trio.abc.Stream, idle: float) -> None:
    """Copy a→b and b→a; EOF on one side half-closes the other; an idle period ends both."""
    last_activity = [trio.current_time()]

    async def copy(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                last_activity[0] = trio.current_time()
                await dst.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()
            return
        send_eof = getattr(dst, "send_eof", None)
        try:
            if send_eof is not None:
                await send_eof()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.append(src)
        if len(done) == 2:
            nursery.cancel_scope.cancel()

    async def watchdog() -> None:
        while True:
            await trio.sleep_until(last_activity[0] + idle)
            if trio.current_time() >= last_activity[0] + idle:
                nursery.cancel_scope.cancel()
                return

    done: list[trio.abc.Stream] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, a, b)
        nursery.start_soon(copy, b, a)
        nursery.start_soon(watchdog)

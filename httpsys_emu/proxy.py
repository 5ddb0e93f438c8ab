"""The reverse proxy: one routed request to an upstream over HTTP/1.1, bodies streamed both ways.

h11 drives the upstream side (it writes our request and parses the upstream's response); the
client side goes through `ClientChannel`. What the upstream sees is rebuilt by us, never copied:
the target is the canonical path the router matched (re-encoded) plus the raw query, `Host` is the
authority we routed on, the framing is ours (h11's), hop-by-hop fields and every field a client
could forge (`Forwarded`, `X-Forwarded-*`, `X-Client-Cert*`, `X-HttpSys-*`) are dropped and the
trustworthy ones set again. So an application never sees a form the front door read differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import h11
import trio

from .channel import ClientChannel, ConnectionAbort
from .headcheck import FIELD_VALUE_BYTES, TOKEN_BYTES, only_bytes_from
from .limits import Limits
from .pages import ErrorPage, HttpSysError
from .request import RequestInfo
from .response_writer import HOP_BY_HOP
from .store import ForwardTarget
from .upstream import UpstreamPool, _close_quietly

# Headers only the front door may set: removed from what the client sent, then set again.
FRONT_DOOR_HEADERS = frozenset({
    "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
    "x-forwarded-prefix", "x-real-ip", "x-client-cert", "x-client-cert-thumbprint",
    "x-original-url",
})
# Rebuilt by us from what we parsed and routed on.
REBUILT_HEADERS = frozenset({"host", "content-length", "expect"})
OUR_PREFIX = "x-httpsys-"
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"      # '%' only ever appears as %25 in a canonical path
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_UPSTREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class UpstreamUnavailable(Exception):
    """The upstream refused, timed out or broke before answering: the client gets a 503."""


class _StaleConnection(UpstreamUnavailable):
    """A pooled connection the upstream had closed: it sent nothing at all."""


@dataclass
class _Upstream:
    stream: trio.SocketStream
    conn: h11.Connection
    reused: bool
    bytes_received: int = 0


_VISIBLE_ASCII = bytes(range(0x21, 0x7F))
# What `quote(path, safe=_PATH_SAFE)` leaves as it is: a path made only of these needs no work.
_PATH_UNCHANGED = {ord(c): None for c in
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
                   + _PATH_SAFE}


def _percent_encode_non_ascii(raw: bytes) -> bytes:
    """Bytes outside printable ASCII as %XX (h11 and RFC 9112 want a visible-ASCII target)."""
    if not raw.translate(None, _VISIBLE_ASCII):
        return raw                      # the common case, without a per-byte loop
    return b"".join(b if 0x21 <= b[0] <= 0x7E else b"%%%02X" % b[0]
                    for b in (raw[i:i + 1] for i in range(len(raw))))


def upstream_target(info: RequestInfo) -> bytes:
    """The request target sent upstream: canonical path re-encoded, raw query kept."""
    if info.path.translate(_PATH_UNCHANGED):
        path = quote(info.path, safe=_PATH_SAFE).encode("ascii")
    else:
        path = info.path.encode("ascii")        # quote() would return it unchanged
    if not info.query:
        return path
    return path + b"?" + _percent_encode_non_ascii(info.query.encode("latin-1"))


def _node(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def upstream_headers(info: RequestInfo, body_length: int | None, chunked: bool,
                     upgrade: str | None) -> list[tuple[bytes, bytes]]:
    """The header list sent upstream: hop-by-hop and forgeable fields out, ours in."""
    connection_tokens: set[str] = set()
    for value in info.header_values("connection"):
        connection_tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    out: list[tuple[bytes, bytes]] = []
    for name, value in info.headers:
        lname = name.lower()
        if (lname in HOP_BY_HOP or lname in connection_tokens or lname in FRONT_DOOR_HEADERS
                or lname in REBUILT_HEADERS or lname.startswith(OUR_PREFIX)):
            continue
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    conn = info.conn
    authority = info.authority or info.host
    ours: list[tuple[str, str]] = [
        ("Host", authority),
        ("Forwarded", f'for="{_node(conn.remote_ip, conn.remote_port)}";'
                      f'by="{_node(conn.local_ip, conn.local_port)}";'
                      f'host="{authority}";proto={info.scheme}'),
        ("X-Forwarded-For", conn.remote_ip),
        ("X-Forwarded-Proto", info.scheme),
        ("X-Forwarded-Host", authority),
        ("X-Forwarded-Port", str(conn.local_port)),
        ("X-HttpSys-Prefix", str(info.prefix)),
        ("X-HttpSys-Local-Address", _node(conn.local_ip, conn.local_port)),
        ("X-HttpSys-Remote-Address", _node(conn.remote_ip, conn.remote_port)),
    ]
    if conn.sni:
        ours.append(("X-HttpSys-SNI", conn.sni))
    if conn.tls_version:
        ours.append(("X-HttpSys-TLS-Version", conn.tls_version))
    if conn.client_cert_der is not None:
        ours.append(("X-Client-Cert-Thumbprint", conn.client_cert_thumbprint or ""))
        ours.append(("X-Client-Cert", quote(conn.client_cert_pem or "", safe="")))
    if body_length is not None:
        ours.append(("Content-Length", str(body_length)))
    elif chunked:
        ours.append(("Transfer-Encoding", "chunked"))
    if body_length or chunked:
        expect = info.header("expect")
        if expect is not None and expect.lower() == "100-continue" and info.version == "1.1":
            ours.append(("Expect", "100-continue"))
    if upgrade:
        ours.append(("Connection", "Upgrade"))
        ours.append(("Upgrade", upgrade))
    out += [(n.encode("ascii"), v.encode("latin-1")) for n, v in ours]
    out.append((b"X-Original-URL", _percent_encode_non_ascii(info.target.encode("latin-1"))))
    return out


def _h11_would_accept(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """True when h11's own regex validation of this request would pass (a cheaper, stricter
    check with `bytes.translate`): token method and names, field values without CR/LF/NUL or
    other controls and without surrounding whitespace, a visible-ASCII target."""
    if not method or not only_bytes_from(method, TOKEN_BYTES):
        return False
    if not target or not only_bytes_from(target, _VISIBLE_ASCII):
        return False
    for name, value in headers:
        if not name or not only_bytes_from(name, TOKEN_BYTES):
            return False
        if not only_bytes_from(value, FIELD_VALUE_BYTES) or value != value.strip(b" \t"):
            return False
    return True


def build_upstream_request(method: bytes, target: bytes,
                           headers: list[tuple[bytes, bytes]]) -> h11.Request:
    """The h11 request sent upstream; h11's per-header regexes are skipped only when
    `_h11_would_accept` proved they pass (h11 still checks Host and the framing fields)."""
    if _H11_TAKES_PARSED:
        return h11.Request(method=method, target=target, headers=headers,
                           _parsed=_h11_would_accept(method, target, headers))
    return h11.Request(method=method, target=target, headers=headers)


def _h11_takes_parsed() -> bool:
    """`_parsed` is h11's private switch for its own validation: use it only where it exists,
    so a future h11 without it costs speed, never correctness."""
    try:
        h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"x")], _parsed=False)
    except TypeError:
        return False
    return True


_H11_TAKES_PARSED = _h11_takes_parsed()


def tunnelable_upgrade(info: RequestInfo) -> str | None:
    """The Upgrade value to pass on, or None; `h2c` is never tunnelled."""
    if not info.upgrade:
        return None
    tokens = [t.strip().lower() for t in info.upgrade.split(",")]
    if any(t == "h2c" or t.startswith("h2c/") for t in tokens):
        return None
    return info.upgrade


class ReverseProxy:
    """Delivers requests to upstream targets, reusing connections from a pool."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    async def _open(self, target: ForwardTarget) -> _Upstream:
        try:
            stream, reused = await self.pool.acquire(target)
        except (OSError, trio.TooSlowError) as exc:
            raise self._unavailable(f"cannot connect to {target}: {exc}") from None
        return _Upstream(stream, h11.Connection(h11.CLIENT), reused)

    @staticmethod
    def _unavailable(detail: str) -> HttpSysError:
        return HttpSysError(ErrorPage.SERVICE_UNAVAILABLE, "AppOffline", detail)

    async def forward(self, info: RequestInfo, channel: ClientChannel, target: ForwardTarget,
                      limits: Limits) -> None:
        """Forward one request.

        Raises HttpSysError before the response started (503 when the upstream refuses or dies,
        400 for a malformed request body), ConnectionAbort after that or when the client fails.
        """
        head = channel.head
        upgrade = tunnelable_upgrade(info)
        has_body = not channel.body_done
        request = build_upstream_request(
            head.method.encode("ascii"), upstream_target(info),
            upstream_headers(info,
                             head.content_length if has_body and not head.chunked else None,
                             has_body and head.chunked, upgrade))
        for attempt in (1, 2):
            up = await self._open(target)
            reusable = False
            try:
                reusable = await self._exchange(channel, up, request, limits, upgrade is not None)
            except _StaleConnection as exc:
                retry = (attempt == 1 and up.reused and head.method in IDEMPOTENT_METHODS
                         and channel.body_bytes_read == 0 and not channel.continue_sent)
                if retry:
                    await _close_quietly(up.stream)
                    continue
                raise self._unavailable(str(exc)) from None
            except UpstreamUnavailable as exc:
                raise self._unavailable(str(exc)) from None
            finally:
                if reusable:
                    await self.pool.release(target, up.stream)
                else:
                    await _close_quietly(up.stream)
            return

    async def _exchange(self, channel: ClientChannel, up: _Upstream, request: h11.Request,
                        limits: Limits, upgrading: bool) -> bool:
        """Request out, body pumped alongside, response relayed; True if `up` is reusable."""
        data = up.conn.send(request)
        no_body = channel.body_done
        if no_body:
            # Nothing to pump: the end of the message (b"" without a body; chunked requests
            # always have a body to read) goes with the head, and no body task is started.
            data += up.conn.send(h11.EndOfMessage())
        scope = trio.CancelScope(deadline=trio.current_time() + limits.upstream_response_timeout)
        try:
            with scope:
                await up.stream.send_all(data)
        except _UPSTREAM_ERRORS as exc:
            if up.reused:
                raise _StaleConnection(f"pooled upstream connection failed: {exc}") from None
            raise UpstreamUnavailable(f"upstream failed: {exc}") from None
        if scope.cancelled_caught:
            raise UpstreamUnavailable("upstream does not take the request")
        channel.auto_continue = False      # the upstream's own 100 Continue is relayed
        if no_body:
            ok = await self._relay_response(channel, up, limits, upgrading)
            if channel.switched or not channel.body_done:
                if not channel.switched:
                    channel.keep_alive = False
                return False
            return (ok and up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE
                    and not up.conn.trailing_data[0])
        client_failure: list[BaseException] = []
        body_complete = [channel.body_done]

        async def pump_body() -> None:
            while True:
                try:
                    data = await channel.read_body()
                except (ConnectionAbort, HttpSysError) as exc:
                    client_failure.append(exc)       # the client side decides the outcome
                    nursery.cancel_scope.cancel()
                    return
                try:
                    if not data:
                        await up.stream.send_all(up.conn.send(h11.EndOfMessage()))
                        body_complete[0] = True
                        return
                    await up.stream.send_all(up.conn.send(h11.Data(data=data)))
                except (*_UPSTREAM_ERRORS, h11.LocalProtocolError):
                    return      # the upstream stopped reading; its response (or none) decides

        outcome: BaseException | None = None
        ok = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_body)
            try:
                ok = await self._relay_response(channel, up, limits, upgrading)
            except Exception as exc:    # re-raised below, outside the nursery (no group)
                outcome = exc
            nursery.cancel_scope.cancel()
        if client_failure:
            raise client_failure[0]
        if outcome is not None:
            raise outcome
        if channel.switched or not body_complete[0] or not channel.body_done:
            if not channel.switched:
                channel.keep_alive = False
            return False
        return (ok and up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE
                and not up.conn.trailing_data[0])

    async def _next_event(self, up: _Upstream, timeout: float) -> h11.Event:
        while True:
            try:
                event = up.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamUnavailable(f"upstream sent a bad response: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(timeout) as scope:
                try:
                    data = await up.stream.receive_some(65536)
                except _UPSTREAM_ERRORS as exc:
                    if up.reused and up.bytes_received == 0:
                        raise _StaleConnection(f"pooled upstream connection failed: {exc}") \
                            from None
                    raise UpstreamUnavailable(f"upstream connection failed: {exc}") from None
            if scope.cancelled_caught:
                raise UpstreamUnavailable("upstream did not answer in time")
            if not data and up.reused and up.bytes_received == 0:
                raise _StaleConnection("pooled upstream connection was closed")
            up.bytes_received += len(data)
            up.conn.receive_data(data)

    async def _relay_response(self, channel: ClientChannel, up: _Upstream, limits: Limits,
                              upgrading: bool) -> bool:
        timeout = limits.upstream_response_timeout
        while True:
            event = await self._next_event(up, timeout)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 100:
                    await channel.send_continue()
                elif event.status_code == 101 and upgrading:
                    await self._tunnel(channel, up, event, limits)
                    return False
                continue
            if isinstance(event, h11.Response):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise UpstreamUnavailable("upstream closed without a response")
            raise UpstreamUnavailable(f"unexpected upstream event {type(event).__name__}")
        raw = event.headers.raw_items()
        conn_tokens = {t.strip().lower() for n, v in raw if n.lower() == b"connection"
                       for t in v.decode("latin-1").split(",")}
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]
        headers = [(n, v) for n, v in headers
                   if n.lower() not in HOP_BY_HOP and n.lower() not in conn_tokens]
        await channel.start_response(event.status_code, headers,
                                     reason=event.reason.decode("latin-1") or None)
        try:
            while True:
                ev = await self._next_event(up, timeout)
                if isinstance(ev, h11.Data):
                    await channel.send_body(bytes(ev.data))
                elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
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
        try:
            if leftover:
                await client.send_all(bytes(leftover))
            await relay_both_ways(client, up.stream, limits.tunnel_idle)
        except _UPSTREAM_ERRORS:
            pass


async def relay_both_ways(a: trio.abc.Stream, b: trio.abc.Stream, idle: float) -> None:
    """Copy a→b and b→a; EOF on one side half-closes the other; an idle period ends both.

    Memory stays at one 64 KiB read per direction: a side that does not read holds the other
    side's reads back (send_all blocks).
    """
    last_activity = trio.current_time()
    done = 0

    async def copy(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        nonlocal last_activity, done
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                last_activity = trio.current_time()
                await dst.send_all(data)
                last_activity = trio.current_time()
        except _UPSTREAM_ERRORS:
            nursery.cancel_scope.cancel()
            return
        send_eof = getattr(dst, "send_eof", None)
        try:
            if send_eof is not None:
                await send_eof()
        except (*_UPSTREAM_ERRORS, trio.BusyResourceError):
            nursery.cancel_scope.cancel()
            return
        done += 1
        if done == 2:
            nursery.cancel_scope.cancel()

    async def watchdog() -> None:
        while True:
            await trio.sleep_until(last_activity + idle)
            if trio.current_time() >= last_activity + idle:
                nursery.cancel_scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, a, b)
        nursery.start_soon(copy, b, a)
        nursery.start_soon(watchdog)

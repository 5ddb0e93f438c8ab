"""The daemon that plays HTTP.sys: listeners, certificates, routes and live registrations.

`FrontDoor.run()` lives in a nursery someone owns. It re-reads the store whenever its generation
changes (or on SIGHUP, or `request_reload()`), so CLI changes reach new connections within a
second while established connections keep what they had. In-process applications register
handlers with `register_handler`; other processes register through `control.ControlServer`.

Connections run in the front door's own nursery, not under the listener that accepted them, so
closing a listener (an `iplisten` change, a removed binding, SIGTERM) never cuts a connection.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import socket
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import trio

from .certstore import CertStore
from .channel import ConnectionAbort
from .control import SOCKET_NAME, ControlServer, user_name
from .handlers import Handler, HandlerTarget
from .limits import Limits
from .logs import FrontDoorLog
from .proxy import ReverseProxy
from .registry import Owner, Registration, Target
from .routing import RouteTable
from .server import ConnectionHandler
from .store import ForwardTarget, SslCertBinding, Store
from .tls import TLSStream
from .tlsconfig import Binding, CertificateSelector, server_context, switching_context
from .upstream import UpstreamPool
from .urlacl import UrlAcl
from .urlprefix import UrlPrefix, parse_prefix
from .winerror import ERROR_FILE_NOT_FOUND, WinError

RELOAD_POLL_SECONDS = 0.25
DRAIN_POLL_SECONDS = 0.02


@dataclass
class Snapshot:
    """What the store said at one generation, turned into ready-to-use objects."""

    generation: int
    limits: Limits
    bindings: list[SslCertBinding]
    iplisten: list[str]
    reservations: list[tuple[UrlPrefix, UrlAcl]]
    forwards: list[tuple[UrlPrefix, ForwardTarget]]

    @property
    def ports(self) -> set[int]:
        return {b.key.port for b in self.bindings}


@dataclass
class _Listener:
    """The listening sockets for one (address, port); connections do not live under it."""

    host: str | None
    port: int
    sockets: list[trio.SocketListener]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    closed: trio.Event = field(default_factory=trio.Event)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [tuple(s.socket.getsockname()[:2]) for s in self.sockets]  # type: ignore[misc]


class QueueSlot:
    """One request counted against its registration's queue until released (once)."""

    def __init__(self, counter: Counter[Registration], registration: Registration) -> None:
        self._counter = counter
        self._registration = registration
        self._held = True
        counter[registration] += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._counter[self._registration] -= 1
            if self._counter[self._registration] <= 0:
                del self._counter[self._registration]


class FrontDoor:
    """The whole front door; one per state directory.

    `limit_overrides` replaces fields of the stored `Limits` (caps the store has no row for,
    such as `max_connections_per_client`); they are applied on every reload.
    """

    def __init__(self, state_dir: str | Path, *, log_echo: Any = None,
                 control_socket: bool = True,
                 limit_overrides: Mapping[str, Any] | None = None,
                 log_dir: str | Path | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.store = Store.open(self.state_dir)
        self.certs = CertStore(self.state_dir)
        self.log = FrontDoorLog(Path(log_dir) if log_dir is not None else self.state_dir / "logs",
                                echo=log_echo)
        self.proxy = ReverseProxy(UpstreamPool())
        self.control_socket = control_socket
        self.limit_overrides: dict[str, Any] = dict(limit_overrides or {})
        self.snapshot: Snapshot | None = None
        self.routes: RouteTable[Registration] = RouteTable()
        self.selector: CertificateSelector = CertificateSelector([])
        # One base context for every connection; the SNI callback asks the *current* selector,
        # so a reload changes the certificate for new connections only.
        self._switching_context = switching_context(
            lambda sni, ip, port: self.selector.select(sni, ip, port))
        self._live: dict[UrlPrefix, Registration] = {}
        self._context_cache: dict[tuple[str, str, bool, int], Any] = {}
        self._listeners: dict[tuple[str | None, int], _Listener] = {}
        self._listen_errors: dict[tuple[str | None, int], str] = {}
        self._connections: set[ConnectionHandler] = set()
        self._per_client: Counter[str] = Counter()
        self._queues: Counter[Registration] = Counter()
        self._reload_wanted = trio.Event()
        self.draining = False
        self.shutdown_event = trio.Event()
        self.started = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.connections_total = 0
        self.connections_refused = 0
        self.handshakes_failed = 0
        self.handshakes_ok: Counter[str] = Counter()     # by negotiated TLS version

    # -- configuration ---------------------------------------------------------------------
    @property
    def limits(self) -> Limits:
        return self.snapshot.limits if self.snapshot else self._apply_overrides(Limits())

    def _apply_overrides(self, limits: Limits) -> Limits:
        return dataclasses.replace(limits, **self.limit_overrides) if self.limit_overrides \
            else limits

    def set_limit_overrides(self, **overrides: Any) -> None:
        """Change limit overrides at run time (tests, embedding); applies to new reads at once."""
        self.limit_overrides.update(overrides)
        if self.snapshot is not None:
            self.snapshot.limits = self._apply_overrides(self.snapshot.limits)

    def _load_snapshot(self) -> Snapshot:
        stored = self.store.snapshot()
        return Snapshot(generation=stored.generation,
                        limits=self._apply_overrides(stored.limits),
                        bindings=list(stored.sslcerts), iplisten=list(stored.iplisten),
                        reservations=[(row.prefix, row.acl) for row in stored.urlacls],
                        forwards=[(row.prefix, row.target) for row in stored.forwards])

    def _rebuild_routes(self) -> None:
        """A fresh route table from the snapshot plus live registrations, swapped in at once."""
        assert self.snapshot is not None
        table: RouteTable[Registration] = RouteTable()
        for prefix, acl in self.snapshot.reservations:
            try:
                table.reserve(prefix, acl)
            except WinError as exc:
                self.log.info(f"reservation {prefix} skipped: {exc}")
        # Live registrations first: a forward added later never takes a prefix away from a
        # running application; it takes over when the application goes.
        for prefix, registration in list(self._live.items()):
            try:
                table.register(prefix, registration)
            except WinError as exc:
                self.log.info(f"registration {registration} conflicts with the store: {exc}")
        for prefix, target in self.snapshot.forwards:
            if prefix in self._live:
                continue
            try:
                table.register(prefix, Registration(prefix, target, Owner("forward")))
            except WinError as exc:
                self.log.info(f"forward {prefix} skipped: {exc}")
        self.routes = table
        self._rebuild_selector()

    def _client_cert_ports(self) -> set[int]:
        return {reg.prefix.port for reg in self._live.values() if reg.client_cert}

    def _context_for(self, thumbprint: str, store_name: str, request_client_cert: bool,
                     cache: dict[tuple[str, str, bool, int], Any]) -> Any:
        """The server context for one certificate, cached until its file changes."""
        cert_path = self.certs.root / store_name / f"{thumbprint}.pem"
        try:
            mtime = cert_path.stat().st_mtime_ns
        except OSError:
            mtime = 0
        key = (thumbprint, store_name, request_client_cert, mtime)
        ctx = self._context_cache.get(key)
        if ctx is None:
            cert_pem, key_pem = self.certs.load_pair(thumbprint, store_name)
            ctx = server_context(cert_pem, key_pem, request_client_cert=request_client_cert)
        cache[key] = ctx
        return ctx

    def _central_store_names(self, store_name: str) -> dict[str, str]:
        """`ccs=PORT`: the certificates of a store by the DNS names they carry (lower case), the
        one that expires last winning a name; expired ones and those without a key are left out.
        Read on every reload (a SIGHUP after `cert import` picks up a new one)."""
        now = dt.datetime.now(dt.timezone.utc)
        by_name: dict[str, str] = {}
        usable = [c for c in self.certs.list(store_name)
                  if c.has_private_key and c.not_after > now]
        for cert in sorted(usable, key=lambda c: c.not_after):
            for name in cert.dns_names:
                if not name.startswith("*."):
                    by_name[name.lower().rstrip(".")] = cert.thumbprint
        return by_name

    def _rebuild_selector(self) -> None:
        if self.snapshot is None:
            return
        wants = self._client_cert_ports()
        bindings: list[Binding] = []
        cache: dict[tuple[str, str, bool, int], Any] = {}
        for row in self.snapshot.bindings:
            port = row.key.port
            client_cert = row.client_cert_negotiation or port in wants
            kind = row.key.kind.value
            try:
                if row.certhash is None:        # ccs: the certificate is chosen by SNI name
                    for name, thumbprint in self._central_store_names(row.store_name).items():
                        ctx = self._context_for(thumbprint, row.store_name, client_cert, cache)
                        bindings.append(Binding(kind="ccs", ip=None, hostname=name, port=port,
                                                context=ctx))
                    continue
                ctx = self._context_for(row.certhash, row.store_name, client_cert, cache)
            except Exception as exc:          # a missing or broken certificate skips one binding
                self.log.info(f"binding {kind}={row.key} unusable: {exc}")
                continue
            bindings.append(Binding(kind=kind,  # type: ignore[arg-type]
                                    ip=row.key.host if kind == "ipport" else None,
                                    hostname=row.key.host if kind == "hostnameport" else None,
                                    port=port, context=ctx))
        try:
            self.selector = CertificateSelector(bindings)
        except ValueError as exc:           # keep serving with the previous choice
            self.log.info(f"certificate bindings not applied: {exc}")
            return
        self._context_cache = cache

    def reload(self) -> None:
        """Re-read the store now (the reload loop does this on every generation change)."""
        self.snapshot = self._load_snapshot()
        self.proxy.pool.connect_timeout = self.snapshot.limits.upstream_connect_timeout
        self.proxy.pool.idle_timeout = self.snapshot.limits.upstream_idle
        self._rebuild_routes()

    def request_reload(self) -> None:
        self._reload_wanted.set()

    # -- registrations ---------------------------------------------------------------------
    def register(self, prefix: UrlPrefix, target: Target, owner: Owner, *,
                 client_cert: bool = False) -> Registration:
        """Add a live registration: ACL check, then the route table; WinError 183/5/87."""
        uid = owner.uid if owner.uid is not None else os.geteuid()
        self.routes.check_may_register(prefix, uid)
        registration = Registration(prefix, target, owner, client_cert=client_cert)
        self.routes.register(prefix, registration)
        self._live[prefix] = registration
        if client_cert:
            self._rebuild_selector()
        self.log.info(f"registered {registration}")
        return registration

    def unregister(self, prefix: UrlPrefix, owner: Owner | None = None) -> None:
        """Remove a live registration (only its owner's, when `owner` is given); WinError 2."""
        registration = self._live.get(prefix)
        if registration is None or (owner is not None and registration.owner != owner):
            raise WinError(ERROR_FILE_NOT_FOUND, f"{prefix} is not registered by this caller")
        del self._live[prefix]
        if self.routes.registration(prefix) is registration:
            self.routes.unregister(prefix)
        if self.snapshot is not None and any(p == prefix for p, _t in self.snapshot.forwards):
            self._rebuild_routes()            # the static forward it was holding back
        elif registration.client_cert:
            self._rebuild_selector()
        self.log.info(f"unregistered {registration}")

    @asynccontextmanager
    async def register_handler(self, prefix: str | UrlPrefix, handler: Handler, *,
                               name: str = "in-process", client_cert: bool = False,
                               uid: int | None = None) -> AsyncIterator[Registration]:
        """Route `prefix` to `handler` while the block runs; same ACL rules as other callers.

        `uid` is the user the ACL check is made for (default: this process's effective uid).
        """
        parsed = parse_prefix(prefix) if isinstance(prefix, str) else prefix
        effective_uid = os.geteuid() if uid is None else uid
        owner = Owner("in-process", pid=os.getpid(), uid=effective_uid,
                      user=user_name(effective_uid))
        registration = self.register(parsed, HandlerTarget(handler, name), owner,
                                     client_cert=client_cert)
        try:
            yield registration
        finally:
            try:
                self.unregister(parsed, owner)
            except WinError:
                pass

    def registrations(self) -> list[Registration]:
        """The live registrations (in-process and control socket), not the static forwards."""
        return list(self._live.values())

    def queue_slot(self, registration: Registration) -> QueueSlot | None:
        """Count one request against the registration's queue; None when the queue is full."""
        if self._queues[registration] >= self.limits.request_queue_length:
            return None
        return QueueSlot(self._queues, registration)

    def servicestate(self) -> dict[str, Any]:
        """Live state for `show servicestate`: listeners, registrations and their owners."""
        regs = []
        for prefix, reg in sorted(self._live.items(), key=lambda kv: str(kv[0])):
            regs.append({"url": str(prefix), "kind": reg.owner.kind, "pid": reg.owner.pid,
                         "uid": reg.owner.uid, "user": reg.owner.user,
                         "deliver": str(reg.target), "client_cert": reg.client_cert,
                         "active_requests": self._queues.get(reg, 0)})
        for prefix, target in (self.snapshot.forwards if self.snapshot else []):
            regs.append({"url": str(prefix), "kind": "forward", "pid": None, "uid": None,
                         "user": None, "deliver": str(target), "client_cert": False,
                         "active_requests": 0})
        pool = self.proxy.pool
        return {"pid": os.getpid(), "uid": os.geteuid(), "user": user_name(os.geteuid()),
                "generation": self.snapshot.generation if self.snapshot else None,
                "listeners": sorted(f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                                    for h, p in self.listening_addresses()),
                "registrations": regs, "connections": len(self._connections),
                "active_requests": sum(self._queues.values()), "draining": self.draining,
                "upstream_connects": pool.connects, "upstream_reuses": pool.reuses}

    # -- TLS -----------------------------------------------------------------------------------
    async def tls_handshake(self, tcp: trio.SocketStream, local_ip: str,
                            local_port: int) -> TLSStream:
        """Handshake under the deadline with the certificate chosen by SNI and address."""
        tls = TLSStream(tcp, self._switching_context, server_side=True,
                        local_address=(local_ip, local_port))
        with trio.move_on_after(self.limits.handshake_timeout) as scope:
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.handshakes_failed += 1
                raise ConnectionAbort("Connection_Dropped", f"TLS handshake failed: {exc}")
        if scope.cancelled_caught:
            self.handshakes_failed += 1
            raise ConnectionAbort("Timer_ConnectionIdle", "TLS handshake deadline")
        self.handshakes_ok[tls.tls_version] += 1
        return tls

    # -- listeners and connections ---------------------------------------------------------------
    def _desired_listeners(self) -> set[tuple[str | None, int]]:
        if self.snapshot is None or self.draining:
            return set()
        hosts: list[str | None] = list(self.snapshot.iplisten) or [None]
        return {(host, port) for port in self.snapshot.ports for host in hosts}

    async def _sync_listeners(self) -> None:
        """Close listeners no longer wanted (waiting until their sockets are gone), open new."""
        assert self._nursery is not None
        desired = self._desired_listeners()
        for key in [k for k in self._listeners if k not in desired]:
            listener = self._listeners.pop(key)
            listener.scope.cancel()
            with trio.move_on_after(5):
                await listener.closed.wait()
            self.log.info(f"stopped listening on {key[0] or '*'}:{key[1]}")
        for key in [k for k in self._listen_errors if k not in desired]:
            del self._listen_errors[key]
        for key in sorted(desired - set(self._listeners), key=lambda k: (k[1], k[0] or "")):
            host, port = key
            try:
                sockets = await trio.open_tcp_listeners(port, host=host, backlog=4096)
            except OSError as exc:
                message = f"cannot listen on {host or '*'}:{port}: {exc.strerror or exc}"
                if self._listen_errors.get(key) != message:
                    self.log.info(message)       # retried on every reload tick, logged once
                self._listen_errors[key] = message
                continue
            self._listen_errors.pop(key, None)
            listener = _Listener(host, port, sockets)
            self._listeners[key] = listener
            self._nursery.start_soon(self._accept_loop, listener)
            for address in listener.addresses:
                self.log.info("listening on %s:%s" % address)

    async def _accept_loop(self, listener: _Listener) -> None:
        try:
            with listener.scope:
                async with trio.open_nursery() as nursery:
                    for sock in listener.sockets:
                        nursery.start_soon(self._accept_from, sock)
        finally:
            with trio.CancelScope(shield=True):
                for sock in listener.sockets:
                    await sock.aclose()
            listener.closed.set()

    async def _accept_from(self, sock: trio.SocketListener) -> None:
        assert self._nursery is not None
        while True:
            try:
                tcp = await sock.accept()
            except (OSError, trio.BrokenResourceError) as exc:   # EMFILE and friends
                self.log.info(f"accept failed: {exc}")
                await trio.sleep(0.1)
                continue
            self._nursery.start_soon(self._handle_connection, tcp)

    async def _refuse(self, tcp: trio.SocketStream, reason: str, client_ip: str = "-",
                      client_port: int = 0) -> None:
        self.connections_refused += 1
        self.log.httperr(client_ip=client_ip, client_port=client_port, server_ip="-",
                         server_port=0, version=None, method=None, uri=None, status=None,
                         reason=reason)
        with trio.CancelScope(shield=True):
            try:
                await tcp.aclose()
            except OSError:
                pass

    async def _handle_connection(self, tcp: trio.SocketStream) -> None:
        limits = self.limits
        try:
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            handler = ConnectionHandler(self, tcp)
        except OSError:               # the client is already gone
            with trio.CancelScope(shield=True):
                await tcp.aclose()
            return
        if self.draining:
            await self._refuse(tcp, "Connection_Dropped", handler.remote_ip, handler.remote_port)
            return
        if len(self._connections) >= limits.max_connections:
            await self._refuse(tcp, "ConnLimit", handler.remote_ip, handler.remote_port)
            return
        if self._per_client[handler.remote_ip] >= limits.max_connections_per_client:
            await self._refuse(tcp, "ConnLimit_PerClient", handler.remote_ip,
                               handler.remote_port)
            return
        self.connections_total += 1
        self._connections.add(handler)
        self._per_client[handler.remote_ip] += 1
        try:
            await handler.run()
        except Exception as exc:     # a bug in one connection must never stop the front door
            self.log.info(f"connection {handler.connection_id} from {handler.remote_ip} failed: "
                          f"{exc!r}")
            handler.httperr("Internal")
        finally:
            self._connections.discard(handler)
            self._per_client[handler.remote_ip] -= 1
            if self._per_client[handler.remote_ip] <= 0:
                del self._per_client[handler.remote_ip]

    # -- lifecycle ---------------------------------------------------------------------------------
    async def _reload_loop(self) -> None:
        while True:
            with trio.move_on_after(RELOAD_POLL_SECONDS):
                await self._reload_wanted.wait()
            forced = self._reload_wanted.is_set()
            self._reload_wanted = trio.Event()
            if self.draining:
                continue
            try:
                generation = self.store.generation()
                if forced or self.snapshot is None or generation != self.snapshot.generation:
                    self.reload()
                    await self._sync_listeners()
                    self.log.info(f"configuration generation {generation} applied")
                elif self._listen_errors:
                    await self._sync_listeners()
                await self.proxy.pool.expire(self._delivery_targets())
            except Exception as exc:            # a bad store row must not stop the daemon
                self.log.info(f"reload failed: {exc!r}")

    def _delivery_targets(self) -> set[ForwardTarget]:
        targets = {reg.target for reg in self._live.values()
                   if not isinstance(reg.target, HandlerTarget)}
        if self.snapshot is not None:
            targets.update(target for _prefix, target in self.snapshot.forwards)
        return targets  # type: ignore[return-value]

    async def _signals(self, nursery: trio.Nursery,
                       task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.log.info("SIGHUP: reloading")
                    self.request_reload()
                else:
                    self.log.info(f"{signal.Signals(signum).name}: draining")
                    await self.drain()
                    nursery.cancel_scope.cancel()
                    return

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish until the deadline, then close."""
        self.draining = True
        self.shutdown_event.set()
        for listener in list(self._listeners.values()):
            listener.scope.cancel()
        with trio.move_on_after(5):
            for listener in list(self._listeners.values()):
                await listener.closed.wait()
        self._listeners.clear()
        deadline = trio.current_time() + self.limits.shutdown_deadline
        while self._connections and trio.current_time() < deadline:
            for conn in list(self._connections):
                if not conn.in_request:
                    conn.cancel_scope.cancel()
            await trio.sleep(DRAIN_POLL_SECONDS)
        for conn in list(self._connections):
            conn.cancel_scope.cancel()
        with trio.move_on_after(self.limits.linger + 1):
            while self._connections:
                await trio.sleep(DRAIN_POLL_SECONDS)
        self.log.info("drained")

    async def run(self, *, handle_signals: bool = False,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (or SIGTERM/SIGINT when `handle_signals`)."""
        self.reload()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if handle_signals:
                    await nursery.start(self._signals, nursery)
                if self.control_socket:
                    await nursery.start(ControlServer(self, self.state_dir / SOCKET_NAME).run)
                await self._sync_listeners()
                nursery.start_soon(self._reload_loop)
                self.started.set()
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await self.proxy.pool.aclose()
            self.log.close()
            self.store.close()

    def listening_addresses(self) -> list[tuple[str, int]]:
        return [addr for listener in self._listeners.values() for addr in listener.addresses]


@asynccontextmanager
async def running_front_door(state_dir: str | Path, **kwargs: Any) -> AsyncIterator[FrontDoor]:
    """Run a front door for the duration of a block (tests and embedding)."""
    async with trio.open_nursery() as nursery:
        door = FrontDoor(state_dir, **kwargs)
        await nursery.start(door.run)
        try:
            yield door
        finally:
            nursery.cancel_scope.cancel()


"""The daemon that plays HTTP.sys: listeners, certificates, routes and live registrations.

`FrontDoor.run()` lives in a nursery someone owns. It re-reads the store whenever its generation
changes (or on SIGHUP, or `request_reload()`), so CLI changes reach new connections within a
second while established connections keep what they had. In-process applications register
handlers with `register_handler`; other processes register through `control.ControlServer`.
"""

from __future__ import annotations

import os
import signal
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

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
from .store import SslCertBinding, Store
from .tls import TLSStream
from .tlsconfig import Binding, CertificateSelector, server_context, switching_context
from .upstream import UpstreamPool, UpstreamTarget
from .urlacl import UrlAcl
from .urlprefix import UrlPrefix, parse_prefix
from .winerror import ERROR_FILE_NOT_FOUND, WinError

RELOAD_POLL_SECONDS = 0.5


@dataclass
class Snapshot:
    """What the store said at one generation, turned into ready-to-use objects."""

    generation: int
    limits: Limits
    bindings: list[Any]
    iplisten: list[str]
    reservations: list[tuple[UrlPrefix, UrlAcl]]
    forwards: list[tuple[UrlPrefix, UpstreamTarget]]
    client_cert_ports: set[int] = field(default_factory=set)

    @property
    def ports(self) -> set[int]:
        return {b.key.port for b in self.bindings}


class FrontDoor:
    """The whole front door; one per state directory."""

    def __init__(self, state_dir: str | Path, *, log_echo: Any = None,
                 control_socket: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.store = Store.open(self.state_dir)
        self.certs = CertStore(self.state_dir)
        self.log = FrontDoorLog(self.state_dir / "logs", echo=log_echo)
        self.proxy = ReverseProxy(UpstreamPool())
        self.control_socket = control_socket
        self.snapshot: Snapshot | None = None
        self.routes: RouteTable[Registration] = RouteTable()
        self.selector: CertificateSelector = CertificateSelector([])
        # One base context for every connection; the SNI callback asks the *current* selector,
        # so a reload changes the certificate for new connections only.
        self._switching_context = switching_context(
            lambda sni, ip, port: self.selector.select(sni, ip, port))
        self._live: dict[UrlPrefix, Registration] = {}
        self._context_cache: dict[tuple[str, str, bool, float], Any] = {}
        self._listeners: dict[tuple[str | None, int], trio.CancelScope] = {}
        self._connections: set[ConnectionHandler] = set()
        self._reload_wanted = trio.Event()
        self.draining = False
        self.active_requests = 0
        self.started = trio.Event()
        self.bound_ports: dict[tuple[str | None, int], list[tuple[str, int]]] = {}
        self._nursery: trio.Nursery | None = None
        self.connections_total = 0
        self.handshakes_failed = 0

    # -- configuration ---------------------------------------------------------------------
    @property
    def limits(self) -> Limits:
        return self.snapshot.limits if self.snapshot else Limits()

    def _load_snapshot(self) -> Snapshot:
        stored = self.store.snapshot()
        return Snapshot(generation=stored.generation, limits=stored.limits,
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
        for prefix, target in self.snapshot.forwards:
            try:
                table.register(prefix, Registration(prefix, target, Owner("forward")))
            except WinError as exc:
                self.log.info(f"forward {prefix} skipped: {exc}")
        for prefix, registration in list(self._live.items()):
            try:
                table.register(prefix, registration)
            except WinError as exc:
                self.log.info(f"registration {registration} conflicts with the store: {exc}")
        self.routes = table
        self._rebuild_selector()

    def _client_cert_ports(self) -> set[int]:
        return {reg.prefix.port for reg in self._live.values() if reg.client_cert}

    def _context_for(self, row: SslCertBinding, request_client_cert: bool) -> Any:
        """The server context for one binding, cached until the certificate file changes."""
        assert row.certhash is not None
        cert_path = self.certs.root / row.store_name / f"{row.certhash}.pem"
        try:
            mtime = cert_path.stat().st_mtime_ns
        except OSError:
            mtime = 0
        key = (row.certhash, row.store_name, request_client_cert, mtime)
        ctx = self._context_cache.get(key)
        if ctx is None:
            cert_pem, key_pem = self.certs.load_pair(row.certhash, row.store_name)
            ctx = server_context(cert_pem, key_pem, request_client_cert=request_client_cert)
            self._context_cache[key] = ctx
        return ctx

    def _rebuild_selector(self) -> None:
        assert self.snapshot is not None
        wants = self._client_cert_ports()
        bindings: list[Binding] = []
        for row in self.snapshot.bindings:
            if row.certhash is None:
                continue          # ccs: no central certificate store on Linux yet
            port = row.key.port
            try:
                ctx = self._context_for(row, row.client_cert_negotiation or port in wants)
            except Exception as exc:          # a missing or broken certificate skips one binding
                self.log.info(f"binding {row.key.kind.value}={row.key} unusable: {exc}")
                continue
            kind = row.key.kind.value
            bindings.append(Binding(kind=kind,
                                    ip=row.key.host if kind == "ipport" else None,
                                    hostname=row.key.host if kind == "hostnameport" else None,
                                    port=port, context=ctx))
        self.selector = CertificateSelector(bindings)

    def reload(self) -> None:
        """Re-read the store now (the reload loop does this on every generation change)."""
        self.snapshot = self._load_snapshot()
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
        if client_cert and self.snapshot is not None:
            self._rebuild_selector()
        self.log.info(f"registered {registration}")
        return registration

    def unregister(self, prefix: UrlPrefix, owner: Owner | None = None) -> None:
        registration = self._live.get(prefix)
        if registration is None or (owner is not None and registration.owner != owner):
            raise WinError(ERROR_FILE_NOT_FOUND, f"{prefix} is not registered by this caller")
        del self._live[prefix]
        try:
            self.routes.unregister(prefix)
        except WinError:
            pass
        if registration.client_cert:
            self._rebuild_selector()
        self.log.info(f"unregistered {registration}")

    @asynccontextmanager
    async def register_handler(self, prefix: str | UrlPrefix, handler: Handler, *,
                               name: str = "in-process", client_cert: bool = False,
                               uid: int | None = None) -> AsyncIterator[Registration]:
        """Route `prefix` to `handler` while the block runs; same ACL rules as other callers."""
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

    def servicestate(self) -> dict[str, Any]:
        """Live state for `show servicestate`: listeners, registrations and their owners."""
        regs = []
        for prefix, reg in sorted(self._live.items(), key=lambda kv: str(kv[0])):
            regs.append({"url": str(prefix), "kind": reg.owner.kind, "pid": reg.owner.pid,
                         "uid": reg.owner.uid, "user": reg.owner.user,
                         "deliver": str(reg.target), "client_cert": reg.client_cert})
        for prefix, target in (self.snapshot.forwards if self.snapshot else []):
            regs.append({"url": str(prefix), "kind": "forward", "pid": None, "uid": None,
                         "user": None, "deliver": str(target), "client_cert": False})
        listeners = sorted(f"{host}:{port}" for addrs in self.bound_ports.values()
                           for host, port in addrs)
        return {"pid": os.getpid(), "uid": os.geteuid(), "user": user_name(os.geteuid()),
                "generation": self.snapshot.generation if self.snapshot else None,
                "listeners": listeners, "registrations": regs,
                "connections": len(self._connections), "active_requests": self.active_requests}

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
        return tls

    # -- listeners and connections ---------------------------------------------------------------
    def _desired_listeners(self) -> set[tuple[str | None, int]]:
        assert self.snapshot is not None
        hosts: list[str | None] = list(self.snapshot.iplisten) or [None]
        return {(host, port) for port in self.snapshot.ports for host in hosts}

    async def _listen(self, host: str | None, port: int, scope: trio.CancelScope,
                      task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            try:
                listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
            except OSError as exc:
                self.log.info(f"cannot listen on {host or '*'}:{port}: {exc.strerror or exc}")
                task_status.started()
                return
            self.bound_ports[(host, port)] = [l.socket.getsockname()[:2] for l in listeners]
            for l in listeners:
                self.log.info("listening on %s:%s" % l.socket.getsockname()[:2])
            task_status.started()
            try:
                await trio.serve_listeners(self._handle_connection, listeners)
            finally:
                self.bound_ports.pop((host, port), None)

    async def _sync_listeners(self) -> None:
        assert self._nursery is not None
        desired = self._desired_listeners()
        for key in list(self._listeners):
            if key not in desired:
                self._listeners.pop(key).cancel()
        for key in sorted(desired - set(self._listeners), key=lambda k: (k[1], k[0] or "")):
            scope = trio.CancelScope()
            self._listeners[key] = scope
            await self._nursery.start(self._listen, key[0], key[1], scope)

    async def _handle_connection(self, tcp: trio.SocketStream) -> None:
        limits = self.limits
        if self.draining or len(self._connections) >= limits.max_connections:
            self.log.httperr(client_ip="-", client_port=0, server_ip="-", server_port=0,
                             version=None, method=None, uri=None, status=None,
                             reason="QueueFull")
            await tcp.aclose()
            return
        try:
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            handler = ConnectionHandler(self, tcp)
        except OSError:
            await tcp.aclose()
            return
        per_client = sum(1 for c in self._connections if c.remote_ip == handler.remote_ip)
        if per_client >= limits.max_connections_per_client:
            handler._httperr("Connection_Refused_PerClient")
            await tcp.aclose()
            return
        self.connections_total += 1
        self._connections.add(handler)
        try:
            await handler.run()
        except Exception as exc:     # a bug in one connection must never stop the front door
            self.log.info(f"connection {handler.connection_id} from {handler.remote_ip} failed: "
                          f"{exc!r}")
            handler._httperr("Internal")
        finally:
            self._connections.discard(handler)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def _reload_loop(self) -> None:
        while True:
            with trio.move_on_after(RELOAD_POLL_SECONDS):
                await self._reload_wanted.wait()
            forced = self._reload_wanted.is_set()
            self._reload_wanted = trio.Event()
            try:
                generation = self.store.generation()
                if forced or self.snapshot is None or generation != self.snapshot.generation:
                    self.reload()
                    await self._sync_listeners()
                    self.log.info(f"configuration generation {generation} applied")
            except Exception as exc:            # a bad store row must not stop the daemon
                self.log.info(f"reload failed: {exc!r}")

    async def _signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
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
        for scope in self._listeners.values():
            scope.cancel()
        deadline = trio.current_time() + self.limits.shutdown_deadline
        for conn in list(self._connections):
            if not conn.in_request:
                conn.cancel_scope.cancel()
        while self._connections and trio.current_time() < deadline:
            for conn in list(self._connections):
                if not conn.in_request:
                    conn.cancel_scope.cancel()
            await trio.sleep(0.05)
        for conn in list(self._connections):
            conn.cancel_scope.cancel()

    async def run(self, *, handle_signals: bool = False,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (or SIGTERM when `handle_signals`)."""
        self.reload()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._sync_listeners()
                if self.control_socket:
                    await nursery.start(ControlServer(self, self.state_dir / SOCKET_NAME).run)
                nursery.start_soon(self._reload_loop)
                if handle_signals:
                    nursery.start_soon(self._signals, nursery)
                self.started.set()
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await self.proxy.pool.aclose()
            self.log.close()
            self.store.close()

    def listening_addresses(self) -> list[tuple[str, int]]:
        return [addr for addrs in self.bound_ports.values() for addr in addrs]


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


def iter_registrations(door: FrontDoor) -> Iterable[Registration]:
    return list(door._live.values())

"""`octopus-comms serve`: the comms endpoint and the REST API, behind the HTTP.sys-style front door.

Two ways to sit behind the shared port, with one set of handlers:
- registered: a running `httpsys-emu serve` owns the port; we register our prefixes over its
  control socket (checked against urlacl) and receive requests on our own Unix socket;
- embedded (`--embedded`): the front door runs in this process, same state directory, same rules.
"""

from __future__ import annotations

import functools
import logging
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, quote

import trio

from httpsys_emu import control_client
from httpsys_emu.handlers import HandlerRequest
from httpsys_emu.statedir import StateDirError
from httpsys_emu.store import Store as FrontDoorStore
from httpsys_emu.store import StoreError
from httpsys_emu.urlprefix import parse_prefix
from httpsys_emu.winerror import WinError

from .api import Api, ApiRequest
from .endpoint import CommsEndpoint
from .polling import LiveAgents, TrustedAgent
from .queue import KEEPALIVE_INTERVAL, PendingRequestQueues
from .settings import ServerSettings, load_settings, update_settings
from .store import Store
from .tasks import ScriptTaskRunner

log = logging.getLogger("octopus_comms.server")

SOCKET_NAME = "comms.sock"
MAX_API_BODY = 16 << 20
RECONNECT_SECONDS = 2.0

Handler = Callable[[HandlerRequest], Awaitable[None]]


class ServeError(Exception):
    """The server cannot start; the message is one line for the user."""


@dataclass(frozen=True)
class Route:
    prefix: str
    handler: Handler
    client_cert: bool


def default_web_prefixes(settings: ServerSettings) -> list[str]:
    """`https://+:PORT/api/` on each comms port, plus whatever webListenPrefixes adds."""
    prefixes: list[str] = []
    for comms in settings.comms_listen_websocket:
        p = parse_prefix(comms)
        prefixes.append(f"{p.scheme}://{p.host}:{p.port}/api/")
    for extra in settings.web_listen_prefixes:
        if parse_prefix(extra) not in [parse_prefix(x) for x in prefixes]:
            prefixes.append(extra)
    return prefixes


def binding_thumbprint(store: FrontDoorStore, port: int) -> str | None:
    """The certificate bound to `port` in the front door's configuration (what agents trust)."""
    bindings = [b for b in store.list_sslcerts() if b.key.port == port and b.certhash]
    bindings.sort(key=lambda b: (b.key.kind.value != "ipport",
                                 b.key.host not in ("0.0.0.0", "::")))
    return bindings[0].certhash if bindings else None


class CommsServer:
    """Owns the store, the queues, the task runner and the handlers."""

    def __init__(self, home: Path, state_dir: Path, *, node: str | None = None,
                 keepalive: float = KEEPALIVE_INTERVAL, collection_timeout: float | None = None,
                 comms_prefixes: tuple[str, ...] | None = None) -> None:
        self.home = Path(home)
        self.state_dir = Path(state_dir)
        self.settings = load_settings(self.home)
        # An HA node shares the home (its database) with the others but listens on its own
        # prefix: the override applies to this process only and is not written to server.json.
        self.node_override = comms_prefixes is not None
        if comms_prefixes is not None:
            from dataclasses import replace
            self.settings = replace(self.settings, comms_listen_websocket=comms_prefixes,
                                    web_listen_prefixes=())
        if not self.settings.comms_enabled:
            raise ServeError("the comms listener is off: run `octopus-comms configure "
                             "--commsListenWebSocket https://+:443/OctopusComms` first")
        self.node = node or socket.gethostname()
        self.store = Store.open(self.home)
        self.queues = (PendingRequestQueues(collection_timeout) if collection_timeout
                       else PendingRequestQueues())
        self.live = LiveAgents()
        self.keepalive = keepalive
        self.collection_timeout = collection_timeout
        self.comms_port = parse_prefix(self.settings.comms_listen_websocket[0]).port
        self.front_door_store: FrontDoorStore | None = None
        try:
            self.front_door_store = FrontDoorStore.open(self.state_dir)
            self.thumbprint = binding_thumbprint(self.front_door_store, self.comms_port)
        except (StoreError, StateDirError) as exc:
            log.warning("cannot read the front door's bindings in %s: %s", self.state_dir, exc)
            self.thumbprint = None
        self.runner: ScriptTaskRunner | None = None
        self.api: Api | None = None
        self.endpoint = CommsEndpoint(trust=self.trust, queues=self.queues, live=self.live,
                                      node=self.node, keepalive=keepalive)
        self.registered = trio.Event()
        self._handlers: dict[Any, Handler] = {}
        from .portal import Portal
        self.portal = Portal(self)          # one instance: it holds the login sessions

    # -- trust -------------------------------------------------------------------------------------
    def trust(self, thumbprint: str) -> TrustedAgent | None:
        machine = self.store.trusted_machine(thumbprint)
        if machine is None:
            return None
        return TrustedAgent(machine.id, machine.name, machine.thumbprint, machine.uri or None)

    # -- handlers ---------------------------------------------------------------------------------
    async def api_handler(self, request: HandlerRequest) -> None:
        assert self.api is not None
        info = request.info
        try:
            body = await request.read_body(limit=MAX_API_BODY)
        except ValueError:
            await request.respond(413, [("Content-Type", "text/plain")], b"Request too large\n")
            return
        query = parse_qs(info.query, keep_blank_values=True)
        headers: dict[str, str] = {}
        for name, value in info.headers:
            headers.setdefault(name.lower(), value)
        api_request = ApiRequest(method=info.method, path=quote(info.path, safe="/:@!$&'()*+,;=-._~%"),
                                 query=query, headers=headers, body=body,
                                 client_ip=info.conn.remote_ip)
        response = await trio.to_thread.run_sync(self.api.handle, api_request)
        await request.respond(response.status, list(response.headers),
                              b"" if info.method == "HEAD" else response.body)

    def routes(self) -> list[Route]:
        """What this server serves; built when it starts (see `_start`)."""
        routes = [Route(p, self.endpoint, True) for p in self.settings.comms_listen_websocket]
        routes += [Route(p, self.api_handler, False) for p in default_web_prefixes(self.settings)]
        from .portal import portal_route_prefix
        routes.append(Route(portal_route_prefix(self.settings), self.portal, False))
        return routes

    def _publish_api_url(self) -> None:
        """Record where the API answers, so `octopus-comms script run` finds it from the home."""
        if self.node_override:
            return          # the primary node's address stays the one published
        api = default_web_prefixes(self.settings)[0]
        p = parse_prefix(api)
        host = "localhost" if p.host in ("+", "*") else p.host
        update_settings(self.home, api_url=f"{p.scheme}://{host}:{p.port}/",
                        api_thumbprint=self.thumbprint)

    async def _watch_binding(self) -> None:
        """Follow the front door's certificate: the API's certificate document and the
        published ApiThumbprint must name the certificate agents will see, also after
        `httpsys-emu add sslcert` replaced it."""
        store = self.front_door_store
        if store is None:
            return
        port = self.comms_port
        seen = store.generation()
        while True:
            await trio.sleep(1.0)
            generation = store.generation()       # one small read; the bindings only on change
            if generation == seen:
                continue
            seen = generation
            current = await trio.to_thread.run_sync(binding_thumbprint, store, port)
            if current and current != self.thumbprint:
                log.info("the front door's certificate for port %d is now %s", port, current)
                self.thumbprint = current
                if self.api is not None:
                    self.api.server_thumbprint = current
                self._publish_api_url()

    def _start(self, nursery: trio.Nursery) -> list[Route]:
        """Start the runner and the watchers; the routes, fixed for this run."""
        routes = self.routes()
        self._handlers = {parse_prefix(r.prefix): r.handler for r in routes}
        nursery.start_soon(self._watch_binding)
        self.runner = ScriptTaskRunner(self.store, self.queues, nursery,
                                       collection_timeout=self.collection_timeout)
        self.api = Api(self.store, self.runner, server_thumbprint=self.thumbprint,
                       server_node=self.node)
        self.runner.resume_queued()
        self._publish_api_url()
        return routes

    # -- the two modes ---------------------------------------------------------------------------
    async def run_embedded(self, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                           handle_signals: bool = False) -> None:
        from httpsys_emu.frontdoor import FrontDoor
        async with trio.open_nursery() as nursery, AsyncExitStack() as registrations:
            routes = self._start(nursery)
            door = FrontDoor(self.state_dir)
            await nursery.start(lambda task_status: door.run(handle_signals=handle_signals,
                                                             task_status=task_status))
            for route in routes:
                await registrations.enter_async_context(door.register_handler(
                    route.prefix, route.handler, name=route.prefix,
                    client_cert=route.client_cert))
            log.info("serving %s (embedded front door)", ", ".join(r.prefix for r in routes))
            self.registered.set()
            task_status.started(self)
            await trio.sleep_forever()

    async def run_registered(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from httpsys_emu.appserver import AppServer
        sock_path = self.home / (SOCKET_NAME if not self.node_override
                                 else f"comms-{_safe(self.node)}.sock")
        app = AppServer(self._dispatch, log=lambda m: log.warning("%s", m))
        async with trio.open_nursery() as nursery:
            routes = self._start(nursery)
            await nursery.start(lambda task_status: app.serve_unix(sock_path, mode=0o666,
                                                                   task_status=task_status))
            started = False
            while True:
                try:
                    async with control_client.connect(self.state_dir) as control:
                        for route in routes:
                            try:
                                await control.register(route.prefix,
                                                       deliver=f"unix:{sock_path}",
                                                       client_cert=route.client_cert)
                            except WinError as exc:
                                raise ServeError(_refusal(route.prefix, exc)) from None
                        log.info("registered %s with the front door",
                                 ", ".join(r.prefix for r in routes))
                        self.registered.set()
                        if not started:
                            started = True
                            task_status.started(self)
                        await control.wait_closed()
                        log.warning("the front door went away; registering again when it is back")
                except control_client.ControlUnavailable as exc:
                    if not started:
                        raise ServeError(str(exc)) from None
                    log.info("%s", exc)
                self.registered = trio.Event()
                await trio.sleep(RECONNECT_SECONDS)

    async def _dispatch(self, request: HandlerRequest) -> None:
        """Requests from the front door's forward: pick the handler by the matched prefix."""
        handler = self._handlers.get(request.info.prefix)
        if handler is not None:
            await handler(request)
            return
        await request.respond(404, [("Content-Type", "text/plain")], b"Not Found\n")

    def close(self) -> None:
        self.store.close()
        if self.front_door_store is not None:
            self.front_door_store.close()


def _refusal(prefix: str, exc: WinError) -> str:
    """The front door's refusal as one line, with the fix where there is an obvious one."""
    text = f"the front door refused {prefix}: Error {exc.code}: {exc.message}"
    if exc.code == 5:
        text += (f" Reserve it for this user: httpsys-emu add urlacl url={prefix} "
                 f"user=$(id -un)")
    elif exc.code == 183:
        text += " Another application has registered it."
    return text


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


def serve(home: Path, state_dir: Path, *, embedded: bool, node: str | None = None,
          comms_prefixes: tuple[str, ...] | None = None,
          collection_timeout: float | None = None, metrics_port: int | None = None) -> None:
    """Foreground entry point for the CLI."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    server = CommsServer(home, state_dir, node=node, comms_prefixes=comms_prefixes,
                         collection_timeout=collection_timeout)

    async def main() -> None:
        with trio.open_signal_receiver(15, 2) as signals:
            async with trio.open_nursery() as nursery:
                if embedded:
                    await nursery.start(server.run_embedded)
                else:
                    await nursery.start(server.run_registered)
                if metrics_port is not None:
                    from .metrics import render, serve_metrics
                    await nursery.start(functools.partial(
                        serve_metrics, metrics_port, lambda: render(server),
                        log=lambda m: log.info("%s", m)))
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        # A start-up refusal comes out of the nurseries wrapped: report it as itself.
        matched, _rest = group.split(ServeError)
        while matched is not None and isinstance(matched, BaseExceptionGroup):
            matched = matched.exceptions[0]
        if isinstance(matched, ServeError):
            raise matched from None
        raise
    finally:
        server.close()

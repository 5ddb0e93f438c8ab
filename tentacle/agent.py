"""The whole agent: services, one polling loop per active server × PollingConnectionCount, shutdown.

Why one nursery for the loops and another, outer one for the scripts: scripts outlive the
connection that started them (the server polls their status over later connections), and on
shutdown the loops stop first (each finishes its request in hand, sends END, closes with 1001)
before the scripts' process groups are killed.

Shutdown: `AgentHandle.stop()` (or SIGTERM/SIGINT with `handle_signals=True`) asks every loop to
stop; loops that are still busy after `shutdown_grace` seconds are cancelled (their WebSockets
are still closed with 1001, bounded). A second signal cancels at once.
"""

from __future__ import annotations

import random
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import trio

from httpsys_emu.tlsconfig import client_context
from octopus_comms.halibut.messages import RequestMessage

from . import TentacleError
from .agentlog import LOG_FILE_NAME, AgentLog
from .backoff import BackoffSettings, ReconnectPolicy
from .dispatch import Dispatcher
from .poller import PollerSettings, PollingLoop
from .services import StreamSpool
from .services.capabilities import CapabilitiesService
from .services.files import FileTransferService, PathPolicy
from .services.mutex import IsolationMutexes
from .services.scripts import ScriptRunner, ScriptServiceV1, ScriptServiceV2, Shells
from .services.workspace import Workspaces

if TYPE_CHECKING:
    from .config import TentacleConfig, TrustedServer

__all__ = [
    "ALLOWED_ROOTS_KEY",
    "AgentError",
    "AgentHandle",
    "AgentOptions",
    "active_servers",
    "run_agent",
]

COMMUNICATION_STYLE_ACTIVE = 2
ALLOWED_ROOTS_KEY = "Tentacle.FileTransfer.AllowedRoots"
"""Optional setting: absolute directories (separated by `;` or `:`) that IFileTransferService may
use; default the home and the application directory."""


class AgentError(TentacleError):
    """The agent cannot run with this configuration (e.g. it has no certificate)."""


@dataclass(frozen=True)
class AgentOptions:
    """Tuning the CLI never needs to change (tests shorten the waits)."""

    backoff: BackoffSettings = field(default_factory=BackoffSettings)
    poller: PollerSettings = field(default_factory=PollerSettings)
    shutdown_grace: float = 20.0
    shells: Shells | None = None
    allowed_roots: tuple[Path, ...] | None = None
    log_stream: TextIO | None = sys.stderr


@dataclass
class AgentHandle:
    """What `nursery.start(run_agent, …)` returns: the loops, the runner, and a way to stop."""

    loops: list[PollingLoop]
    runner: ScriptRunner
    log: AgentLog
    stop_requested: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        """Graceful shutdown (see the module docstring)."""
        if not self.stop_requested.is_set():
            self.log.info("Tentacle is stopping")
            self.stop_requested.set()
            for loop in self.loops:
                loop.stop()


def active_servers(config: TentacleConfig, log: AgentLog | None = None) -> list[TrustedServer]:
    """The trusted servers this agent polls: Active, with a wss:// address and a subscription."""
    chosen = []
    for server in config.trusted_servers:
        why = None
        if server.communication_style != COMMUNICATION_STYLE_ACTIVE:
            why = "it is not a polling (Active) server"
        elif not server.address or not server.address.strip().lower().startswith("wss://"):
            why = f"its address {server.address!r} is not a wss:// polling address"
        elif not server.subscription_id:
            why = "it has no subscription id"
        if why is None:
            chosen.append(server)
        elif log is not None:
            log.info(f"not polling trusted server {server.thumbprint}: {why}")
    return chosen


def _allowed_roots(config: TentacleConfig, options: AgentOptions) -> tuple[Path, ...]:
    if options.allowed_roots is not None:
        return options.allowed_roots
    configured = config.extra.get(ALLOWED_ROOTS_KEY, "").replace(";", ":")
    roots = tuple(Path(p) for p in configured.split(":") if p.strip().startswith("/"))
    return roots or (config.home, config.app_dir)


async def run_agent(
    config: TentacleConfig,
    *,
    log_path: Path | None = None,
    task_status: trio.TaskStatus[AgentHandle] = trio.TASK_STATUS_IGNORED,
    handle_signals: bool = False,
    options: AgentOptions = AgentOptions(),
) -> None:
    """Run the agent until cancelled, stopped through its handle, or (with `handle_signals`,
    from the CLI's main thread) SIGTERM/SIGINT."""
    if not config.certificate_pem or not config.private_key_pem:
        raise AgentError("This Tentacle has no certificate; create one with "
                         "'tentacle new-certificate' first.")
    log = AgentLog(log_path or config.home / "Logs" / LOG_FILE_NAME, stream=options.log_stream)
    try:
        context = client_context(config.certificate_pem, config.private_key_pem)
        servers = active_servers(config, log)
        count = max(1, config.polling_connection_count)
        log.info(f"Tentacle {config.instance} starting: certificate {config.thumbprint}, "
                 f"{len(servers)} polling server(s) × {count} connection(s)")
        if not config.no_listen:
            log.info("listening mode is not supported by this agent; polling only")
        async with trio.open_nursery() as scripts_nursery:
            home = config.home
            runner = ScriptRunner(
                Workspaces(home / "Work"),
                IsolationMutexes(),
                scripts_nursery,
                shells=options.shells,
                environment={
                    "TentacleHome": str(home),
                    "TentacleApplications": str(config.app_dir),
                    "TentacleInstanceName": config.instance,
                },
            )

            def report(request: RequestMessage, exc: BaseException) -> None:
                detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                log.error(f"service error in {request.service}.{request.method}: {detail}")

            dispatcher = Dispatcher(
                [
                    ScriptServiceV1(runner),
                    ScriptServiceV2(runner),
                    FileTransferService(PathPolicy(home / "Files", _allowed_roots(config, options))),
                    CapabilitiesService(),
                ],
                on_error=report,
            )
            spool = StreamSpool(home / "Temp" / "Incoming")
            loops = [
                PollingLoop(
                    address=server.address or "",
                    thumbprint=server.thumbprint,
                    subscription_id=server.subscription_id or "",
                    context=context,
                    dispatcher=dispatcher,
                    spool=spool,
                    log=log,
                    policy=ReconnectPolicy(options.backoff, clock=time.monotonic, random=random.random),
                    settings=options.poller,
                    name=(server.address or "") if count == 1 else f"{server.address} #{index + 1}",
                )
                for server in servers
                for index in range(count)
            ]
            handle = AgentHandle(loops, runner, log)
            async with trio.open_nursery() as control:

                async def run_loops() -> None:
                    if not loops:
                        log.warning("no trusted polling server is configured; waiting")
                        await handle.stop_requested.wait()
                    async with trio.open_nursery() as loop_nursery:
                        for loop in loops:
                            loop_nursery.start_soon(loop.run, name=f"poll {loop.name}")
                    control.cancel_scope.cancel()

                async def enforce_deadline() -> None:
                    await handle.stop_requested.wait()
                    await trio.sleep(options.shutdown_grace)
                    log.warning(f"loops still busy after {options.shutdown_grace:g} s: abandoning them")
                    control.cancel_scope.cancel()

                control.start_soon(run_loops)
                control.start_soon(enforce_deadline)
                if handle_signals:
                    control.start_soon(_watch_signals, handle, control.cancel_scope)
                task_status.started(handle)
            scripts_nursery.cancel_scope.cancel()
        log.info("Tentacle stopped")
    finally:
        log.close()


async def _watch_signals(handle: AgentHandle, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if handle.stop_requested.is_set():
                handle.log.warning(f"{name} again: stopping now")
                scope.cancel()
                return
            handle.log.info(f"{name} received")
            handle.stop()

"""`httpsys-emu serve`: run the front door in the foreground until SIGTERM.

Kept apart from the CLI module so that benchmarks and process tests can start the daemon with
`python -m httpsys_emu.serve --state-dir DIR` without going through typer (and set the limits
the store has no row for, such as the drain deadline). Under systemd (`Type=notify`) it reports
readiness once the listeners and the control socket are up.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import trio

from .control import ControlAlreadyRunning
from .frontdoor import FrontDoor
from .metrics import render_metrics
from .metrics_http import MetricsBindRefused, parse_listen, serve_metrics_http
from .sdnotify import notify
from .statedir import ensure_state_dir, resolve_state_dir


class ServeFailure(Exception):
    """The daemon cannot start; one line for the user."""


async def serve(state_dir: Path, *, quiet: bool = False,
                limit_overrides: dict[str, Any] | None = None,
                log_dir: Path | None = None,
                metrics_listen: tuple[str, int] | None = None) -> None:
    """Run until SIGTERM/SIGINT; `metrics_listen` (loopback host, port) adds GET /metrics."""
    door = FrontDoor(state_dir, log_echo=None if quiet else sys.stderr,
                     limit_overrides=limit_overrides, log_dir=log_dir)
    async with trio.open_nursery() as nursery:
        if metrics_listen is not None:
            host, port = metrics_listen
            try:
                await nursery.start(functools.partial(
                    serve_metrics_http, host, port, lambda: render_metrics(door),
                    log=door.log.info))
            except OSError as exc:
                raise ServeFailure(f"cannot listen for metrics on {host}:{port}: "
                                   f"{exc.strerror or exc}") from None

        async def run_door(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await door.run(handle_signals=True, task_status=task_status)
            nursery.cancel_scope.cancel()        # drained: stop the metrics endpoint too

        await nursery.start(run_door)
        addresses = ", ".join(f"{h}:{p}" for h, p in door.listening_addresses())
        notify("READY=1\nSTATUS=" + (f"listening on {addresses}" if addresses
                                     else "running, no listeners yet"))


def _one_line(group: BaseExceptionGroup[Any], kind: type[BaseException]) -> str | None:
    found = group.subgroup(kind)
    if found is None:
        return None
    leaf: BaseException = found
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return str(leaf)


def run(state_dir: str | None, *, quiet: bool = False,
        limit_overrides: dict[str, Any] | None = None, log_dir: str | None = None,
        metrics: str | None = None) -> None:
    """Resolve the directories, run, and turn start-up failures into one line and exit 1.

    `metrics` is `PORT`, `HOST:PORT` or `[V6]:PORT` with a loopback host (default 127.0.0.1).
    """
    path = ensure_state_dir(resolve_state_dir(state_dir))
    try:
        metrics_listen = parse_listen(metrics) if metrics is not None else None
        logs = Path(log_dir) if log_dir else None
        trio.run(lambda: serve(path, quiet=quiet, limit_overrides=limit_overrides,
                               log_dir=logs, metrics_listen=metrics_listen))
    except (ControlAlreadyRunning, ServeFailure, ValueError) as exc:
        sys.stderr.write(f"httpsys-emu: {exc}\n")
        sys.exit(1)
    except OSError as exc:            # e.g. the log directory cannot be created or written
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"httpsys-emu: cannot start: {where}{exc.strerror or exc}\n")
        sys.exit(1)
    except BaseExceptionGroup as group:
        for kind in (ControlAlreadyRunning, ServeFailure, MetricsBindRefused):
            message = _one_line(group, kind)
            if message is not None:
                sys.stderr.write(f"httpsys-emu: {message}\n")
                sys.exit(1)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m httpsys_emu.serve")
    parser.add_argument("--state-dir")
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    parser.add_argument("--drain-seconds", type=float, default=None,
                        help="how long SIGTERM waits for in-flight requests (default 10)")
    parser.add_argument("--log-dir", default=None,
                        help="where access.log and httperr.log go (default <state>/logs)")
    parser.add_argument("--metrics-port", default=None, metavar="[HOST:]PORT",
                        help="serve GET /metrics on this loopback port")
    args = parser.parse_args(argv)
    overrides = {} if args.drain_seconds is None else {"shutdown_deadline": args.drain_seconds}
    run(args.state_dir, quiet=args.quiet, limit_overrides=overrides, log_dir=args.log_dir,
        metrics=args.metrics_port)


if __name__ == "__main__":
    main()

"""`httpsys-emu serve`: run the front door in the foreground until SIGTERM.

Kept apart from the CLI module so that benchmarks and process tests can start the daemon with
`python -m httpsys_emu.serve --state-dir DIR` without going through typer (and set the limits
the store has no row for, such as the drain deadline).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

from .control import ControlAlreadyRunning
from .frontdoor import FrontDoor
from .statedir import ensure_state_dir, resolve_state_dir


async def serve(state_dir: Path, *, quiet: bool = False,
                limit_overrides: dict[str, Any] | None = None) -> None:
    door = FrontDoor(state_dir, log_echo=None if quiet else sys.stderr,
                     limit_overrides=limit_overrides)
    await door.run(handle_signals=True)


def run(state_dir: str | None, *, quiet: bool = False,
        limit_overrides: dict[str, Any] | None = None) -> None:
    path = ensure_state_dir(resolve_state_dir(state_dir))
    try:
        trio.run(lambda: serve(path, quiet=quiet, limit_overrides=limit_overrides))
    except ControlAlreadyRunning as exc:
        sys.stderr.write(f"httpsys-emu: {exc}\n")
        sys.exit(1)
    except BaseExceptionGroup as group:
        already = group.subgroup(ControlAlreadyRunning)
        if already is None:
            raise
        sys.stderr.write(f"httpsys-emu: {already.exceptions[0]}\n")
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m httpsys_emu.serve")
    parser.add_argument("--state-dir")
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    parser.add_argument("--drain-seconds", type=float, default=None,
                        help="how long SIGTERM waits for in-flight requests (default 10)")
    args = parser.parse_args(argv)
    overrides = {} if args.drain_seconds is None else {"shutdown_deadline": args.drain_seconds}
    run(args.state_dir, quiet=args.quiet, limit_overrides=overrides)


if __name__ == "__main__":
    main()

"""`httpsys-emu serve`: run the front door in the foreground until SIGTERM.

Kept apart from the CLI module so that benchmarks and process tests can start the daemon with
`python -m httpsys_emu.serve --state-dir DIR` without going through typer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from .frontdoor import FrontDoor
from .statedir import ensure_state_dir, resolve_state_dir


async def serve(state_dir: Path, *, quiet: bool = False) -> None:
    door = FrontDoor(state_dir, log_echo=None if quiet else sys.stderr)
    await door.run(handle_signals=True)


def run(state_dir: str | None, *, quiet: bool = False) -> None:
    path = ensure_state_dir(resolve_state_dir(state_dir))
    trio.run(lambda: serve(path, quiet=quiet))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m httpsys_emu.serve")
    parser.add_argument("--state-dir")
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    args = parser.parse_args(argv)
    run(args.state_dir, quiet=args.quiet)


if __name__ == "__main__":
    main()

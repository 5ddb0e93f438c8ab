"""The front door with an in-process `200 OK` handler, for the handshake and memory benchmarks.

A static answer without a proxy hop isolates what the front door itself costs per connection
(TLS, head parsing, routing, access log). Run by the benchmarks, pinned with `taskset`:
`python bench/frontdoor_runner.py --state-dir DIR --port PORT`. It serves until SIGTERM/SIGINT.
The state dir must already hold an sslcert binding for the port (see common.FrontDoorState).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

from httpsys_emu.frontdoor import FrontDoor
from httpsys_emu.handlers import HandlerRequest

OK_HEADERS = [("Content-Type", "text/plain")]


async def ok(req: HandlerRequest) -> None:
    """The whole application: 200 OK, two bytes."""
    await req.respond(200, OK_HEADERS, b"ok")


async def serve(state_dir: Path, port: int) -> None:
    door = FrontDoor(state_dir, log_echo=None, control_socket=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(door.run)
        async with door.register_handler(f"https://+:{port}/", ok, name="bench-ok"):
            print(f"ready on {door.listening_addresses()}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _signum in signals:
                    break
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args(argv)
    trio.run(serve, args.state_dir, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make run`: the whole chain on loopback, from nothing, with embedded defaults.

Runs docs/walkthrough.md up to a registered Tentacle that has run a script through the shared
port (steps 1–6), in `./.run/`, then prints where everything is and how to log in, and keeps the
front door, the Octopus server, the site and the Tentacle running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.walkthrough import BIN, REPO, Shell, blocks  # noqa: E402

RUN_DIR = REPO / ".run"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run")
    parser.add_argument("--once", action="store_true",
                        help="stop everything after the summary (used by the tests)")
    parser.add_argument("--dir", type=Path, default=RUN_DIR, help="working directory")
    args = parser.parse_args(argv)
    work: Path = args.dir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    steps = blocks()
    last = max(i for i, (heading, _) in enumerate(steps) if heading.startswith("6."))
    shell = Shell(work)
    password = secrets.token_urlsafe(12)
    try:
        for heading, code in steps[:last + 1]:
            print(f"\n=== {heading} ===", flush=True)
            for line in code.strip().splitlines():
                print(f"$ {line}", flush=True)
            shell.run(code, timeout=180, echo=True)
        shell.run(f"printf '%s\\n' '{password}' | octopus-comms user set-password "
                  "--username admin >/dev/null\n"
                  "PORTAL_KEY=$(octopus-comms apikey create --name portal | tail -n 1)\n")
        api_key = shell.run("echo $PORTAL_KEY").strip()
        print(f"""
=== Everything is up (state in {work}) ===
  Web site (static forward):   https://localhost:8443/
  Friendly page (comms):       https://localhost:8443/OctopusComms
  Tentacles poll:              wss://localhost:8443/OctopusComms
  REST API:                    https://localhost:8443/api
  Portal:                      https://localhost:8443/app/
  Log in as:                   admin / {password}   (or the API key {api_key})
  The certificate is self-signed: accept it in your browser (curl -k).

  Try:  HTTPSYS_EMU_STATE_DIR={work}/state {BIN}/httpsys-emu show servicestate
        OCTOPUS_COMMS_HOME={work}/octopus {BIN}/octopus-comms script run --environment Dev --body 'uptime'
""", flush=True)
        if not args.once:
            print("Press Ctrl-C to stop.", flush=True)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        print("\nStopping...", flush=True)
        try:
            shell.run("tentacle service --instance Tentacle --stop >/dev/null 2>&1 || true\n"
                      "kill $(jobs -p) 2>/dev/null || true\n"
                      "wait", timeout=60)
        except AssertionError:
            pass
        shell.close()


if __name__ == "__main__":
    sys.exit(main())

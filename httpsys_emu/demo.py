"""`make run`: configure the front door the way a user would, through the real CLI.

Each step runs the `httpsys-emu` console script in a subprocess and echoes the command before its
output, like a terminal session, so what you read is exactly what a user sees.
Usage: `python -m httpsys_emu.demo [--state-dir DIR]` (default: a fresh temporary directory).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

APP_ID = "{00112233-4455-6677-8899-aabbccddeeff}"


def cli_command() -> list[str]:
    """The console script next to this interpreter, else `python -m httpsys_emu.cli`."""
    script = Path(sys.executable).parent / "httpsys-emu"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "httpsys_emu.cli"]


class Session:
    """Runs CLI commands against one state directory and prints them like a terminal."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.base = cli_command()

    def run(self, *args: str, check: bool = True) -> str:
        shown = ["httpsys-emu", "--state-dir", str(self.state_dir), *args]
        print(f"$ {shlex.join(shown)}", flush=True)
        result = subprocess.run([*self.base, "--state-dir", str(self.state_dir), *args],
                                capture_output=True, text=True, timeout=60)
        sys.stdout.write(result.stdout)
        sys.stdout.write(result.stderr)
        if not (result.stdout + result.stderr).endswith("\n\n"):
            print()
        sys.stdout.flush()
        if check and result.returncode != 0:
            raise SystemExit(f"demo: command failed with exit status {result.returncode}")
        return result.stdout


def walk_through(session: Session) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    created = session.run("cert", "new", "--subject", "CN=Example Website",
                          "--dns", "localhost")
    thumbprint = created.strip().splitlines()[-1]
    session.run("cert", "list")
    session.run("add", "sslcert", "ipport=0.0.0.0:8443", f"certhash={thumbprint}",
                f"appid={APP_ID}")
    session.run("add", "urlacl", "url=https://+:8443/OctopusComms", f"user={user}")
    session.run("add", "forward", "url=https://+:8443/", "target=http://127.0.0.1:8080")
    session.run("show", "sslcert")
    session.run("show", "urlacl")
    session.run("show", "forward")
    print("# netsh's failures look the same here:")
    session.run("add", "urlacl", "url=https://+:8443/OctopusComms", f"user={user}", check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="state directory to use (default: a new temporary directory)")
    options = parser.parse_args(argv)
    if options.state_dir is not None:
        print(f"# Using state directory {options.state_dir}\n")
        walk_through(Session(options.state_dir))
        return 0
    with tempfile.TemporaryDirectory(prefix="httpsys-emu-demo-") as temp:
        print(f"# Using a temporary state directory {temp} (removed at the end)\n")
        walk_through(Session(Path(temp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

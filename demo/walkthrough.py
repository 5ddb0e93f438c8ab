"""Run the command blocks of docs/walkthrough.md in one long-lived bash, as a user would.

Used by `tests/test_walkthrough.py` (every block, with checks in between) and by `make run`
(`demo/run.py`: the blocks up to a registered, polling Tentacle, then it stays up). One document,
so the README's promise and the test cannot drift apart.
"""

from __future__ import annotations

import os
import re
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "walkthrough.md"
BIN = Path(sys.executable).parent
MARK = "__WALKTHROUGH_BLOCK_DONE__"


def blocks() -> list[tuple[str, str]]:
    """(heading, code) for each sh block, in document order."""
    text = DOC.read_text()
    result: list[tuple[str, str]] = []
    heading = ""
    for part in re.split(r"(^#+ [^\n]*$|```sh\n.*?```)", text, flags=re.M | re.S):
        if part.startswith("#"):
            heading = part.lstrip("# ").strip()
        elif part.startswith("```sh"):
            result.append((heading, part[len("```sh\n"):-3]))
    return result


class Shell:
    """One bash, fed block by block; output collected per block."""

    def __init__(self, cwd: Path) -> None:
        env = dict(os.environ)
        env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
        env.pop("HTTPSYS_EMU_STATE_DIR", None)
        env.pop("OCTOPUS_COMMS_HOME", None)
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     start_new_session=True)
        self.transcript: list[str] = []
        # One reader thread owns the pipe; select() on a buffered text stream would miss
        # lines already read into Python's buffer (two lines arriving in one chunk).
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")        # end of output: the shell died

    def run(self, code: str, timeout: float = 120, echo: bool = False) -> str:
        assert self.proc.stdin and self.proc.stdout
        # Each block runs with errexit in a subshell-free way: stop at the first failing
        # command and report its status, but keep the shell (and its jobs) alive.
        script = ("set -o pipefail\n__rc=0\n"
                  + "".join(f"{{ {line}\n}} || {{ __rc=$?; echo \"FAILED($__rc): {_quote(line)}\"; }}\n"
                            if line.strip() and not line.lstrip().startswith("#") and
                            "__rc" not in line else "" for line in _commands(code))
                  + f"echo {MARK} $__rc\n")
        self.proc.stdin.write(script)
        self.proc.stdin.flush()
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError(f"block timed out:\n{code}\n--- output so far ---\n"
                                     + "".join(lines)) from None
            if not line:
                raise AssertionError("the shell died:\n" + "".join(lines))
            if echo and not line.startswith(MARK):
                sys.stdout.write(line)
                sys.stdout.flush()
            if line.startswith(MARK):
                rc = int(line.split()[1])
                output = "".join(lines)
                self.transcript.append(f"$ {code}\n{output}")
                assert rc == 0 and "FAILED(" not in output, f"block failed:\n{code}\n{output}"
                return output
            lines.append(line)

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def _commands(code: str) -> list[str]:
    """Lines joined across backslash continuations."""
    out: list[str] = []
    pending = ""
    for line in code.splitlines():
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def _quote(line: str) -> str:
    return line.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")

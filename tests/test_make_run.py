"""`make run`'s chain (demo/run.py --once): it ends with the URLs, the credentials to log in and a
script already run through a polling Tentacle."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_run_brings_up_the_whole_chain(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "demo" / "run.py"), "--once",
                             "--dir", str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"\[Run script on web01\] Hello from \S+", out)
    assert "Friendly page (comms):       https://localhost:8443/OctopusComms" in out
    assert "Portal:                      https://localhost:8443/app/" in out
    assert re.search(r"Log in as:\s+admin / \S+\s+\(or the API key API-[A-Z0-9]{26}\)", out)
    # everything it started is stopped again: nothing listens on the shared port any more
    import socket
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", 8443)) != 0

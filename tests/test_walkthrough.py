"""docs/walkthrough.md, run exactly as written, in order, in one shell.

Each ```sh block of the document is sent to one long-lived bash (so variables and background
jobs carry from block to block, as in a user's terminal), with `set -e` semantics per block and a
deadline. Between blocks the test checks what the user would check; at step 5 it opens the
friendly page in headless Chromium. Real processes throughout: the front door, the comms server
(two nodes), the tentacle service, curl.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from demo.walkthrough import Shell, blocks


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def open_in_browser(url: str, tmp: Path) -> tuple[str, Path]:
    """The page's DOM and a screenshot, from headless Chromium (Debian's package)."""
    exe = chromium()
    assert exe, "Chromium is required (apt-get install chromium); .ci/run installs it"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--ignore-certificate-errors", f"--user-data-dir={tmp / 'chromium-profile'}"]
    dom = subprocess.run([exe, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=60)
    shot = tmp / "friendly-page.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1024,600", url],
                   capture_output=True, timeout=60)
    return dom.stdout, shot


@pytest.mark.slow
def test_walkthrough(tmp_path: Path) -> None:
    steps = blocks()
    assert len(steps) >= 10, "the document lost its command blocks"
    shell = Shell(tmp_path)
    log = tmp_path / "tentacle" / "Logs" / "OctopusTentacle.txt"
    try:
        outputs = []
        for heading, code in steps:
            outputs.append((heading, shell.run(code)))
            out = outputs[-1][1]
            if heading.startswith("1."):
                thumb = re.search(r"Thumbprint: ([0-9A-F]{40})", out)
                assert thumb, out
            elif heading.startswith("2."):
                assert "SSL Certificate successfully added" in out
                assert "IP address successfully added" in out
                assert thumb.group(1) in out.replace(" ", "").upper() or \
                    thumb.group(1).lower() in out.lower()
            elif heading.startswith("3."):
                assert "URL reservation successfully added" in out
                assert "<h1>Our web site</h1>" in out          # the site, through the forward
            elif heading.startswith("4."):
                assert "HTTPS://+:8443/OCTOPUSCOMMS/" in out    # registered by octopus-comms
            elif heading.startswith("5."):
                assert "<title>Octopus Server configured successfully</title>" in out
                dom, shot = open_in_browser("https://localhost:8443/OctopusComms", tmp_path)
                assert "<title>Octopus Server configured successfully</title>" in dom
                data = shot.read_bytes()
                assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
            elif heading.startswith("6."):
                assert "Machine web01 registered with id: Machines-" in out
                assert re.search(r"Hello from \S+", out), out
            elif heading == "Changing an existing Tentacle":
                assert "Removing all trusted Octopus Servers" in out
                assert "Machine web01 updated with id:" in out
                assert "poll://" in out
            elif heading.startswith("A second server node"):
                assert "polled over HA" in out
                text = log.read_text()
                assert "[wss://localhost:8443/OctopusComms] polling as" in text
                assert "[wss://localhost:8444/OctopusComms] polling as" in text
            elif heading.startswith("7."):
                if "NEW_THUMBPRINT" in code:
                    assert 'closed with 1002 "Certificate thumbprint not recognised"' in out
            elif heading == "The fix is":
                pass
        final = outputs[-2][1]          # the block before "Cleaning up"
        assert "trusted again" in final
    finally:
        try:
            shell.run("tentacle service --instance Tentacle --stop || true\n"
                      "kill $(jobs -p) 2>/dev/null || true", timeout=30)
        except AssertionError:
            pass
        shell.close()
        (tmp_path / "transcript.txt").write_text("\n".join(shell.transcript))

"""Tell systemd the daemon is ready (`Type=notify`), without libsystemd.

Why: with `Type=notify` a unit ordered `After=httpsys-emu.service` starts only once the front
door listens and its control socket accepts registrations, so `octopus-comms serve` does not
race it at boot. The protocol is one datagram of `KEY=VALUE` lines to `$NOTIFY_SOCKET`; outside
systemd the variable is unset and this does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

ENV_VAR = "NOTIFY_SOCKET"


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager; False when there is none or the
    socket cannot be reached (readiness is advisory: never fail the daemon over it)."""
    env = os.environ if environ is None else environ
    path = env.get(ENV_VAR, "")
    if not path or not (path.startswith("/") or path.startswith("@")):
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True

"""`show servicestate`: the live registrations of a running front door, laid out like netsh's.

Pure formatting of the dictionary the daemon returns over the control socket
(`FrontDoor.servicestate()`), so the layout is tested without a daemon.
"""

from __future__ import annotations

import os
from typing import Any


def _image(pid: int | None) -> str:
    if pid is None:
        return "-"
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "?"


def format_servicestate(state: dict[str, Any]) -> str:
    """Server sessions (one per owner) with URL groups and `Registered URLs:` upper-cased, then
    request queues with their processes, as `netsh http show servicestate` prints them."""
    lines = ["Snapshot of HTTP service state (Server Session View): ",
             "----------------------------------------------------- ", ""]
    lines.append(f"Front door: pid {state.get('pid')}, user {state.get('user')}, "
                 f"configuration generation {state.get('generation')}")
    lines.append("    Listening on: " + (", ".join(state.get("listeners") or []) or "(none)"))
    lines.append(f"    Open connections: {state.get('connections', 0)}, "
                 f"active requests: {state.get('active_requests', 0)}"
                 + (", draining" if state.get("draining") else ""))
    if "upstream_connects" in state:
        lines.append(f"    Upstream connections: {state.get('upstream_connects', 0)} opened, "
                     f"{state.get('upstream_reuses', 0)} reused")
    lines.append("")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for reg in state.get("registrations") or []:
        key = (reg.get("kind"), reg.get("pid"), reg.get("uid"), reg.get("deliver")
               if reg.get("kind") == "forward" else None)
        groups.setdefault(key, []).append(reg)
    for number, ((kind, pid, uid, _), regs) in enumerate(sorted(
            groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])), start=1):
        lines.append(f"Server session ID: FF{number:014X}")
        lines.append("    Version: 2.0")
        lines.append("    State: Active")
        lines.append(f"    Owner: {kind}" + (f", pid {pid}, uid {uid} ({regs[0].get('user')})"
                                             if kind != "forward" else ""))
        lines.append("    URL groups:")
        lines.append(f"    URL group ID: FE{number:014X}")
        lines.append("        State: Active")
        lines.append(f"        Number of registered URLs: {len(regs)}")
        lines.append("        Registered URLs:")
        for reg in regs:
            extra = " (client certificate)" if reg.get("client_cert") else ""
            lines.append(f"            {str(reg.get('url')).upper()} -> {reg.get('deliver')}"
                         + extra)
        lines.append("")
    lines.append("Request queues:")
    for number, ((kind, pid, uid, _), regs) in enumerate(sorted(
            groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])), start=1):
        lines.append("    Request queue name: Request queue is unnamed.")
        lines.append("        Version: 2.0")
        lines.append("        State: Active")
        lines.append("        Request queue 503 verbosity level: Basic")
        lines.append("        Max requests: 1000")
        if kind == "forward":
            lines.append("        Number of active processes attached: 0")
            lines.append(f"        Static forward to: {regs[0].get('deliver')}")
        else:
            lines.append("        Number of active processes attached: 1")
            lines.append("        Processes:")
            lines.append(f"            ID: {pid}, image: {_image(pid)}")
        lines.append(f"        Registered URLs: {', '.join(str(r.get('url')).upper() for r in regs)}")
        lines.append("")
    return "\n".join(lines)

"""`octopus-comms script run`: an AdHocScript task through the REST API, its log streamed live.

It talks to the API like any client (so it works against a real Octopus Server too, given
`--server` and `--apikey`); from the server's home it finds the API address and the certificate
thumbprint to pin in `server.json`, and makes itself a temporary API key in the home's store.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import trio

from tentacle.octopus_api import OctopusClient, TlsPolicy, get_link, get_member

POLL_SECONDS = 0.5
EXIT_CODE_LINE = re.compile(r"^Exit code: (-?\d+)$")


class ScriptRunError(Exception):
    """The task could not be created or followed; one line for the user."""


@dataclass(frozen=True)
class ScriptRequest:
    body: str
    syntax: str = "Bash"
    environments: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    machines: tuple[str, ...] = ()
    space: str = "Spaces-1"


def _by_name(items: list[Any], wanted: str, kind: str) -> str:
    for item in items:
        for key in ("Id", "Name", "Slug"):
            value = get_member(item, key)
            if isinstance(value, str) and value.lower() == wanted.lower():
                return str(get_member(item, "Id"))
    raise ScriptRunError(f"no {kind} named {wanted!r}")


class LogFollower:
    """Prints each log element of a task's details once, in order, as it appears."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: dict[str, int] = {}
        self.exit_codes: list[int] = []

    def _walk(self, activity: Any, machine: str | None) -> None:
        name = get_member(activity, "Name") or ""
        key = str(get_member(activity, "Id") or name)
        elements = get_member(activity, "LogElements") or []
        start = self.seen.get(key, 0)
        for element in elements[start:]:
            text = str(get_member(element, "MessageText") or "")
            category = str(get_member(element, "Category") or "Info")
            prefix = f"[{name}] " if machine is None and name else ""
            stream = sys.stderr if category in ("Error", "Fatal") else self.out
            for line in text.splitlines() or [""]:
                stream.write(f"{prefix}{line}\n")
                match = EXIT_CODE_LINE.match(line.strip())
                if match:
                    self.exit_codes.append(int(match.group(1)))
            stream.flush()
        self.seen[key] = len(elements)
        for child in get_member(activity, "Children") or []:
            self._walk(child, None)

    def feed(self, details: Any) -> None:
        for activity in get_member(details, "ActivityLogs") or []:
            self._walk(activity, None)


async def run_script(client: OctopusClient, request: ScriptRequest, out: TextIO = sys.stdout,
                     announce: Callable[[str], None] | None = None) -> int:
    """Create the task, follow it to the end; the exit code to return to the shell."""
    space_home = f"/api/{request.space}"
    environment_ids: list[str] = []
    if request.environments:
        envs = await client.get_all_pages(f"{space_home}/environments")
        environment_ids = [_by_name(envs, e, "environment") for e in request.environments]
    machine_ids: list[str] = []
    if request.machines:
        machines = await client.get_all_pages(f"{space_home}/machines")
        machine_ids = [_by_name(machines, m, "machine") for m in request.machines]
    task = await client.post(f"{space_home}/tasks", {
        "Name": "AdHocScript", "Description": "Script run from octopus-comms",
        "Arguments": {"EnvironmentIds": environment_ids, "TargetRoles": list(request.roles),
                      "MachineIds": machine_ids, "ScriptBody": request.body,
                      "Syntax": request.syntax}})
    task_id = str(get_member(task, "Id"))
    if announce:
        announce(f"Task {task_id} queued")
    follower = LogFollower(out)
    details_link = get_link(task, "Details") or f"/api/tasks/{task_id}/details"
    while True:
        details = await client.get(details_link, {"verbose": "true"})
        follower.feed(details)
        state = get_member(get_member(details, "Task"), "State")
        if get_member(get_member(details, "Task"), "IsCompleted"):
            break
        await trio.sleep(POLL_SECONDS)
    if announce:
        announce(f"Task {task_id} finished: {state}")
    if state == "Success":
        return 0
    nonzero = [code for code in follower.exit_codes if code != 0]
    return nonzero[0] if nonzero else 1


def client_from_home(home: Any) -> tuple[OctopusClient, Callable[[], None]]:
    """A client for the server whose home this is, with a temporary API key (and its cleanup)."""
    from . import auth
    from .settings import load_settings
    from .store import Store
    settings = load_settings(home)
    if not settings.api_url:
        raise ScriptRunError("the server at this home has not been started yet "
                             "(no ApiUrl in server.json); start `octopus-comms serve` or use "
                             "--server and --apikey")
    store = Store.open(home)
    try:
        record, key = auth.create_api_key(store, "octopus-comms script run (temporary)")
    finally:
        store.close()
    policy = (TlsPolicy.pinned([settings.api_thumbprint]) if settings.api_thumbprint
              else TlsPolicy.system())

    def cleanup() -> None:
        s = Store.open(home)
        try:
            s.delete_api_key(record.id)
        finally:
            s.close()
    return OctopusClient(settings.api_url, key, policy=policy), cleanup

"""IScriptService and IScriptServiceV2: run bash (or pwsh) scripts, one script runner for both.

Why one runner: both contracts start, watch, cancel and clean up the same kind of script; only
the message shapes differ (V1: the agent picks the ticket and StartScript returns it; V2: the
server picks the ticket, which is the idempotency key, and StartScript may wait for the end).

Each script: a workspace `<home>/Work/<ticket>` with `Script.sh` (or `Script.ps1`), its files and
its log; the isolation mutex (FullIsolation = exclusive); then the shell as a trio subprocess in a
session of its own (so CancelScript can kill the whole process group) with stdout and stderr read
line by line, concurrently, into the log with sequence numbers and UTC timestamps.

Exit codes other than the script's own are the real Tentacle's `ScriptExitCodes`:
-41 fatal (the agent failed), -42 the shell could not be started (e.g. no pwsh), -43 canceled,
-44 timed out waiting for the isolation mutex, -45 unknown ticket, -46 the result is unknown
(the agent restarted while the script ran, or it was already completed and forgotten).
A script killed by a signal it did not ask for reports 128 + signal, as shells do.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import signal
import subprocess
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from octopus_comms.halibut.contracts import (
    CancelScriptCommand,
    CancelScriptCommandV2,
    CompleteScriptCommand,
    CompleteScriptCommandV2,
    ProcessOutput,
    ProcessOutputSource,
    ProcessState,
    ScriptFile,
    ScriptIsolationLevel,
    ScriptStatusRequest,
    ScriptStatusRequestV2,
    ScriptStatusResponse,
    ScriptStatusResponseV2,
    ScriptTicket,
    ScriptType,
    StartScriptCommand,
    StartScriptCommandV2,
)

from . import Call, Operation, ReceivedStream, ServiceError
from .mutex import IsolationMutexes, MutexTimeout
from .workspace import ScriptRecord, Workspace, Workspaces

__all__ = [
    "CANCELED_EXIT_CODE",
    "FATAL_EXIT_CODE",
    "SHELL_ERROR_EXIT_CODE",
    "TIMEOUT_EXIT_CODE",
    "UNKNOWN_RESULT_EXIT_CODE",
    "UNKNOWN_SCRIPT_EXIT_CODE",
    "ScriptRunner",
    "ScriptServiceV1",
    "ScriptServiceV2",
    "ScriptSpec",
    "ScriptStatus",
    "Shells",
]

FATAL_EXIT_CODE = -41
SHELL_ERROR_EXIT_CODE = -42
CANCELED_EXIT_CODE = -43
TIMEOUT_EXIT_CODE = -44
UNKNOWN_SCRIPT_EXIT_CODE = -45
UNKNOWN_RESULT_EXIT_CODE = -46

CANCELED_MESSAGE = "Script execution canceled."
TIMED_OUT_MESSAGE = "Script execution timed out."
NO_PWSH_MESSAGE = (
    "This script is PowerShell, but PowerShell (pwsh) is not installed on this Linux machine. "
    "Install PowerShell 7 (https://aka.ms/install-powershell) or send the script as Bash."
)

MAX_WAIT_FOR_FINISH = 600.0
"""Cap on a V2 StartScript's DurationToWaitForScriptToFinish (the connection is busy meanwhile)."""
CANCEL_WAIT = 5.0
"""How long CancelScript/CompleteScript wait for a killed script to be reaped."""
OUTPUT_GRACE = 2.0
"""After the shell exits, how long to keep reading output that background children still write."""
READ_SIZE = 65536
MAX_LINE_BYTES = 64 * 1024

Clock = Callable[[], _dt.datetime]


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class Shells:
    """Where the shells are; `pwsh=None`: PowerShell scripts fail with a clear message."""

    bash: str = "/bin/bash"
    pwsh: str | None = None

    @classmethod
    def detect(cls) -> Shells:
        return cls(bash=shutil.which("bash") or "/bin/bash", pwsh=shutil.which("pwsh"))


@dataclass(frozen=True)
class ScriptSpec:
    """A script to run, whichever contract asked for it."""

    ticket: str
    task_id: str
    body: str
    syntax: ScriptType
    arguments: tuple[str, ...] = ()
    files: tuple[tuple[str, ReceivedStream, str | None], ...] = ()
    isolation: ScriptIsolationLevel = ScriptIsolationLevel.NoIsolation
    mutex_name: str | None = None
    mutex_timeout: float = 2**31 / 1000


@dataclass(frozen=True)
class ScriptStatus:
    """State, exit code and the log lines after a sequence number."""

    ticket: str
    logs: list[ProcessOutput]
    next_log_sequence: int
    state: ProcessState
    exit_code: int


@dataclass(eq=False)
class RunningScript:
    """A script this agent started (until CompleteScript forgets it)."""

    ticket: str
    task_id: str
    workspace: Workspace
    state: ProcessState = ProcessState.Pending
    exit_code: int = 0
    pid: int | None = None
    done: trio.Event = field(default_factory=trio.Event)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class _LaunchError(Exception):
    """The shell could not be started; the message goes to the script's stderr log."""


def choose_script(body: str, scripts: Mapping[ScriptType | int, str]) -> tuple[ScriptType, str]:
    """An explicit `Scripts` entry says the syntax: Bash if there is one, else PowerShell;
    without entries `ScriptBody` runs as Bash (the real Linux Tentacle's default)."""
    typed: dict[ScriptType, str] = {}
    for key, value in scripts.items():
        try:
            typed[ScriptType(int(key))] = value
        except ValueError:
            continue
    if ScriptType.Bash in typed:
        return ScriptType.Bash, typed[ScriptType.Bash]
    if ScriptType.PowerShell in typed:
        return ScriptType.PowerShell, typed[ScriptType.PowerShell]
    return ScriptType.Bash, body


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ScriptRunner:
    """Starts scripts in `nursery`, keeps their state, answers status, cancels, cleans up."""

    def __init__(
        self,
        workspaces: Workspaces,
        mutexes: IsolationMutexes,
        nursery: trio.Nursery,
        *,
        shells: Shells | None = None,
        environment: Mapping[str, str] | None = None,
        clock: Clock = _utcnow,
        output_grace: float = OUTPUT_GRACE,
        remember_completed: int = 4096,
        max_read_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.workspaces = workspaces
        self.mutexes = mutexes
        self.nursery = nursery
        self.shells = shells if shells is not None else Shells.detect()
        self.environment = dict(environment or {})
        self.clock = clock
        self.output_grace = output_grace
        self.max_read_bytes = max_read_bytes
        self._scripts: dict[str, RunningScript] = {}
        self._completed: OrderedDict[str, None] = OrderedDict()
        self._remember = remember_completed

    # -- queries ----------------------------------------------------------------------------

    def get(self, ticket: str) -> RunningScript | None:
        return self._scripts.get(ticket)

    def known(self, ticket: str) -> bool:
        """Started before (running, finished, or completed and forgotten)."""
        if ticket in self._scripts or ticket in self._completed:
            return True
        workspace = self.workspaces.existing(ticket)
        return workspace is not None and workspace.read_record() is not None

    def status(self, ticket: str, after: int) -> ScriptStatus:
        """Logs after sequence `after`; a script is reported Complete only once all its logs
        have been read (large logs come in several pieces)."""
        script = self._scripts.get(ticket)
        if script is not None:
            state, exit_code = script.state, script.exit_code
            logs, next_sequence, everything = script.workspace.log.read(after, max_bytes=self.max_read_bytes)
            if state is ProcessState.Complete and not everything:
                state, exit_code = ProcessState.Running, 0
            return ScriptStatus(ticket, logs, next_sequence, state, exit_code)
        workspace = self.workspaces.existing(ticket)
        record = workspace.read_record() if workspace is not None else None
        if workspace is None or record is None:
            exit_code = UNKNOWN_RESULT_EXIT_CODE if ticket in self._completed else UNKNOWN_SCRIPT_EXIT_CODE
            return ScriptStatus(ticket, [], max(after, 0), ProcessState.Complete, exit_code)
        logs, next_sequence, everything = workspace.log.read(after, max_bytes=self.max_read_bytes)
        workspace.log.close()
        if not everything:
            return ScriptStatus(ticket, logs, next_sequence, ProcessState.Running, 0)
        exit_code = record.exit_code if record.completed and record.exit_code is not None else UNKNOWN_RESULT_EXIT_CODE
        return ScriptStatus(ticket, logs, next_sequence, ProcessState.Complete, exit_code)

    # -- commands ---------------------------------------------------------------------------

    def start(self, ticket: str, make_spec: Callable[[], ScriptSpec]) -> bool:
        """Start the script for `ticket` unless that ticket was seen before (then False: never
        run a ticket twice). Synchronous, so two requests for one ticket cannot both start it."""
        if self.known(ticket):
            return False
        spec = make_spec()
        workspace = self.workspaces.create(ticket)
        try:
            for name, received, password in spec.files:
                workspace.save_file(name, received, password)
            workspace.write_record(ScriptRecord(ticket, completed=False, exit_code=None))
        except BaseException:
            workspace.delete()
            raise
        script = RunningScript(ticket, spec.task_id or ticket, workspace)
        self._scripts[ticket] = script
        self.nursery.start_soon(self._execute, script, spec, name=f"script {ticket}")
        return True

    async def wait(self, ticket: str, seconds: float) -> None:
        """Wait up to `seconds` for the script to complete."""
        script = self._scripts.get(ticket)
        if script is None or seconds <= 0:
            return
        with trio.move_on_after(seconds):
            await script.done.wait()

    async def cancel(self, ticket: str, *, wait: float = CANCEL_WAIT) -> None:
        """Kill the script's whole process group (or stop its wait for the mutex)."""
        script = self._scripts.get(ticket)
        if script is None:
            return
        script.cancel_scope.cancel()
        with trio.move_on_after(wait):
            await script.done.wait()

    async def complete(self, ticket: str) -> None:
        """Forget the ticket and delete its workspace (a script still running is killed)."""
        script = self._scripts.get(ticket)
        if script is not None and not script.done.is_set():
            await self.cancel(ticket)
        script = self._scripts.pop(ticket, None)
        workspace = script.workspace if script is not None else self.workspaces.existing(ticket)
        if workspace is not None:
            workspace.delete()
        self._completed[ticket] = None
        while len(self._completed) > self._remember:
            self._completed.popitem(last=False)

    # -- running ----------------------------------------------------------------------------

    def _write(self, script: RunningScript, source: ProcessOutputSource, text: str) -> None:
        script.workspace.log.append(source, text, self.clock())

    async def _execute(self, script: RunningScript, spec: ScriptSpec) -> None:
        exit_code = FATAL_EXIT_CODE
        finished = False
        try:
            with script.cancel_scope:
                try:
                    lock = self.mutexes.get(spec.mutex_name)
                    exclusive = spec.isolation == ScriptIsolationLevel.FullIsolation
                    async with lock.hold(
                        script.task_id,
                        exclusive=exclusive,
                        timeout=spec.mutex_timeout,
                        on_message=lambda m: self._write(script, ProcessOutputSource.StdOut, m),
                    ):
                        script.state = ProcessState.Running
                        exit_code = await self._run_shell(script, spec)
                except MutexTimeout:
                    self._write(script, ProcessOutputSource.StdOut, TIMED_OUT_MESSAGE)
                    exit_code = TIMEOUT_EXIT_CODE
            if script.cancel_scope.cancelled_caught:
                self._write(script, ProcessOutputSource.StdOut, CANCELED_MESSAGE)
                exit_code = CANCELED_EXIT_CODE
            finished = True
        except Exception as exc:  # the agent failed (disk full, …): the script's result is fatal
            try:
                self._write(script, ProcessOutputSource.StdErr, f"The Tentacle failed to run the script: {exc}")
            except Exception:
                pass
            exit_code = FATAL_EXIT_CODE
            finished = True
        finally:
            script.exit_code = exit_code
            script.state = ProcessState.Complete
            if finished:  # not when the agent itself is stopping: the result is then unknown
                try:
                    script.workspace.write_record(ScriptRecord(script.ticket, True, exit_code))
                except OSError:
                    pass
            script.done.set()

    def _command(self, spec: ScriptSpec, workspace: Workspace) -> list[str]:
        if spec.syntax == ScriptType.PowerShell:
            if not self.shells.pwsh:
                raise _LaunchError(NO_PWSH_MESSAGE)
            path = workspace.write_text("Script.ps1", spec.body)
            return [self.shells.pwsh, "-NoLogo", "-NonInteractive", "-NoProfile",
                    "-ExecutionPolicy", "Unrestricted", "-File", str(path), *spec.arguments]
        path = workspace.write_text("Script.sh", spec.body)
        return [self.shells.bash, str(path), *spec.arguments]

    async def _run_shell(self, script: RunningScript, spec: ScriptSpec) -> int:
        try:
            argv = self._command(spec, script.workspace)
            env = {**os.environ, **self.environment}
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(script.workspace.directory),
                env=env,
                start_new_session=True,
            )
        except _LaunchError as exc:
            self._write(script, ProcessOutputSource.StdErr, str(exc))
            return SHELL_ERROR_EXIT_CODE
        except OSError as exc:
            shell = spec.syntax.name
            self._write(script, ProcessOutputSource.StdErr,
                        f"An exception was thrown when invoking {shell}: {exc}")
            return SHELL_ERROR_EXIT_CODE
        script.pid = process.pid
        assert process.stdout is not None and process.stderr is not None
        try:
            async with trio.open_nursery() as readers:
                drained = [trio.Event(), trio.Event()]
                readers.start_soon(self._pump, process.stdout, ProcessOutputSource.StdOut, script, drained[0])
                readers.start_soon(self._pump, process.stderr, ProcessOutputSource.StdErr, script, drained[1])
                await process.wait()
                with trio.move_on_after(self.output_grace):
                    for event in drained:
                        await event.wait()
                readers.cancel_scope.cancel()
        except BaseException:
            _kill_group(process.pid)
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_WAIT):
                await process.wait()
            raise
        finally:
            with trio.CancelScope(shield=True):
                for pipe in (process.stdout, process.stderr):
                    await pipe.aclose()
        assert process.returncode is not None
        return _exit_code(process.returncode)

    async def _pump(
        self,
        pipe: trio.abc.ReceiveStream,
        source: ProcessOutputSource,
        script: RunningScript,
        drained: trio.Event,
    ) -> None:
        """Read a pipe to its end, one log line per output line."""
        pending = b""
        try:
            while True:
                try:
                    data = await pipe.receive_some(READ_SIZE)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._emit(script, source, line)
                while len(pending) > MAX_LINE_BYTES:
                    self._emit(script, source, pending[:MAX_LINE_BYTES])
                    pending = pending[MAX_LINE_BYTES:]
        finally:
            if pending:
                self._emit(script, source, pending)
            drained.set()

    def _emit(self, script: RunningScript, source: ProcessOutputSource, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        self._write(script, source, raw.decode("utf-8", "replace"))


# -- the two contracts ----------------------------------------------------------------------------


def _seconds(value: _dt.timedelta | None) -> float:
    return max(0.0, value.total_seconds()) if value is not None else 0.0


def _spec(
    ticket: str,
    command: StartScriptCommand | StartScriptCommandV2,
    call: Call,
) -> ScriptSpec:
    syntax, body = choose_script(command.script_body or "", command.scripts or {})
    files: list[tuple[str, ReceivedStream, str | None]] = []
    for item in command.files or []:
        if not isinstance(item, ScriptFile):
            raise ServiceError("a script file entry was not a ScriptFile")
        files.append((item.name, call.take(item.contents), item.encryption_password))
    return ScriptSpec(
        ticket=ticket,
        task_id=command.task_id or ticket,
        body=body,
        syntax=syntax,
        arguments=tuple(str(a) for a in command.arguments or []),
        files=tuple(files),
        isolation=ScriptIsolationLevel(int(command.isolation)),
        mutex_name=command.isolation_mutex_name,
        mutex_timeout=_seconds(command.script_isolation_mutex_timeout),
    )


class ScriptServiceV2:
    """`IScriptServiceV2`: server-chosen tickets, idempotent StartScript that may wait."""

    contract = "IScriptServiceV2"
    implementation = "Octopus.Tentacle.Services.Scripts.ScriptServiceV2"

    def __init__(self, runner: ScriptRunner) -> None:
        self.runner = runner

    def operations(self) -> Sequence[Operation]:
        return (
            Operation("StartScript", self.start_script, (StartScriptCommandV2,)),
            Operation("GetStatus", self.get_status, (ScriptStatusRequestV2,)),
            Operation("CancelScript", self.cancel_script, (CancelScriptCommandV2,)),
            Operation("CompleteScript", self.complete_script, (CompleteScriptCommandV2,)),
        )

    @staticmethod
    def _response(status: ScriptStatus) -> ScriptStatusResponseV2:
        return ScriptStatusResponseV2(
            ticket=ScriptTicket(task_id=status.ticket),
            logs=status.logs,
            next_log_sequence=status.next_log_sequence,
            state=status.state,
            exit_code=status.exit_code,
        )

    async def start_script(self, call: Call, command: StartScriptCommandV2) -> ScriptStatusResponseV2:
        ticket = command.script_ticket.task_id if command.script_ticket else ""
        if not ticket:
            raise ServiceError("StartScript needs a ScriptTicket chosen by the server")
        self.runner.start(ticket, lambda: _spec(ticket, command, call))
        wait = min(_seconds(command.duration_to_wait_for_script_to_finish), MAX_WAIT_FOR_FINISH)
        await self.runner.wait(ticket, wait)
        return self._response(self.runner.status(ticket, 0))

    async def get_status(self, call: Call, request: ScriptStatusRequestV2) -> ScriptStatusResponseV2:
        return self._response(self.runner.status(request.ticket.task_id, request.last_log_sequence))

    async def cancel_script(self, call: Call, command: CancelScriptCommandV2) -> ScriptStatusResponseV2:
        await self.runner.cancel(command.ticket.task_id)
        return self._response(self.runner.status(command.ticket.task_id, command.last_log_sequence))

    async def complete_script(self, call: Call, command: CompleteScriptCommandV2) -> None:
        await self.runner.complete(command.ticket.task_id)
        return None


class ScriptServiceV1:
    """`IScriptService`: the agent picks the ticket; CompleteScript returns the last logs."""

    contract = "IScriptService"
    implementation = "Octopus.Tentacle.Services.Scripts.ScriptService"

    def __init__(self, runner: ScriptRunner) -> None:
        self.runner = runner

    def operations(self) -> Sequence[Operation]:
        return (
            Operation("StartScript", self.start_script, (StartScriptCommand,)),
            Operation("GetStatus", self.get_status, (ScriptStatusRequest,)),
            Operation("CancelScript", self.cancel_script, (CancelScriptCommand,)),
            Operation("CompleteScript", self.complete_script, (CompleteScriptCommand,)),
        )

    @staticmethod
    def _response(status: ScriptStatus) -> ScriptStatusResponse:
        return ScriptStatusResponse(
            ticket=ScriptTicket(task_id=status.ticket),
            logs=status.logs,
            next_log_sequence=status.next_log_sequence,
            state=status.state,
            exit_code=status.exit_code,
        )

    async def start_script(self, call: Call, command: StartScriptCommand) -> ScriptTicket:
        ticket = uuid.uuid4().hex
        self.runner.start(ticket, lambda: _spec(ticket, command, call))
        return ScriptTicket(task_id=ticket)

    async def get_status(self, call: Call, request: ScriptStatusRequest) -> ScriptStatusResponse:
        return self._response(self.runner.status(request.ticket.task_id, request.last_log_sequence))

    async def cancel_script(self, call: Call, command: CancelScriptCommand) -> ScriptStatusResponse:
        await self.runner.cancel(command.ticket.task_id)
        return self._response(self.runner.status(command.ticket.task_id, command.last_log_sequence))

    async def complete_script(self, call: Call, command: CompleteScriptCommand) -> ScriptStatusResponse:
        status = self.runner.status(command.ticket.task_id, command.last_log_sequence)
        await self.runner.complete(command.ticket.task_id)
        return self._response(status)

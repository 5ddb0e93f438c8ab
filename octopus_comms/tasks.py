"""Running ad hoc script tasks on polling agents (the Octopus "script console").

The API creates a task and calls `start`; this runner drives each machine through
IScriptServiceV2 — StartScript with a server-chosen ticket, GetStatus with LastLogSequence until
Complete, CompleteScript — and writes logs, exit codes and the final state to the store. The
ticket is the idempotency key: when a call's outcome is unknown (the connection dropped after the
agent collected it) the same call is sent again and the agent answers for the script it already
has instead of starting a second one.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import trio

from .halibut import contracts as c
from .queue import CollectionTimeout, OutcomeUnknown, PendingRequestQueues, RequestFailed
from .rpc import AgentClient, RemoteError
from .store import ActivityStatus, LogCategory, LogLine, Machine, Store, TaskState

log = logging.getLogger("octopus_comms.tasks")

STATUS_POLL_SECONDS = 0.5
WAIT_FOR_FINISH = dt.timedelta(seconds=2)
UNKNOWN_OUTCOME_RETRIES = 5
SOURCE_CATEGORY = {c.ProcessOutputSource.StdOut: LogCategory.INFO,
                   c.ProcessOutputSource.StdErr: LogCategory.ERROR,
                   c.ProcessOutputSource.Debug: LogCategory.VERBOSE}


class ScriptTaskRunner:
    """Implements `api.TaskRunner`: schedule in `start`, work in tasks of the owner's nursery."""

    def __init__(self, store: Store, queues: PendingRequestQueues, nursery: trio.Nursery, *,
                 collection_timeout: float | None = None,
                 poll_interval: float = STATUS_POLL_SECONDS) -> None:
        self.store = store
        self.queues = queues
        self.nursery = nursery
        self.collection_timeout = collection_timeout
        self.poll_interval = poll_interval
        self._cancel: dict[str, trio.Event] = {}
        self._token = trio.lowlevel.current_trio_token()

    # The API calls these from a worker thread (it does blocking SQLite writes); the work itself
    # is scheduled onto the trio thread that owns the nursery.
    def start(self, task_id: str) -> None:
        self._token.run_sync_soon(self._start_in_trio, task_id)

    def cancel(self, task_id: str) -> None:
        self._token.run_sync_soon(self._cancel_in_trio, task_id)

    def _start_in_trio(self, task_id: str) -> None:
        self._cancel[task_id] = trio.Event()
        self.nursery.start_soon(self._run_task, task_id)

    def _cancel_in_trio(self, task_id: str) -> None:
        event = self._cancel.get(task_id)
        if event is not None:
            event.set()
        else:       # not running here (queued before a restart): just close it
            self.store.set_task_state(task_id, TaskState.CANCELED)

    def resume_queued(self) -> None:
        """Tasks left Queued or Executing by a previous run: fail the interrupted ones, run the
        queued ones (a script that may have run is never started again blindly)."""
        from .store import TaskQuery
        tasks, _total = self.store.list_tasks(
            TaskQuery(states=frozenset({TaskState.QUEUED, TaskState.EXECUTING,
                                        TaskState.CANCELLING})), take=1000)
        for task in tasks:
            if task.state is TaskState.QUEUED:
                self._start_in_trio(task.id)
            else:
                self.store.append_task_log(task.id, None, LogCategory.ERROR,
                                           "The server restarted while this task was running; "
                                           "the outcome on the machines is unknown.")
                self.store.set_task_state(task.id, TaskState.FAILED,
                                          "Interrupted by a server restart")

    async def _run_task(self, task_id: str) -> None:
        store = self.store
        try:
            task = store.get_task(task_id)
            store.set_task_state(task_id, TaskState.EXECUTING)
            machines = [store.get_machine(mid) for mid in task.machine_ids]
            store.append_task_log(task_id, None, LogCategory.INFO,
                                  f"Running script on {len(machines)} machine(s): "
                                  + ", ".join(m.name for m in machines))
            results: dict[str, ActivityStatus] = {}
            async with trio.open_nursery() as nursery:
                for machine in machines:
                    nursery.start_soon(self._run_machine, task.id, task.arguments, machine,
                                       results)
            cancelled = self._cancel[task_id].is_set()
            if cancelled:
                state = TaskState.CANCELED
            elif all(s is ActivityStatus.SUCCESS for s in results.values()):
                state = TaskState.SUCCESS
            else:
                state = TaskState.FAILED
            failed = [m.name for m in machines if results.get(m.id) is ActivityStatus.FAILED]
            error = (f"The script failed on: {', '.join(failed)}" if failed and not cancelled
                     else None)
            store.set_task_state(task_id, state, error)
        except Exception as exc:          # the runner must never take the server down
            log.exception("task %s failed in the runner", task_id)
            try:
                store.append_task_log(task_id, None, LogCategory.FATAL, f"Internal error: {exc}")
                store.set_task_state(task_id, TaskState.FAILED, str(exc))
            except Exception:
                pass
        finally:
            self._cancel.pop(task_id, None)

    def _command(self, task_id: str, arguments: Any, machine: Machine) -> c.StartScriptCommandV2:
        body = str(arguments.get("ScriptBody") or "")
        syntax = str(arguments.get("Syntax") or "PowerShell")
        script_type = c.ScriptType.Bash if syntax.lower() == "bash" else c.ScriptType.PowerShell
        ticket = c.ScriptTicket(task_id=f"{task_id}-{machine.id}".lower())
        return c.StartScriptCommandV2(
            script_ticket=ticket, script_body=body, task_id=task_id,
            duration_to_wait_for_script_to_finish=WAIT_FOR_FINISH,
            isolation=c.ScriptIsolationLevel.NoIsolation, scripts={script_type: body})

    async def _retrying(self, what: str, call: Any, *args: Any) -> Any:
        """Repeat a call whose outcome is unknown: every IScriptServiceV2 call is idempotent."""
        for attempt in range(1, UNKNOWN_OUTCOME_RETRIES + 1):
            try:
                return await call(*args)
            except OutcomeUnknown as exc:
                if attempt == UNKNOWN_OUTCOME_RETRIES:
                    raise
                log.info("%s: %s; asking again", what, exc)
                await trio.sleep(min(5.0, 0.5 * attempt))
        raise AssertionError("unreachable")

    async def _run_machine(self, task_id: str, arguments: Any, machine: Machine,
                           results: dict[str, ActivityStatus]) -> None:
        store = self.store
        cancel = self._cancel[task_id]
        client = AgentClient(self.queues, machine.uri, remote_thumbprint=machine.thumbprint,
                             collection_timeout=self.collection_timeout)
        command = self._command(task_id, arguments, machine)
        ticket = command.script_ticket
        store.set_task_machine_state(task_id, machine.id, ActivityStatus.RUNNING)
        status: c.ScriptStatusResponseV2 | None = None
        cancel_sent = False
        try:
            status = await self._retrying("StartScript", client.start_script, command)
            while True:
                self._record(task_id, machine, status)
                if status.state == c.ProcessState.Complete:
                    break
                if cancel.is_set() and not cancel_sent:
                    cancel_sent = True
                    store.append_task_log(task_id, machine.id, LogCategory.WARNING,
                                          "Cancelling the script")
                    status = await self._retrying("CancelScript", client.cancel_script, ticket,
                                                  status.next_log_sequence)
                    continue
                with trio.move_on_after(self.poll_interval):
                    await cancel.wait()
                status = await self._retrying("GetStatus", client.get_status, ticket,
                                              status.next_log_sequence)
            try:
                await self._retrying("CompleteScript", client.complete_script, ticket)
            except (RequestFailed, RemoteError) as exc:
                store.append_task_log(task_id, machine.id, LogCategory.WARNING,
                                      f"Could not clean up the script's work area: {exc}")
            exit_code = int(status.exit_code)
            if cancel_sent:
                outcome = ActivityStatus.CANCELED
            else:
                outcome = ActivityStatus.SUCCESS if exit_code == 0 else ActivityStatus.FAILED
            store.append_task_log(task_id, machine.id,
                                  LogCategory.INFO if exit_code == 0 else LogCategory.ERROR,
                                  f"Exit code: {exit_code}")
            store.set_task_machine_state(task_id, machine.id, outcome, exit_code)
            results[machine.id] = outcome
        except CollectionTimeout as exc:
            self._machine_failed(task_id, machine, results,
                                 f"The Tentacle {machine.name} did not collect the request in "
                                 f"time; is it connected and polling? ({exc})")
        except OutcomeUnknown as exc:
            self._machine_failed(task_id, machine, results,
                                 f"The connection to {machine.name} was lost: {exc}")
        except RemoteError as exc:
            self._machine_failed(task_id, machine, results,
                                 f"{machine.name} reported an error: {exc}"
                                 + (f"\n{exc.details}" if exc.details else ""))
        except RequestFailed as exc:
            self._machine_failed(task_id, machine, results, str(exc))

    def _record(self, task_id: str, machine: Machine, status: c.ScriptStatusResponseV2) -> None:
        lines = []
        for output in status.logs:
            try:
                category = SOURCE_CATEGORY.get(c.ProcessOutputSource(output.source),
                                               LogCategory.INFO)
            except ValueError:
                category = LogCategory.INFO
            occurred = output.occurred
            if isinstance(occurred, dt.datetime) and occurred.tzinfo is None:
                occurred = occurred.replace(tzinfo=dt.timezone.utc)
            lines.append(LogLine(category, output.text or "",
                                 occurred if isinstance(occurred, dt.datetime) else None))
        if lines:
            self.store.append_task_logs(task_id, machine.id, lines)

    def _machine_failed(self, task_id: str, machine: Machine,
                        results: dict[str, ActivityStatus], message: str) -> None:
        log.warning("task %s on %s: %s", task_id, machine.name, message)
        self.store.append_task_log(task_id, machine.id, LogCategory.ERROR, message)
        self.store.set_task_machine_state(task_id, machine.id, ActivityStatus.FAILED)
        results[machine.id] = ActivityStatus.FAILED

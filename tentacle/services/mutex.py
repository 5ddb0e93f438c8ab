"""The script isolation mutex: a named reader-writer lock, as in the real Tentacle.

Why reader-writer: scripts with `NoIsolation` may run side by side (readers) but a
`FullIsolation` script runs alone (the writer) among scripts that share its `IsolationMutexName`
(default `RunningScript`). Waiters are served first come, first served, so a writer is not starved
by a stream of readers. The task log messages repeat the real Tentacle's wording, because users
search for them ("Cannot start this task yet because task … is currently running …").
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

__all__ = [
    "DEFAULT_MUTEX_NAME",
    "INITIAL_WAIT",
    "IsolationMutexes",
    "MutexTimeout",
    "TaskLock",
]

DEFAULT_MUTEX_NAME = "RunningScript"
INITIAL_WAIT = 0.1
"""Seconds to wait quietly before the task log says the script is waiting (real: 100 ms)."""


class MutexTimeout(Exception):
    """The lock was not granted within the script's `ScriptIsolationMutexTimeout`."""


@dataclass(eq=False)
class _Waiter:
    owner: str
    exclusive: bool
    granted: trio.Event = field(default_factory=trio.Event)


def _link(task_id: str) -> str:
    return f"[{task_id}](~/app#/tasks/{task_id})"


def _readable_join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _minutes(seconds: float) -> str:
    """.NET `TotalMinutes.ToString("N0")`: rounded half away from zero, thousands separated."""
    return f"{math.floor(seconds / 60 + 0.5):,}"


class TaskLock:
    """One named reader-writer lock whose holders are task ids."""

    def __init__(self) -> None:
        self._writer: str | None = None
        self._readers: dict[str, int] = {}
        self._queue: deque[_Waiter] = deque()

    # -- state ------------------------------------------------------------------------------

    @property
    def writer(self) -> str | None:
        return self._writer

    @property
    def readers(self) -> tuple[str, ...]:
        return tuple(self._readers)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _compatible(self, exclusive: bool) -> bool:
        if self._writer is not None:
            return False
        return not self._readers if exclusive else True

    def _take(self, waiter: _Waiter) -> None:
        if waiter.exclusive:
            self._writer = waiter.owner
        else:
            self._readers[waiter.owner] = self._readers.get(waiter.owner, 0) + 1
        waiter.granted.set()

    def _grant_waiters(self) -> None:
        while self._queue and self._compatible(self._queue[0].exclusive):
            self._take(self._queue.popleft())

    def _release(self, waiter: _Waiter) -> None:
        if waiter.exclusive:
            if self._writer == waiter.owner:
                self._writer = None
        else:
            count = self._readers.get(waiter.owner, 0) - 1
            if count > 0:
                self._readers[waiter.owner] = count
            else:
                self._readers.pop(waiter.owner, None)
        self._grant_waiters()

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.granted.is_set():
            self._release(waiter)
            return
        try:
            self._queue.remove(waiter)
        except ValueError:
            pass
        self._grant_waiters()  # a writer that gave up may have been blocking readers

    # -- messages (the real Tentacle's wording) ----------------------------------------------

    def _holders(self) -> str:
        if self._writer is not None:
            return f"{_link(self._writer)} (RW)"
        if not self._readers:
            return "(error - task not found)"
        return _readable_join([f"{_link(t)} (R)" for t in sorted(self._readers)])

    def _several(self) -> bool:
        return self._writer is None and len(self._readers) > 1

    def busy_message(self) -> str:
        if self._several():
            return (f"Cannot start this task yet because tasks {self._holders()} are currently "
                    "running and this task cannot be run in conjunction with any other tasks. "
                    "Please wait...")
        return (f"Cannot start this task yet because task {self._holders()} is currently running "
                "and this task cannot be run in conjunction with any other tasks. Please wait...")

    def canceled_message(self) -> str:
        if self._several():
            return f"This task was canceled before it could start. Tasks {self._holders()} are still running."
        return f"This task was canceled before it could start. Task {self._holders()} is still running."

    def timed_out_message(self, timeout: float) -> str:
        waited = f"This task waited more than {_minutes(timeout)} minutes and timed out."
        if self._several():
            return f"{waited} Tasks {self._holders()} are still running."
        return f"{waited} Task {self._holders()} is still running."

    # -- acquiring ----------------------------------------------------------------------------

    @asynccontextmanager
    async def hold(
        self,
        owner: str,
        *,
        exclusive: bool,
        timeout: float,
        on_message: Callable[[str], None] = lambda _: None,
        initial_wait: float = INITIAL_WAIT,
    ) -> AsyncIterator[None]:
        """Hold the lock (exclusive = FullIsolation) for the body. If not granted within
        `initial_wait`, `on_message(busy)`; if not within `timeout` more, `on_message(timed
        out)` and MutexTimeout; if cancelled while waiting, `on_message(canceled)` and the
        cancellation propagates."""
        waiter = _Waiter(owner, exclusive)
        if not self._queue and self._compatible(exclusive):
            self._take(waiter)
        else:
            self._queue.append(waiter)
        try:
            if not waiter.granted.is_set():
                with trio.move_on_after(initial_wait):
                    await waiter.granted.wait()
            if not waiter.granted.is_set():
                on_message(self.busy_message())
                with trio.move_on_after(timeout):
                    await waiter.granted.wait()
            if not waiter.granted.is_set():
                on_message(self.timed_out_message(timeout))
                raise MutexTimeout(f"Could not acquire {'write' if exclusive else 'read'} mutex "
                                   f"within timeout {timeout:g} s.")
        except trio.Cancelled:
            if not waiter.granted.is_set():
                on_message(self.canceled_message())
            self._abandon(waiter)
            raise
        except BaseException:
            self._abandon(waiter)
            raise
        try:
            yield
        finally:
            self._release(waiter)


class IsolationMutexes:
    """The named locks of one agent (names compared exactly, as the real Tentacle does)."""

    def __init__(self) -> None:
        self._locks: dict[str, TaskLock] = {}

    def get(self, name: str | None) -> TaskLock:
        key = name or DEFAULT_MUTEX_NAME
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = TaskLock()
        return lock

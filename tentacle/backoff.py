"""When a polling loop reconnects: Halibut's retry rounds and back-off (spec halibut.md §2), pure.

Why pure: the policy decides how hard a fleet of agents hammers a server that is down, so it is
tested exhaustively with a fake clock and a fake random source; the trio shell only sleeps.

The model (Halibut's `SecureClient` inside its `PollingClient` loop):
- A *round* is up to `attempts_per_round` connection attempts (`RetryCountLimit` 5, i.e. the first
  attempt and 4 retries), `retry_interval` apart (`RetryListeningSleepInterval` 1 s), and no new
  attempt once the round is `round_timeout` old (`ConnectionErrorRetryTimeout` 5 min).
- Only a failed *connect* (TCP, TLS, HTTP upgrade) is retried inside the round. An authentication
  error (server thumbprint mismatch) or a failure after the connection was made ends the round.
- After a round the loop sleeps `clamp(elapsed × (multiplier + random), min_sleep, max_sleep)`,
  where `elapsed` runs from the first attempt since the last good identity (the timer resets when
  the server identifies itself), so a server that stays down is polled less and less often.
- When an established session ends, the loop reconnects at once; but a session that ended within
  `quick_session` of its identity is followed by `retry_interval`, so a server that accepts and
  drops at once cannot make us spin (our addition; Halibut would reconnect immediately).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BackoffSettings", "Failure", "ReconnectPolicy", "Wait", "WaitKind"]


@dataclass(frozen=True)
class BackoffSettings:
    """The numbers of the policy (defaults: what Octopus Server and Halibut use)."""

    attempts_per_round: int = 5
    retry_interval: float = 1.0
    round_timeout: float = 300.0
    min_sleep: float = 5.0
    max_sleep: float = 120.0
    multiplier: float = 1.0
    quick_session: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts_per_round < 1:
            raise ValueError("attempts_per_round must be at least 1")
        if min(self.retry_interval, self.round_timeout, self.min_sleep, self.quick_session) < 0:
            raise ValueError("intervals must not be negative")
        if self.max_sleep < self.min_sleep:
            raise ValueError("max_sleep must be >= min_sleep")
        if self.multiplier < 0:
            raise ValueError("multiplier must not be negative")


class Failure(enum.Enum):
    """How an attempt failed."""

    CONNECT = "connect"
    """TCP connect, TLS handshake or WebSocket upgrade failed: retried within the round."""
    AUTH = "auth"
    """The server's certificate is not the trusted one: never retried fast."""
    AFTER_CONNECT = "after-connect"
    """Connected, but the conversation failed before the server identified itself."""


class WaitKind(enum.Enum):
    """Why the loop waits."""

    RETRY = "retry"
    BACKOFF = "back-off"
    RECONNECT = "reconnect"


@dataclass(frozen=True)
class Wait:
    """How long to sleep before the next attempt, and why."""

    seconds: float
    kind: WaitKind
    attempt: int = 0
    """RETRY: the number of the attempt that failed, 1-based within its round."""


class ReconnectPolicy:
    """The retry/back-off state of one polling loop.

    Call `attempt()` before each connection attempt, then exactly one of `failed(kind)` (before
    the server identified itself) or `identified()` followed later by `session_ended()`.
    `clock()` returns monotonic seconds; `random()` returns a float in [0, 1).
    """

    def __init__(
        self,
        settings: BackoffSettings = BackoffSettings(),
        *,
        clock: Callable[[], float],
        random: Callable[[], float],
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._random = random
        self._timer_start: float | None = None
        self._round_start: float | None = None
        self._attempts_in_round = 0
        self._identified_at: float | None = None

    @property
    def attempts_in_round(self) -> int:
        """Attempts that failed so far in the current round."""
        return self._attempts_in_round

    @property
    def failing_since(self) -> float | None:
        """Clock time of the first attempt since the last good identity (None: not failing)."""
        return self._timer_start

    def attempt(self) -> None:
        """A connection attempt starts now."""
        now = self._clock()
        if self._timer_start is None:
            self._timer_start = now
        if self._round_start is None:
            self._round_start = now
        self._identified_at = None

    def failed(self, failure: Failure) -> Wait:
        """The attempt failed before a good identity: how long to wait before the next one."""
        if self._timer_start is None or self._round_start is None:
            raise RuntimeError("failed() without attempt()")
        now = self._clock()
        self._attempts_in_round += 1
        s = self.settings
        if (
            failure is Failure.CONNECT
            and self._attempts_in_round < s.attempts_per_round
            and now - self._round_start < s.round_timeout
        ):
            return Wait(s.retry_interval, WaitKind.RETRY, self._attempts_in_round)
        return self._end_round(now)

    def identified(self) -> None:
        """The server identified itself: the connection is good, the timer resets."""
        now = self._clock()
        self._timer_start = None
        self._round_start = None
        self._attempts_in_round = 0
        self._identified_at = now

    def session_ended(self) -> Wait:
        """An identified session ended (the server closed it, a timeout, a protocol error)."""
        now = self._clock()
        started = self._identified_at
        self._identified_at = None
        self._round_start = None
        self._attempts_in_round = 0
        if started is not None and now - started < self.settings.quick_session:
            return Wait(self.settings.retry_interval, WaitKind.RECONNECT)
        return Wait(0.0, WaitKind.RECONNECT)

    def _end_round(self, now: float) -> Wait:
        s = self.settings
        assert self._timer_start is not None
        elapsed = max(0.0, now - self._timer_start)
        self._round_start = None
        self._attempts_in_round = 0
        factor = s.multiplier + self._random()
        return Wait(min(s.max_sleep, max(s.min_sleep, elapsed * factor)), WaitKind.BACKOFF)

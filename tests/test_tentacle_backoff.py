"""The reconnect policy of the polling loop (spec halibut.md §2) with a fake clock and fake random."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tentacle.backoff import BackoffSettings, Failure, ReconnectPolicy, Wait, WaitKind


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(settings: BackoffSettings | None = None, random: float = 0.5) -> tuple[ReconnectPolicy, FakeClock]:
    clock = FakeClock()
    return ReconnectPolicy(settings or BackoffSettings(), clock=clock, random=lambda: random), clock


def fail_connect(policy: ReconnectPolicy, clock: FakeClock, *, took: float = 0.0) -> Wait:
    policy.attempt()
    clock.advance(took)
    return policy.failed(Failure.CONNECT)


def test_a_failed_connect_is_retried_one_second_apart_within_a_round_of_five_attempts():
    policy, clock = make(random=0.0)
    waits = []
    for _ in range(5):
        wait = fail_connect(policy, clock)
        waits.append(wait)
        clock.advance(wait.seconds)
    assert [w.kind for w in waits] == [WaitKind.RETRY] * 4 + [WaitKind.BACKOFF]
    assert [w.seconds for w in waits[:4]] == [1.0] * 4
    assert [w.attempt for w in waits[:4]] == [1, 2, 3, 4]
    # elapsed 4 s since the first attempt × (1 + 0) = 4 s → clamped up to 5 s
    assert waits[4].seconds == 5.0


def test_back_off_grows_with_the_time_spent_failing_and_is_clamped_to_two_minutes():
    policy, clock = make(random=0.5)
    backoffs = []
    for _ in range(12):
        while True:
            wait = fail_connect(policy, clock, took=0.5)
            clock.advance(wait.seconds)
            if wait.kind is WaitKind.BACKOFF:
                backoffs.append(wait.seconds)
                break
    assert backoffs[0] == pytest.approx(max(5.0, (4 * 1.0 + 5 * 0.5) * 1.5))
    assert all(b2 >= b1 for b1, b2 in zip(backoffs, backoffs[1:], strict=False))
    assert backoffs[-1] == 120.0
    assert max(backoffs) == 120.0


def test_random_part_ranges_between_one_and_two_times_the_elapsed_time():
    for random, expected in ((0.0, 30.0), (0.999, 30.0 * 1.999)):
        policy, clock = make(BackoffSettings(attempts_per_round=1), random=random)
        policy.attempt()
        clock.advance(30.0)
        wait = policy.failed(Failure.CONNECT)
        assert wait.kind is WaitKind.BACKOFF
        assert wait.seconds == pytest.approx(expected)


def test_auth_errors_are_never_retried_fast():
    policy, clock = make(random=0.0)
    policy.attempt()
    wait = policy.failed(Failure.AUTH)
    assert wait.kind is WaitKind.BACKOFF
    assert wait.seconds == 5.0
    assert policy.attempts_in_round == 0  # a new round starts with the next attempt


def test_a_failure_after_the_connection_was_made_ends_the_round():
    policy, clock = make(random=0.0)
    policy.attempt()
    assert policy.failed(Failure.AFTER_CONNECT).kind is WaitKind.BACKOFF


def test_the_timer_resets_after_a_good_identity():
    policy, clock = make(random=0.0)
    for _ in range(30):  # fail for a long time
        clock.advance(fail_connect(policy, clock, took=1.0).seconds)
    assert policy.failing_since is not None
    policy.attempt()
    policy.identified()
    assert policy.failing_since is None
    clock.advance(3600)
    wait = policy.session_ended()
    assert wait == Wait(0.0, WaitKind.RECONNECT)
    # the next failure starts from a fresh timer: short retries, then the minimum back-off
    waits = []
    for _ in range(5):
        wait = fail_connect(policy, clock)
        waits.append(wait)
        clock.advance(wait.seconds)
    assert [w.kind for w in waits] == [WaitKind.RETRY] * 4 + [WaitKind.BACKOFF]
    assert waits[-1].seconds == 5.0


def test_a_session_dropped_right_after_identity_does_not_reconnect_in_a_hot_loop():
    policy, clock = make()
    policy.attempt()
    policy.identified()
    clock.advance(0.2)
    assert policy.session_ended() == Wait(1.0, WaitKind.RECONNECT)


def test_no_new_attempt_in_a_round_after_the_round_timeout():
    policy, clock = make(BackoffSettings(round_timeout=10.0), random=0.0)
    wait = fail_connect(policy, clock, took=11.0)  # one slow attempt uses the whole round
    assert wait.kind is WaitKind.BACKOFF
    assert wait.seconds == 11.0


def test_failed_without_attempt_is_a_bug():
    policy, _ = make()
    with pytest.raises(RuntimeError):
        policy.failed(Failure.CONNECT)


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts_per_round": 0}, {"retry_interval": -1}, {"min_sleep": 10, "max_sleep": 5},
     {"multiplier": -1}],
)
def test_settings_are_validated(kwargs):
    with pytest.raises(ValueError):
        BackoffSettings(**kwargs)


_outcomes = st.sampled_from(["connect", "auth", "after", "identified"])


@given(
    steps=st.lists(st.tuples(_outcomes, st.floats(0, 400)), max_size=60),
    randoms=st.lists(st.floats(0, 0.9999), min_size=1, max_size=10),
    attempts=st.integers(1, 8),
)
def test_every_wait_is_within_the_policy_bounds(steps, randoms, attempts):
    settings = BackoffSettings(attempts_per_round=attempts)
    clock = FakeClock()
    picks = iter(randoms * 100)
    policy = ReconnectPolicy(settings, clock=clock, random=lambda: next(picks))
    retries_in_a_row = 0
    for outcome, took in steps:
        policy.attempt()
        clock.advance(took)
        if outcome == "identified":
            policy.identified()
            clock.advance(took)
            wait = policy.session_ended()
            assert wait.kind is WaitKind.RECONNECT
            assert wait.seconds in (0.0, settings.retry_interval)
            retries_in_a_row = 0
            continue
        failure = {"connect": Failure.CONNECT, "auth": Failure.AUTH, "after": Failure.AFTER_CONNECT}[outcome]
        wait = policy.failed(failure)
        if wait.kind is WaitKind.RETRY:
            assert failure is Failure.CONNECT
            assert wait.seconds == settings.retry_interval
            retries_in_a_row += 1
            assert retries_in_a_row <= attempts - 1  # never more than the round allows
        else:
            assert wait.kind is WaitKind.BACKOFF
            assert settings.min_sleep <= wait.seconds <= settings.max_sleep
            retries_in_a_row = 0
        clock.advance(wait.seconds)

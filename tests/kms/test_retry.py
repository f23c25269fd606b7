"""RetryPolicy and call_with_retries against a fake clock: attempts, jitter bounds, budget."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from keycustody.errors import ConfigError, KmsError, NotFoundError
from keycustody.kms.retry import KmsKeyNotFoundError, RetryPolicy, call_with_retries


class TransientError(Exception):
    pass


class FatalError(Exception):
    pass


class FakeClock:
    """Monotonic time that moves only when the code under test sleeps or a call takes time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.live_exceptions: list[BaseException | None] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.live_exceptions.append(sys.exc_info()[1])
        self.sleeps.append(seconds)
        self.now += seconds


def flaky(failures: list[Exception], clock: FakeClock, cost: float = 0.0) -> Callable[[], str]:
    """A call that raises each of ``failures`` in turn, then returns "ok"; each attempt takes
    ``cost`` seconds of fake time."""
    calls = iter(failures)

    def call() -> str:
        clock.now += cost
        exc = next(calls, None)
        if exc is not None:
            raise exc
        return "ok"

    return call


def transient(exc: Exception) -> bool:
    return isinstance(exc, TransientError)


def run(fn: Callable[[], str], clock: FakeClock, policy: RetryPolicy, jitter: float = 0.5) -> str:
    return call_with_retries(
        fn,
        is_retryable=transient,
        policy=policy,
        sleep=clock.sleep,
        clock=clock.clock,
        jitter=lambda: jitter,
    )


def test_success_first_time_does_not_sleep() -> None:
    clock = FakeClock()
    assert run(flaky([], clock), clock, RetryPolicy()) == "ok"
    assert clock.sleeps == []


def test_transient_failures_are_retried_until_success() -> None:
    clock = FakeClock()
    assert run(flaky([TransientError(), TransientError()], clock), clock, RetryPolicy()) == "ok"
    assert len(clock.sleeps) == 2


def test_at_most_max_attempts_then_the_last_error() -> None:
    clock = FakeClock()
    failures: list[Exception] = [TransientError(str(i)) for i in range(10)]
    attempts = 0

    def call() -> str:
        nonlocal attempts
        attempts += 1
        raise failures[attempts - 1]

    with pytest.raises(TransientError, match=r"^4$"):
        run(call, clock, RetryPolicy(max_attempts=5))
    assert attempts == 5
    assert len(clock.sleeps) == 4


def test_one_attempt_means_no_retry() -> None:
    clock = FakeClock()
    with pytest.raises(TransientError):
        run(flaky([TransientError()], clock), clock, RetryPolicy(max_attempts=1))
    assert clock.sleeps == []


def test_non_retryable_error_is_raised_at_once() -> None:
    clock = FakeClock()
    with pytest.raises(FatalError):
        run(flaky([TransientError(), FatalError(), TransientError()], clock), clock, RetryPolicy())
    assert len(clock.sleeps) == 1


def test_exponential_bounds_capped_by_max_delay() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    assert [policy.delay_bound(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.delay_bound(10_000) == 1.0  # no overflow for huge attempt numbers


def test_full_jitter_scales_the_bound() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=0.3)
    with pytest.raises(TransientError):
        run(flaky([TransientError()] * 5, clock), clock, policy, jitter=0.5)
    assert clock.sleeps == pytest.approx([0.05, 0.1, 0.15, 0.15])


def test_real_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=0.3)
    for _ in range(50):
        clock = FakeClock()
        with pytest.raises(TransientError):
            call_with_retries(
                flaky([TransientError()] * 5, clock),
                is_retryable=transient,
                policy=policy,
                sleep=clock.sleep,
                clock=clock.clock,
            )
        for n, delay in enumerate(clock.sleeps, start=1):
            assert 0.0 <= delay <= policy.delay_bound(n)


def test_no_attempt_starts_after_the_time_budget() -> None:
    clock = FakeClock()
    start = clock.now
    attempts: list[float] = []

    def slow() -> str:
        attempts.append(clock.now - start)
        clock.now += 3.0  # each attempt takes 3 s before failing
        raise TransientError()

    with pytest.raises(TransientError):
        run(slow, clock, RetryPolicy(max_attempts=50, base_delay=0.1, total_timeout=10.0))
    assert all(t < 10.0 for t in attempts)
    assert len(attempts) == 4  # starts at ~0, ~3, ~6, ~9 s
    assert clock.now - start < 10.0 + 3.0


def test_budget_also_bounds_the_sleep() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=50, base_delay=5.0, max_delay=5.0, total_timeout=1.0)
    with pytest.raises(TransientError):
        run(flaky([TransientError()] * 50, clock), clock, policy, jitter=0.9)
    assert clock.sleeps == []  # a 4.5 s delay would end past the 1 s budget


def test_sleeps_outside_the_exception_context() -> None:
    """The failed attempt's exception (and SDK frames holding request bodies) is released
    before waiting."""
    clock = FakeClock()
    run(flaky([TransientError(), TransientError()], clock), clock, RetryPolicy())
    assert clock.live_exceptions == [None, None]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_delay": -1.0},
        {"max_delay": -0.1},
        {"total_timeout": 0.0},
    ],
)
def test_invalid_policy_is_a_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_defaults_match_the_test_plan() -> None:
    """T33: at most 5 attempts or 10 s."""
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.total_timeout) == (5, 10.0)


def test_key_not_found_is_both_kms_and_not_found() -> None:
    exc = KmsKeyNotFoundError("no such key")
    assert isinstance(exc, KmsError)
    assert isinstance(exc, NotFoundError)
    assert str(exc) == "no such key"

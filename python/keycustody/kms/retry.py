"""Retrying KMS calls: full-jitter exponential backoff within an attempt cap and a time budget.

Cloud KMS providers share this helper so that throttling and outages behave the same whatever
the provider: at most ``max_attempts`` attempts, no new attempt once ``total_timeout`` seconds
have passed, and a random delay between attempts drawn uniformly from
``[0, min(max_delay, base_delay * 2**(n-1))]`` ("full jitter", which spreads the retries of many
workers throttled at the same moment). The provider decides what is retryable and turns the
last failure into :class:`~keycustody.errors.KmsUnavailableError`.

It also holds :class:`KmsKeyNotFoundError`, the "no such key" failure that cloud providers share,
and :func:`clip`, which quotes an SDK's error text in their messages.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from keycustody.errors import ConfigError, KeyCustodyError, KmsError, NotFoundError

T = TypeVar("T")

log = logging.getLogger("keycustody.kms")

MESSAGE_MAX = 300
"""The most characters of an SDK's error text that a keycustody error message quotes."""


class KmsKeyNotFoundError(KmsError, NotFoundError):
    """The KMS has no such key (a typo, another account/region/vault, or deleted for good)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a provider retries a failed KMS call.

    Args:
        max_attempts: Attempts in all, the first one included (1: never retry).
        base_delay: Upper bound, in seconds, of the first backoff delay; doubles per attempt.
        max_delay: Upper bound, in seconds, of any single backoff delay.
        total_timeout: No attempt starts after this many seconds since the first one.

    Raises:
        ConfigError: a value is out of range.
    """

    max_attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0
    total_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("RetryPolicy.max_attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigError("RetryPolicy delays must be >= 0")
        if self.total_timeout <= 0:
            raise ConfigError("RetryPolicy.total_timeout must be > 0")

    def delay_bound(self, attempt: int) -> float:
        """The upper bound of the delay after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 62)))


def call_with_retries(
    fn: Callable[[], T],
    *,
    is_retryable: Callable[[Exception], bool],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Calls ``fn`` until it succeeds, fails with a non-retryable error, or the policy says stop.

    Args:
        fn: The call; it is made again, unchanged, on every attempt.
        is_retryable: Whether a failure is transient (throttling, 5xx, timeouts, connection).
        policy: Attempts, delays and the time budget.
        sleep: Waits between attempts (injected by tests).
        clock: Monotonic seconds (injected by tests).
        jitter: Uniform random number in ``[0, 1)`` scaling each delay (injected by tests).

    Returns:
        What ``fn`` returned.

    Raises:
        Exception: the failure of the last attempt, unchanged: a non-retryable one at once, a
            retryable one when attempts or time ran out (so ``is_retryable(exc)`` tells the
            caller that retries were exhausted).
    """
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_retryable(exc) or attempt >= policy.max_attempts:
                raise
            delay = policy.delay_bound(attempt) * jitter()
            if clock() - start + delay >= policy.total_timeout:
                raise
            log.debug(
                "KMS call failed (%s), attempt %d of %d; retrying in %.3f s",
                type(exc).__name__,
                attempt,
                policy.max_attempts,
                delay,
            )
        # Sleep outside the except block: the failed attempt's exception, with SDK frames that
        # may hold the request body, is released first.
        sleep(delay)


def clip(text: object) -> str:
    """An SDK's error text on one line, cut to :data:`MESSAGE_MAX` characters."""
    message = " ".join(str(text).split())
    return message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 1] + "…"


def call_translated(
    fn: Callable[[], T],
    *,
    is_retryable: Callable[[Exception], bool],
    policy: RetryPolicy,
    translate: Callable[[Exception, int, float], KeyCustodyError],
) -> T:
    """:func:`call_with_retries`, then every SDK failure leaves as a keycustody error.

    ``translate(exc, attempts, elapsed_seconds)`` maps the last failure. The error is raised
    outside the ``except`` block, so the SDK exception and its frames (which may hold the
    request body, key material included) are not kept as ``__context__``.
    """
    attempts = 0
    start = time.monotonic()

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        return fn()

    try:
        return call_with_retries(attempt, is_retryable=is_retryable, policy=policy)
    except KeyCustodyError:
        raise
    except Exception as exc:
        error = translate(exc, attempts, time.monotonic() - start)
    raise error

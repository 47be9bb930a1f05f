"""Tests for worker.retry.RetryPolicy.decide: what is retried, how long it waits, when a round of
retries ends in a trunk backoff. Jitter is pinned to its ends where a test needs exact values."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from smsq_testing import make_settings

from worker.errors import (
    Ambiguous,
    AuthFailed,
    DidwwError,
    Misdirected,
    NotSent,
    RateLimited,
    Rejected,
    ServerError,
)
from worker.retry import Decision, RetryPolicy

# Enough draws that a jitter stuck at one value, or one outside its range, shows.
SAMPLES = 200
RETRYABLE = [
    NotSent("ConnectError: request not sent"),
    ServerError("down", 503),
    RateLimited("slow", None),
]
NEVER_RETRIED = [
    Rejected("Invalid request", 400),
    AuthFailed("Authorization failed", 401),
    Misdirected("HTTP 404 from POST /outbound_messages", 404),
]


def policy(**overrides: Any) -> RetryPolicy:
    values: dict[str, Any] = {"retry_attempts": 3, "retry_max_wait_s": 30.0, "retry_later_s": 30}
    return RetryPolicy(make_settings(**(values | overrides)))


@pytest.fixture
def jitter(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Pin random.uniform (used by worker.retry and tenacity) to the low or high end."""

    def pin(end: str) -> None:
        pick = (lambda a, b: a) if end == "low" else (lambda a, b: b)
        monkeypatch.setattr(random, "uniform", pick)

    return pin


def ids(errors: list[DidwwError]) -> list[str]:
    return [type(error).__name__ for error in errors]


@pytest.mark.parametrize("error", RETRYABLE, ids=ids(RETRYABLE))
def test_retryable_errors_wait_an_exponential_ceiling(
    error: DidwwError, jitter: Callable[[str], None]
) -> None:
    retrying = policy(retry_attempts=6, retry_max_wait_s=3.0)
    jitter("high")
    ceilings = [retrying.decide(error, n) for n in range(1, 6)]
    # 0.5 s doubling, capped by SMSQ_RETRY_MAX_WAIT_S.
    assert ceilings == [Decision(0.5), Decision(1.0), Decision(2.0), Decision(3.0), Decision(3.0)]
    jitter("low")
    assert [retrying.decide(error, n) for n in range(1, 6)] == [Decision(0.0)] * 5


def test_exponential_waits_stay_in_their_range() -> None:
    retrying = policy(retry_attempts=4, retry_max_wait_s=30.0)
    for attempts, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0)]:
        waits = [retrying.decide(ServerError("down", 500), attempts) for _ in range(SAMPLES)]
        assert all(w.backoff_s == 0.0 for w in waits)
        values = [w.retry_in_s for w in waits]
        assert all(v is not None and 0.0 <= v <= ceiling for v in values)
        assert len(set(values)) > SAMPLES // 2  # jittered, not one fixed value


@pytest.mark.parametrize("error", RETRYABLE, ids=ids(RETRYABLE))
def test_the_last_attempt_of_a_round_backs_the_trunk_off(
    error: DidwwError, jitter: Callable[[str], None]
) -> None:
    retrying = policy(retry_attempts=3, retry_later_s=30)
    jitter("high")
    assert retrying.decide(error, 3) == Decision(None, 36.0)
    jitter("low")
    assert retrying.decide(error, 3) == Decision(None, 24.0)


def test_the_backoff_after_a_round_is_retry_later_give_or_take_a_fifth() -> None:
    retrying = policy(retry_attempts=2, retry_later_s=100)
    decisions = [retrying.decide(ServerError("down", 503), 2) for _ in range(SAMPLES)]
    assert all(d.retry_in_s is None for d in decisions)
    backoffs = [d.backoff_s for d in decisions]
    assert all(80.0 <= b <= 120.0 for b in backoffs)
    assert min(backoffs) < 95.0 < 105.0 < max(backoffs)


def test_attempts_count_over_rounds(jitter: Callable[[str], None]) -> None:
    retrying = policy(retry_attempts=3, retry_later_s=30)
    jitter("high")
    decisions = [retrying.decide(ServerError("down", 503), n) for n in range(1, 10)]
    # Rounds of three: 1-3, 4-6, 7-9; each starts again at the shortest wait.
    assert decisions == [Decision(0.5), Decision(1.0), Decision(None, 36.0)] * 3


def test_one_attempt_per_round_backs_off_at_once(jitter: Callable[[str], None]) -> None:
    retrying = policy(retry_attempts=1, retry_later_s=10)
    jitter("low")
    for attempts in (1, 2, 7):
        assert retrying.decide(NotSent("ConnectError"), attempts) == Decision(None, 8.0)


@pytest.mark.parametrize(
    ("retry_after_s", "low", "high"),
    [(7.0, 7.0, 7.5), (0.0, 0.0, 0.5), (29.9, 29.9, 30.4), (30.0, 30.0, 30.5), (600.0, 30.0, 30.5)],
)
def test_retry_after_is_honoured_up_to_retry_later(
    retry_after_s: float, low: float, high: float, jitter: Callable[[str], None]
) -> None:
    retrying = policy(retry_attempts=5, retry_later_s=30)
    error = RateLimited("slow", retry_after_s)
    jitter("low")
    assert retrying.decide(error, 2) == Decision(pytest.approx(low))
    jitter("high")
    assert retrying.decide(error, 2) == Decision(pytest.approx(high))


def test_retry_after_jitter_spreads_the_held_back_messages() -> None:
    retrying = policy(retry_attempts=5)
    values = [retrying.decide(RateLimited("slow", 4.0), 1).retry_in_s for _ in range(SAMPLES)]
    assert all(v is not None and 4.0 <= v <= 4.5 for v in values)
    assert len(set(values)) > SAMPLES // 2


def test_a_429_on_the_last_attempt_backs_off_despite_retry_after(
    jitter: Callable[[str], None],
) -> None:
    retrying = policy(retry_attempts=2, retry_later_s=30)
    jitter("high")
    assert retrying.decide(RateLimited("slow", 5.0), 2) == Decision(None, 36.0)


def test_a_429_without_retry_after_waits_like_any_retryable(
    jitter: Callable[[str], None],
) -> None:
    retrying = policy(retry_attempts=5, retry_max_wait_s=30.0)
    jitter("high")
    assert retrying.decide(RateLimited("slow", None), 3) == Decision(2.0)


@pytest.mark.parametrize("error", NEVER_RETRIED, ids=ids(NEVER_RETRIED))
@pytest.mark.parametrize("ambiguous", ["unknown", "resend"])
def test_permanent_and_halting_errors_are_never_retried(error: DidwwError, ambiguous: str) -> None:
    retrying = policy(retry_attempts=3, ambiguous=ambiguous)
    assert not retrying.retries(error)
    # Not even the last attempt of a round backs the trunk off for them.
    assert [retrying.decide(error, n) for n in range(1, 7)] == [Decision(None, 0.0)] * 6


def test_ambiguous_is_not_retried_when_unknown_is_the_setting() -> None:
    retrying = policy(retry_attempts=3, ambiguous="unknown")
    error = Ambiguous("ReadTimeout: no answer after the request was sent")
    assert not retrying.retries(error)
    assert [retrying.decide(error, n) for n in range(1, 4)] == [Decision(None, 0.0)] * 3


def test_ambiguous_is_retried_when_resend_is_the_setting(jitter: Callable[[str], None]) -> None:
    retrying = policy(retry_attempts=3, ambiguous="resend", retry_later_s=20)
    error = Ambiguous("HTTP 502: Bad Gateway", 502)
    assert retrying.retries(error)
    jitter("high")
    assert [retrying.decide(error, n) for n in range(1, 4)] == [
        Decision(0.5),
        Decision(1.0),
        Decision(None, 24.0),
    ]


@pytest.mark.parametrize("error", RETRYABLE, ids=ids(RETRYABLE))
@pytest.mark.parametrize("ambiguous", ["unknown", "resend"])
def test_retryable_errors_are_retried_whatever_the_ambiguous_setting(
    error: DidwwError, ambiguous: str
) -> None:
    retrying = policy(retry_attempts=3, ambiguous=ambiguous)
    assert retrying.retries(error)
    decision = retrying.decide(error, 1)
    assert decision.retry_in_s is not None
    assert decision.backoff_s == 0.0

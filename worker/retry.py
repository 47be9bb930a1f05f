"""The retry policy for posts to DIDWW, declared with tenacity: which errors are retried, how
long to wait, when to give up. The engine asks it after each failed attempt, with the message
given back (queued) meanwhile: nothing claimed waits out a backoff (docs/architecture.md §6, §7).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from ledger.settings import Settings
from worker.errors import Ambiguous, DidwwError, Retryable

# A backoff after spent retries lasts SMSQ_RETRY_LATER_S, give or take this share.
BACKOFF_JITTER = 0.2
# Jitter added to a 429's Retry-After, so the messages it held back do not return together.
RETRY_AFTER_JITTER_S = 0.5


@dataclass(frozen=True, slots=True)
class Decision:
    """retry_in_s: try this message again that much later; None: its attempts are spent (the
    trunk backs off for backoff_s) or the error is not one to retry."""

    retry_in_s: float | None
    backoff_s: float = 0.0


class RetryPolicy:
    def __init__(self, settings: Settings) -> None:
        retry_on: tuple[type[DidwwError], ...] = (Retryable,)
        if settings.ambiguous == "resend":
            retry_on = (Retryable, Ambiguous)
        self.retry = retry_if_exception_type(retry_on)
        self.stop = stop_after_attempt(settings.retry_attempts)
        self.wait = wait_random_exponential(multiplier=0.5, max=settings.retry_max_wait_s)
        # Retry-After is honoured up to SMSQ_RETRY_LATER_S; a longer one (not seen from
        # DIDWW) is cut there.
        self.longest_s = float(settings.retry_later_s)
        self.attempts = settings.retry_attempts
        self._retrying = Retrying(retry=self.retry, stop=self.stop, wait=self.wait)

    def retries(self, exc: DidwwError) -> bool:
        """Whether this error is one the policy retries at all."""
        return bool(self.retry(self._state(exc, 1)))

    def decide(self, exc: DidwwError, attempts: int) -> Decision:
        """After a failed attempt: attempts is how many requests the message has had, over
        every round of retries (a round ends with a trunk backoff)."""
        state = self._state(exc, (attempts - 1) % self.attempts + 1)
        if not self.retry(state):
            return Decision(None)
        if self.stop(state):
            jitter = random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
            return Decision(None, self.longest_s * jitter)
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            return Decision(
                min(retry_after, self.longest_s) + random.uniform(0, RETRY_AFTER_JITTER_S)
            )
        return Decision(float(self.wait(state)))

    def _state(self, exc: DidwwError, attempt_number: int) -> RetryCallState:
        state = RetryCallState(self._retrying, None, (), {})
        state.attempt_number = attempt_number
        state.set_exception((type(exc), exc, None))
        return state

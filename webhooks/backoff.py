"""When a failed delivery is tried again: exponential backoff with full jitter, until
SMSQ_WEBHOOK_RETRY_S after its first attempt, the last try at that moment."""

from __future__ import annotations

import random
from collections.abc import Callable

# The first retry comes within a second; each later one's ceiling doubles.
BASE_S = 1.0
# 2**62 s is beyond any cap; the exponent stops there so the float never overflows.
MAX_EXPONENT = 62


def next_attempt_ms(
    attempts: int,
    first_attempt_ms: int,
    now_ms: int,
    retry_s: float,
    backoff_max_s: float,
    rand: Callable[[], float] = random.random,
) -> int | None:
    """When to try again after `attempts` failed tries (this one included), or None to give
    up: the retry window from the first attempt has passed. The wait is uniform between 0 and
    min(backoff_max_s, BASE_S * 2**(attempts - 1)) (full jitter, so many deliveries failed
    together do not come back together), and never past the window's end."""
    deadline_ms = first_attempt_ms + int(retry_s * 1000)
    if now_ms >= deadline_ms:
        return None
    ceiling_s = min(backoff_max_s, BASE_S * 2 ** min(max(attempts - 1, 0), MAX_EXPONENT))
    return min(now_ms + int(rand() * ceiling_s * 1000), deadline_ms)

"""What happens to a message after DIDWW answered its request, or the request failed: one pure
function of the answer, the attempt and the retry policy (docs/architecture.md §7 has the
table; tests/unit/test_outcome.py checks every row of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from worker.errors import DidwwError, Halting, Rejected
from worker.retry import RetryPolicy

# A message whose retry would come after its campaign expires is offered again this long
# after the expiry, so the claim script, on Redis's clock, finds it expired and never posts
# it; the grace covers the workers' clocks running a little ahead of Redis's.
EXPIRY_GRACE_S = 1.0


class Kind(StrEnum):
    ACCEPTED = "accepted"  # DIDWW took it: record its id, wait for its callback
    REJECTED = "rejected"  # refused for good (a 4xx about the message)
    HALT = "halt"  # wrong for every message (401, a wrong URL): stop the trunk
    UNKNOWN = "unknown"  # it may have reached DIDWW: never post it again
    RETRY = "retry"  # surely not taken: back to queued, offered again in retry_in_s
    BACK_OFF = "back_off"  # retries spent: the trunk backs off backoff_s, the message waits
    EXPIRED = "expired"  # a retry would come too late: offered once expired, never posted


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    # RETRY and EXPIRED: when to offer the message again, from now.
    retry_in_s: float | None = None
    # BACK_OFF: how long the trunk stops.
    backoff_s: float = 0.0


ACCEPTED = Outcome(Kind.ACCEPTED)


def decide(
    answer: str | DidwwError,
    attempts: int,
    policy: RetryPolicy,
    *,
    now: float,
    expires_at: float,
) -> Outcome:
    """The outcome of one request: answer is DIDWW's id (a 201) or the error the request
    ended with (worker/didww.py maps every answer to one); attempts counts the requests the
    message has had, this one included; now and expires_at are Unix seconds."""
    if isinstance(answer, str):
        return ACCEPTED
    if isinstance(answer, Rejected):
        return Outcome(Kind.REJECTED)
    if isinstance(answer, Halting):
        return Outcome(Kind.HALT)
    if not policy.retries(answer):
        # Ambiguous (unless SMSQ_AMBIGUOUS=resend), or an error no class above claims: the
        # request may have taken effect, so it is never sent again.
        return Outcome(Kind.UNKNOWN)
    decision = policy.decide(answer, attempts)
    if decision.retry_in_s is None:
        return Outcome(Kind.BACK_OFF, backoff_s=decision.backoff_s)
    if now + decision.retry_in_s >= expires_at:
        return Outcome(Kind.EXPIRED, retry_in_s=max(0.0, expires_at - now) + EXPIRY_GRACE_S)
    return Outcome(Kind.RETRY, retry_in_s=decision.retry_in_s)


__all__ = ["ACCEPTED", "EXPIRY_GRACE_S", "Kind", "Outcome", "decide"]

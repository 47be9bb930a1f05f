"""Message states and the moves allowed between them: the ledger's rules in one place.

queued -> sending -> accepted -> sent | failed, with the side exits rejected, expired, unknown,
cancelled. Terminal states never change; the Lua scripts enforce the same table.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    ACCEPTED = "accepted"
    SENT = "sent"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"


ALL_STATES: tuple[State, ...] = tuple(State)

TERMINAL: frozenset[State] = frozenset(
    {State.SENT, State.FAILED, State.REJECTED, State.EXPIRED, State.CANCELLED}
)

# A campaign is done when nothing is waiting to be posted or waiting for its callback.
PENDING: frozenset[State] = frozenset({State.QUEUED, State.SENDING, State.ACCEPTED})

# unknown is not terminal: a late callback matched to the message settles it.
ALLOWED: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.SENDING, State.EXPIRED, State.CANCELLED}),
    # sending -> queued only when the request surely never reached DIDWW (401, retries spent).
    State.SENDING: frozenset({State.QUEUED, State.ACCEPTED, State.REJECTED, State.UNKNOWN}),
    State.ACCEPTED: frozenset({State.SENT, State.FAILED}),
    # unknown -> rejected: a lost worker's request was swept to unknown, then answered 400.
    State.UNKNOWN: frozenset({State.ACCEPTED, State.SENT, State.FAILED, State.REJECTED}),
}


def can_move(src: State, dst: State) -> bool:
    return dst in ALLOWED.get(src, frozenset())


class CampaignState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"

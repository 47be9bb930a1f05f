"""Message states and the moves allowed between them: the ledger's rules in one place.

queued -> sending -> accepted -> sent | failed, with the side exits rejected, expired, unknown,
unconfirmed, suppressed, cancelled. The Lua scripts enforce the same table (ledger/lua/).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


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
    # Accepted by DIDWW, but no callback came within SMSQ_CALLBACK_TIMEOUT_S.
    UNCONFIRMED = "unconfirmed"
    # On the opt-out list when enqueued or when its turn came: never posted.
    SUPPRESSED = "suppressed"


class Code(IntEnum):
    """A state as the one byte that stores it in a message record (ledger/records.py and
    ledger/lua/_common.lua). Append only: stored records keep their meaning."""

    QUEUED = 0
    SENDING = 1
    ACCEPTED = 2
    SENT = 3
    FAILED = 4
    REJECTED = 5
    EXPIRED = 6
    UNKNOWN = 7
    CANCELLED = 8
    UNCONFIRMED = 9
    SUPPRESSED = 10


ALL_STATES: tuple[State, ...] = tuple(State)
STATE_OF_CODE: dict[int, State] = {int(code): State(code.name.lower()) for code in Code}
CODE_OF_STATE: dict[State, int] = {state: code for code, state in STATE_OF_CODE.items()}

TERMINAL: frozenset[State] = frozenset(
    {
        State.SENT,
        State.FAILED,
        State.REJECTED,
        State.EXPIRED,
        State.CANCELLED,
        State.UNCONFIRMED,
        State.SUPPRESSED,
    }
)

# A campaign is done when nothing is waiting to be posted or waiting for its callback.
PENDING: frozenset[State] = frozenset({State.QUEUED, State.SENDING, State.ACCEPTED})

# unknown and unconfirmed are final for the campaign, yet a late callback still settles them.
ALLOWED: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.SENDING, State.EXPIRED, State.CANCELLED, State.SUPPRESSED}),
    # sending -> queued only when the request surely never reached DIDWW (a retry, a 401);
    # -> suppressed: claimed, its reply lost before it was written, and opted out meanwhile.
    State.SENDING: frozenset(
        {State.QUEUED, State.ACCEPTED, State.REJECTED, State.UNKNOWN, State.SUPPRESSED}
    ),
    State.ACCEPTED: frozenset({State.SENT, State.FAILED, State.UNCONFIRMED}),
    # unknown -> rejected or accepted: a lost worker's request was swept to unknown, then its
    # answer was recorded after all; unknown -> queued: its answer says it was never sent.
    State.UNKNOWN: frozenset(
        {State.ACCEPTED, State.SENT, State.FAILED, State.REJECTED, State.QUEUED}
    ),
    State.UNCONFIRMED: frozenset({State.SENT, State.FAILED}),
}


def can_move(src: State, dst: State) -> bool:
    return dst in ALLOWED.get(src, frozenset())


class CampaignState(StrEnum):
    # Waits in Redis for its send_at time; `smsq reschedule` moves it, `cancel` ends it.
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"

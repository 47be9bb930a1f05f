"""The per-recipient report of a campaign: one row per message, streamed from its records
(`smsq report`, GET /v1/campaigns/{id}/messages), and the choice of recipients to resend.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ledger import keys
from ledger.campaigns import Campaign, scan_records
from ledger.errors import InputError
from ledger.reasons import reason_for
from ledger.records import RAW_ID, Record
from ledger.states import ALL_STATES, State

COLUMNS = (
    "index",
    "message_id",
    "destination",
    "state",
    "didww_id",
    "status",
    "code_id",
    "reason",
    "fragments",
    "time_start",
    "time_end",
    "attempts",
)
FORMATS = ("csv", "jsonl")
# Rows turned into text per chunk of output.
CHUNK_ROWS = 2000
# States a resend may pick: those in which the recipient did not get the message.
RESENDABLE = frozenset(
    {State.FAILED, State.UNKNOWN, State.EXPIRED, State.UNCONFIRMED, State.REJECTED, State.CANCELLED}
)


def parse_states(text: str | None, allowed: Iterable[State] = ALL_STATES) -> frozenset[State]:
    """A comma-separated list of states ('' or None: all of `allowed`)."""
    allowed = frozenset(allowed)
    if not text:
        return allowed
    chosen = set()
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        try:
            state = State(name)
        except ValueError:
            raise InputError(
                f"unknown state {part.strip()!r}; states are {', '.join(sorted(allowed))}"
            ) from None
        if state not in allowed:
            raise InputError(f"state {name!r} cannot be chosen here ({', '.join(sorted(allowed))})")
        chosen.add(state)
    return frozenset(chosen)


def parse_codes(text: str | None) -> frozenset[int] | None:
    """A comma-separated list of DIDWW code_ids, or None for any."""
    if not text:
        return None
    try:
        return frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--code wants whole numbers separated by commas, not {text!r}") from None


@dataclass(frozen=True, slots=True)
class Filter:
    states: frozenset[State]
    codes: frozenset[int] | None = None

    def __call__(self, record: Record) -> bool:
        if record.state not in self.states:
            return False
        return self.codes is None or record.code_id in self.codes


def row(c: Campaign, record: Record, raw_ids: dict[int, str]) -> dict[str, Any]:
    didww_id = record.didww_id
    if record.flags & RAW_ID:
        didww_id = raw_ids.get(record.index)
    has_callback = record.state in (State.SENT, State.FAILED)
    return {
        "index": record.index,
        "message_id": c.message_id(record.index),
        "destination": record.destination,
        "state": str(record.state),
        "didww_id": didww_id,
        "status": record.status or None,
        "code_id": record.code_id,
        "reason": reason_for(record.code_id) if has_callback else None,
        "fragments": record.fragments,
        "time_start": record.time_start,
        "time_end": record.time_end,
        "attempts": record.attempts,
    }


async def rows(redis: Redis, c: Campaign, keep: Filter) -> AsyncIterator[dict[str, Any]]:
    """The campaign's rows in index order, a batch's worth of Redis reads at a time."""
    raw = await redis.hgetall(keys.raw_ids(c.id))
    raw_ids = {int(k): v.decode() for k, v in raw.items()}
    async for record in scan_records(redis, c):
        if keep(record):
            yield row(c, record, raw_ids)


async def render(
    redis: Redis, c: Campaign, keep: Filter, fmt: str, header: bool = True
) -> AsyncIterator[str]:
    """The report as text chunks (CSV with a header, or one JSON object per line)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use csv or jsonl")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == "csv" and header:
        writer.writerow(COLUMNS)
    count = 0
    async for item in rows(redis, c, keep):
        if fmt == "csv":
            writer.writerow(["" if item[k] is None else item[k] for k in COLUMNS])
        else:
            buffer.write(json.dumps(item, ensure_ascii=False) + "\n")
        count += 1
        if count % CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()

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
from ledger.campaigns import Campaign, scan_records, scan_references
from ledger.errors import InputError
from ledger.reasons import reason_for
from ledger.records import NO_ID, RAW_ID, STATUS_UNIT, STATUSES, Record, id_text, iso_time
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
    # Last, so the columns before it keep the places they had before references.
    "reference",
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


_NONE: dict[int, str] = {}


def row(
    c: Campaign, record: Record, raw_ids: dict[int, str], references: dict[int, str] = _NONE
) -> dict[str, Any]:
    """One message's row, keyed by COLUMNS (`references`: index -> reference, where known)."""
    return dict(zip(COLUMNS, _values(c.id, record, raw_ids, references), strict=True))


# The states whose records hold DIDWW's callback: a status, a code's meaning and times.
_CALLBACK_STATES = frozenset({State.SENT, State.FAILED})
# States whose id bytes are not a DIDWW id (none yet, or the claiming owner's number).
_NO_ID_STATES = frozenset({State.QUEUED, State.SENDING})
_STATE_TEXT = {state: str(state) for state in State}


def _values(
    cid: str, record: Record, raw_ids: dict[int, str], references: dict[int, str]
) -> tuple[Any, ...]:
    """A row's values in COLUMNS order, None where a column is empty: what Record's
    properties give, each field read once, the id and times formatted by records.id_text
    and records.iso_time (0.92 us a row; row() as a dict of Record's properties took 5.7 us)."""
    index = record.index
    state = record.state
    flags = record.flags
    code_id = record.code_id
    if flags & RAW_ID:
        didww_id = raw_ids.get(index)
    elif state in _NO_ID_STATES or record.id_key == NO_ID:
        didww_id = None
    else:
        didww_id = id_text(record.id_key)
    if state in _CALLBACK_STATES:
        reason = reason_for(code_id)
        t1 = record.t1
        time_start = iso_time(t1) if t1 else None
        time_end = iso_time(t1 + record.t2) if t1 else None
    else:
        reason = time_start = time_end = None
    return (
        index,
        keys.message_id(cid, index),
        record.destination,
        _STATE_TEXT[state],
        didww_id,
        STATUSES[(flags // STATUS_UNIT) % 4] or None,
        code_id,
        reason,
        record.fragments,
        time_start,
        time_end,
        record.attempts,
        references.get(index),
    )


async def _raw_ids(redis: Redis, c: Campaign) -> dict[int, str]:
    raw = await redis.hgetall(keys.raw_ids(c.id))
    return {int(k): v.decode() for k, v in raw.items()}


async def rows(redis: Redis, c: Campaign, keep: Filter) -> AsyncIterator[dict[str, Any]]:
    """The campaign's rows in index order, a batch's worth of Redis reads at a time."""
    async for chunk in value_chunks(redis, c, keep):
        for values in chunk:
            yield dict(zip(COLUMNS, values, strict=True))


async def value_chunks(
    redis: Redis, c: Campaign, keep: Filter, size: int | None = None
) -> AsyncIterator[list[tuple[Any, ...]]]:
    """The rows' values (COLUMNS order, None for empty) in index order, `size` rows
    (CHUNK_ROWS) per list: memory stays flat, and the formats write a list in one call."""
    size = size or CHUNK_ROWS
    raw_ids = await _raw_ids(redis, c)
    # A campaign with references has them read a batch at a time, alongside its records.
    references: dict[int, str] = {}
    found = scan_references(redis, c, references) if c.references else scan_records(redis, c)
    chunk: list[tuple[Any, ...]] = []
    async for record in found:
        if keep(record):
            chunk.append(_values(c.id, record, raw_ids, references))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


# One encoder for every line: json.dumps with an option builds a new one per call
# (docs/architecture.md D18).
_JSON = json.JSONEncoder(ensure_ascii=False)


async def render(
    redis: Redis, c: Campaign, keep: Filter, fmt: str, header: bool = True
) -> AsyncIterator[str]:
    """The report as text chunks (CSV with a header, or one JSON object per line), one per
    CHUNK_ROWS rows."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use csv or jsonl")
    buffer = io.StringIO()
    # The csv module writes None as an empty field.
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == "csv" and header:
        writer.writerow(COLUMNS)
    encode = _JSON.encode
    async for chunk in value_chunks(redis, c, keep):
        if fmt == "csv":
            writer.writerows(chunk)
        else:
            buffer.write(
                "".join(
                    [encode(dict(zip(COLUMNS, values, strict=True))) + "\n" for values in chunk]
                )
            )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        # No row: the header alone.
        yield buffer.getvalue()

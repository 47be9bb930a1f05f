"""A message as the ledger stores it: a fixed-size binary record, 35 bytes, in its batch's
string (``smsq:campaign:{cid}:batch:{b}``); the Lua scripts read and write the same layout.

Why binary: a finished campaign is kept for SMSQ_RETENTION_S so it can be reported and resent,
and months of campaigns share one Redis; 35 bytes per message (plus about 1 per message for
the batch key) is what a per-recipient report needs, where a hash field per message costs
70 to 250. ``smsq report`` decodes it; ``redis-cli`` shows bytes.

Layout (big-endian; offsets from 0):
 0  state       1  ledger.states.Code
 1  attempts    1  requests posted for it so far
 2  fragments   1  SMS parts: the estimate until a callback says DIDWW's fragments_sent
 3  flags       1  LATE (settled after unknown or unconfirmed), MATCHED (by number and
                   time, not id), RAW_ID (the DIDWW id is not a UUID: see keys.raw_ids); bits
                   3-4: DIDWW's callback status (STATUSES)
 4  code        2  DIDWW's code_id + 1; 0 when none
 6  destination 7  the number, E.164 digits as an integer
13  t1          4  Unix seconds: claimed (sending), posted (unknown), accepted (accepted,
                   unconfirmed), DIDWW's time_start (sent, failed)
17  t2          2  seconds from t1 to DIDWW's time_end (sent, failed), at most 65,535
19  id         16  the DIDWW id's key once accepted (a UUID's 16 bytes); while sending, the
                   claiming owner's number in the first 4 bytes
"""

from __future__ import annotations

import functools
import hashlib
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.states import STATE_OF_CODE, Code, State

RECORD = struct.Struct(">BBBBH7sIH16s")
SIZE = RECORD.size
# Flag bits.
LATE = 1
MATCHED = 2
RAW_ID = 4
# DIDWW's callback status, in flag bits 3-4 (code * STATUS_UNIT).
STATUS_UNIT = 8
STATUSES = ("", "Success", "Routing Error", "Failed")
# The largest fragments and attempts a byte holds; bigger values are stored as this.
BYTE_MAX = 255
NO_ID = bytes(16)


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded message record; index is its position in the campaign."""

    index: int
    state: State
    destination: str
    attempts: int
    fragments: int
    flags: int
    code_id: int | None
    t1: int
    t2: int
    id_key: bytes

    @property
    def didww_id(self) -> str | None:
        """The DIDWW id, when the record holds one as a UUID (see RAW_ID)."""
        if (
            self.id_key == NO_ID
            or self.flags & RAW_ID
            or self.state
            in (
                State.QUEUED,
                State.SENDING,
            )
        ):
            return None
        return str(uuid.UUID(bytes=self.id_key))

    @property
    def status(self) -> str:
        """DIDWW's callback status (Success, Routing Error, Failed), '' before a callback."""
        return STATUSES[(self.flags // STATUS_UNIT) % 4]

    @property
    def owner(self) -> int | None:
        """The owner (worker process) number that claimed it, while sending."""
        if self.state is not State.SENDING:
            return None
        return int.from_bytes(self.id_key[:4], "big")

    @property
    def time_start(self) -> str | None:
        if self.state not in (State.SENT, State.FAILED) or not self.t1:
            return None
        return _iso(self.t1)

    @property
    def time_end(self) -> str | None:
        if self.state not in (State.SENT, State.FAILED) or not self.t1:
            return None
        return _iso(self.t1 + self.t2)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def queued(destination: str, fragments: int = 1) -> bytes:
    """The record of a newly enqueued message."""
    return RECORD.pack(
        Code.QUEUED, 0, min(fragments, BYTE_MAX), 0, 0, _dest(destination), 0, 0, NO_ID
    )


def pack(
    state: State,
    destination: str,
    *,
    attempts: int = 0,
    fragments: int = 1,
    flags: int = 0,
    code_id: int | None = None,
    t1: int = 0,
    t2: int = 0,
    id_key: bytes = NO_ID,
) -> bytes:
    """Any record; tests and resends build them with this."""
    code = Code[state.name]
    return RECORD.pack(
        code,
        min(attempts, BYTE_MAX),
        min(fragments, BYTE_MAX),
        flags,
        0 if code_id is None else code_id + 1,
        _dest(destination),
        t1,
        min(t2, 65535),
        id_key,
    )


def pack_new(state: State, destinations: Sequence[str], fragments: Sequence[int]) -> bytes:
    """The records of messages just stored in `state` (queued, or suppressed at enqueue), one
    after another as a batch string holds them: the bytes b"".join(pack(state, d,
    fragments=f) for d, f in zip(destinations, fragments)) gives, in about a third of the time,
    as only the destination and fragments differ (docs/architecture.md D17)."""
    if len(destinations) != len(fragments):
        raise ValueError("one fragments count per destination")
    kinds = set(fragments)
    # Each record is head (state to code), destination, tail (t1, t2, id).
    heads, tail = {}, b""
    for count in kinds:
        record = pack(state, "0", fragments=count)
        heads[count], tail = record[:6], record[13:]
    if len(kinds) == 1:
        head = heads[fragments[0]]
        dests = [int(d).to_bytes(7, "big") for d in destinations]
        return head + (tail + head).join(dests) + tail
    return b"".join(
        [
            heads[f] + int(d).to_bytes(7, "big") + tail
            for d, f in zip(destinations, fragments, strict=True)
        ]
    )


def _dest(destination: str) -> bytes:
    return int(destination).to_bytes(7, "big")


def _record(index: int, fields: tuple[int, int, int, int, int, bytes, int, int, bytes]) -> Record:
    state, attempts, fragments, flags, code, dest, t1, t2, key = fields
    return Record(
        index,
        STATE_OF_CODE[state],
        str(int.from_bytes(dest, "big")),
        attempts,
        fragments,
        flags,
        None if code == 0 else code - 1,
        t1,
        t2,
        key,
    )


def unpack(index: int, raw: bytes) -> Record:
    return _record(index, RECORD.unpack(raw))


def iter_batch(first_index: int, data: bytes) -> Iterator[Record]:
    """Every record of a batch string whose first message has index first_index."""
    for offset, fields in enumerate(RECORD.iter_unpack(data)):
        yield _record(first_index + offset, fields)


def id_text(key: bytes) -> str:
    """A UUID key's text, spelled as str(uuid.UUID(bytes=key)) spells it (lower-case hex,
    8-4-4-4-12): 0.36 us against uuid.UUID's 1.58 us, 1.2 s of a million-row report."""
    h = key.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@functools.lru_cache(maxsize=4096)
def iso_time(seconds: int) -> str:
    """Unix seconds as the report shows them (2024-05-01T12:00:00Z), remembered: a
    campaign's records share a few seconds each, so a report formats each one once
    (docs/architecture.md D18); 4096 entries, flat memory."""
    return _iso(seconds)


def id_key(didww_id: str) -> tuple[bytes, bool]:
    """The 16-byte key a DIDWW id is stored and indexed under, and whether it is raw: a UUID
    (what DIDWW returns) is its own 16 bytes; anything else is hashed, and the id itself is
    kept beside the campaign (keys.raw_ids)."""
    try:
        parsed = uuid.UUID(didww_id)
    except ValueError:
        parsed = None
    # Only the canonical spelling is stored as a UUID, so the report shows the id as sent.
    if parsed is not None and str(parsed) == didww_id:
        return parsed.bytes, False
    return hashlib.blake2b(didww_id.encode(), digest_size=16).digest(), True


__all__ = [
    "LATE",
    "MATCHED",
    "RAW_ID",
    "SIZE",
    "Code",
    "Record",
    "id_key",
    "id_text",
    "iso_time",
    "iter_batch",
    "pack",
    "pack_new",
    "queued",
    "unpack",
]

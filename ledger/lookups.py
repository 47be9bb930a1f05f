"""Lists and lookups for other applications: campaigns newest first with filters and a cursor,
one message by its id, and a page of a campaign's messages (docs/api.md "Lists and lookups").

Each call does bounded work whatever the data: a filtered list reads at most SCAN_FACTOR times
its limit of campaigns and a page of messages at most SCAN_MESSAGES records, then answers with
what it found and a cursor to go on from. A page may therefore hold fewer items than asked;
only a missing cursor means the end.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ledger import keys, records
from ledger.campaigns import Campaign, Status, TrunkStatus, decode_counts, decode_refs
from ledger.core import LedgerCore
from ledger.errors import InputError
from ledger.records import Record
from ledger.states import State

# The most items one page may hold (GET /v1/campaigns?limit=, smsq list --limit).
MAX_LIMIT = 500
# A filtered list reads at most this many times `limit` campaigns per call.
SCAN_FACTOR = 10
# Campaigns created in the same microsecond as a page's last, read again to skip them.
TIES_READ = 8
# A page of messages reads at most this many records (a few hundred KB of Redis reads).
SCAN_MESSAGES = 20_000
# Campaign states a list can be filtered by (Status.state's values).
CAMPAIGN_STATES = ("scheduled", "active", "paused", "cancelled", "done")
# The fields of a campaign in a list: its status without what costs a read per campaign
# (its send rate, its trunk's flags, Redis's warnings).
SUMMARY_FIELDS = (
    "campaign_id",
    "name",
    "trunk",
    "state",
    "total",
    "counts",
    "done",
    "created_at",
    "send_at",
    "expires_at",
    "done_at",
    "parent",
    "priority",
)
# A list's rows carry no trunk status: a stand-in the summary drops.
_NO_TRUNK = TrunkStatus("", None, None, 0, 0, {})


@dataclass(frozen=True, slots=True)
class CampaignFilter:
    """What GET /v1/campaigns and `smsq list` filter on; None means any."""

    state: str | None = None
    # Campaigns whose name contains this, ignoring case.
    name: str | None = None
    trunk: str | None = None
    created_after: float | None = None
    created_before: float | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in CAMPAIGN_STATES:
            raise InputError(
                f"unknown campaign state {self.state!r}; states are {', '.join(CAMPAIGN_STATES)}",
                code="invalid_filter",
            )

    def matches(self, row: dict[str, Any]) -> bool:
        if self.state is not None and row["state"] != self.state:
            return False
        if self.trunk is not None and row["trunk"] != self.trunk:
            return False
        return self.name is None or self.name.casefold() in row["name"].casefold()


@dataclass(frozen=True, slots=True)
class Page:
    """Items in order, and the cursor of the next page (None: there is none)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError(f"limit must be 1 to {MAX_LIMIT}, not {limit}", code="invalid_limit")
    return limit


def encode_cursor(*parts: object) -> str:
    """An opaque cursor: the parts, URL-safe base64 (clients must not build one)."""
    text = "|".join(str(p) for p in parts)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, count: int) -> list[str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = base64.urlsafe_b64decode(padded.encode("ascii")).decode().split("|")
    except (ValueError, binascii.Error, UnicodeError):
        parts = []
    if len(parts) != count:
        raise InputError("the cursor is not one this API gave", code="invalid_cursor")
    return parts


def summary(c: Campaign, counts: dict[str, int]) -> dict[str, Any]:
    """A campaign's row in a list."""
    full = Status(c, counts, 0.0, _NO_TRUNK).as_dict()
    return {name: full[name] for name in SUMMARY_FIELDS}


def parse_message_id(message_id: str) -> tuple[str, int] | None:
    """(campaign id, index) of a message id `<cid>-<index>`, or None if it cannot be one."""
    cid, _, index = message_id.partition("-")
    if not keys.CAMPAIGN_ID.fullmatch(cid) or not index.isdigit() or len(index) > 9:
        return None
    return cid, int(index)


class Lookups(LedgerCore):
    """Part of ledger.store.Ledger."""

    async def list_campaigns(
        self, limit: int, cursor: str | None = None, where: CampaignFilter | None = None
    ) -> Page:
        """Campaigns newest first, `limit` at most, those `where` keeps; from `cursor` on."""
        check_limit(limit)
        where = where or CampaignFilter()
        top: float | str = "+inf" if where.created_before is None else where.created_before
        bottom: float | str = "-inf" if where.created_after is None else where.created_after
        last: tuple[float, str] | None = None
        if cursor is not None:
            score, cid = decode_cursor(cursor, 2)
            try:
                last = (float(score), cid)
            except ValueError:
                raise InputError(
                    "the cursor is not one this API gave", code="invalid_cursor"
                ) from None
        budget = limit * SCAN_FACTOR
        rows: list[dict[str, Any]] = []
        while len(rows) < limit and budget > 0:
            entries = await self._after(top, bottom, last, min(budget, 2 * limit))
            if not entries:
                return Page(rows, None)
            for entry, row in zip(
                entries, await self._summaries([c for _, c in entries]), strict=True
            ):
                budget -= 1
                last = entry
                if row is not None and where.matches(row):
                    rows.append(row)
                    if len(rows) == limit:
                        break
        more = last is not None and bool(await self._after(top, bottom, last, 1))
        return Page(rows, encode_cursor(*last) if more and last is not None else None)

    async def _after(
        self, top: float | str, bottom: float | str, last: tuple[float, str] | None, count: int
    ) -> list[tuple[float, str]]:
        """Up to `count` (creation time, id) of the index, newest first, after `last`. The
        index orders equal times by id, downwards: those down to `last`'s id are read again
        and skipped (TIES_READ of them at most)."""
        found = await self.redis.zrevrangebyscore(
            keys.campaigns(), top if last is None else last[0], bottom,
            start=0, num=count + TIES_READ, withscores=True,
        )  # fmt: skip
        entries = [(float(score), member.decode()) for member, score in found]
        if last is not None:
            entries = [e for e in entries if e < last]
        return entries[:count]

    async def _summaries(self, cids: Iterable[str]) -> list[dict[str, Any] | None]:
        """Each campaign's list row; None for one purged (or being written) meanwhile."""
        cids = list(cids)
        pipe = self.redis.pipeline(transaction=False)
        for cid in cids:
            pipe.hgetall(keys.campaign(cid))
            pipe.hgetall(keys.counts(cid))
        replies = await pipe.execute()
        out: list[dict[str, Any] | None] = []
        for i, cid in enumerate(cids):
            c = Campaign.stored(cid, replies[2 * i])
            if c is None:
                out.append(None)
                continue
            out.append(summary(c, decode_counts(replies[2 * i + 1])))
        return out

    async def message(
        self, message_id: str
    ) -> tuple[Campaign, Record, str | None, str | None] | None:
        """A message by its id: its campaign, its record, its raw DIDWW id where the record
        could not hold it and its reference; None if there is no such message."""
        parsed = parse_message_id(message_id)
        if parsed is None:
            return None
        cid, index = parsed
        c = Campaign.stored(cid, await self.redis.hgetall(keys.campaign(cid)))
        if c is None or c.batch_of(index) >= c.batches:
            return None
        offset = (index - c.first_index(c.batch_of(index))) * records.SIZE
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.getrange(keys.batch(cid, c.batch_of(index)), offset, offset + records.SIZE - 1)
            pipe.hget(keys.raw_ids(cid), str(index))
            if c.references:
                pipe.hget(keys.refs(cid, c.batch_of(index)), str(index))
            raw, raw_id, *reference = await pipe.execute()
        if len(raw) != records.SIZE:
            return None  # past the end of a batch that is not full
        ref = reference[0].decode() if reference and reference[0] else None
        return c, records.unpack(index, raw), raw_id.decode() if raw_id else None, ref

    async def message_page(
        self,
        c: Campaign,
        limit: int,
        cursor: str | None = None,
        states: frozenset[State] | None = None,
    ) -> tuple[list[Record], dict[int, str], dict[int, str], str | None]:
        """Up to `limit` of a campaign's records in index order (those in `states`), from
        `cursor` on, reading SCAN_MESSAGES records at most; their raw DIDWW ids (where the
        record could not hold one); their references (index -> reference); the next page's
        cursor, None at the end."""
        check_limit(limit)
        start = 0
        if cursor is not None:
            [text] = decode_cursor(cursor, 1)
            if not text.isdigit():
                raise InputError("the cursor is not one this API gave", code="invalid_cursor")
            start = int(text)
        found: list[Record] = []
        read = 0
        batch_no = c.batch_of(start)
        while batch_no < c.batches and len(found) < limit and read < SCAN_MESSAGES:
            data = await self.redis.get(keys.batch(c.id, batch_no)) or b""
            for record in records.iter_batch(c.first_index(batch_no), data):
                if record.index < start:
                    continue
                read += 1
                start = record.index + 1
                if states is None or record.state in states:
                    found.append(record)
                    if len(found) == limit:
                        break
            else:
                # The batch is read to its end: the next one starts at its own first index.
                batch_no += 1
                start = c.first_index(batch_no)
        raw = await self.redis.hgetall(keys.raw_ids(c.id)) if found else {}
        raw_ids = {int(k): v.decode() for k, v in raw.items()}
        references: dict[int, str] = {}
        if found and c.references:
            async with self.redis.pipeline(transaction=False) as pipe:
                for b in range(c.batch_of(found[0].index), c.batch_of(found[-1].index) + 1):
                    pipe.hgetall(keys.refs(c.id, b))
                for reply in await pipe.execute():
                    references.update(decode_refs(reply))
        more = batch_no < c.batches and start < c.first_index(batch_no) + c.batch_size
        if more and batch_no == c.batches - 1:
            # The last batch may be short: is anything left after `start`?
            length = await self.redis.strlen(keys.batch(c.id, batch_no))
            more = start < c.first_index(batch_no) + length // records.SIZE
        return found, raw_ids, references, encode_cursor(start) if more else None


__all__ = [
    "CAMPAIGN_STATES",
    "MAX_LIMIT",
    "CampaignFilter",
    "Lookups",
    "Page",
    "parse_message_id",
]

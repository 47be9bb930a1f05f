"""A campaign as stored (its hash), its counts and records, and its status: what the
`smsq` command, the HTTP API and the workers read about a campaign.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ledger import keys, records
from ledger.records import Record
from ledger.states import PENDING, CampaignState, State

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Seconds of posting history the status command averages the send rate over.
RATE_WINDOW_S = 10
# Batch strings read per Redis round trip when a whole campaign is scanned (report, resend).
SCAN_BATCHES = 100
# Joins a templated message's values (in the order of the campaign's `fields`) in its
# batch's fields hash: the unit separator, which recipients files cannot usefully contain.
FIELD_SEPARATOR = "\x1f"


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    source: str
    text: str
    name: str
    trunk: str
    total: int
    batch_size: int
    batches: int
    created_at: float
    expires_at: float
    state: str
    encoding: str
    segments: int
    priority: bool
    send_at: float = 0.0
    fields: tuple[str, ...] = ()
    window: str = ""
    timezone: str = ""
    parent: str = ""
    done_at: float | None = None
    enqueue: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, cid: str, raw: dict[bytes, bytes]) -> Campaign:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=cid,
            source=h["source"],
            text=h["text"],
            name=h.get("name", ""),
            trunk=h.get("trunk", "default"),
            total=int(h["total"]),
            batch_size=int(h["batch_size"]),
            batches=int(h["batches"]),
            created_at=float(h["created_at"]),
            expires_at=float(h["expires_at"]),
            state=h.get("state", CampaignState.ACTIVE),
            encoding=h.get("encoding", ""),
            segments=int(h.get("segments", "0")),
            priority=h.get("priority") == "1",
            send_at=float(h.get("send_at") or 0),
            fields=tuple(f for f in h.get("fields", "").split(",") if f),
            window=h.get("window", ""),
            timezone=h.get("timezone", ""),
            parent=h.get("parent", ""),
            done_at=float(h["done_at"]) if h.get("done_at") else None,
            enqueue=json.loads(h["enqueue"]) if h.get("enqueue") else {},
        )

    def batch_of(self, index: int) -> int:
        return index // self.batch_size

    def first_index(self, batch_no: int) -> int:
        return batch_no * self.batch_size

    def message_id(self, index: int) -> str:
        return keys.message_id(self.id, index)

    @property
    def templated(self) -> bool:
        return bool(self.fields)


@dataclass(frozen=True, slots=True)
class TrunkStatus:
    """What holds a trunk's campaigns back, and callbacks nobody has claimed yet."""

    name: str
    halted: str | None
    backoff: str | None
    parked_batches: int
    orphans_waiting: int
    stats: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "halted": self.halted is not None,
            "halted_why": _why(self.halted),
            "backing_off": self.backoff is not None,
            "backoff_why": _why(self.backoff),
            "parked_batches": self.parked_batches,
            "orphan_callbacks_waiting": self.orphans_waiting,
            "stats": self.stats,
        }


def _why(flag: str | None) -> str | None:
    if flag is None:
        return None
    try:
        return str(json.loads(flag).get("detail"))
    except (ValueError, AttributeError):
        return flag


@dataclass(frozen=True, slots=True)
class Status:
    campaign: Campaign
    counts: dict[str, int]
    rate_per_s: float
    trunk: TrunkStatus
    warnings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.campaign.done_at is not None or all(self.counts.get(s, 0) == 0 for s in PENDING)

    @property
    def state(self) -> str:
        """scheduled, active, paused, cancelled or done (a cancelled campaign stays
        cancelled even once nothing of it is pending)."""
        c = self.campaign
        if c.state == CampaignState.CANCELLED:
            return c.state
        if self.done:
            return "done"
        if c.state == CampaignState.SCHEDULED and c.send_at > time.time():
            return c.state
        return CampaignState.ACTIVE if c.state == CampaignState.SCHEDULED else c.state

    def as_dict(self) -> dict[str, Any]:
        c = self.campaign
        return {
            "campaign_id": c.id,
            "name": c.name,
            "trunk": c.trunk,
            "state": self.state,
            "total": c.total,
            "counts": self.counts,
            "rate_per_s": round(self.rate_per_s, 2),
            "done": self.done,
            "created_at": c.created_at,
            "send_at": c.send_at or None,
            "expires_at": c.expires_at,
            "done_at": c.done_at,
            "parent": c.parent or None,
            "priority": c.priority,
            "trunk_status": self.trunk.as_dict(),
            "warnings": list(self.warnings),
            **self.extra,
        }


async def read_campaign(redis: Redis, cid: str) -> Campaign | None:
    if not keys.CAMPAIGN_ID.fullmatch(cid):
        return None
    raw = await redis.hgetall(keys.campaign(cid))
    return Campaign.from_hash(cid, raw) if raw and b"batches" in raw else None


async def read_counts(redis: Redis, cid: str) -> dict[str, int]:
    raw = await redis.hgetall(keys.counts(cid))
    counts = {str(s): 0 for s in State}
    counts.update({k.decode(): int(v) for k, v in raw.items()})
    return counts


async def read_batch(redis: Redis, c: Campaign, batch_no: int) -> list[Record]:
    data = await redis.get(keys.batch(c.id, batch_no))
    return list(records.iter_batch(c.first_index(batch_no), data or b""))


async def scan_records(redis: Redis, c: Campaign) -> AsyncIterator[Record]:
    """Every record of a campaign in index order, SCAN_BATCHES batches per round trip, so
    memory stays flat however large the campaign."""
    for start in range(0, c.batches, SCAN_BATCHES):
        numbers = range(start, min(start + SCAN_BATCHES, c.batches))
        pipe = redis.pipeline(transaction=False)
        for batch_no in numbers:
            pipe.get(keys.batch(c.id, batch_no))
        for batch_no, data in zip(numbers, await pipe.execute(), strict=True):
            for record in records.iter_batch(c.first_index(batch_no), data or b""):
                yield record


async def send_rate(redis: Redis, cid: str) -> float:
    """Requests posted per second over the last RATE_WINDOW_S seconds, averaged from the
    first busy second, so a campaign that started three seconds ago is not shown at a third
    of its rate."""
    now = int(time.time())
    ring = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.posted(cid))).items()}
    by_second = {
        ring[f"s{slot}"]: ring.get(f"n{slot}", 0)
        for slot in range(keys.POSTED_RING_S)
        if f"s{slot}" in ring
    }
    posted = [by_second.get(s, 0) for s in range(now - RATE_WINDOW_S, now)]
    busy = next((i for i, p in enumerate(posted) if p), None)
    return sum(posted) / (len(posted) - busy) if busy is not None else 0.0

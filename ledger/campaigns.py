"""A campaign as stored: its hash (the Campaign type is the one home of that format), its
template values, its counts and records, and its status: what the `smsq` command, the HTTP
API, the workers and the ingester read about a campaign (docs/architecture.md §3).

The Lua scripts read some of the hash's fields too (batch_size, source, trunk, state,
send_at, expires_at, done_at); tests/unit/test_campaigns.py checks they name only fields
this module writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from redis.exceptions import WatchError

from ledger import keys, records
from ledger.errors import CampaignFinished
from ledger.quiet_hours import QuietHours
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


def _time(value: float) -> str:
    return f"{value:.3f}"


def _optional_time(value: float | None) -> str:
    return f"{value:.3f}" if value else ""


def _read_optional_time(text: str) -> float | None:
    return float(text) if text else None


# Per attribute: (stored form, read back, default when the field is absent). Absent fields
# are those of campaigns written before the field existed.
_CODEC: dict[str, tuple[Callable[[Any], str], Callable[[str], Any], str | None]] = {
    "source": (str, str, None),
    "text": (str, str, None),
    "name": (str, str, ""),
    "trunk": (str, str, "default"),
    "total": (str, int, None),
    "batch_size": (str, int, None),
    "batches": (str, int, None),
    "created_at": (_time, float, None),
    "expires_at": (_time, float, None),
    "state": (str, str, CampaignState.ACTIVE),
    "encoding": (str, str, ""),
    "segments": (str, int, "0"),
    "priority": (lambda v: "1" if v else "0", lambda t: t == "1", "0"),
    "send_at": (_optional_time, lambda t: float(t or 0), ""),
    "fields": (",".join, lambda t: tuple(f for f in t.split(",") if f), ""),
    "references": (lambda v: "1" if v else "0", lambda t: t == "1", "0"),
    "window": (str, str, ""),
    "timezone": (str, str, ""),
    "parent": (str, str, ""),
    "done_at": (_optional_time, _read_optional_time, ""),
    "enqueue": (json.dumps, lambda t: json.loads(t) if t else {}, ""),
}


@dataclass(frozen=True, slots=True)
class Campaign:
    """A campaign's hash ``smsq:campaign:{cid}``: each attribute but `id` is one field."""

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
    # Whether any recipient carried a reference (smsq:campaign:{cid}:refs:{b} then hold them).
    references: bool = False
    window: str = ""
    timezone: str = ""
    parent: str = ""
    done_at: float | None = None
    # What the enqueue reported besides the messages (rejected, duplicates, ...), for status.
    enqueue: dict[str, Any] = field(default_factory=dict)

    # The hash's fields: every attribute but the id.
    FIELDS: ClassVar[tuple[str, ...]] = tuple(_CODEC)

    def to_hash(self) -> dict[str, str]:
        """The hash as stored; done_at only once there is one (the scripts set it with
        HSETNX when the last message settles)."""
        out = self.encode(**{name: getattr(self, name) for name in _CODEC})
        if self.done_at is None:
            del out["done_at"]
        return out

    @staticmethod
    def encode(**values: Any) -> dict[str, str]:
        """Some attributes in their stored form, for a change of those fields alone."""
        unknown = set(values) - set(_CODEC)
        if unknown:
            raise ValueError(f"not a campaign field: {', '.join(sorted(unknown))}")
        return {name: _CODEC[name][0](value) for name, value in values.items()}

    @classmethod
    def stored(cls, cid: str, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> Campaign | None:
        """The campaign a hash holds, or None for a hash that is not a whole campaign (one
        being written or purged, or no hash at all)."""
        try:
            return cls.from_hash(cid, raw) if raw else None
        except KeyError:
            return None

    @classmethod
    def from_hash(cls, cid: str, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> Campaign:
        """The campaign a hash holds; KeyError if it lacks a field every campaign has."""
        h = {_text(k): _text(v) for k, v in raw.items()}
        values: dict[str, Any] = {}
        for name, (_, read, default) in _CODEC.items():
            text = h.get(name, default)
            if text is None:
                raise KeyError(name)
            values[name] = read(text)
        return cls(id=cid, **values)

    def batch_of(self, index: int) -> int:
        return index // self.batch_size

    def first_index(self, batch_no: int) -> int:
        return batch_no * self.batch_size

    def message_id(self, index: int) -> str:
        return keys.message_id(self.id, index)

    @property
    def templated(self) -> bool:
        return bool(self.fields)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class CampaignHead:
    """What a scan of many campaigns reads of each: the figures of Campaign that say when and
    how fast it sends, without its text (the metrics scrape reads a thousand at once)."""

    id: str
    created_at: float
    send_at: float
    state: str
    trunk: str
    segments: int
    window: str
    priority: bool

    FIELDS: ClassVar[tuple[str, ...]] = (
        "created_at",
        "send_at",
        "state",
        "trunk",
        "segments",
        "window",
        "priority",
    )

    @classmethod
    def from_values(cls, cid: str, values: Sequence[bytes | str | None]) -> CampaignHead:
        """From an HMGET of FIELDS; a field missing (a hash half written or purged) reads as
        its default, and an unreadable hash as a campaign that has not begun."""
        found: dict[str, Any] = {}
        for name, value in zip(cls.FIELDS, values, strict=True):
            _, read, default = _CODEC[name]
            text = _text(value) if value else (default or "")
            try:
                found[name] = read(text)
            except ValueError:
                found[name] = read(default or "0")
        return cls(id=cid, **found)

    @property
    def start(self) -> float:
        """When it was due to begin: its send_at, or its creation."""
        return self.send_at or self.created_at


def queue_read_head(pipe: Any, cid: str) -> None:
    """Queue on a pipeline the read CampaignHead.from_values decodes."""
    pipe.hmget(keys.campaign(cid), CampaignHead.FIELDS)


# --- template values: smsq:campaign:{cid}:fields:{b} ----------------------------------------


def values_hash(first_index: int, values: Sequence[str]) -> dict[bytes, bytes]:
    """The fields hash of a batch whose messages from first_index on have these values (each
    already joined with FIELD_SEPARATOR). Keys and values are given as bytes, as redis-py
    would encode them: its encoder per argument costs more (docs/performance.md)."""
    return {b"%d" % n: v.encode() for n, v in enumerate(values, first_index)}


def decode_values(raw: Mapping[bytes, bytes]) -> dict[int, str]:
    """A batch's fields hash: message index -> its values, joined."""
    return {int(k): v.decode() for k, v in raw.items()}


def split_values(joined: str) -> list[str]:
    return joined.split(FIELD_SEPARATOR)


def join_values(values: Sequence[str]) -> str:
    return FIELD_SEPARATOR.join(values)


# --- references: smsq:campaign:{cid}:refs:{b} ----------------------------------------------

# A recipient's reference: the application's own id for the message (docs/api.md).
MAX_REFERENCE_CHARS = 64


def refs_hash(first_index: int, references: Sequence[str]) -> dict[bytes, bytes]:
    """The refs hash of a batch whose messages from first_index on carry these references;
    a message without one ('') has no field."""
    return {b"%d" % n: r.encode() for n, r in enumerate(references, first_index) if r}


def decode_refs(raw: Mapping[bytes, bytes]) -> dict[int, str]:
    """A batch's refs hash: message index -> its reference."""
    return {int(k): v.decode() for k, v in raw.items()}


# --- writing a new campaign -------------------------------------------------------------------


def queue_store(
    pipe: Any,
    campaign: Campaign,
    counts: Mapping[str, int],
    *,
    quiet_hours: QuietHours | None = None,
    urgent: Sequence[tuple[int, int]] = (),
) -> None:
    """Queue on a transaction pipeline (redis or redis.asyncio) what makes a written campaign
    exist, its batches being stored already: its counts, its hash, its quiet hours, its place
    in the campaigns index, its urgent messages (batch, index) in the trunk's lane and, for a
    campaign done at once (everyone opted out), its place in the retention set."""
    pipe.hset(keys.counts(campaign.id), mapping=dict(counts))
    pipe.hset(keys.campaign(campaign.id), mapping=campaign.to_hash())
    if quiet_hours is not None:
        pipe.hset(keys.windows(campaign.id), mapping=quiet_hours.to_hash())
    pipe.zadd(keys.campaigns(), {campaign.id: campaign.created_at})
    members = [keys.urgent_member(campaign.id, b, index) for b, index in urgent]
    for start in range(0, len(members), 1000):
        pipe.rpush(keys.urgent(campaign.trunk), *members[start : start + 1000])
    if campaign.done_at is not None:
        pipe.zadd(keys.retention(), {campaign.id: campaign.done_at})


@dataclass(frozen=True, slots=True)
class TrunkStatus:
    """One trunk's figures: what holds its campaigns back (a halt, a backoff, parked
    batches), the callbacks its token brought that nobody has claimed yet, its counters
    (smsq:stats' `name:trunk` fields) and the units it claimed in the last second."""

    name: str
    halted: str | None
    backoff: str | None
    parked_batches: int
    orphans_waiting: int
    stats: dict[str, int]
    claimed_per_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "halted": self.halted is not None,
            "halted_why": _why(self.halted),
            "backing_off": self.backoff is not None,
            "backoff_why": _why(self.backoff),
            "parked_batches": self.parked_batches,
            "orphan_callbacks_waiting": self.orphans_waiting,
            "claimed_per_s": self.claimed_per_s,
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
    return Campaign.stored(cid, await redis.hgetall(keys.campaign(cid)))


# What a pause, resume or cancel of an ended campaign is told.
FINISHED = "it can no longer be paused, resumed or cancelled"


async def set_state(redis: Redis, cid: str, state: CampaignState) -> bool:
    """Pause, resume or cancel a campaign. Resuming a scheduled campaign keeps it scheduled.
    False if there is no such campaign; CampaignFinished, changing nothing, if it has ended
    (cancelled, or nothing of it pending): a pause racing a cancel, or the last callback, is
    seen, since WATCH on its hash and its counts makes the read and the write one step."""
    key, counts_key = keys.campaign(cid), keys.counts(cid)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key, counts_key)
                c = Campaign.stored(cid, await pipe.hgetall(key))
                if c is None:
                    return False
                pending = await pipe.hmget(counts_key, [str(s) for s in PENDING])
                if c.state == CampaignState.CANCELLED:
                    raise CampaignFinished(f"campaign {cid} is cancelled: {FINISHED}")
                if c.done_at is not None or not any(int(n or 0) for n in pending):
                    raise CampaignFinished(f"campaign {cid} is done: {FINISHED}")
                if c.state == CampaignState.SCHEDULED and state == CampaignState.ACTIVE:
                    return True
                pipe.multi()
                pipe.hset(key, mapping=Campaign.encode(state=str(state)))
                await pipe.execute()
                return True
            except WatchError:
                continue


def decode_counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    """A campaign's counts hash as read: every state, 0 where the hash has none."""
    counts = {str(s): 0 for s in State}
    counts.update({k.decode(): int(v) for k, v in raw.items()})
    return counts


async def read_counts(redis: Redis, cid: str) -> dict[str, int]:
    return decode_counts(await redis.hgetall(keys.counts(cid)))


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


async def scan_references(
    redis: Redis, c: Campaign, references: dict[int, str]
) -> AsyncIterator[Record]:
    """As scan_records, for a campaign with references: while a record is yielded,
    `references` holds those of its batch (index -> reference), read in the same round trip."""
    for start in range(0, c.batches, SCAN_BATCHES):
        numbers = range(start, min(start + SCAN_BATCHES, c.batches))
        pipe = redis.pipeline(transaction=False)
        for batch_no in numbers:
            pipe.get(keys.batch(c.id, batch_no))
            pipe.hgetall(keys.refs(c.id, batch_no))
        replies = await pipe.execute()
        for i, batch_no in enumerate(numbers):
            references.clear()
            references.update(decode_refs(replies[2 * i + 1]))
            for record in records.iter_batch(c.first_index(batch_no), replies[2 * i] or b""):
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

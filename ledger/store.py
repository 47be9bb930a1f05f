"""The message ledger: campaigns and their messages in Redis, and every state change.

Each change runs as one Lua script, so a message moves at most once and its event is
published in the same atomic step; a task Celery delivers twice cannot send anything twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ledger import events, keys
from ledger.scripts import register
from ledger.settings import Settings
from ledger.states import PENDING, CampaignState, State


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    source: str
    text: str
    name: str
    total: int
    batch_size: int
    batches: int
    created_at: float
    expires_at: float
    state: str
    encoding: str
    segments: int
    priority: bool

    @classmethod
    def from_hash(cls, cid: str, raw: dict[bytes, bytes]) -> Campaign:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=cid,
            source=h["source"],
            text=h["text"],
            name=h.get("name", ""),
            total=int(h["total"]),
            batch_size=int(h["batch_size"]),
            batches=int(h["batches"]),
            created_at=float(h["created_at"]),
            expires_at=float(h["expires_at"]),
            state=h.get("state", CampaignState.ACTIVE),
            encoding=h.get("encoding", ""),
            segments=int(h.get("segments", "0")),
            priority=h.get("priority") == "1",
        )

    def batch_of(self, index: int) -> int:
        return index // self.batch_size

    def message_id(self, index: int) -> str:
        return keys.message_id(self.id, index)


@dataclass(frozen=True, slots=True)
class Record:
    """One message as the ledger holds it."""

    index: int
    state: State
    destination: str
    extra: str


def parse_record(index: int, raw: bytes | str) -> Record:
    text = raw.decode() if isinstance(raw, bytes) else raw
    state, _, rest = text.partition("|")
    destination, _, extra = rest.partition("|")
    return Record(index, State(state), destination, extra)


def encode_record(state: State, destination: str, extra: str = "") -> str:
    return f"{state}|{destination}|{extra}" if extra else f"{state}|{destination}"


@dataclass(frozen=True, slots=True)
class CallbackUpdate:
    """A validated DIDWW callback, ready for the ledger."""

    didww_id: str
    final_state: State
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Status:
    campaign: Campaign
    counts: dict[str, int]
    rate_per_s: float

    @property
    def done(self) -> bool:
        return all(self.counts.get(s, 0) == 0 for s in PENDING)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign.id,
            "name": self.campaign.name,
            "state": self.campaign.state,
            "total": self.campaign.total,
            "counts": self.counts,
            "rate_per_s": round(self.rate_per_s, 2),
            "done": self.done,
        }


def _outcome(reply: list[Any]) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in reply]


# Seconds of posting history the status command averages the send rate over.
RATE_WINDOW_S = 10


class Ledger:
    """Campaign and message state in Redis, shared by workers, the ingester and the CLI."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = register(redis)
        self.stream = settings.events_stream
        self.maxlen = settings.events_maxlen

    async def campaign(self, cid: str) -> Campaign | None:
        raw = await self.redis.hgetall(keys.campaign(cid))
        return Campaign.from_hash(cid, raw) if raw else None

    async def records(self, cid: str, batch_no: int) -> list[Record]:
        raw = await self.redis.hgetall(keys.batch(cid, batch_no))
        records = [parse_record(int(k), v) for k, v in raw.items()]
        records.sort(key=lambda r: r.index)
        return records

    def _event(self, c: Campaign, r: Record, didww_id: str | None = None, **extra: Any) -> str:
        return events.encode(
            events.message_event(
                c.id, c.message_id(r.index), r.destination, c.source, didww_id, **extra
            )
        )

    async def claim(self, c: Campaign, r: Record) -> list[str]:
        """queued -> sending. Returns the outcome (claimed, paused, halted, ...)."""
        now = time.time()
        reply = await self.scripts["claim"](
            keys=[
                keys.batch(c.id, c.batch_of(r.index)),
                keys.campaign(c.id),
                keys.counts(c.id),
                keys.halt(),
                self.stream,
                keys.posted(c.id, int(now)),
            ],
            args=[r.index, self._event(c, r), self.maxlen, f"{now:.3f}"],
        )
        return _outcome(reply)

    async def accept(self, c: Campaign, r: Record, didww_id: str) -> list[str]:
        """sending|unknown -> accepted, joining a callback that came first."""
        batch_no = c.batch_of(r.index)
        reply = await self.scripts["accept"](
            keys=[
                keys.batch(c.id, batch_no),
                keys.counts(c.id),
                self.stream,
                keys.didww(didww_id),
                keys.orphan(didww_id),
                keys.stats(),
            ],
            args=[
                r.index,
                didww_id,
                f"{c.id}|{batch_no}|{r.index}",
                self.settings.didww_id_ttl_s,
                self._event(c, r, didww_id),
                self.maxlen,
                c.id,
                c.message_id(r.index),
            ],
        )
        return _outcome(reply)

    async def move(
        self,
        c: Campaign,
        r: Record,
        sources: tuple[State, ...],
        target: State,
        *,
        extra: str = "",
        publish: bool = True,
        **event_fields: Any,
    ) -> bool:
        """Move a message from one of ``sources`` to ``target``; True if it moved."""
        reply = await self.scripts["transition"](
            keys=[keys.batch(c.id, c.batch_of(r.index)), keys.counts(c.id), self.stream],
            args=[
                r.index,
                ",".join(sources),
                target,
                extra,
                self._event(c, r, **event_fields) if publish else "",
                self.maxlen,
            ],
        )
        return _outcome(reply)[0] == "moved"

    async def reject(self, c: Campaign, r: Record, detail: str) -> bool:
        return await self.move(c, r, (State.SENDING,), State.REJECTED, detail=detail)

    async def mark_unknown(self, c: Campaign, r: Record, detail: str) -> bool:
        return await self.move(
            c, r, (State.SENDING,), State.UNKNOWN, extra=f"{time.time():.3f}", detail=detail
        )

    async def release(self, c: Campaign, r: Record) -> bool:
        """sending -> queued, for a request that surely never reached DIDWW."""
        return await self.move(c, r, (State.SENDING,), State.QUEUED, publish=False)

    async def apply_callback(self, update: CallbackUpdate) -> str:
        """Apply a callback once; returns applied, orphan or duplicate."""
        index_key = keys.didww(update.didww_id)
        found = await self.redis.get(index_key)
        for _ in range(3):
            indexed = found.decode() if isinstance(found, bytes) else (found or "")
            event = dict(update.event)
            batch_key, field, counts_key = keys.orphan(update.didww_id), "0", keys.stats()
            if indexed:
                cid, batch_no, index = indexed.split("|")
                batch_key, field, counts_key = (
                    keys.batch(cid, int(batch_no)),
                    index,
                    keys.counts(cid),
                )
                event["campaign_id"] = cid
                event["message_id"] = keys.message_id(cid, int(index))
            orphan = {"state": str(update.final_state), "event": update.event}
            reply = _outcome(
                await self.scripts["callback"](
                    keys=[
                        index_key,
                        keys.orphan(update.didww_id),
                        batch_key,
                        counts_key,
                        self.stream,
                        keys.stats(),
                    ],
                    args=[
                        indexed,
                        field,
                        update.final_state,
                        events.encode(event),
                        self.maxlen,
                        self.settings.orphan_ttl_s,
                        events.encode(orphan),
                    ],
                )
            )
            if reply[0] != "retry":
                return reply[0]
            found = reply[1]
        raise RuntimeError(f"DIDWW id index for {update.didww_id} keeps changing")

    async def halt(self, detail: str) -> bool:
        """Stop all posting after a 401; True if this call raised the alert."""
        alert = events.alert_event(events.AUTH_FAILED, detail)
        why = json.dumps({"detail": detail, "at": alert["at"]})
        reply = await self.scripts["halt"](
            keys=[keys.halt(), self.stream, keys.probe_lock()],
            args=[
                why,
                events.encode(alert),
                self.maxlen,
                round(self.settings.probe_interval_s * 1000),
            ],
        )
        return bool(reply)

    async def take_probe_turn(self, owner: str) -> bool:
        """True for the one caller per probe interval, across all workers, that may probe."""
        interval_ms = round(self.settings.probe_interval_s * 1000)
        return bool(await self.redis.set(keys.probe_lock(), owner, nx=True, px=interval_ms))

    async def halted(self) -> str | None:
        raw = await self.redis.get(keys.halt())
        return raw.decode() if raw else None

    async def clear_halt(self, detail: str) -> bool:
        """Let workers post again; True if a halt was in force."""
        cleared = await self.redis.delete(keys.halt())
        if cleared:
            alert = events.alert_event(events.AUTH_RESTORED, detail)
            await self.redis.xadd(
                self.stream, {"data": events.encode(alert)}, maxlen=self.maxlen, approximate=True
            )
        return bool(cleared)

    async def counts(self, cid: str) -> dict[str, int]:
        raw = await self.redis.hgetall(keys.counts(cid))
        counts = {str(s): 0 for s in State}
        counts.update({k.decode(): int(v) for k, v in raw.items()})
        return counts

    async def status(self, cid: str) -> Status | None:
        c = await self.campaign(cid)
        if c is None:
            return None
        now = int(time.time())
        seconds = range(now - RATE_WINDOW_S, now)
        posted = [
            int(p or 0) for p in await self.redis.mget([keys.posted(cid, s) for s in seconds])
        ]
        # Average from the first busy second in the window, so a campaign that started
        # three seconds ago is not shown at a third of its rate.
        busy = next((i for i, p in enumerate(posted) if p), None)
        rate = sum(posted) / (len(posted) - busy) if busy is not None else 0.0
        return Status(c, await self.counts(cid), rate)

    async def set_state(self, cid: str, state: CampaignState) -> bool:
        """Pause, resume or cancel a campaign; a cancelled campaign stays cancelled."""
        key = keys.campaign(cid)
        current = await self.redis.hget(key, "state")
        if current is None:
            return False
        if current.decode() == CampaignState.CANCELLED:
            return state == CampaignState.CANCELLED
        await self.redis.hset(key, "state", str(state))
        return True

    async def cancel_queued(self, c: Campaign) -> int:
        """Move every still-queued message of a cancelled campaign to cancelled."""
        moved = 0
        for batch_no in range(c.batches):
            for r in await self.records(c.id, batch_no):
                if r.state is State.QUEUED and await self.move(
                    c, r, (State.QUEUED,), State.CANCELLED
                ):
                    moved += 1
        return moved

    async def batches_with_queued(self, c: Campaign) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for batch_no in range(c.batches):
            pipe.hvals(keys.batch(c.id, batch_no))
        found = []
        for batch_no, values in enumerate(await pipe.execute()):
            if any(v.startswith(b"queued|") for v in values):
                found.append(batch_no)
        return found

    async def active_campaigns(self) -> list[Campaign]:
        """Campaigns that still have queued messages."""
        result = []
        for raw in await self.redis.zrange(keys.campaigns(), 0, -1):
            cid = raw.decode()
            c = await self.campaign(cid)
            if c and (await self.counts(cid)).get(State.QUEUED, 0) > 0:
                result.append(c)
        return result

    async def stats(self) -> dict[str, int]:
        raw = await self.redis.hgetall(keys.stats())
        return {k.decode(): int(v) for k, v in raw.items()}

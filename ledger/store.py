"""The message ledger: campaigns and their messages in Redis, and every state change.

Each change runs as one Lua script, so a message moves at most once and its event is
published in the same atomic step; a task Celery delivers twice cannot send anything twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

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

    @property
    def started_at(self) -> float:
        """DIDWW's time_start in Unix seconds; now when it is missing or unreadable (the
        callback then still matches an unknown message posted within the match window)."""
        value = self.event.get("time_start")
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                # DIDWW's times are UTC; one without a zone is read as UTC, not local time.
                return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        return time.time()


@dataclass(frozen=True, slots=True)
class Trunk:
    """What holds every campaign back, and callbacks nobody has claimed yet."""

    halted: str | None
    backoff: str | None
    parked_batches: int
    orphans_waiting: int
    stats: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "halted": self.halted is not None,
            "backing_off": self.backoff is not None,
            "parked_batches": self.parked_batches,
            "orphan_callbacks_waiting": self.orphans_waiting,
            "stats": self.stats,
        }


@dataclass(frozen=True, slots=True)
class Status:
    campaign: Campaign
    counts: dict[str, int]
    rate_per_s: float
    trunk: Trunk

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
            "trunk": self.trunk.as_dict(),
        }


def _outcome(reply: list[Any]) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in reply]


# A parked batch taken to be published is due again after this long if its publisher failed.
PARK_LEASE_S = 60
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

    async def claim(self, c: Campaign, r: Record, owner: str) -> list[str]:
        """queued -> sending by owner (a worker process). Returns the outcome (claimed,
        paused, halted, backoff, ...)."""
        now = time.time()
        reply = await self.scripts["claim"](
            keys=[
                keys.batch(c.id, c.batch_of(r.index)),
                keys.campaign(c.id),
                keys.counts(c.id),
                keys.halt(),
                self.stream,
                keys.posted(c.id, int(now)),
                keys.backoff(),
            ],
            args=[r.index, self._event(c, r), self.maxlen, f"{now:.3f}", owner],
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
                c.source,
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
        # From unknown too: a sweep may have given up on a request that then got its 400.
        return await self.move(c, r, (State.SENDING, State.UNKNOWN), State.REJECTED, detail=detail)

    async def mark_unknown(
        self, c: Campaign, r: Record, detail: str, posted_at: float | None = None
    ) -> list[str]:
        """sending -> unknown, indexed by source and destination (posted_at: when its last
        attempt went out) so that its callback can settle it later; see settle_orphans."""
        batch_no = c.batch_of(r.index)
        reply = await self.scripts["unknown"](
            keys=[keys.batch(c.id, batch_no)],
            args=[
                c.id,
                batch_no,
                r.index,
                c.source,
                self._event(c, r, detail=detail),
                self.stream,
                self.maxlen,
                self.settings.orphan_ttl_s,
                f"{posted_at or time.time():.3f}",
            ],
        )
        return _outcome(reply)

    async def settle_orphans(self, settle_after_s: float, limit: int = 500) -> int:
        """Match callbacks kept longer than settle_after_s to unknown messages with the same
        source and destination posted nearest in time (within SMSQ_MATCH_WINDOW_S), and
        settle those. Returns how many were settled."""
        reply = await self.scripts["settle"](
            keys=[],
            args=[
                f"{time.time():.3f}",
                settle_after_s,
                self.settings.match_window_s,
                self.stream,
                self.maxlen,
                self.settings.didww_id_ttl_s,
                max(5.0, settle_after_s / 2),
                limit,
            ],
        )
        return int(reply)

    async def sweep(self, c: Campaign, batch_no: int, owner: str, detail: str) -> int:
        """Every message of a batch that owner claimed and did not finish -> unknown."""
        event = events.message_event(c.id, None, "", c.source, None, detail=detail)
        reply = await self.scripts["sweep"](
            keys=[keys.batch(c.id, batch_no), keys.campaign(c.id)],
            args=[
                owner,
                c.id,
                batch_no,
                events.encode(event),
                self.stream,
                self.maxlen,
                self.settings.orphan_ttl_s,
            ],
        )
        return int(reply)

    async def release(self, c: Campaign, r: Record) -> bool:
        """sending -> queued, for a request that surely never reached DIDWW."""
        return await self.move(c, r, (State.SENDING,), State.QUEUED, publish=False)

    async def apply_callback(self, update: CallbackUpdate) -> str:
        """Apply a callback once, in one round trip; returns applied, orphan (kept: for its
        201, or to be matched to an unknown message by settle_orphans) or duplicate."""
        orphan = {"state": str(update.final_state), "event": update.event, "t": update.started_at}
        reply = await self.scripts["callback"](
            keys=[
                keys.didww(update.didww_id),
                keys.orphan(update.didww_id),
                self.stream,
                keys.stats(),
            ],
            args=[
                update.final_state,
                events.encode(update.event),
                self.maxlen,
                self.settings.orphan_ttl_s,
                events.encode(orphan),
                update.event.get("source") or "",
                update.event.get("destination") or "",
                f"{update.started_at:.3f}",
                f"{time.time():.3f}",
                update.didww_id,
            ],
        )
        return _outcome(reply)[0]

    async def halt(self, detail: str) -> bool:
        """Stop all posting after a 401; True if this call raised the alert."""
        return await self._raise_flag(keys.halt(), events.AUTH_FAILED, detail, ttl_s=0)

    async def back_off(self, detail: str, seconds: float) -> bool:
        """Stop all posting for a while: DIDWW is unavailable (retries ran out). True if this
        call started the backoff and raised the alert."""
        return await self._raise_flag(keys.backoff(), events.API_UNAVAILABLE, detail, seconds)

    async def _raise_flag(self, key: str, alert_type: str, detail: str, ttl_s: float) -> bool:
        alert = events.alert_event(alert_type, detail)
        why = json.dumps({"detail": detail, "at": alert["at"]})
        reply = await self.scripts["halt"](
            keys=[key, self.stream, keys.probe_lock()],
            args=[
                why,
                events.encode(alert),
                self.maxlen,
                round(self.settings.probe_interval_s * 1000),
                round(ttl_s * 1000),
            ],
        )
        return bool(reply)

    async def extend_backoff(self, seconds: float) -> bool:
        """A probe failed: keep backing off; False if the backoff had already ended."""
        return bool(await self.redis.pexpire(keys.backoff(), round(seconds * 1000)))

    async def clear_backoff(self, detail: str) -> bool:
        """DIDWW answers again; True if a backoff was in force."""
        return await self._clear_flag(keys.backoff(), events.API_RESTORED, detail)

    async def trunk_flags(self) -> tuple[str | None, str | None]:
        """(halt, backoff): why all posting is stopped, or None for each."""
        halt, backoff = await self.redis.mget([keys.halt(), keys.backoff()])
        return (halt.decode() if halt else None, backoff.decode() if backoff else None)

    async def take_probe_turn(self, owner: str) -> bool:
        """True for the one caller per probe interval, across all workers, that may probe."""
        interval_ms = round(self.settings.probe_interval_s * 1000)
        return bool(await self.redis.set(keys.probe_lock(), owner, nx=True, px=interval_ms))

    async def clear_halt(self, detail: str) -> bool:
        """Let workers post again; True if a halt was in force."""
        return await self._clear_flag(keys.halt(), events.AUTH_RESTORED, detail)

    async def _clear_flag(self, key: str, alert_type: str, detail: str) -> bool:
        cleared = await self.redis.delete(key)
        if cleared:
            alert = events.alert_event(alert_type, detail)
            await self.redis.xadd(
                self.stream, {"data": events.encode(alert)}, maxlen=self.maxlen, approximate=True
            )
        return bool(cleared)

    # Parked batches: stopped by a halt, a backoff or spent retries, run again by the workers'
    # supervisors (worker/supervisor.py) once nothing holds them back. No Celery countdown or
    # ETA: a parked batch costs one sorted-set member, not a task held in a worker's memory.

    async def park(self, cid: str, batch_no: int, delay_s: float = 0.0) -> None:
        await self.redis.zadd(keys.parked(), {f"{cid}|{batch_no}": time.time() + delay_s})

    async def unpark(self, *, due_only: bool = True) -> list[tuple[str, int]]:
        """The parked batches that are due (or all), without taking them: take each with
        take_parked just before publishing it, so a failure leaves the rest parked."""
        top = time.time() if due_only else "+inf"
        found = []
        for raw in await self.redis.zrangebyscore(keys.parked(), "-inf", top):
            cid, _, batch_no = raw.decode().rpartition("|")
            found.append((cid, int(batch_no)))
        return found

    async def take_parked(self, cid: str, batch_no: int, *, force: bool = False) -> bool:
        """True for the one caller that takes this parked batch to publish it (a lease of
        PARK_LEASE_S); call done_parked once it is published."""
        taken = await self.scripts["lease"](
            keys=[keys.parked()],
            args=[f"{cid}|{batch_no}", f"{time.time():.3f}", PARK_LEASE_S, "1" if force else "0"],
        )
        return bool(taken)

    async def done_parked(self, cid: str, batch_no: int) -> None:
        member = f"{cid}|{batch_no}"
        await self.redis.zrem(keys.parked(), member)
        await self.redis.delete(f"{keys.parked()}:lease:{member}")

    # In-flight batches: each worker process beats for the batch it sends; a batch whose
    # beats stopped belongs to a lost worker (see worker/supervisor.py).

    async def beat(self, cid: str, batch_no: int, owner: str) -> None:
        await self.scripts["beat"](keys=[keys.inflight()], args=[f"{cid}|{batch_no}|{owner}"])

    async def end_batch(self, cid: str, batch_no: int, owner: str) -> bool:
        return bool(await self.redis.hdel(keys.inflight(), f"{cid}|{batch_no}|{owner}"))

    async def silent_batches(self, silence_s: float) -> list[tuple[str, int, str]]:
        """(campaign, batch, owner) of batches whose owner has not beaten for silence_s."""
        now, _ = await self.redis.time()
        found = []
        for field, beat in (await self.redis.hgetall(keys.inflight())).items():
            if int(beat) < now - silence_s:
                cid, batch_no, owner = field.decode().split("|", 2)
                found.append((cid, int(batch_no), owner))
        return found

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
        return Status(c, await self.counts(cid), rate, await self.trunk())

    async def trunk(self) -> Trunk:
        halt, backoff = await self.trunk_flags()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.parked())
        pipe.zcard(keys.orphans())
        parked, waiting = await pipe.execute()
        return Trunk(halt, backoff, int(parked), int(waiting), await self.stats())

    async def set_state(self, cid: str, state: CampaignState) -> bool:
        """Pause, resume or cancel a campaign; a cancelled campaign stays cancelled, even
        when a pause races a cancel (WATCH makes the read and the write one step)."""
        key = keys.campaign(cid)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    current = await pipe.hget(key, "state")
                    if current is None:
                        return False
                    if current.decode() == CampaignState.CANCELLED:
                        return state == CampaignState.CANCELLED
                    pipe.multi()
                    pipe.hset(key, "state", str(state))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def cancel_queued(self, c: Campaign) -> int:
        """Move every still-queued message of a cancelled campaign to cancelled, one script
        per batch."""
        event = events.encode(events.message_event(c.id, None, "", c.source))
        moved = 0
        for batch_no in range(c.batches):
            moved += int(
                await self.scripts["cancel"](
                    keys=[keys.batch(c.id, batch_no), keys.counts(c.id), self.stream],
                    args=[c.id, event, self.maxlen],
                )
            )
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

    async def stats(self) -> dict[str, int]:
        raw = await self.redis.hgetall(keys.stats())
        return {k.decode(): int(v) for k, v in raw.items()}

"""The message ledger: campaigns and their messages in Redis, and every state change.

Each change runs as one Lua script (ledger/lua/), so a message moves at most once and its
event is published in the same atomic step; a task Celery delivers twice cannot send anything
twice. The Ledger gathers one concern per module: the hot path (hotpath.py), callbacks
(callback_store.py), trunk flags (trunks.py), parked work (parking.py), recovery
(recovery.py), retention (retention.py) and the opt-out list (optouts.py).
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError, WatchError

from ledger import events, keys, records
from ledger.callback_store import CallbackStore, CallbackUpdate
from ledger.campaigns import (
    Campaign,
    Status,
    read_batch,
    read_campaign,
    read_counts,
    send_rate,
)
from ledger.hotpath import HotPath
from ledger.optouts import OptOuts
from ledger.parking import Parking
from ledger.records import Record
from ledger.recovery import Recovery
from ledger.redis_health import unsafe
from ledger.retention import Retention
from ledger.scripts import register
from ledger.settings import Settings
from ledger.states import CampaignState
from ledger.trunks import TrunkFlags
from ledger.windows import decode_intervals, window_state

__all__ = ["CallbackUpdate", "Campaign", "Ledger", "Record", "Status"]


class Ledger(HotPath, CallbackStore, TrunkFlags, Parking, Recovery, Retention, OptOuts):
    """Campaign and message state in Redis, shared by workers, the ingester and the CLI."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = register(redis)
        self.stream = settings.events_stream
        self.maxlen = settings.events_maxlen

    async def campaign(self, cid: str) -> Campaign | None:
        return await read_campaign(self.redis, cid)

    async def counts(self, cid: str) -> dict[str, int]:
        return await read_counts(self.redis, cid)

    async def records(self, c: Campaign, batch_no: int) -> list[Record]:
        return await read_batch(self.redis, c, batch_no)

    async def status(self, cid: str, *, with_warnings: bool = True) -> Status | None:
        c = await self.campaign(cid)
        if c is None:
            return None
        warnings = await redis_warnings(self.redis) if with_warnings else ()
        counts = await self.counts(cid)
        extra = {"window": await self._window_status(c, counts)} if c.window else {}
        return Status(
            c,
            counts,
            await send_rate(self.redis, cid),
            await self.trunk_status(c.trunk),
            warnings,
            extra,
        )

    async def _window_status(self, c: Campaign, counts: dict[str, int]) -> dict[str, Any]:
        """Quiet hours now: recipients whose window is closed (at most what is queued), and
        when the next one opens."""
        raw = await self.redis.hgetall(keys.windows(c.id))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        groups = [
            (decode_intervals(fields[f"g:{g}"]), int(fields.get(f"n:{g}", 0)))
            for g in range(sum(1 for name in fields if name.startswith("g:")))
        ]
        state = window_state(groups, time.time())
        return {
            "window": c.window,
            "waiting": min(state.waiting + state.closed, counts.get("queued", 0)),
            "next_open": state.next_open_ts,
        }

    async def set_state(self, cid: str, state: CampaignState) -> bool:
        """Pause, resume or cancel a campaign; a cancelled campaign stays cancelled, even
        when a pause races a cancel (WATCH makes the read and the write one step). Resuming
        a scheduled campaign keeps it scheduled."""
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
                    if (
                        current.decode() == CampaignState.SCHEDULED
                        and state == CampaignState.ACTIVE
                    ):
                        return True
                    pipe.multi()
                    pipe.hset(key, "state", str(state))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def cancel_queued(self, c: Campaign) -> int:
        """Move every still-queued message of a cancelled campaign to cancelled, one script
        per batch."""
        base = events.encode(events.message_event(c.id, None, "", c.source, None, trunk=c.trunk))
        moved = 0
        for batch_no in range(c.batches):
            moved += int(
                await self.scripts["cancel"](
                    keys=[self.stream], args=[c.id, batch_no, base, self.maxlen]
                )
            )
        return moved

    async def batches_with_queued(self, c: Campaign) -> list[int]:
        """Batches that still have a queued message."""
        found = []
        for start in range(0, c.batches, 200):
            numbers = range(start, min(start + 200, c.batches))
            pipe = self.redis.pipeline(transaction=False)
            for batch_no in numbers:
                pipe.get(keys.batch(c.id, batch_no))
            for batch_no, data in zip(numbers, await pipe.execute(), strict=True):
                if data and any(data[i] == 0 for i in range(0, len(data), records.SIZE)):
                    found.append(batch_no)
        return found


async def redis_warnings(redis: Redis) -> tuple[str, ...]:
    """What makes this Redis unsafe for the ledger (ledger/redis_health.py)."""
    try:
        persistence = await redis.info("persistence")
        memory = await redis.info("memory")
        stats = await redis.info("stats")
    except ResponseError:
        return ()
    return unsafe(persistence, memory, stats)

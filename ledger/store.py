"""The message ledger: campaigns and their messages in Redis, and every state change.

Each change runs as one Lua script (ledger/lua/), so a message moves at most once and its
event is published in the same atomic step; a task Celery delivers twice cannot send anything
twice. The Ledger gathers one concern per module, each built on ledger/core.py: the hot path
(hotpath.py), callbacks (callback_store.py), trunk flags (trunks.py), parked work
(parking.py), recovery (recovery.py), enqueues in progress (enqueuing.py), retention
(retention.py) and the opt-out list (optouts.py).
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ledger import campaigns, events, keys, quiet_hours, records
from ledger.callback_store import CallbackStore, CallbackUpdate
from ledger.campaigns import (
    Campaign,
    Status,
    read_batch,
    read_campaign,
    read_counts,
    send_rate,
)
from ledger.enqueuing import Enqueuing
from ledger.hotpath import HotPath
from ledger.lookups import Lookups
from ledger.optouts import OptOuts
from ledger.parking import Parking
from ledger.records import Record
from ledger.recovery import Recovery
from ledger.redis_health import unsafe
from ledger.retention import Retention
from ledger.states import CampaignState
from ledger.trunks import TrunkFlags

__all__ = ["CallbackUpdate", "Campaign", "Ledger", "Record", "Status"]


class Ledger(
    HotPath, CallbackStore, TrunkFlags, Parking, Recovery, Enqueuing, Retention, OptOuts, Lookups
):
    """Campaign and message state in Redis, shared by workers, the ingester and the CLI."""

    async def campaign(self, cid: str) -> Campaign | None:
        return await read_campaign(self.redis, cid)

    async def counts(self, cid: str) -> dict[str, int]:
        return await read_counts(self.redis, cid)

    async def records(self, c: Campaign, batch_no: int) -> list[Record]:
        return await read_batch(self.redis, c, batch_no)

    async def template_values(self, cid: str, batch_no: int) -> dict[int, str]:
        """A templated campaign's values for a batch's messages, by message index."""
        return campaigns.decode_values(await self.redis.hgetall(keys.fields(cid, batch_no)))

    async def batch_intervals(self, cid: str, batch_no: int) -> list[tuple[int, int]]:
        """When a batch of a campaign with quiet hours may be sent (UTC intervals)."""
        return await quiet_hours.read_batch_intervals(self.redis, cid, batch_no)

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
        state = (await quiet_hours.read(self.redis, c.id)).state(time.time())
        return {
            "window": c.window,
            "waiting": min(state.waiting + state.closed, counts.get("queued", 0)),
            "next_open": state.next_open_ts,
        }

    async def set_state(self, cid: str, state: CampaignState) -> bool:
        """Pause, resume or cancel a campaign (ledger.campaigns.set_state)."""
        return await campaigns.set_state(self.redis, cid, state)

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
                if data and any(
                    data[i] == records.Code.QUEUED for i in range(0, len(data), records.SIZE)
                ):
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

"""One rate limit for the whole trunk, shared through Redis by every worker on every host.

GCRA without burst: each request reserves the next slot, slots are 1/rate apart on Redis's
clock. Written here rather than taken from `limits` or `pyrate-limiter`: those answer "allowed
now or not", so hundreds of waiting coroutines would poll Redis and bunch up when a window
opens; a reserved slot is exact, needs one round trip, and serves waiters in order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from ledger import keys
from ledger.scripts import register
from worker.metrics import LIMITER_WAIT_SECONDS

# A coroutine may hold a slot at most this far ahead; beyond it waits and asks again,
# so a priority message is never queued behind seconds of reserved campaign slots.
MAX_AHEAD_S = 0.5
# A slot older than this when the request is about to go is stale (see keep_fresh).
LATE_TOLERANCE_S = 0.005
MAX_RESLOTS = 3


class RateLimiter:
    def __init__(self, redis: Redis, interval_s: float, max_ahead_s: float = MAX_AHEAD_S):
        self._script: Any = register(redis)["limiter"]
        self.interval_us = max(1, round(interval_s * 1_000_000))
        # Always allow reserving at least the next slot, however slow the rate.
        self.max_ahead_us = max(round(max_ahead_s * 1_000_000), self.interval_us)

    async def acquire(self) -> float:
        """Wait for this request's slot; returns the seconds spent waiting."""
        return (await self._reserve())[1]

    async def acquire_slot(self) -> float:
        """Wait for this request's slot; returns when it began (time.monotonic())."""
        return (await self._reserve())[0]

    async def _reserve(self) -> tuple[float, float]:
        waited_s = 0.0
        while True:
            asked = time.monotonic()
            granted, wait_us = await self._script(
                keys=[keys.rate_limiter()], args=[self.interval_us, self.max_ahead_us]
            )
            wait_s = int(wait_us) / 1_000_000
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            waited_s += wait_s
            if granted:
                LIMITER_WAIT_SECONDS.observe(waited_s)
                return asked + wait_s, waited_s

    async def keep_fresh(self, slot_at: float) -> float:
        """Take a new slot if this one is already past by more than LATE_TOLERANCE_S.

        A request that reaches DIDWW late crowds the next second's requests; under CPU load
        an event loop wakes sleepers late, so a stale slot is traded for a new one (a few
        times at most, so a slow loop still makes progress)."""
        for _ in range(MAX_RESLOTS):
            if time.monotonic() - slot_at <= LATE_TOLERANCE_S:
                break
            slot_at = await self.acquire_slot()
        return slot_at

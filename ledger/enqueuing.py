"""Enqueues in progress (``smsq:enqueuing``): a producer marks its campaign before it writes
anything and unmarks it once every batch is queued, so the workers' supervisors can finish an
enqueue whose producer stopped (killed, or cut off from Redis) and clear away one that never
stored its campaign (docs/architecture.md §8).
"""

from __future__ import annotations

import time

from ledger import keys
from ledger.core import LedgerCore

# A producer refreshes its mark at least this often while it writes (every few seconds at
# most); one that has not for this long stalled, and the supervisors queue what it stored.
ENQUEUE_STALL_S = 30.0
# An idempotency key is remembered this long; an enqueue that never stored its campaign can
# be completed by a repeat with its key until then, and is cleared away after.
IDEMPOTENCY_TTL_S = 24 * 3600


class Enqueuing(LedgerCore):
    """Part of ledger.store.Ledger."""

    async def stalled_enqueues(self, stall_s: float) -> list[tuple[str, int, float]]:
        """(campaign, batches, last move) of enqueues whose producer has not moved for stall_s
        (it died, or lost Redis, before queueing everything)."""
        top = time.time() - stall_s
        found = []
        for member, score in await self.redis.zrangebyscore(
            keys.enqueuing(), "-inf", top, withscores=True
        ):
            cid, batches = keys.parse_enqueue_member(member)
            found.append((cid, batches, float(score)))
        return found

    async def forget_enqueue(self, cid: str, batches: int) -> None:
        await self.redis.zrem(keys.enqueuing(), keys.enqueue_member(cid, batches))

    async def discard_partial(self, cid: str, batches: int) -> None:
        """Delete what an enqueue that never stored its campaign wrote (its batches, their
        template values and references)."""
        names = [keys.batch(cid, b) for b in range(batches)]
        names += [keys.fields(cid, b) for b in range(batches)]
        names += [keys.refs(cid, b) for b in range(batches)]
        for start in range(0, len(names), 500):
            await self.redis.unlink(*names[start : start + 500])
        await self.forget_enqueue(cid, batches)

"""Parked batches: work that waits in Redis, not in a Celery countdown (docs/architecture.md
§8, D10): a batch stopped by a halt, a backoff or spent retries, a scheduled campaign, quiet
hours, or a lost worker's batch. The workers' supervisors publish each once it is due
(dispatch/).
"""

from __future__ import annotations

import secrets
import time
from collections import Counter

from ledger import keys
from ledger.core import LedgerCore

# A parked batch taken to be published is due again after this long if its publisher failed.
PARK_LEASE_S = 60
# Parked batches are counted by trunk from their members, this many per round trip, so a large
# set (a scheduled campaign of a million messages parks 10,000 batches) never holds Redis long.
COUNT_CHUNK = 5000


class Parking(LedgerCore):
    """Part of ledger.store.Ledger."""

    async def park(self, cid: str, batch_no: int, at: float | None = None) -> None:
        """Park a batch until `at` (Unix seconds; now when None). A batch parked twice keeps
        the earlier time, so parking never delays work that was due sooner; but one being
        published right now (leased) takes the new time, so the new reason is not lost."""
        when = time.time() if at is None else at
        await self.durably("park", [], [keys.batch_member(cid, batch_no), f"{when:.3f}"])

    async def due_parked(self, *, due_only: bool = True, limit: int = 1000) -> list[str]:
        """Members (cid|batch) of parked batches that are due (or all), without taking them:
        take each with lease() just before publishing it."""
        top = time.time() if due_only else "+inf"
        raw = await self.redis.zrangebyscore(keys.parked(), "-inf", top, start=0, num=limit)
        return [m.decode() for m in raw]

    async def next_parked_at(self) -> float | None:
        """When the earliest parked batch is due, or None if none is parked."""
        first = await self.redis.zrange(keys.parked(), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def lease(self, member: str, *, force: bool = False) -> tuple[str, str] | None:
        """(token, leased score) for the one caller that takes this parked batch to publish
        it (for PARK_LEASE_S); None if it is not due, gone, or taken by another."""
        token = secrets.token_hex(8)
        score = await self.scripts["lease"](
            keys=[keys.parked(), keys.parked_lease(member)],
            args=[member, PARK_LEASE_S, "1" if force else "0", token],
        )
        if score is None:
            return None
        return token, score.decode() if isinstance(score, bytes) else str(score)

    async def unlease(self, member: str, token: str, score: str) -> bool:
        """The batch was published: remove it, unless it was parked again meanwhile."""
        return bool(
            await self.scripts["unlease"](
                keys=[keys.parked(), keys.parked_lease(member)], args=[member, token, score]
            )
        )

    async def parked_by_trunk(self) -> dict[str, int]:
        """Parked batches per trunk: each member counted under its campaign's trunk (read once
        per campaign); members of a campaign already purged are left out (the supervisors drop
        them). Members come a chunk at a time, so one parked or published meanwhile may be
        counted twice or missed: a gauge's accuracy, not the ledger's."""
        per_campaign: Counter[str] = Counter()
        start = 0
        while True:
            chunk = await self.redis.zrange(keys.parked(), start, start + COUNT_CHUNK - 1)
            per_campaign.update(keys.parse_batch_member(m)[0] for m in chunk)
            if len(chunk) < COUNT_CHUNK:
                break
            start += COUNT_CHUNK
        if not per_campaign:
            return {}
        cids = list(per_campaign)
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in cids:
                pipe.hmget(keys.campaign(cid), ["trunk", "batch_size"])
            found = await pipe.execute()
        by_trunk: Counter[str] = Counter()
        for cid, (trunk, batch_size) in zip(cids, found, strict=True):
            if batch_size is not None:  # a whole campaign: every one has a batch size
                by_trunk[trunk.decode() if trunk else "default"] += per_campaign[cid]
        return dict(by_trunk)

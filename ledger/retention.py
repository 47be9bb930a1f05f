"""Everything ends and is forgotten (docs/architecture.md D11): a campaign is purged
SMSQ_RETENTION_S after it is done, or at once with `smsq purge`: every key it owns goes, and
its entries in the DIDWW-id index.
"""

from __future__ import annotations

import time

from ledger import keys
from ledger.campaigns import read_campaign, scan_records
from ledger.core import LedgerCore

# Keys deleted, or index buckets filtered, per round trip.
PURGE_CHUNK = 500
BUCKETS_PER_CALL = 64


class Retention(LedgerCore):
    """Part of ledger.store.Ledger."""

    async def trim_events(self, retention_s: float) -> int:
        """Trim the events stream of entries older than retention_s (their ids are the times
        they were written, in ms); the count cap (SMSQ_EVENTS_MAXLEN) is kept by every XADD.
        Exact, not `~`: trimming a whole listpack node only would keep up to 100 old entries
        of a quiet stream for ever. Returns how many went."""
        oldest_ms = int((time.time() - retention_s) * 1000)
        return int(
            await self.redis.xtrim(self.stream, minid=f"{oldest_ms}-0", approximate=False)
        )

    async def due_purges(self, retention_s: float, limit: int = 10) -> list[str]:
        """Campaigns done longer than retention_s ago."""
        top = time.time() - retention_s
        raw = await self.redis.zrangebyscore(keys.retention(), "-inf", top, start=0, num=limit)
        return [c.decode() for c in raw]

    async def purge(self, cid: str) -> bool:
        """Delete a campaign and everything it owns; False if there was no such campaign.
        Safe to repeat: a purge cut short is finished by the next one."""
        c = await read_campaign(self.redis, cid)
        if c is None:
            await self.redis.zrem(keys.retention(), cid)
            await self.redis.zrem(keys.campaigns(), cid)
            return False
        buckets = set()
        async for record in scan_records(self.redis, c):
            if record.didww_id is not None or record.flags:
                buckets.add(keys.id_bucket(record.id_key))
        ordered = sorted(buckets)
        for start in range(0, len(ordered), BUCKETS_PER_CALL):
            await self.scripts["unindex"](
                keys=ordered[start : start + BUCKETS_PER_CALL], args=[cid]
            )
        names = [keys.batch(cid, b) for b in range(c.batches)]
        if c.templated:
            names += [keys.fields(cid, b) for b in range(c.batches)]
        if c.references:
            names += [keys.refs(cid, b) for b in range(c.batches)]
        names += [keys.windows(cid), keys.raw_ids(cid), keys.counts(cid), keys.posted(cid)]
        for start in range(0, len(names), PURGE_CHUNK):
            await self.redis.unlink(*names[start : start + PURGE_CHUNK])
        # The campaign's hash goes last: until then a repeat finds what is left to delete.
        pipe = self.redis.pipeline(transaction=True)
        pipe.unlink(keys.campaign(cid))
        pipe.zrem(keys.campaigns(), cid)
        pipe.zrem(keys.retention(), cid)
        await pipe.execute()
        return True

"""Per trunk: the flags that stop all posting (a halt after a 401, a backoff while DIDWW is
unavailable), the probe turn that lifts them, and what a trunk's status shows.
"""

from __future__ import annotations

import json

from ledger import events, keys
from ledger.campaigns import TrunkStatus
from ledger.core import LedgerCore


class TrunkFlags(LedgerCore):
    """Part of ledger.store.Ledger."""

    async def halt(self, trunk: str, detail: str) -> bool:
        """Stop all posting on a trunk after a 401 (or an answer that means a wrong URL or a
        proxy); True if this call raised the alert."""
        return await self._raise_flag(keys.halt(trunk), events.AUTH_FAILED, trunk, detail, 0)

    async def back_off(self, trunk: str, detail: str, seconds: float) -> bool:
        """Stop all posting on a trunk for a while: DIDWW is unavailable (retries ran out).
        True if this call started the backoff and raised the alert."""
        return await self._raise_flag(
            keys.backoff(trunk), events.API_UNAVAILABLE, trunk, detail, seconds
        )

    async def _raise_flag(
        self, key: str, alert_type: str, trunk: str, detail: str, ttl_s: float
    ) -> bool:
        alert = events.alert_event(alert_type, detail, trunk)
        why = json.dumps({"detail": detail, "at": alert["at"]})
        reply = await self.scripts["halt"](
            keys=[key, self.stream, keys.probe_lock(trunk)],
            args=[
                why,
                events.encode(alert),
                self.maxlen,
                round(self.settings.probe_interval_s * 1000),
                round(ttl_s * 1000),
            ],
        )
        return bool(reply)

    async def extend_backoff(self, trunk: str, seconds: float) -> bool:
        """A probe failed: keep backing off; False if the backoff had already ended."""
        return bool(await self.redis.pexpire(keys.backoff(trunk), round(seconds * 1000)))

    async def clear_backoff(self, trunk: str, detail: str) -> bool:
        """DIDWW answers again; True if a backoff was in force."""
        return await self._clear_flag(keys.backoff(trunk), events.API_RESTORED, trunk, detail)

    async def clear_halt(self, trunk: str, detail: str) -> bool:
        """Let workers post again; True if a halt was in force."""
        return await self._clear_flag(keys.halt(trunk), events.AUTH_RESTORED, trunk, detail)

    async def _clear_flag(self, key: str, alert_type: str, trunk: str, detail: str) -> bool:
        cleared = await self.redis.delete(key)
        if cleared:
            alert = events.alert_event(alert_type, detail, trunk)
            await self.redis.xadd(
                self.stream, {"data": events.encode(alert)}, maxlen=self.maxlen, approximate=True
            )
        return bool(cleared)

    async def trunk_flags(self, trunk: str) -> tuple[str | None, str | None]:
        """(halt, backoff): why all posting on the trunk is stopped, or None for each."""
        halt, backoff = await self.redis.mget([keys.halt(trunk), keys.backoff(trunk)])
        return (halt.decode() if halt else None, backoff.decode() if backoff else None)

    async def take_probe_turn(self, trunk: str, owner: str) -> bool:
        """True for the one caller per probe interval, across all workers, that may probe."""
        interval_ms = round(self.settings.probe_interval_s * 1000)
        return bool(await self.redis.set(keys.probe_lock(trunk), owner, nx=True, px=interval_ms))

    async def trunk_status(self, trunk: str) -> TrunkStatus:
        halt, backoff = await self.trunk_flags(trunk)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.parked())
        pipe.hget(keys.kept_info(), "count")
        pipe.hgetall(keys.stats())
        parked, waiting, stats = await pipe.execute()
        return TrunkStatus(
            trunk,
            halt,
            backoff,
            int(parked),
            int(waiting or 0),
            {k.decode(): int(v) for k, v in stats.items()},
        )

"""Per trunk: the flags that stop all posting (a halt after a 401, a backoff while DIDWW is
unavailable), the probe turn that lifts them, and what a trunk's status shows.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

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

    async def trunk_status(self, trunk: str, parked: dict[str, int] | None = None) -> TrunkStatus:
        """The trunk's flags, its parked batches and kept callbacks, and how fast it claims;
        `parked`: parked_by_trunk() when the caller read it already (for several trunks)."""
        return (await self.trunk_statuses([trunk], parked))[0]

    async def trunk_rates(self, trunk: str, since: int = 0) -> Rates:
        """The trunk's whole seconds after `since` (Unix s) within the last hour, up to the
        one before now on Redis's clock (the current second is not over)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.get(keys.rates(trunk))
            (now, _), ring = await pipe.execute()
        end = int(now)
        start = max(end - keys.RATES_RING_S + 1, since + 1)
        return decode_rates(ring or b"", min(start, end), end)

    async def trunk_statuses(
        self, trunks: Sequence[str], parked: dict[str, int] | None = None
    ) -> list[TrunkStatus]:
        """trunk_status of each of `trunks`, with one read of the parked batches."""
        if parked is None:
            parked = await self.parked_by_trunk()  # type: ignore[attr-defined]
        pipe = self.redis.pipeline(transaction=False)
        for trunk in trunks:
            pipe.mget([keys.halt(trunk), keys.backoff(trunk)])
            pipe.hget(keys.kept_info(), f"count:{trunk}")
            pipe.lrange(keys.rate_window(trunk), 0, -1)
        pipe.hgetall(keys.stats())
        pipe.time()
        replies = await pipe.execute()
        seconds, micros = replies[-1]
        now_us = int(seconds) * 1_000_000 + int(micros)
        stats = per_trunk(replies[-2])
        out = []
        for i, trunk in enumerate(trunks):
            (halt, backoff), waiting, window = replies[3 * i : 3 * i + 3]
            out.append(
                TrunkStatus(
                    trunk,
                    halt.decode() if halt else None,
                    backoff.decode() if backoff else None,
                    parked.get(trunk, 0),
                    int(waiting or 0),
                    stats.get(trunk, {}),
                    claimed_per_s=_claimed_per_s(window, now_us),
                )
            )
        return out


# A slot of a trunk's rates ring (keys.rates; written by rates_add in ledger/lua/_common.lua):
# the second, messages claimed in it, callbacks settled in it; big-endian.
RATES_SLOT = struct.Struct(">IHH")


@dataclass(frozen=True, slots=True)
class Rates:
    """A trunk's seconds from `start` to `end` (exclusive), each with the messages claimed and
    the callbacks settled in it (0 for a second nothing happened in)."""

    start: int
    end: int
    claimed: list[int]
    callbacks: list[int]


def decode_rates(ring: bytes, start: int, end: int) -> Rates:
    """The seconds [start, end) of a rates ring as read (slots of other seconds are stale)."""
    claimed, callbacks = [0] * (end - start), [0] * (end - start)
    for second, n_claimed, n_callbacks in RATES_SLOT.iter_unpack(
        ring[: len(ring) - len(ring) % RATES_SLOT.size]
    ):
        if start <= second < end:
            claimed[second - start] = n_claimed
            callbacks[second - start] = n_callbacks
    return Rates(start, end, claimed, callbacks)


def per_trunk(raw: dict[bytes, bytes]) -> dict[str, dict[str, int]]:
    """smsq:stats' per-trunk counters (fields `name:trunk`, written by the scripts' stat()):
    trunk -> name -> count. The fields without a trunk are the totals."""
    out: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        name, _, trunk = field.decode().partition(":")
        if trunk:
            out.setdefault(trunk, {})[name] = int(value)
    return out


# The claim rate shown is over the last second of the trunk's window list (claim.lua).
RATE_SPAN_US = 1_000_000


def _claimed_per_s(window: list[bytes], now_us: int) -> float:
    """Units claimed in the last second, from the trunk's window list (`time_us units`
    entries, newest first, trimmed by claim.lua only when it claims)."""
    total = 0
    for entry in window:
        at, units = entry.split()
        if int(at) <= now_us - RATE_SPAN_US:
            break
        total += int(units)
    return total * 1_000_000 / RATE_SPAN_US

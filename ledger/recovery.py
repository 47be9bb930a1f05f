"""What keeps a campaign moving when parts of smsq fail or stay silent: in-flight batches and
their heartbeats, recovery of a lost worker's batches, callbacks matched by number and time
when a 201 was lost, and accepted messages whose callback never comes.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger import events, keys
from ledger.core import LedgerCore

# Batches (or kept callbacks) one supervisor call looks at, so no script runs long.
SCRIPT_BATCH = 200


class Recovery(LedgerCore):
    """Part of ledger.store.Ledger."""

    async def new_owner(self) -> int:
        """A number for a worker process (the owner of its claims), unique for this Redis."""
        return int(await self.redis.incr(keys.owners()))

    async def hold(self, cid: str, batch_no: int, owner: int) -> None:
        """A worker process takes a batch: its in-flight entry starts beating (on enough
        replicas before its task is acknowledged: NotReplicated otherwise)."""
        await self.durably("hold", [keys.inflight()], [keys.inflight_field(cid, batch_no, owner)])

    async def beat(self, fields: Sequence[str]) -> list[str]:
        """Refresh the heartbeat of held batches; returns the fields another worker recovered
        meanwhile (the caller lets those batches go)."""
        if not fields:
            return []
        gone = await self.scripts["beat"](keys=[keys.inflight()], args=list(fields))
        return [g.decode() if isinstance(g, bytes) else str(g) for g in gone]

    async def silent_batches(self, silence_s: float) -> list[str]:
        """In-flight fields (cid|batch|owner) whose owner has not beaten for silence_s."""
        now, _ = await self.redis.time()
        return [
            field.decode()
            for field, beat in (await self.redis.hgetall(keys.inflight())).items()
            if int(beat) < now - silence_s
        ]

    async def recover(self, field: str, silence_s: float) -> int:
        """Recover a lost owner's batch in one atomic step (ledger/lua/recover.lua): its
        claims become unknown, the batch is parked, the entry forgotten. -1 if the owner beat
        again meanwhile (nothing is touched)."""
        base = events.message_event(
            None, None, "", "", None, detail="the worker sending it was lost"
        )
        return int(
            await self.scripts["recover"](
                keys=[keys.inflight(), keys.parked()],
                args=[
                    field,
                    silence_s,
                    self.stream,
                    self.maxlen,
                    self.settings.orphan_ttl_s,
                    events.encode(base),
                ],
            )
        )

    async def settle_orphans(self, settle_after_s: float) -> int:
        """Match callbacks kept longer than settle_after_s to unknown messages with the same
        source and destination posted nearest in time (within SMSQ_MATCH_WINDOW_S), and
        settle those; never while a message to that pair is sending. Also drops what is kept
        beyond SMSQ_ORPHANS_MAX or SMSQ_ORPHAN_TTL_S. Returns how many were settled."""
        reply = await self.scripts["settle"](
            keys=[],
            args=[
                settle_after_s,
                self.settings.match_window_s,
                self.stream,
                self.maxlen,
                self.settings.orphan_ttl_s,
                SCRIPT_BATCH,
                self.settings.orphans_max,
            ],
        )
        return int(reply)

    async def unconfirm(self, timeout_s: float) -> int:
        """Accepted messages with no callback for timeout_s become unconfirmed."""
        base = events.message_event(None, None, "", "", None)
        return int(
            await self.scripts["unconfirm"](
                keys=[keys.accepting(), self.stream],
                args=[timeout_s, self.maxlen, events.encode(base), SCRIPT_BATCH, "", 0],
            )
        )

    async def unconfirm_campaign(self, cid: str, batches: int) -> int:
        """Every accepted message of a campaign becomes unconfirmed now, with its event (a
        purge, so no message is left waiting for a callback of a campaign that is gone)."""
        base = events.message_event(None, None, "", "", None)
        return int(
            await self.scripts["unconfirm"](
                keys=[keys.accepting(), self.stream],
                args=[0, self.maxlen, events.encode(base), batches, cid, batches],
            )
        )


__all__ = ["Recovery"]

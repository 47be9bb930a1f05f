"""Operator control of a campaign, shared by the `smsq` command and the HTTP API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.dispatch import dispatch, dispatch_parked
from ledger.states import CampaignState
from ledger.store import Ledger


@dataclass(frozen=True, slots=True)
class Resumed:
    batches_queued: int
    halt_lifted: bool


async def resume(app: Any, ledger: Ledger, cid: str, why: str) -> Resumed | None:
    """Resume a campaign, and lift a halt or a backoff of its trunk: that trunk's parked
    batches go back on the queues. None if there is no such campaign, or it is cancelled."""
    c = await ledger.campaign(cid)
    if c is None or not await ledger.set_state(cid, CampaignState.ACTIVE):
        return None
    # Both flags are cleared whatever the first answered, hence | and not `or`.
    lifted = await ledger.clear_halt(c.trunk, why) | await ledger.clear_backoff(c.trunk, why)
    # Batches parked by the halt are due; those waiting for a schedule or quiet hours stay.
    published = await dispatch_parked(app, ledger) if lifted else 0
    # This campaign's batches that stopped for a pause. One published twice (also parked)
    # costs a task that finds nothing to claim.
    batches = await ledger.batches_with_queued(c)
    published += dispatch(app, c.id, batches, trunk=c.trunk, priority=c.priority)
    return Resumed(published, lifted)


async def cancel(ledger: Ledger, cid: str) -> int | None:
    """Cancel a campaign: every still-queued message becomes cancelled (and is never posted).
    Returns how many were cancelled now, or None if there is no such campaign."""
    if not await ledger.set_state(cid, CampaignState.CANCELLED):
        return None
    c = await ledger.campaign(cid)
    return None if c is None else await ledger.cancel_queued(c)

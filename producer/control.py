"""Operator control of a campaign (resume, cancel, reschedule, purge), shared by the `smsq`
command and the HTTP API."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import WatchError

from dispatch import dispatch, dispatch_parked
from ledger import keys
from ledger.campaigns import Campaign
from ledger.errors import CampaignFinished, InputError
from ledger.quiet_hours import QuietHours
from ledger.states import PENDING, CampaignState, State
from ledger.store import Ledger
from producer.windows import open_intervals, parse_window


@dataclass(frozen=True, slots=True)
class Resumed:
    batches_queued: int
    halt_lifted: bool


async def resume(app: Any, ledger: Ledger, cid: str, why: str) -> Resumed | None:
    """Resume a campaign, and lift a halt or a backoff of its trunk: that trunk's parked
    batches go back on the queues. None if there is no such campaign; CampaignFinished if it
    has ended (cancelled or done), and nothing is changed."""
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
    Returns how many were cancelled now, or None if there is no such campaign;
    CampaignFinished if it has ended (cancelled or done), and nothing is changed."""
    try:
        if not await ledger.set_state(cid, CampaignState.CANCELLED):
            return None
    except CampaignFinished:
        # A cancel whose process stopped between its two steps left messages queued in a
        # cancelled campaign: the next cancel ends them before it answers that it was done.
        c = await ledger.campaign(cid)
        if c is not None and c.state == CampaignState.CANCELLED:
            await ledger.cancel_queued(c)
        raise
    c = await ledger.campaign(cid)
    return None if c is None else await ledger.cancel_queued(c)


async def reschedule(ledger: Ledger, cid: str, send_at: float) -> bool | None:
    """Move a scheduled campaign that has not started to send_at (checked by the caller: in
    the future, within a year). Its time to live moves with it, its quiet-hours intervals are
    computed again, and its batches wait for the new time. None if there is no such
    campaign; InputError if it is not scheduled or has started."""
    key = keys.campaign(cid)
    async with ledger.redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key, keys.windows(cid))
                c = Campaign.stored(cid, await pipe.hgetall(key))
                if c is None:
                    return None
                waiting = c.state in (CampaignState.SCHEDULED, CampaignState.PAUSED)
                if not waiting or c.send_at <= time.time() + 1:
                    raise InputError(
                        f"campaign {cid} is not waiting for a scheduled time (it is {c.state}); "
                        "only a scheduled campaign that has not started can be rescheduled"
                    )
                ttl_s = c.expires_at - c.send_at
                hours = (
                    QuietHours.from_hash(await pipe.hgetall(keys.windows(cid)))
                    if c.window
                    else None
                )
                pipe.multi()
                pipe.hset(key, mapping=Campaign.encode(send_at=send_at, expires_at=send_at + ttl_s))
                if hours is not None:
                    window = parse_window(c.window)
                    intervals = [
                        open_intervals(window, g.zones, send_at, send_at + ttl_s)
                        for g in hours.groups
                    ]
                    pipe.hset(keys.windows(cid), mapping=hours.with_intervals(intervals).to_hash())
                parked = {keys.batch_member(cid, b): send_at for b in range(c.batches)}
                for start in range(0, len(parked), 1000):
                    pipe.zadd(keys.parked(), dict(list(parked.items())[start : start + 1000]))
                await pipe.execute()
                return True
            except WatchError:
                continue


async def purge(ledger: Ledger, cid: str) -> bool | None:
    """Delete a finished (or cancelled) campaign now; None if there is no such campaign.
    InputError if messages of it are still pending and it is not cancelled, or if requests of
    it are on the wire now (their answers must be recorded first). A cancelled campaign's
    messages still waiting for their callback become unconfirmed first, with their events, so
    the ledger is left whole."""
    status = await ledger.status(cid, with_warnings=False)
    if status is None:
        return None
    c, counts = status.campaign, status.counts
    pending = sum(counts.get(s, 0) for s in PENDING)
    if pending and c.state != CampaignState.CANCELLED:
        raise InputError(
            f"campaign {cid} still has {pending} messages queued, sending or waiting for their "
            "callback; cancel it first, or wait until it is done"
        )
    sending = counts.get(State.SENDING, 0)
    if sending:
        raise InputError(
            f"campaign {cid} has {sending} messages being sent right now; purge it again once "
            "their answers are in (seconds)"
        )
    if counts.get(State.ACCEPTED, 0):
        await ledger.unconfirm_campaign(cid, c.batches)
    return await ledger.purge(cid)

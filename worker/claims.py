"""Claiming, per trunk: offer the held batches' messages to the claim script (ledger/lua/
claim.lua) as the trunk's rate slots fall due, and write each claimed request at once
(claim at the wire). docs/architecture.md §5 and §6.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections.abc import Callable

import structlog
from redis.exceptions import RedisError

from ledger import events
from ledger.errors import NotReplicated
from ledger.hotpath import Claimed, ClaimReply, Result
from ledger.quiet_hours import next_open
from worker.batches import HeldBatch, Hub, Lane
from worker.metrics import (
    CLAIM_LATENESS_SECONDS,
    CLAIM_SECONDS,
    CLAIMS_GIVEN_BACK,
    CLAIMS_NOT_REPLICATED,
    IN_FLIGHT,
)

log = structlog.stdlib.get_logger("smsq.worker")

# Each claim call reserves this much of the trunk's time for the caller's next call: fewer
# round trips than one per message at high rates, and a burst of at most this long.
SPAN_S = 0.01
# Message indexes offered per claim call, at most.
MAX_OFFER = 256
# Messages one claim call takes, at most. The requests are written one after the other as
# soon as the answer is in, and their answers come back together and are handled before the
# next claim's answer: the more a call takes, the later that answer is read. With no limit
# (up to the free in-flight capacity, 128) at SMSQ_RATE_LIMIT=10000 on 2 cores (AMD EPYC, one
# worker x 2, simulator at 0 ms), calls took ~60 messages and 32-39% of the claimed messages
# were given back unwritten (answer later than Lane.stale_claim_s); at 32, 8-11%; at 16,
# 0.2-1.0%, for 5-13% fewer messages a second at 0 ms and 10% more worker CPU per message
# (ops/bench --only idle,cpu; docs/performance.md "Idle"). At 300/s a call takes 7 at most
# (its reserved slot and the catch-up's): the limit binds only above about 650/s.
MAX_CLAIM = 16
# Indexes offered beyond the units a claim call can spend (its due units and the slots in the
# trunk's catch-up), for messages the script skips (opted out, or sent meanwhile from the
# urgent lane), so that a few skips do not leave the call with units and nothing to claim.
# The loop offered MAX_OFFER every call: at 300/s with 8 processes each call claims one
# message, and redis-py packed ~190 arguments for it (cProfile, one engine at 100/s: 190,000
# encodes for 982 messages; 57,000 with this).
OFFER_SPARE = 8
# After a Redis error the claim loop waits this long before its next call, doubling to the max.
REDIS_RETRY_S, REDIS_RETRY_MAX_S = 0.2, 5.0
# uvloop's clock (loop.time()) and timers count whole milliseconds, so a sleep for less than
# the time left to the next millisecond returns within the same one: waiting for a slot, the
# claim loop went round (offer() and all) about 90 times per slot until its clock ticked
# past it. It sleeps whole ticks instead, waking once, at the same tick. On 2 cores (AMD
# EPYC), 1 worker x 8 processes pacing 300/s, simulator at 0 ms, three runs each: worker CPU
# 0.57-0.64 cores before, 0.55 after; 0.49-0.54 with OFFER_SPARE too (docs/performance.md
# "Idle").
CLOCK_TICK_S = 0.001

# (campaign, batch, indexes) offered to one claim call.
Offer = list[tuple[str, int, list[int]]]


class Claimer:
    def __init__(self, hub: Hub, write: Callable[[Lane, HeldBatch, Claimed], None]) -> None:
        """write(lane, held, claimed) writes one claimed request (worker/posting.py)."""
        self.hub = hub
        self.write = write

    def offer(
        self, lane: Lane, now: float, wall: float, most: int = MAX_OFFER
    ) -> tuple[Offer, int]:
        """The indexes to offer the claim script, batch by batch, and the units of every
        message still pending here (what is worth reserving slots for). At most `most`
        indexes in order, then the first of each further batch, so that the script still
        looks at its campaign (paused, cancelled, ...); MAX_OFFER in all."""
        offer: Offer = []
        backlog_units = 0
        room = min(most, MAX_OFFER)
        total = 0
        for held in list(lane.batches):
            if not held.open:
                continue
            while held.retries and held.retries[0][0] <= now:
                held.ready.appendleft(heapq.heappop(held.retries)[1])
            expires = held.campaign.expires_at
            # Outside its quiet-hours window it waits, parked; once expired it is offered
            # anyway, so the claim script expires its messages.
            if held.intervals is not None and held.ready and wall < expires:
                inside, opens = next_open(held.intervals, wall)
                if not inside:
                    self.hub.let_go(lane, held, park_at=min(opens or expires, expires))
                    continue
            per = max(held.campaign.segments, 1) if lane.rate.by_segment else 1
            backlog_units += held.pending * per
            if not held.ready or total >= MAX_OFFER:
                continue
            n = min(len(held.ready), max(room, 1), MAX_OFFER - total)
            offer.append((held.campaign.id, held.batch, [held.ready[i] for i in range(n)]))
            room -= n
            total += n
        return offer, backlog_units

    async def run(self, lane: Lane) -> None:
        """The lane's claim loop, until the engine stops: wait for work, room in flight and
        the next reserved slot, then claim."""
        hub = self.hub
        loop = asyncio.get_running_loop()
        span_units = lane.rate.span_units(SPAN_S)
        # The most units a call can spend beyond its due ones: the slots in the catch-up.
        catchup_units = math.ceil(lane.rate.catchup_us / lane.rate.interval_us) + 1
        delay = REDIS_RETRY_S
        while not hub.stopping:
            now = loop.time()
            most = min(lane.ready_units + lane.reserved + catchup_units, MAX_CLAIM) + OFFER_SPARE
            offer, backlog_units = self.offer(lane, now, time.time(), most)
            if not offer and not lane.reserved and not lane.ready_units:
                lane.work.clear()
                # Retries wake the loop when their time comes.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.work.wait(), lane.next_retry(now))
                continue
            free = hub.inflight.free
            if free <= 0:
                await hub.inflight.wait_for_room()
                continue
            wait_until = lane.cap_until
            if lane.reserved and not lane.ready_units:
                wait_until = max(wait_until, lane.reserved_at)
            if wait_until > now:
                await asyncio.sleep(_whole_ticks(wait_until - now))
                continue
            due = lane.ready_units
            if lane.reserved and now >= lane.reserved_at:
                CLAIM_LATENESS_SECONDS.labels(lane.name).observe(now - lane.reserved_at)
                due += lane.reserved
                lane.reserved = 0
            want = max(0, min(span_units, free, backlog_units - due)) if offer else 0
            try:
                await self.claim(lane, offer, due=due, want=want, max_messages=min(free, MAX_CLAIM))
            except NotReplicated as exc:
                # Given back already (claim()); wait before claiming again, as for an error.
                log.warning("claim_not_replicated", trunk=lane.name, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_S)
                continue
            except RedisError as exc:
                log.warning("claim_failed", trunk=lane.name, error=str(exc), retry_in_s=delay)
                lane.ready_units = due
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_S)
                continue
            delay = REDIS_RETRY_S

    async def claim(
        self, lane: Lane, offer: Offer, *, due: int, want: int, max_messages: int
    ) -> ClaimReply:
        """One claim call: up to max_messages with the due units plus any free ones, and
        `want` units reserved for the next call; each claimed request is written before this
        returns (or, if the answer came too late to write it in time, given back). A claim
        too few replicas acknowledged is given back too, and NotReplicated raised."""
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        try:
            reply = await self.hub.ledger.claim(
                lane.name,
                self.hub.owner,
                lane.rate,
                due=due,
                want=want,
                max_messages=max_messages,
                batches=offer,
                event_base=_event_base(lane),
            )
        except NotReplicated as exc:
            # A failover now could bring these messages back queued on the new primary:
            # written, they could be sent twice. Nothing is written; they go back.
            reply = exc.reply
            CLAIMS_NOT_REPLICATED.labels(lane.name).inc(len(reply.claimed))
            self._give_back(lane, reply, why="claims_not_replicated")
            self._after_claim(lane, reply, want, loop.time())
            raise
        answered_at = loop.time()
        CLAIM_SECONDS.labels(lane.name).observe(answered_at - asked_at)
        if reply.claimed and answered_at - asked_at > lane.stale_claim_s:
            # This process (or Redis) stalled between the claim and now: written this
            # late, the requests could bunch with later ones past the trunk's limit.
            self._give_back(lane, reply)
        self._after_claim(lane, reply, want, answered_at)
        return reply

    def _give_back(self, lane: Lane, reply: ClaimReply, why: str = "claims_given_back") -> None:
        """Unclaim what a stalled (or not replicated) claim call took: back to queued
        (recorded in the next flush), offered again once that is recorded. Nothing was
        written."""
        if not reply.claimed:
            return
        if why == "claims_given_back":
            CLAIMS_GIVEN_BACK.labels(lane.name).inc(len(reply.claimed))
        log.warning(why, trunk=lane.name, messages=len(reply.claimed))
        recorder = self.hub.recorder
        for claimed in reply.claimed:
            held = lane.find(claimed.cid, claimed.batch)
            where = (claimed.cid, claimed.batch, claimed.index)
            if held is not None and held.open and not claimed.source:
                held.unrecorded += 1
                now = asyncio.get_running_loop().time()
                recorder.retry(Result("unclaim", *where, "", ""), (lane, held, now, claimed.index))
            else:
                # An urgent message (or a batch let go): its batch is parked, so it is taken
                # up again (its lane entry is gone).
                recorder.add(Result("unclaim", *where, "", f"{time.time():.3f}"))
        # The reply's outcomes still count: what it examined is settled either way, and the
        # unclaimed indexes are offered again from the retries.
        reply.claimed.clear()

    def _after_claim(self, lane: Lane, reply: ClaimReply, want: int, now: float) -> None:
        hub = self.hub
        if reply.status != "ok":
            log.warning("trunk_stopped", trunk=lane.name, why=reply.status)
            lane.stop_claiming()
            for held in list(lane.batches):
                hub.let_go(lane, held, park_at=time.time())
            return
        lane.ready_units = reply.leftover
        if reply.wake_us >= 0:
            lane.reserved = want
            lane.reserved_at = now + reply.wake_us / 1_000_000
        lane.cap_until = now + reply.cap_wait_us / 1_000_000 if reply.cap_wait_us >= 0 else 0.0
        if reply.claimed:
            lane.recent_claims.append((now, len(reply.claimed)))
            lane.room.set()
        for claimed in reply.claimed:
            held = lane.find(claimed.cid, claimed.batch)
            if held is not None and claimed.source:
                # An urgent message of a batch held here: it must not be offered again (the
                # claim script would take an offered message of ours that is sending for one
                # whose reply was lost).
                with contextlib.suppress(ValueError):
                    held.ready.remove(claimed.index)
            if held is None:
                # An urgent message of a batch this process does not hold: the claim script
                # registered its in-flight entry; hold it (closed) until its answer is in.
                held = hub.urgent_holder(lane, claimed)
            hub.inflight.add(lane, held)
            # Written here, before anything else runs on this loop: claimed means on the wire.
            self.write(lane, held, claimed)
        IN_FLIGHT.labels(lane.name).set(lane.in_flight)
        for outcome in reply.outcomes:
            held = lane.find(outcome.cid, outcome.batch)
            if held is None:
                continue
            for _ in range(min(outcome.examined, len(held.ready))):
                held.ready.popleft()
            if outcome.outcome == "scheduled":
                hub.let_go(lane, held, park_at=float(outcome.value))
            elif outcome.outcome in ("paused", "missing"):
                # A resumed campaign's batches are published again (producer/control.py).
                hub.let_go(lane, held, park_at=None)
            elif outcome.outcome in ("cancelled", "expired"):
                held.ready.clear()
                held.retries.clear()
            hub.maybe_finish(lane, held)


def _whole_ticks(seconds: float) -> float:
    """seconds rounded up to the loop clock's next whole tick (CLOCK_TICK_S)."""
    return math.ceil(seconds / CLOCK_TICK_S - 1e-6) * CLOCK_TICK_S


def _event_base(lane: Lane) -> str:
    return events.encode(events.message_event(None, None, "", "", None, trunk=lane.name))

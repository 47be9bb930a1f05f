"""The sending engine of one worker process: it holds the batches its Celery tasks hand over,
claims their messages as the trunk's rate slots fall due, posts each claimed message at once,
and records DIDWW's answers. Claims and answers travel many per Redis round trip.

A task returns as soon as its batch is held, so one process keeps as many requests in flight
as the trunk's rate and DIDWW's latency call for (Little's law), up to SMSQ_MAX_IN_FLIGHT.
While a batch is held its in-flight entry beats in Redis; if the process dies, another
worker's supervisor marks what it had claimed unknown and parks the batch (recover.lua).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from redis.exceptions import RedisError

from ledger import events, keys, records
from ledger.campaigns import FIELD_SEPARATOR, Campaign
from ledger.hotpath import Claimed, ClaimReply, RateParams, Result
from ledger.recovery import inflight_field
from ledger.settings import Settings, TrunkConfig
from ledger.store import Ledger
from ledger.templates import Template
from ledger.windows import decode_intervals, next_open
from worker.didww import DidwwClient
from worker.errors import Ambiguous, DidwwError, Halting, Rejected
from worker.metrics import (
    API_SECONDS,
    CLAIM_LATENESS_SECONDS,
    CLAIMS_GIVEN_BACK,
    IN_FLIGHT,
    MESSAGES,
    RETRIES,
)
from worker.retry import RetryPolicy
from worker.transport import Exchange

log = structlog.stdlib.get_logger("smsq.worker")

# Each claim call reserves this much of the trunk's time for the caller's next call: fewer
# round trips than one per message at high rates, and a burst of at most this long.
SPAN_S = 0.01
# Answers wait at most this long to be recorded together (one round trip for all of them).
FLUSH_S = 0.004
# Message indexes offered per claim call, at most.
MAX_OFFER = 256
# A process takes another batch of a trunk while it holds less than this many seconds of that
# trunk's work (at the pace it has been claiming), so work spreads over processes and hosts;
# DIDWW's latency is covered by what is in flight, not by what is held.
HOLD_S = 1.0
# A task waits this long for that room, then parks its batch for PARK_BUSY_S and returns,
# freeing its process for other trunks' tasks.
TAKE_WAIT_S = 5.0
PARK_BUSY_S = 1.0
# Seconds between heartbeats of the held batches (supervisor.LOST_AFTER_S allows for 7).
BEAT_S = 2.0
# After a Redis error the engine waits this long before its next call, doubling to the max.
REDIS_RETRY_S, REDIS_RETRY_MAX_S = 0.2, 5.0
# Claims answered later than this are always written (see Lane.stale_claim_s).
STALE_CLAIM_MIN_S = 0.01
# Campaigns kept in memory (their text, template and settings), most recent first.
CAMPAIGN_CACHE = 256


@dataclass(eq=False)
class HeldBatch:
    """A batch this process holds: the indexes still to offer, retries waiting their turn,
    and what is needed to post its messages."""

    campaign: Campaign
    batch: int
    field: str
    ready: deque[int] = field(default_factory=deque)
    retries: list[tuple[float, int]] = field(default_factory=list)
    values: dict[int, str] = field(default_factory=dict)
    intervals: list[tuple[int, int]] | None = None
    in_flight: int = 0
    # Messages given back for a retry whose `retry` result is not recorded yet: offered
    # before it is, the claim would find them still sending and drop them.
    unrecorded: int = 0
    # False once the engine stopped offering its messages (paused, parked, done, lost).
    open: bool = True
    # What this process's posts of the batch came to, for the batch_done log line.
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return len(self.ready) + len(self.retries) + self.unrecorded

    @property
    def finished(self) -> bool:
        return self.in_flight == 0 and (not self.open or self.pending == 0)


@dataclass
class Lane:
    """One trunk as this process sends to it."""

    config: TrunkConfig
    client: DidwwClient
    rate: RateParams
    batches: list[HeldBatch] = field(default_factory=list)
    # Units due now (kept after a full cap) and units reserved for reserved_at (loop time).
    ready_units: int = 0
    reserved: int = 0
    reserved_at: float = 0.0
    cap_until: float = 0.0
    in_flight: int = 0
    # (loop time, messages) of this process's claims here over the last HOLD_S: its pace.
    recent_claims: deque[tuple[float, int]] = field(default_factory=deque)
    work: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def backlog(self) -> int:
        return sum(b.pending for b in self.batches if b.open)

    @property
    def stale_claim_s(self) -> float:
        """A claim answered later than this after it was asked is given back, unwritten: 3/4
        of the lateness the trunk's window allows (RateParams.allowance_us)."""
        return max(STALE_CLAIM_MIN_S, 0.75 * self.rate.allowance_us / 1_000_000)

    def claimed_recently(self, now: float) -> int:
        """Messages this process claimed here in the last HOLD_S seconds."""
        while self.recent_claims and self.recent_claims[0][0] < now - HOLD_S:
            self.recent_claims.popleft()
        return sum(n for _, n in self.recent_claims)

    def has_room(self) -> bool:
        """Whether to take another batch: this process holds less than it claimed over the
        last HOLD_S (what it will likely claim over the next), or nothing at all."""
        backlog = self.backlog()
        return backlog == 0 or backlog < self.claimed_recently(asyncio.get_running_loop().time())

    def find(self, cid: str, batch: int) -> HeldBatch | None:
        for held in self.batches:
            if held.campaign.id == cid and held.batch == batch:
                return held
        return None


class Engine:
    def __init__(self, settings: Settings, ledger: Ledger, owner: int, owner_name: str) -> None:
        self.settings = settings
        self.ledger = ledger
        self.owner = owner
        self.owner_name = owner_name
        self.policy = RetryPolicy(settings)
        self.max_in_flight = settings.max_in_flight
        self.in_flight = 0
        self.capacity = asyncio.Event()
        self.stopping = False
        self.lanes: dict[str, Lane] = {}
        for trunk in settings.trunks().values():
            client = DidwwClient(
                trunk,
                max_connections=settings.max_in_flight,
                connect_timeout_s=settings.connect_timeout_s,
                read_timeout_s=settings.read_timeout_s,
            )
            rate = RateParams.of(trunk.rate_limit, settings.rate_headroom, settings.rate_unit)
            self.lanes[trunk.name] = Lane(trunk, client, rate)
        self._results: list[Result] = []
        self._forget: list[str] = []
        self._unrecorded_retries: list[tuple[Lane, HeldBatch, float, int]] = []
        self._flush_wanted = asyncio.Event()
        self._campaigns: dict[str, Campaign] = {}
        self._templates: dict[str, Template] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._posts: set[asyncio.Task[None]] = set()

    @classmethod
    async def create(cls, settings: Settings, ledger: Ledger, owner_name: str) -> Engine:
        owner = await ledger.new_owner()
        engine = cls(settings, ledger, owner, owner_name)
        engine.start()
        return engine

    def start(self) -> None:
        for lane in self.lanes.values():
            lane.task = asyncio.create_task(self._claim_loop(lane), name=f"claim-{lane.name}")
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="flush"),
            asyncio.create_task(self._beat_loop(), name="beat"),
        ]

    # --- batches handed over by tasks ---------------------------------------------------

    async def take(self, cid: str, batch_no: int, *, urgent: bool = False) -> str:
        """Hold a batch and start sending it; returns held, busy (parked for a moment: this
        process has enough of that trunk's work), missing, already_held or no_trunk."""
        c = await self._campaign(cid)
        if c is None:
            return "missing"
        lane = self.lanes.get(c.trunk)
        if lane is None:
            log.error("unknown_trunk", campaign_id=cid, trunk=c.trunk)
            await self.ledger.park(cid, batch_no, time.time() + 60)
            return "no_trunk"
        existing = lane.find(cid, batch_no)
        if existing is not None and existing.open:
            return "already_held"
        # The entry beats from now on, so a process killed while this task waits for room (or
        # any time later) has its batch recovered within seconds (recover.lua), not after the
        # broker's visibility timeout.
        await self.ledger.hold(c.id, batch_no, self.owner)
        if not urgent and not c.priority:
            deadline = time.monotonic() + TAKE_WAIT_S
            while not lane.has_room():
                lane.room.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stopping:
                    await self.ledger.park(cid, batch_no, time.time() + PARK_BUSY_S)
                    if lane.find(cid, batch_no) is None:
                        self._forget.append(inflight_field(cid, batch_no, self.owner))
                        self._flush_wanted.set()
                    return "busy"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.room.wait(), remaining)
        held = await self._load(c, batch_no)
        existing = lane.find(cid, batch_no)
        if existing is not None:
            # Still finishing requests from an earlier hold (or an urgent claim): reopen it.
            existing.campaign, existing.open = c, True
            existing.ready, existing.values, existing.intervals = (
                held.ready,
                held.values,
                held.intervals,
            )
            held = existing
            lane.batches.remove(existing)
        if urgent or c.priority:
            # Offered first (Engine._offer goes in this order): an urgent batch taken up again
            # after a backoff or a park is no longer in the trunk's lane, and behind the
            # batches held here it waited 5 s for its first slot in tests/integration/
            # test_faults.py's outage.
            lane.batches.insert(0, held)
        else:
            lane.batches.append(held)
        lane.work.set()
        return "held"

    async def _load(self, c: Campaign, batch_no: int) -> HeldBatch:
        field_name = inflight_field(c.id, batch_no, self.owner)
        rows = await self.ledger.records(c, batch_no)
        held = HeldBatch(c, batch_no, field_name)
        held.ready.extend(r.index for r in rows if r.state == "queued")
        if c.templated:
            raw = await self.ledger.redis.hgetall(keys.fields(c.id, batch_no))
            held.values = {int(k): v.decode() for k, v in raw.items()}
        if c.window:
            group = await self.ledger.redis.hget(keys.windows(c.id), f"b:{batch_no}")
            raw = await self.ledger.redis.hget(keys.windows(c.id), f"g:{int(group or 0)}")
            held.intervals = decode_intervals(raw.decode()) if raw else []
        return held

    async def _campaign(self, cid: str) -> Campaign | None:
        c = self._campaigns.get(cid)
        if c is None:
            c = await self.ledger.campaign(cid)
            if c is None:
                return None
            if len(self._campaigns) >= CAMPAIGN_CACHE:
                self._campaigns.pop(next(iter(self._campaigns)))
            self._campaigns[cid] = c
        return c

    # --- claiming ---------------------------------------------------------------------

    def _offer(
        self, lane: Lane, now: float, wall: float
    ) -> tuple[list[tuple[str, int, list[int]]], int]:
        """The indexes to offer the claim script, batch by batch, and the units of every
        message still pending here (what is worth reserving slots for)."""
        offer: list[tuple[str, int, list[int]]] = []
        backlog_units = 0
        room = MAX_OFFER
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
                    self._let_go(lane, held, park_at=min(opens or expires, expires))
                    continue
            per = max(held.campaign.segments, 1) if lane.rate.by_segment else 1
            backlog_units += held.pending * per
            if not held.ready or room <= 0:
                continue
            take = [held.ready[i] for i in range(min(room, len(held.ready)))]
            offer.append((held.campaign.id, held.batch, take))
            room -= len(take)
        return offer, backlog_units

    async def _claim_loop(self, lane: Lane) -> None:
        loop = asyncio.get_running_loop()
        span_units = lane.rate.span_units(SPAN_S)
        delay = REDIS_RETRY_S
        while not self.stopping:
            now = loop.time()
            wall = time.time()
            offer, backlog_units = self._offer(lane, now, wall)
            if not offer and not lane.reserved and not lane.ready_units:
                lane.work.clear()
                # Retries wake the loop when their time comes.
                wait = self._next_retry(lane, now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.work.wait(), wait)
                continue
            free = self.max_in_flight - self.in_flight
            if free <= 0:
                self.capacity.clear()
                await self.capacity.wait()
                continue
            wait_until = lane.cap_until
            if lane.reserved and not lane.ready_units:
                wait_until = max(wait_until, lane.reserved_at)
            if wait_until > now:
                await asyncio.sleep(wait_until - now)
                continue
            due = lane.ready_units
            if lane.reserved and now >= lane.reserved_at:
                CLAIM_LATENESS_SECONDS.labels(lane.name).observe(now - lane.reserved_at)
                due += lane.reserved
                lane.reserved = 0
            want = max(0, min(span_units, free, backlog_units - due)) if offer else 0
            asked_at = loop.time()
            try:
                reply = await self.ledger.claim(
                    lane.name,
                    self.owner,
                    lane.rate,
                    due=due,
                    want=want,
                    max_messages=free,
                    batches=offer,
                    event_base=self._event_base(lane),
                )
            except RedisError as exc:
                log.warning("claim_failed", trunk=lane.name, error=str(exc), retry_in_s=delay)
                lane.ready_units = due
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_S)
                continue
            delay = REDIS_RETRY_S
            answered_at = loop.time()
            if reply.claimed and answered_at - asked_at > lane.stale_claim_s:
                # This process (or Redis) stalled between the claim and now: written this
                # late, the requests could bunch with later ones past the trunk's limit.
                self._give_back(lane, reply)
            self._after_claim(lane, reply, want, answered_at)

    def _give_back(self, lane: Lane, reply: ClaimReply) -> None:
        """Unclaim what a stalled claim call took: back to queued (recorded in the next
        flush), offered again once that is recorded. Nothing was written."""
        CLAIMS_GIVEN_BACK.labels(lane.name).inc(len(reply.claimed))
        log.warning("claims_given_back", trunk=lane.name, messages=len(reply.claimed))
        for claimed in reply.claimed:
            held = lane.find(claimed.cid, claimed.batch)
            where = (claimed.cid, claimed.batch, claimed.index)
            if held is not None and held.open and not claimed.source:
                held.unrecorded += 1
                now = asyncio.get_running_loop().time()
                self._unrecorded_retries.append((lane, held, now, claimed.index))
                self._results.append(Result("unclaim", *where, "", ""))
            else:
                # An urgent message (or a batch let go): its batch is parked, so it is taken
                # up again (its lane entry is gone).
                self._results.append(Result("unclaim", *where, "", f"{time.time():.3f}"))
        self._flush_wanted.set()
        # The reply's outcomes still count: what it examined is settled either way, and the
        # unclaimed indexes are offered again from the retries.
        reply.claimed.clear()

    def _next_retry(self, lane: Lane, now: float) -> float | None:
        times = [h.retries[0][0] for h in lane.batches if h.open and h.retries]
        return max(0.0, min(times) - now) if times else None

    def _event_base(self, lane: Lane) -> str:
        return events.encode(events.message_event(None, None, "", "", None, trunk=lane.name))

    def _after_claim(self, lane: Lane, reply: ClaimReply, want: int, now: float) -> None:
        if reply.status != "ok":
            log.warning("trunk_stopped", trunk=lane.name, why=reply.status)
            lane.ready_units = lane.reserved = 0
            for held in list(lane.batches):
                self._let_go(lane, held, park_at=time.time())
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
                held = self._urgent_holder(lane, claimed)
            held.in_flight += 1
            lane.in_flight += 1
            self.in_flight += 1
            # Written here, before anything else runs on this loop: claimed means on the wire.
            try:
                source, text = self._text(held, claimed)
                request = lane.client.request(source, claimed.destination, text)
                started: Exchange | DidwwError | None = lane.client.start(request)
            except DidwwError as exc:
                started = exc
            except Exception as exc:
                log.exception("request_not_built", campaign_id=claimed.cid, index=claimed.index)
                started = Ambiguous(f"internal error: {type(exc).__name__}")
                source, request = held.campaign.source, None
            posted_at = time.time()
            task = asyncio.create_task(
                self._post(lane, held, claimed, source, request, started, posted_at)
            )
            self._posts.add(task)
            task.add_done_callback(self._posts.discard)
        IN_FLIGHT.labels(lane.name).set(lane.in_flight)
        for outcome in reply.outcomes:
            held = lane.find(outcome.cid, outcome.batch)
            if held is None:
                continue
            for _ in range(min(outcome.examined, len(held.ready))):
                held.ready.popleft()
            if outcome.outcome == "scheduled":
                self._let_go(lane, held, park_at=float(outcome.value))
            elif outcome.outcome in ("paused", "missing"):
                # A resumed campaign's batches are published again (ledger/control.py).
                self._let_go(lane, held, park_at=None)
            elif outcome.outcome in ("cancelled", "expired"):
                held.ready.clear()
                held.retries.clear()
            self._maybe_finish(lane, held)

    def _urgent_holder(self, lane: Lane, claimed: Claimed) -> HeldBatch:
        c = self._campaigns.get(claimed.cid)
        placeholder = c or Campaign(
            id=claimed.cid,
            source=claimed.source,
            text=claimed.text,
            name="",
            trunk=lane.name,
            total=0,
            batch_size=1,
            batches=0,
            created_at=0.0,
            expires_at=0.0,
            state="active",
            encoding="",
            segments=1,
            priority=True,
        )
        held = HeldBatch(
            placeholder, claimed.batch, inflight_field(claimed.cid, claimed.batch, self.owner)
        )
        held.open = False
        lane.batches.append(held)
        return held

    def _let_go(self, lane: Lane, held: HeldBatch, park_at: float | None) -> None:
        """Stop offering a batch's messages: parked until park_at (None: left for `resume`)."""
        if not held.open:
            return
        held.open = False
        if park_at is not None and held.pending:
            task = asyncio.create_task(self.ledger.park(held.campaign.id, held.batch, park_at))
            self._posts.add(task)
            task.add_done_callback(self._posts.discard)
        held.ready.clear()
        held.retries.clear()
        self._maybe_finish(lane, held)

    def _maybe_finish(self, lane: Lane, held: HeldBatch) -> None:
        if held.finished and held in lane.batches:
            lane.batches.remove(held)
            self._forget.append(held.field)
            self._flush_wanted.set()
            lane.room.set()
            log.info(
                "batch_done",
                campaign_id=held.campaign.id,
                batch=held.batch,
                trunk=lane.name,
                **held.outcomes,
            )

    # --- posting ----------------------------------------------------------------------

    def _text(self, held: HeldBatch, claimed: Claimed) -> tuple[str, str]:
        """(source, text) of a claimed message, rendered for its recipient if templated."""
        c = held.campaign
        source = claimed.source or c.source
        text = claimed.text or c.text
        values = claimed.fields or held.values.get(claimed.index)
        if values is None:
            return source, text
        template = self._templates.get(text)
        if template is None:
            template = self._templates[text] = Template.parse(text)
        return source, template.render_values(values.split(FIELD_SEPARATOR))

    async def _post(
        self,
        lane: Lane,
        held: HeldBatch,
        claimed: Claimed,
        source: str,
        request: httpx.Request | None,
        started: Exchange | DidwwError | None,
        posted_at: float,
    ) -> None:
        c = held.campaign
        mid = f"{claimed.cid}-{claimed.index}"
        result = None
        clock = time.perf_counter()
        label = "accepted"
        try:
            try:
                if isinstance(started, DidwwError):
                    raise started
                assert request is not None
                didww_id = await lane.client.send(request, started)
            except DidwwError as exc:
                label = type(exc).__name__
                result = await self._failed(lane, held, claimed, exc, source, posted_at)
            else:
                key, raw = records.id_key(didww_id)
                result = Result(
                    "accepted",
                    claimed.cid,
                    claimed.batch,
                    claimed.index,
                    self._event("accepted", lane, claimed, source, didww_id),
                    key,
                    didww_id,
                    "1" if raw else "",
                )
                MESSAGES.labels(lane.name, "accepted").inc()
                log.info("message_accepted", campaign_id=c.id, message_id=mid, didww_id=didww_id)
        except Exception:
            # A bug here must not leave the message claimed and unrecorded without a word.
            log.exception("post_failed", campaign_id=c.id, message_id=mid)
            result = Result(
                "unknown",
                claimed.cid,
                claimed.batch,
                claimed.index,
                self._event("unknown", lane, claimed, c.source, None, detail="internal error"),
                f"{time.time():.0f}",
            )
        finally:
            API_SECONDS.labels(lane.name, label).observe(time.perf_counter() - clock)
            held.in_flight -= 1
            lane.in_flight -= 1
            self.in_flight -= 1
            self.capacity.set()
            if result is not None:
                self._results.append(result)
                self._flush_wanted.set()
                held.outcomes[result.kind] = held.outcomes.get(result.kind, 0) + 1
            self._maybe_finish(lane, held)

    async def _failed(
        self,
        lane: Lane,
        held: HeldBatch,
        claimed: Claimed,
        exc: DidwwError,
        source: str,
        posted_at: float,
    ) -> Result:
        c = held.campaign
        mid = f"{claimed.cid}-{claimed.index}"
        where = (claimed.cid, claimed.batch, claimed.index)
        if isinstance(exc, Rejected):
            MESSAGES.labels(lane.name, "rejected").inc()
            log.warning(
                "message_rejected",
                campaign_id=c.id,
                message_id=mid,
                status=exc.status,
                detail=exc.detail,
            )
            return Result(
                "rejected",
                *where,
                self._event("rejected", lane, claimed, source, None, detail=exc.detail),
            )
        if isinstance(exc, Halting):
            await self._stop_trunk(lane, exc)
            return Result("retry", *where, "", self._retry_later(lane, held, claimed, None))
        if isinstance(exc, Ambiguous) and not self.policy.retries(exc):
            MESSAGES.labels(lane.name, "unknown").inc()
            log.warning("message_unknown", campaign_id=c.id, message_id=mid, detail=exc.detail)
            return Result(
                "unknown",
                *where,
                self._event("unknown", lane, claimed, source, None, detail=exc.detail),
                f"{posted_at:.0f}",
            )
        decision = self.policy.decide(exc, claimed.attempts)
        RETRIES.labels(lane.name, str(exc.status or type(exc).__name__)).inc()
        if decision.retry_in_s is None:
            MESSAGES.labels(lane.name, "retries_exhausted").inc()
            log.warning(
                "retries_exhausted",
                campaign_id=c.id,
                message_id=mid,
                detail=exc.detail,
                status=exc.status,
            )
            if await self._back_off(lane, exc.detail, decision.backoff_s):
                log.error(
                    "api_unavailable",
                    trunk=lane.name,
                    detail=exc.detail,
                    backoff_s=round(decision.backoff_s, 1),
                )
            return Result("retry", *where, "", self._retry_later(lane, held, claimed, None))
        log.info(
            "retrying",
            campaign_id=c.id,
            message_id=mid,
            attempt=claimed.attempts,
            error=type(exc).__name__,
            status=exc.status,
            wait_s=round(decision.retry_in_s, 2),
        )
        park_at = self._retry_later(lane, held, claimed, decision.retry_in_s)
        return Result("retry", *where, "", park_at)

    def _retry_later(
        self, lane: Lane, held: HeldBatch, claimed: Claimed, in_s: float | None
    ) -> str:
        """Give the message back for a later attempt: into its held batch's retries, or (an
        urgent message, or a batch no longer open) by parking its batch. Returns the parking
        time record.lua applies ('' when held here)."""
        if in_s is not None and held.open:
            held.unrecorded += 1
            due = asyncio.get_running_loop().time() + in_s
            self._unrecorded_retries.append((lane, held, due, claimed.index))
            return ""
        return f"{time.time() + (in_s or 0):.3f}"

    async def _stop_trunk(self, lane: Lane, exc: DidwwError) -> None:
        """A 401 (or a wrong URL): nothing more is claimed on this trunk, here at once and
        everywhere once the halt is in Redis; held batches are parked until it lifts."""
        for held in list(lane.batches):
            self._let_go(lane, held, park_at=time.time())
        lane.ready_units = lane.reserved = 0
        try:
            if await self.ledger.halt(lane.name, exc.detail):
                log.error("auth_failed", trunk=lane.name, status=exc.status, detail=exc.detail)
        except RedisError as err:
            log.error("halt_not_recorded", trunk=lane.name, error=str(err))

    async def _back_off(self, lane: Lane, detail: str, seconds: float) -> bool:
        # Parked as due: supervisors publish no batch of a trunk that is backing off.
        for held in list(lane.batches):
            self._let_go(lane, held, park_at=time.time())
        lane.ready_units = lane.reserved = 0
        try:
            return await self.ledger.back_off(lane.name, detail, seconds)
        except RedisError as err:
            log.error("backoff_not_recorded", trunk=lane.name, error=str(err))
            return False

    def _event(
        self,
        kind: str,
        lane: Lane,
        claimed: Claimed,
        source: str,
        didww_id: str | None,
        **extra: Any,
    ) -> str:
        event = events.message_event(
            claimed.cid,
            f"{claimed.cid}-{claimed.index}",
            claimed.destination,
            source,
            didww_id,
            trunk=lane.name,
            **extra,
        )
        event["type"] = kind
        return events.encode(event)

    # --- recording and heartbeats ------------------------------------------------------

    async def _flush_loop(self) -> None:
        delay = REDIS_RETRY_S
        while True:
            await self._flush_wanted.wait()
            await asyncio.sleep(FLUSH_S)
            self._flush_wanted.clear()
            results, forget, retries = self._results, self._forget, self._unrecorded_retries
            self._results, self._forget, self._unrecorded_retries = [], [], []
            if not results and not forget:
                continue
            try:
                await self.ledger.record(results, forget)
                await self._schedule_retries(retries)
            except RedisError as exc:
                log.warning("record_failed", results=len(results), error=str(exc), retry_in_s=delay)
                self._results[:0] = results
                self._forget[:0] = forget
                self._unrecorded_retries[:0] = retries
                self._flush_wanted.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_S)
                continue
            delay = REDIS_RETRY_S

    async def _schedule_retries(self, retries: list[tuple[Lane, HeldBatch, float, int]]) -> None:
        """The retries just recorded (their messages are queued again) join their batches'
        turn; a batch let go meanwhile is parked, so its given-back message is not stranded."""
        for lane, held, due, index in retries:
            held.unrecorded -= 1
            if held.open:
                heapq.heappush(held.retries, (due, index))
                lane.work.set()
            else:
                await self.ledger.park(held.campaign.id, held.batch)
                self._maybe_finish(lane, held)

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            held = {h.field: (lane, h) for lane in self.lanes.values() for h in lane.batches}
            try:
                gone = await self.ledger.beat(list(held))
            except RedisError as exc:
                log.warning("heartbeat_failed", error=str(exc))
                continue
            for name in gone:
                lane, batch = held[name]
                # Another worker recovered it (this process was silent too long): let it go.
                log.warning("batch_taken_over", campaign_id=batch.campaign.id, batch=batch.batch)
                batch.open = False
                batch.ready.clear()
                batch.retries.clear()
                if batch.in_flight == 0 and batch in lane.batches:
                    lane.batches.remove(batch)

    async def drain(self, timeout_s: float) -> None:
        """Warm shutdown: claim nothing more, wait for the answers in flight, record them, and
        park what is still queued so other workers go on with it."""
        self.stopping = True
        for lane in self.lanes.values():
            lane.work.set()
            lane.room.set()
        self.capacity.set()
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for lane in self.lanes.values():
            for held in list(lane.batches):
                if held.pending and held.open:
                    await self.ledger.park(held.campaign.id, held.batch)
                held.open = False
                held.ready.clear()
                held.retries.clear()
                if held.in_flight == 0:
                    lane.batches.remove(held)
                    self._forget.append(held.field)
        self._flush_wanted.set()
        deadline = time.monotonic() + 5
        while (self._results or self._forget) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        for lane in self.lanes.values():
            if lane.task:
                lane.task.cancel()
            await lane.client.aclose()

    def held_batches(self) -> Sequence[HeldBatch]:
        return [h for lane in self.lanes.values() for h in lane.batches]

"""The sending engine of one worker process: it holds the batches its Celery tasks hand over,
claims their messages as the trunk's rate slots fall due, posts each claimed message at once,
and records DIDWW's answers (docs/architecture.md §6). Its parts: claims.py (the claim loop
per trunk), posting.py (a request and its answer), recorder.py (answers many per round
trip), inflight.py (what is in flight), batches.py (what is held); this module takes batches,
lets them go, beats for them and drains.

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
from collections.abc import Awaitable
from typing import Any

import structlog
from redis.exceptions import RedisError

from ledger import keys
from ledger.campaigns import Campaign
from ledger.hotpath import Claimed
from ledger.rate import RateParams
from ledger.settings import Settings
from ledger.store import Ledger
from worker.batches import HeldBatch, Lane
from worker.claims import Claimer
from worker.didww import DidwwClient
from worker.errors import DidwwError
from worker.inflight import InFlight
from worker.posting import Poster, Retry
from worker.recorder import Recorder
from worker.retry import RetryPolicy

log = structlog.stdlib.get_logger("smsq.worker")

# A task waits this long for room to take its batch (Lane.has_room), then parks the batch for
# PARK_BUSY_S and returns, freeing its process for other trunks' tasks.
TAKE_WAIT_S = 5.0
PARK_BUSY_S = 1.0
# Seconds between heartbeats of the held batches (supervisor.LOST_AFTER_S allows for 7).
BEAT_S = 2.0
# Campaigns kept in memory (their text, template and settings), most recent first.
CAMPAIGN_CACHE = 256
# On shutdown, answers still unrecorded after the requests in flight are done get this long.
DRAIN_RECORD_S = 5.0


class Engine:
    def __init__(self, settings: Settings, ledger: Ledger, owner: int, owner_name: str) -> None:
        self.settings = settings
        self.ledger = ledger
        self.owner = owner
        self.owner_name = owner_name
        self.policy = RetryPolicy(settings)
        self.inflight = InFlight(settings.max_in_flight)
        self.recorder: Recorder[Retry] = Recorder(ledger, self._retry_recorded)
        self.poster = Poster(self)
        self.claimer = Claimer(self, self.poster.write)
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
        self._campaigns: dict[str, Campaign] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._posts: set[asyncio.Task[Any]] = set()

    @classmethod
    async def create(cls, settings: Settings, ledger: Ledger, owner_name: str) -> Engine:
        owner = await ledger.new_owner()
        engine = cls(settings, ledger, owner, owner_name)
        engine.start()
        return engine

    def start(self) -> None:
        for lane in self.lanes.values():
            lane.task = asyncio.create_task(self.claimer.run(lane), name=f"claim-{lane.name}")
        self._tasks = [
            asyncio.create_task(self.recorder.run(), name="record"),
            asyncio.create_task(self._beat_loop(), name="beat"),
        ]

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run work (a post, a park) in the background; drain waits for none of it but the
        posts, which the in-flight count follows."""
        task = asyncio.ensure_future(work)
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    async def settle(self) -> None:
        """Wait for every post and park started so far, then record their results: what a
        test awaits instead of sleeping."""
        while self._posts:
            await asyncio.gather(*list(self._posts))
        await self.recorder.flush()

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
                        self.recorder.forget(keys.inflight_field(cid, batch_no, self.owner))
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
            # Offered first (Claimer.offer goes in this order): an urgent batch taken up again
            # after a backoff or a park is no longer in the trunk's urgent lane.
            lane.batches.insert(0, held)
        else:
            lane.batches.append(held)
        lane.work.set()
        # Nothing of it queued (a task published twice, a campaign cancelled meanwhile): done
        # at once, or it would stay held, beating, with nothing to send.
        self.maybe_finish(lane, held)
        return "held"

    async def _load(self, c: Campaign, batch_no: int) -> HeldBatch:
        rows = await self.ledger.records(c, batch_no)
        held = HeldBatch(c, batch_no, keys.inflight_field(c.id, batch_no, self.owner))
        held.ready.extend(r.index for r in rows if r.state == "queued")
        if c.templated:
            held.values = await self.ledger.template_values(c.id, batch_no)
        if c.window:
            held.intervals = await self.ledger.batch_intervals(c.id, batch_no)
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

    def urgent_holder(self, lane: Lane, claimed: Claimed) -> HeldBatch:
        """A closed batch for an urgent message this process claimed without holding its
        batch: it keeps the message's in-flight entry until its answer is recorded."""
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
            placeholder, claimed.batch, keys.inflight_field(claimed.cid, claimed.batch, self.owner)
        )
        held.open = False
        lane.batches.append(held)
        return held

    # --- letting batches go ------------------------------------------------------------

    def let_go(self, lane: Lane, held: HeldBatch, park_at: float | None) -> None:
        """Stop offering a batch's messages: parked until park_at (None: left for `resume`)."""
        if not held.open:
            return
        if park_at is not None and held.pending:
            # Its in-flight entry is forgotten after the park is done, never before: forgotten
            # first, a crash or a failover between the two would leave the batch neither held
            # nor parked. If the park fails, the entry stays and, no longer beating, has the
            # batch recovered (recover.lua parks it).
            held.parking = asyncio.ensure_future(
                self.ledger.park(held.campaign.id, held.batch, park_at)
            )
            self.spawn(held.parking)
        held.close()
        self.maybe_finish(lane, held)

    def maybe_finish(self, lane: Lane, held: HeldBatch) -> None:
        if held.finished and held in lane.batches:
            lane.batches.remove(held)
            self.recorder.forget(held.field, after=held.parking)
            lane.room.set()
            log.info(
                "batch_done",
                campaign_id=held.campaign.id,
                batch=held.batch,
                trunk=lane.name,
                **held.outcomes,
            )

    async def stop_trunk(self, lane: Lane, exc: DidwwError) -> None:
        """A 401 (or a wrong URL): nothing more is claimed on this trunk, here at once and
        everywhere once the halt is in Redis; held batches are parked until it lifts."""
        for held in list(lane.batches):
            self.let_go(lane, held, park_at=time.time())
        lane.stop_claiming()
        try:
            if await self.ledger.halt(lane.name, exc.detail):
                log.error("auth_failed", trunk=lane.name, status=exc.status, detail=exc.detail)
        except RedisError as err:
            log.error("halt_not_recorded", trunk=lane.name, error=str(err))

    async def back_off(self, lane: Lane, detail: str, seconds: float) -> bool:
        """DIDWW is unavailable: parked as due, the trunk's batches are published by no
        supervisor while it backs off. True if this call started the backoff."""
        for held in list(lane.batches):
            self.let_go(lane, held, park_at=time.time())
        lane.stop_claiming()
        try:
            return await self.ledger.back_off(lane.name, detail, seconds)
        except RedisError as err:
            log.error("backoff_not_recorded", trunk=lane.name, error=str(err))
            return False

    async def _retry_recorded(self, retry: Retry) -> None:
        """A message given back is queued again in Redis: it joins its batch's turn; a batch
        let go meanwhile is parked, so the message is not stranded."""
        lane, held, due, index = retry
        if held.open:
            held.unrecorded -= 1
            heapq.heappush(held.retries, (due, index))
            lane.work.set()
        else:
            await self.ledger.park(held.campaign.id, held.batch)
            held.unrecorded -= 1
            self.maybe_finish(lane, held)

    # --- heartbeats and shutdown ---------------------------------------------------------

    async def beat(self) -> None:
        """Refresh the heartbeat of every held batch; let go of those another worker recovered
        (this process was silent too long)."""
        held = {h.field: (lane, h) for lane in self.lanes.values() for h in lane.batches}
        for name in await self.ledger.beat(list(held)):
            lane, batch = held[name]
            log.warning("batch_taken_over", campaign_id=batch.campaign.id, batch=batch.batch)
            batch.close()
            if batch.in_flight == 0 and batch in lane.batches:
                lane.batches.remove(batch)

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            try:
                await self.beat()
            except RedisError as exc:
                log.warning("heartbeat_failed", error=str(exc))

    async def drain(self, timeout_s: float) -> None:
        """Warm shutdown: claim nothing more, wait for the answers in flight, record them, and
        park what is still queued so other workers go on with it."""
        self.stopping = True
        for lane in self.lanes.values():
            lane.work.set()
            lane.room.set()
        self.inflight.wake()
        await self.inflight.wait_empty(timeout_s)
        for lane in self.lanes.values():
            for held in list(lane.batches):
                if held.pending and held.open:
                    await self.ledger.park(held.campaign.id, held.batch)
                held.close()
                if held.in_flight == 0:
                    lane.batches.remove(held)
                    self.recorder.forget(held.field)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_RECORD_S
        while self.recorder.pending and loop.time() < deadline:
            try:
                await self.recorder.flush()
            except RedisError as exc:
                log.warning("record_failed", error=str(exc))
                await asyncio.sleep(0.2)
        for task in self._tasks:
            task.cancel()
        for lane in self.lanes.values():
            if lane.task:
                lane.task.cancel()
            await lane.client.aclose()

"""A thread in each worker's main process that keeps the trunk's work moving:

- while sending is halted (401) or backing off (DIDWW unavailable), one worker per probe
  interval probes DIDWW without sending an SMS, and lifts the halt or the backoff once the
  probe is answered;
- parked batches go back on the queues once nothing holds them back;
- a batch whose worker process stopped beating (killed, or its host lost) is recovered: the
  messages it had claimed become unknown (their requests may have reached DIDWW, so they are
  never resent) and the batch goes back on its queue for its still-queued messages.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, ClassVar

import structlog
from celery import bootsteps
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ledger.dispatch import dispatch_parked
from ledger.settings import Settings
from ledger.store import Ledger
from worker import metrics
from worker.didww import DidwwClient
from worker.errors import DidwwError

log = structlog.stdlib.get_logger("smsq.supervisor")

# How often the flags and the parked batches are read: a resumed trunk is noticed this fast.
TICK_S = 1.0
# A batch whose worker has not beaten for this long is lost (worker.sender beats every 2 s;
# the margin covers a worker process stalled by CPU load).
LOST_AFTER_S = 15.0
# Look for lost batches every this many ticks.
SWEEP_EVERY = 5


class Supervisor:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{id(self)}"
        self._stop = threading.Event()
        self._ticks = 0
        self._thread = threading.Thread(target=self._run, name="smsq-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        redis = Redis.from_url(self.settings.redis_url)
        ledger = Ledger(redis, self.settings)
        client = DidwwClient(self.settings.model_copy(update={"concurrency": 1}))
        try:
            while not self._stop.is_set():
                await asyncio.sleep(TICK_S)
                try:
                    await self._tick(ledger, client)
                except (RedisError, OSError) as exc:
                    log.warning("supervisor_redis_error", error=str(exc))
                except Exception:
                    # The thread must outlive any one failure, or this worker never probes again.
                    log.exception("supervisor_error")
        finally:
            await client.aclose()
            await redis.aclose()

    async def _tick(self, ledger: Ledger, client: DidwwClient) -> None:
        self._ticks += 1
        if self._ticks % SWEEP_EVERY == 0:
            await self._recover_lost(ledger)
            # A callback kept this long cannot belong to a message whose 201 is still on its
            # way (the read timeout has passed), so matching it by time takes it from no one.
            settle_after = self.settings.read_timeout_s + SWEEP_EVERY * TICK_S
            settled = await ledger.settle_orphans(settle_after)
            if settled:
                log.info("unknown_settled_by_callback", messages=settled)
        halt, backoff = await ledger.trunk_flags()
        if halt or backoff:
            await self._probe(ledger, client, halted=halt is not None)
            return
        published = await dispatch_parked(self.app, ledger)
        if published:
            log.info("parked_batches_dispatched", batches=published)

    async def _probe(self, ledger: Ledger, client: DidwwClient, *, halted: bool) -> None:
        if not await ledger.take_probe_turn(self.owner):
            return
        try:
            good = await client.probe()
        except DidwwError as exc:
            if not halted:
                await ledger.extend_backoff(self.settings.retry_later_s)
            log.warning("probe_inconclusive", detail=exc.detail)
            return
        if not good:
            if await ledger.halt("Authorization failed (credentials probe)"):
                log.error("auth_failed", detail="credentials probe")
            log.warning("probe_auth_failed")
            return
        lifted = []
        if halted and await ledger.clear_halt("credentials probe succeeded"):
            lifted.append("auth_restored")
        if await ledger.clear_backoff("DIDWW answered a probe"):
            lifted.append("api_restored")
        if lifted:
            published = await dispatch_parked(self.app, ledger, due_only=False)
            log.info("sending_resumed", why=lifted, batches=published)

    async def _recover_lost(self, ledger: Ledger) -> None:
        for cid, batch_no, owner in await ledger.silent_batches(LOST_AFTER_S):
            c = await ledger.campaign(cid)
            swept = 0
            if c is not None:
                swept = await ledger.sweep(c, batch_no, owner, "the worker sending it was lost")
            # Parked before the entry goes: a failure in between leaves one or the other, and
            # the parked batch is published on a later tick (dispatch_parked).
            if c is not None:
                await ledger.park(cid, batch_no)
            if await ledger.end_batch(cid, batch_no, owner):
                log.warning(
                    "lost_batch_recovered",
                    campaign_id=cid,
                    batch=batch_no,
                    owner=owner,
                    unknown=swept,
                )


class SupervisorStep(bootsteps.StartStopStep):
    """Runs the Supervisor beside the worker's pool (a Celery bootstep)."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.supervisor = Supervisor(worker.app, worker.app.smsq_settings)

    def start(self, worker: Any) -> None:
        metrics.serve(worker.app.smsq_settings.metrics_port)
        self.supervisor.start()

    def stop(self, worker: Any) -> None:
        self.supervisor.stop()

"""A thread in each worker's main process that keeps every trunk's work moving:

- while a trunk is halted (401, or a wrong URL) or backing off (DIDWW unavailable), one
  worker per probe interval probes DIDWW without sending an SMS, and lifts the flag once the
  probe is answered;
- parked batches go back on the queues once due (a schedule, quiet hours, a backoff), within
  a fraction of a second of their time;
- a batch whose worker process stopped beating (killed, or its host lost) is recovered: the
  messages it had claimed become unknown and the batch goes back on its queue;
- kept callbacks are matched to unknown messages, accepted messages without a callback for
  SMSQ_CALLBACK_TIMEOUT_S become unconfirmed, and campaigns done for SMSQ_RETENTION_S are
  purged.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, ClassVar

import structlog
from celery import bootsteps
from redis.exceptions import RedisError

from dispatch import dispatch, dispatch_parked
from ledger import connection
from ledger.enqueuing import ENQUEUE_STALL_S, IDEMPOTENCY_TTL_S
from ledger.settings import Settings
from ledger.store import Ledger, redis_warnings
from worker import metrics
from worker.didww import DidwwClient
from worker.errors import DidwwError, Halting

log = structlog.stdlib.get_logger("smsq.supervisor")

# The longest the supervisor sleeps: a resumed trunk, or work parked for sooner than its
# next tick (a campaign just scheduled), is noticed this fast; scheduled campaigns start
# within a second of their time.
TICK_S = 0.5
# The shortest: parked work due sooner is published no earlier than this after the last tick.
MIN_TICK_S = 0.05
# A batch whose worker has not beaten for this long is lost (worker.engine beats every 2 s;
# the margin covers a worker process stalled by CPU load).
LOST_AFTER_S = 15.0
# Lost workers, kept callbacks, callback timeouts and retention are looked at this often.
HOUSEKEEPING_S = 5.0


class Supervisor:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{id(self)}"
        self._stop = threading.Event()
        self._last_housekeeping = 0.0
        self._thread = threading.Thread(target=self._run, name="smsq-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        redis = connection.async_client(self.settings)
        ledger = Ledger(redis, self.settings)
        clients = {
            name: DidwwClient(
                trunk,
                max_connections=1,
                connect_timeout_s=self.settings.connect_timeout_s,
                read_timeout_s=self.settings.read_timeout_s,
            )
            for name, trunk in self.settings.trunks().items()
        }
        try:
            for warning in await redis_warnings(redis):
                log.warning("redis_unsafe", detail=warning)
        except RedisError:
            pass
        sleep_s = TICK_S
        try:
            while not self._stop.is_set():
                await asyncio.sleep(sleep_s)
                try:
                    sleep_s = await self._tick(ledger, clients)
                except (RedisError, OSError) as exc:
                    log.warning("supervisor_redis_error", error=str(exc))
                    sleep_s = TICK_S
                except Exception:
                    # The thread must outlive any one failure, or this worker never probes again.
                    log.exception("supervisor_error")
                    sleep_s = TICK_S
        finally:
            for client in clients.values():
                await client.aclose()
            await redis.aclose()

    async def _tick(self, ledger: Ledger, clients: dict[str, DidwwClient]) -> float:
        """One round; returns how long to sleep before the next."""
        if time.monotonic() - self._last_housekeeping >= HOUSEKEEPING_S:
            self._last_housekeeping = time.monotonic()
            await self._housekeeping(ledger)
        stopped = set()
        for name, client in clients.items():
            halt, backoff = await ledger.trunk_flags(name)
            if halt or backoff:
                stopped.add(name)
                await self._probe(ledger, name, client, halted=halt is not None)
        published = await dispatch_parked(self.app, ledger, stopped=frozenset(stopped))
        if published:
            log.info("parked_batches_dispatched", batches=published)
        next_at = await ledger.next_parked_at()
        if next_at is None:
            return TICK_S
        return min(TICK_S, max(MIN_TICK_S, next_at - time.time()))

    async def _housekeeping(self, ledger: Ledger) -> None:
        await self._recover_lost(ledger)
        # A callback kept this long cannot belong to a message whose 201 is still on its way
        # unless a message to that pair is still sending (settle.lua checks that too).
        settle_after = self.settings.read_timeout_s + HOUSEKEEPING_S
        settled = await ledger.settle_orphans(settle_after)
        if settled:
            log.info("unknown_settled_by_callback", messages=settled)
        unconfirmed = await ledger.unconfirm(self.settings.callback_timeout_s)
        if unconfirmed:
            log.warning("messages_unconfirmed", messages=unconfirmed)
        trimmed = await ledger.trim_events(self.settings.events_retention_s)
        if trimmed:
            log.info(
                "events_trimmed", events=trimmed, older_than_s=self.settings.events_retention_s
            )
        for cid in await ledger.due_purges(self.settings.retention_s):
            if await ledger.purge(cid):
                log.info("campaign_purged", campaign_id=cid)
        await self._finish_enqueues(ledger)

    async def _finish_enqueues(self, ledger: Ledger) -> None:
        """An enqueue whose producer stopped moving: queue its batches if it stored its
        campaign (duplicates cost nothing: claims are atomic); if it never did, its batches
        are deleted once its idempotency key (24 h) can no longer complete it."""
        for cid, batches, moved_at in await ledger.stalled_enqueues(ENQUEUE_STALL_S):
            c = await ledger.campaign(cid)
            if c is not None:
                waiting = await ledger.batches_with_queued(c)
                dispatch(self.app, cid, waiting, trunk=c.trunk, priority=c.priority)
                await ledger.forget_enqueue(cid, batches)
                log.warning("stalled_enqueue_finished", campaign_id=cid, batches=len(waiting))
            elif time.time() - moved_at > IDEMPOTENCY_TTL_S:
                await ledger.discard_partial(cid, batches)
                log.warning("stalled_enqueue_discarded", campaign_id=cid)

    async def _probe(
        self, ledger: Ledger, trunk: str, client: DidwwClient, *, halted: bool
    ) -> None:
        if not await ledger.take_probe_turn(trunk, self.owner):
            return
        try:
            good = await client.probe()
        except Halting as exc:
            log.warning("probe_refused", trunk=trunk, status=exc.status, detail=exc.detail)
            return
        except DidwwError as exc:
            if not halted:
                await ledger.extend_backoff(trunk, self.settings.retry_later_s)
            log.warning("probe_inconclusive", trunk=trunk, detail=exc.detail)
            return
        if not good:
            if await ledger.halt(trunk, "Authorization failed (credentials probe)"):
                log.error("auth_failed", trunk=trunk, detail="credentials probe")
            log.warning("probe_auth_failed", trunk=trunk)
            return
        lifted = []
        if halted and await ledger.clear_halt(trunk, "credentials probe succeeded"):
            lifted.append("auth_restored")
        if await ledger.clear_backoff(trunk, "DIDWW answered a probe"):
            lifted.append("api_restored")
        if lifted:
            published = await dispatch_parked(self.app, ledger)
            log.info("sending_resumed", trunk=trunk, why=lifted, batches=published)

    async def _recover_lost(self, ledger: Ledger) -> None:
        for field in await ledger.silent_batches(LOST_AFTER_S):
            swept = await ledger.recover(field, LOST_AFTER_S)
            if swept >= 0:
                log.warning("lost_batch_recovered", entry=field, unknown=swept)


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

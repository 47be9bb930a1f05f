"""A thread in each worker's main process that probes the credentials while sending is
halted by a 401, and puts the parked work back on the queues once a probe succeeds.
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

from ledger.dispatch import redispatch_parked
from ledger.settings import Settings
from ledger.store import Ledger
from worker.didww import DidwwClient
from worker.errors import DidwwError

log = structlog.stdlib.get_logger("smsq.supervisor")

# How often the halt flag is read: a resumed trunk is noticed within this much time.
TICK_S = 1.0


class Supervisor:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{id(self)}"
        self._stop = threading.Event()
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
        if not await ledger.halted() or not await ledger.take_probe_turn(self.owner):
            return
        try:
            good = await client.probe()
        except DidwwError as exc:
            log.warning("probe_inconclusive", detail=exc.detail)
            return
        if not good:
            log.warning("probe_auth_failed")
            return
        if await ledger.clear_halt("credentials probe succeeded"):
            published = await redispatch_parked(self.app, ledger)
            log.info("auth_restored", batches=published)


class SupervisorStep(bootsteps.StartStopStep):
    """Runs the Supervisor beside the worker's pool (a Celery bootstep)."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.supervisor = Supervisor(worker.app, worker.app.smsq_settings)

    def start(self, worker: Any) -> None:
        self.supervisor.start()

    def stop(self, worker: Any) -> None:
        self.supervisor.stop()

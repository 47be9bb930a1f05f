"""Send one batch: claim each queued message, wait for its rate-limit slot, post it, record
the outcome. Requests run concurrently up to SMSQ_CONCURRENCY per worker process.

While a batch is in hand its worker process beats in Redis; if the beats stop (the process was
killed), another worker's supervisor marks the messages it had claimed unknown and puts the
batch back on the queue. A batch that stops for a halt, a backoff or spent retries is parked
in Redis and run again when nothing holds it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from ledger.settings import Settings
from ledger.states import State
from ledger.store import Campaign, Ledger, Record
from worker.didww import DidwwClient
from worker.errors import Ambiguous, AuthFailed, DidwwError, Rejected, Retryable
from worker.limiter import RateLimiter
from worker.metrics import API_SECONDS, MESSAGES, RETRIES

log = structlog.stdlib.get_logger("smsq.worker")

# Stop reasons: the batch leaves its remaining messages queued for later.
PAUSED, HALTED, BACKOFF, RETRY_LATER = "paused", "halted", "backoff", "retry_later"
# A batch stopped for these is parked; a paused one waits for `smsq resume` instead.
PARK_FOR = frozenset({HALTED, BACKOFF, RETRY_LATER})
# Seconds between a worker process's heartbeats for its batch (supervisor.LOST_AFTER_S).
BEAT_S = 2.0
# A backoff after spent retries lasts SMSQ_RETRY_LATER_S, give or take this share.
BACKOFF_JITTER = 0.2


def _first(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


class Stopped(Exception):
    """All posting stopped (a 401 or a backoff elsewhere) while this request waited to retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class BatchResult:
    campaign_id: str
    batch: int
    accepted: int = 0
    rejected: int = 0
    unknown: int = 0
    expired: int = 0
    cancelled: int = 0
    skipped: int = 0
    released: int = 0
    stopped: str | None = None
    # Set once the campaign turned out cancelled or expired: the rest of the batch is
    # settled by claim without waiting for rate-limit slots, since nothing will be posted.
    sweeping: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _WaitRetryAfter:
    """Honour a 429's Retry-After up to longest_s (plus a little jitter, so waiting requests
    do not return together); else exponential backoff with jitter."""

    def __init__(self, max_wait_s: float, longest_s: float) -> None:
        self.backoff = wait_random_exponential(multiplier=0.5, max=max_wait_s)
        self.longest_s = longest_s

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            return float(min(retry_after, self.longest_s) + random.uniform(0, 0.5))
        return float(self.backoff(state))


class Sender:
    def __init__(
        self,
        ledger: Ledger,
        client: DidwwClient,
        limiter: RateLimiter,
        settings: Settings,
        owner: str,
    ) -> None:
        self.ledger = ledger
        self.owner = owner
        self.client = client
        self.limiter = limiter
        self.settings = settings
        retry_on: Any = Retryable
        if settings.ambiguous == "resend":
            retry_on = (Retryable, Ambiguous)
        self._retry = retry_if_exception_type(retry_on)
        # Retry-After is honoured up to SMSQ_RETRY_LATER_S; a longer one (not seen from DIDWW)
        # is cut there rather than holding a worker's coroutine for minutes.
        self._wait = _WaitRetryAfter(settings.retry_max_wait_s, float(settings.retry_later_s))

    async def send_batch(self, cid: str, batch_no: int) -> BatchResult:
        result = BatchResult(cid, batch_no)
        campaign = await self.ledger.campaign(cid)
        if campaign is None:
            log.warning("campaign_missing", campaign_id=cid, batch=batch_no)
            result.stopped = "missing"
            return result
        async with self._beating(cid, batch_no):
            # Claims of ours still `sending` here are from an attempt at this batch that Redis
            # errors cut short: their requests may have gone out, so they become unknown.
            leftovers = await self.ledger.sweep(
                campaign, batch_no, self.owner, "an earlier attempt stopped mid-request"
            )
            if leftovers:
                log.warning("leftover_claims_unknown", batch=batch_no, messages=leftovers)
            records = await self.ledger.records(cid, batch_no)
            gate = asyncio.Semaphore(self.settings.concurrency)

            async def one(record: Record) -> None:
                async with gate:
                    if result.stopped is None:
                        await self._send_one(campaign, record, result)

            # A TaskGroup cancels the other requests if one fails (a Redis error), so none
            # keeps running after the task has given up.
            try:
                async with asyncio.TaskGroup() as group:
                    for record in records:
                        if record.state is State.QUEUED:
                            group.create_task(one(record))
            except ExceptionGroup as failed:
                # The task retries the batch on a Redis error (worker/tasks.py): raise that
                # one error, not the group, so it is recognised.
                redis_errors = failed.subgroup(RedisError)
                if redis_errors is not None:
                    raise _first(redis_errors) from failed
                raise
            if result.stopped in PARK_FOR:
                await self.ledger.park(cid, batch_no)
        for outcome in ("accepted", "rejected", "unknown", "expired", "cancelled", "released"):
            if count := getattr(result, outcome):
                MESSAGES.labels(outcome).inc(count)
        log.info("batch_done", **result.as_dict())
        return result

    @contextlib.asynccontextmanager
    async def _beating(self, cid: str, batch_no: int) -> AsyncIterator[None]:
        """Beat for this batch while it is in hand; forget it when done."""
        await self.ledger.beat(cid, batch_no, self.owner)

        async def beat() -> None:
            while True:
                await asyncio.sleep(BEAT_S)
                try:
                    await self.ledger.beat(cid, batch_no, self.owner)
                except Exception as exc:  # a missed beat must not end the batch
                    log.warning("heartbeat_failed", error=str(exc))

        beats = asyncio.create_task(beat())
        try:
            yield
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
        # Not in `finally`: after a Redis error the entry stays, so a lost batch is found.
        await self.ledger.end_batch(cid, batch_no, self.owner)

    async def _send_one(self, c: Campaign, r: Record, result: BatchResult) -> None:
        structlog.contextvars.bind_contextvars(campaign_id=c.id, message_id=c.message_id(r.index))
        slot_at = None if result.sweeping else await self.limiter.acquire_slot()
        if result.stopped is not None:
            return
        outcome = await self.ledger.claim(c, r, self.owner)
        if outcome[0] != "claimed":
            self._not_claimed(outcome, result)
            return
        posted = [time.time()]
        try:
            didww_id = await self._post(c, r, slot_at, posted)
        except Rejected as exc:
            await self.ledger.reject(c, r, exc.detail)
            result.rejected += 1
            log.warning("message_rejected", status=exc.status, detail=exc.detail)
        except AuthFailed as exc:
            await self._release(c, r, result)
            if await self.ledger.halt(exc.detail):
                log.error("auth_failed", detail=exc.detail)
            result.stopped = HALTED
        except Stopped as stop:
            await self._release(c, r, result)
            result.stopped = result.stopped or stop.reason
        except Ambiguous as exc:
            await self.ledger.mark_unknown(c, r, exc.detail, posted_at=posted[0])
            result.unknown += 1
            log.warning("message_unknown", detail=exc.detail)
        except Retryable as exc:
            await self._release(c, r, result)
            result.stopped = RETRY_LATER
            seconds = self.settings.retry_later_s * random.uniform(
                1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER
            )
            if await self.ledger.back_off(exc.detail, seconds):
                log.error("api_unavailable", detail=exc.detail, backoff_s=round(seconds, 1))
            log.warning("retries_exhausted", detail=exc.detail, status=exc.status)
        else:
            structlog.contextvars.bind_contextvars(didww_id=didww_id)
            joined = await self.ledger.accept(c, r, didww_id)
            result.accepted += 1
            log.info("message_accepted", settled=joined[1] if len(joined) > 1 else None)

    async def _post(
        self, c: Campaign, r: Record, slot_at: float | None, posted: list[float]
    ) -> str:
        """POST with tenacity retries by error class; each retry takes a new rate slot."""
        async for attempt in AsyncRetrying(
            retry=self._retry,
            wait=self._wait,
            stop=stop_after_attempt(self.settings.retry_attempts),
            before_sleep=self._log_retry,
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    halt, backoff = await self.ledger.trunk_flags()
                    if halt or backoff:
                        raise Stopped(HALTED if halt else BACKOFF)
                    slot_at = await self.limiter.acquire_slot()
                elif slot_at is None:
                    slot_at = await self.limiter.acquire_slot()
                await self.limiter.keep_fresh(slot_at)
                posted[0] = time.time()  # when this attempt went out, for matching its callback
                return await self._timed_send(c, r)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _timed_send(self, c: Campaign, r: Record) -> str:
        started = time.perf_counter()
        result = "accepted"
        try:
            return await self.client.send(c.source, r.destination, c.text)
        except DidwwError as exc:
            result = type(exc).__name__
            raise
        finally:
            API_SECONDS.labels(result).observe(time.perf_counter() - started)

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        RETRIES.labels(str(getattr(exc, "status", None) or type(exc).__name__)).inc()
        log.info(
            "retrying",
            attempt=state.attempt_number,
            error=type(exc).__name__,
            status=getattr(exc, "status", None),
            wait_s=round(state.upcoming_sleep, 2),
        )

    async def _release(self, c: Campaign, r: Record, result: BatchResult) -> None:
        if await self.ledger.release(c, r):
            result.released += 1

    @staticmethod
    def _not_claimed(outcome: list[str], result: BatchResult) -> None:
        kind = outcome[0]
        if kind == "paused":
            result.stopped = PAUSED
        elif kind == "halted":
            result.stopped = HALTED
        elif kind == "backoff":
            result.stopped = BACKOFF
        elif kind == "expired":
            result.expired += 1
            result.sweeping = True
        elif kind == "cancelled":
            result.cancelled += 1
            result.sweeping = True
        else:
            result.skipped += 1

"""The delivery service: one process's loops (docs/webhooks.md).

- fan-out: reads the events stream in the consumer group ``smsq-webhooks`` and schedules each
  event for the subscriptions it matches, acknowledging it in the same script;
- one sender per subscription: claims that subscription's due deliveries under a lease, at
  most SMSQ_WEBHOOK_CONNECTIONS in flight, and posts them with its own connection pool, so
  a slow or dead endpoint holds only its own deliveries;
- a recorder: outcomes go to Redis many per round trip;
- a refresher (subscriptions, secrets, Redis's clock) and the gauges.

Any number of processes may run: a delivery is sent by the process holding its lease, and one
killed mid-delivery loses nothing (the lease ends, another sends it again, same webhook-id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ledger.errors import InputError
from ledger.settings import Settings
from ledger.webhooks import (
    Claimed,
    Outcome,
    Subscription,
    WebhookStore,
    refuse_private_host,
)
from webhooks import metrics, signing
from webhooks.backoff import next_attempt_ms

log = structlog.stdlib.get_logger("smsq.webhooks")

# The consumer group every delivery process reads the events stream in.
GROUP = "smsq-webhooks"
# Events read per call: one schedule script per read keeps Redis busy about a millisecond.
READ_COUNT = 500
READ_BLOCK_MS = 1000
# Events a silent consumer read and never acknowledged are taken over after this long: far
# above the milliseconds one read takes to schedule, so a live consumer's are not taken.
RECLAIM_IDLE_MS = 30_000
RECLAIM_EVERY_S = 10.0
# A consumer silent this long with nothing pending is a process that is gone: forgotten, so
# restarts (each a new name) do not pile up in the group.
FORGET_CONSUMER_MS = 24 * 3600 * 1000
# A lease outlasts an attempt (SMSQ_WEBHOOK_TIMEOUT_S) by this much, for recording it.
LEASE_MARGIN_S = 20.0
# A sender with nothing due looks again this often (sooner when this process schedules).
POLL_S = 0.1
# Outcomes wait at most this long to be recorded together.
FLUSH_S = 0.005
REFRESH_S = 1.0
GAUGES_S = 5.0
# An endpoint's host is resolved and checked again at most this often.
ADDRESS_CHECK_S = 60.0
# After a Redis error a loop waits this long, doubling up to REDIS_RETRY_MAX_S.
REDIS_RETRY_S = 0.2
REDIS_RETRY_MAX_S = 5.0
USER_AGENT = "smsq-webhooks"


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Endpoint:
    """One subscription as this process sends to it: its pool, its sender loop."""

    def __init__(self, service: Service, sub: Subscription, secrets: list[str]) -> None:
        self.service = service
        self.sub = sub
        self.secrets = secrets
        settings = service.settings
        self.capacity = settings.webhook_connections
        self.timeout_s = settings.webhook_timeout_s
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(
                max_connections=self.capacity, max_keepalive_connections=self.capacity
            ),
            follow_redirects=False,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
            transport=service.transport_for(sub) if service.transport_for else None,
        )
        self.in_flight = 0
        self.sends: set[asyncio.Task[None]] = set()
        self.room = asyncio.Event()
        self.wake = asyncio.Event()
        self.closing = False
        self._checked_at = float("-inf")
        self._refusal: str | None = None
        self.task = asyncio.create_task(self.run(), name=f"webhook {sub.id}")

    async def run(self) -> None:
        lease_ms = int((self.timeout_s + LEASE_MARGIN_S) * 1000)
        wait_s = REDIS_RETRY_S
        while not self.closing:
            free = self.capacity - self.in_flight
            if free <= 0:
                self.room.clear()
                await self.room.wait()
                continue
            try:
                claimed = await self.service.store.claim(self.sub.id, free, lease_ms)
            except RedisError as exc:
                log.warning("webhook_claim_failed", webhook=self.sub.id, error=type(exc).__name__)
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, REDIS_RETRY_MAX_S)
                continue
            except Exception:
                # A sender that stopped would leave its subscription's deliveries to others
                # (or none) without a word: it logs, and the process stops with an error.
                log.exception("webhook_sender_failed", webhook=self.sub.id)
                self.service.fail()
                return
            wait_s = REDIS_RETRY_S
            if not claimed:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), POLL_S)
                continue
            for delivery in claimed:
                self.in_flight += 1
                task = asyncio.create_task(self.send(delivery))
                self.sends.add(task)
                task.add_done_callback(self.sends.discard)

    async def send(self, delivery: Claimed) -> None:
        try:
            result = await self.attempt(delivery)
        except Exception:  # a bug must not lose the delivery: it is tried again
            log.exception("webhook_send_bug", webhook=self.sub.id, id=delivery.id)
            result = "error"
        finally:
            self.in_flight -= 1
            self.room.set()
        metrics.ATTEMPTS.labels(self.sub.id, result).inc()
        self.service.record(self.sub, delivery, result)

    async def attempt(self, delivery: Claimed) -> str:
        """Post once; the result as the attempts metric names it ('2xx' delivered)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                if not self.service.settings.webhook_allow_private:
                    self._refusal = await self._check_address()
                    if self._refusal:
                        return "address_refused"
                body = delivery.event
                answer = await self.client.post(
                    self.sub.url,
                    content=body,
                    headers=signing.headers(self.secrets, delivery.id, body),
                )
        except (TimeoutError, httpx.TimeoutException):
            return "timeout"
        except httpx.ConnectError:
            return "connect_error"
        except httpx.HTTPError:
            return "error"
        return f"{answer.status_code // 100}xx"

    async def _check_address(self) -> str | None:
        """Why the endpoint's host may not be posted to now, or None; looked up again at most
        every ADDRESS_CHECK_S, so a name moved into a private network is caught."""
        now = time.monotonic()
        if now - self._checked_at < ADDRESS_CHECK_S:
            return self._refusal
        url = httpx.URL(self.sub.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            if url.scheme != "https":
                raise InputError("http:// (allowed only with SMSQ_WEBHOOK_ALLOW_PRIVATE=true)")
            infos = await asyncio.get_running_loop().getaddrinfo(
                url.host, port, type=socket.SOCK_STREAM
            )
            addresses = [str(info[4][0]) for info in infos]
            refuse_private_host(url.host, port, lambda _h, _p: addresses)
            refusal = None
        except OSError:
            refusal = "does not resolve"
        except InputError as exc:
            refusal = str(exc)
        if refusal and refusal != self._refusal:
            log.warning("webhook_address_refused", webhook=self.sub.id, reason=refusal)
        self._checked_at = now
        return refusal

    async def close(self) -> None:
        """Stop claiming; wait for the requests in flight (each bounded by the timeout)."""
        self.closing = True
        self.wake.set()
        self.room.set()
        await asyncio.gather(self.task, return_exceptions=True)
        if self.sends:
            await asyncio.gather(*list(self.sends), return_exceptions=True)
        await self.client.aclose()


class Service:
    """One delivery process."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        consumer: str | None = None,
        transport_for: Callable[[Subscription], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        """transport_for: each subscription's transport (its own pool); None: httpx's own."""
        self.settings = settings
        self.transport_for = transport_for
        self.redis = redis
        self.store = WebhookStore(redis, settings)
        self.consumer = consumer or consumer_name()
        self.endpoints: dict[str, Endpoint] = {}
        # Senders of deleted subscriptions finishing their requests.
        self._closing: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        # Set when a loop failed on a bug: the process exits 1 for its supervisor to restart.
        self.failed = False
        self._outcomes: dict[str, list[Outcome]] = {}
        self._have_outcomes = asyncio.Event()
        # Redis's clock minus this host's (ms): retries are due on the clock claims read.
        self._offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self._offset_ms

    def stop(self) -> None:
        self.stopping.set()

    def fail(self) -> None:
        self.failed = True
        self.stopping.set()

    async def run(self) -> None:
        """Run until stop(); then finish what is in flight and record it."""
        await self._retrying(self.refresh)
        log.info("webhooks_started", consumer=self.consumer, subscriptions=len(self.endpoints))
        loops = [
            asyncio.create_task(self._fan_out_loop()),
            asyncio.create_task(self._every(REFRESH_S, self.refresh)),
            asyncio.create_task(self._every(GAUGES_S, self.gauges)),
        ]
        flusher = asyncio.create_task(self._flush_loop())
        for task in [*loops, flusher]:
            task.add_done_callback(self._ended)
        await self.stopping.wait()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.gather(*(e.close() for e in self.endpoints.values()), *self._closing)
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        await self._flush_all()
        log.info("webhooks_stopped", consumer=self.consumer)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A loop ended before stop(): a bug; log it and stop with an error, rather than run
        on without reading events or recording outcomes."""
        if task.cancelled() or self.stopping.is_set():
            return
        log.error("webhooks_loop_failed", exc_info=task.exception())
        self.fail()

    async def _retrying(self, step: Callable[[], Awaitable[None]]) -> None:
        wait_s = REDIS_RETRY_S
        while not self.stopping.is_set():
            try:
                await step()
                return
            except RedisError as exc:
                log.warning("webhooks_redis_error", error=type(exc).__name__)
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, REDIS_RETRY_MAX_S)

    async def _every(self, period_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await step()
            except RedisError as exc:
                log.warning("webhooks_redis_error", error=type(exc).__name__)

    async def refresh(self) -> None:
        """Start, update and stop senders as subscriptions come, rotate and go."""
        before = time.time()
        seconds, micros = await self.redis.time()
        after = time.time()
        self._offset_ms = int(seconds * 1000 + micros / 1000 - (before + after) * 500)
        subs = {s.id: s for s in await self.store.subscriptions()}
        secrets = await self.store.secrets(self.now_ms())
        for wid, sub in subs.items():
            valid = secrets.get(wid)
            if not valid:
                continue
            endpoint = self.endpoints.get(wid)
            if endpoint is None:
                self.endpoints[wid] = Endpoint(self, sub, valid)
            else:
                endpoint.sub, endpoint.secrets = sub, valid
        for wid in [w for w in self.endpoints if w not in subs]:
            endpoint = self.endpoints.pop(wid)
            metrics.forget(wid)
            closing = asyncio.create_task(endpoint.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def gauges(self) -> None:
        now_ms = self.now_ms()
        for wid in list(self.endpoints):
            metrics.PENDING.labels(wid).set(await self.store.pending(wid))
            oldest = await self.store.oldest_owed_ms(wid)
            lag_s = 0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000)
            metrics.LAG_SECONDS.labels(wid).set(lag_s)

    # Fan-out

    async def _ensure_group(self) -> None:
        try:
            # From the stream's start: subscriptions get only events written since they were
            # created (Subscription.matches), and none is missed while no process ran.
            await self.redis.xgroup_create(self.store.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _fan_out_loop(self) -> None:
        await self._retrying(self._ensure_group)
        own_pending = True
        reclaimed_at = time.monotonic()
        wait_s = REDIS_RETRY_S
        while not self.stopping.is_set():
            try:
                if time.monotonic() - reclaimed_at > RECLAIM_EVERY_S:
                    await self._reclaim()
                    reclaimed_at = time.monotonic()
                start = "0" if own_pending else ">"
                reply = await self.redis.xreadgroup(
                    GROUP,
                    self.consumer,
                    {self.store.stream: start},
                    count=READ_COUNT,
                    block=None if own_pending else READ_BLOCK_MS,
                )
                entries = reply[0][1] if reply else []
                if own_pending and not entries:
                    own_pending = False
                    continue
                if entries:
                    await self.fan_out(entries)
                wait_s = REDIS_RETRY_S
            except RedisError as exc:
                log.warning("webhooks_read_failed", error=type(exc).__name__)
                # What was read and not acknowledged is this consumer's pending: read it again.
                own_pending = True
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, REDIS_RETRY_MAX_S)

    async def _reclaim(self) -> None:
        """Take over events a silent consumer (a killed process) read and never scheduled;
        forget consumers long gone."""
        cursor = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.store.stream, GROUP, self.consumer, RECLAIM_IDLE_MS, cursor, READ_COUNT
            )
            cursor, entries = _text(reply[0]), reply[1]
            if entries:
                log.info("webhooks_events_reclaimed", events=len(entries))
                await self.fan_out(entries)
            if cursor == "0-0":
                break
        for consumer in await self.redis.xinfo_consumers(self.store.stream, GROUP):
            if consumer["pending"] == 0 and consumer["idle"] > FORGET_CONSUMER_MS:
                await self.redis.xgroup_delconsumer(self.store.stream, GROUP, consumer["name"])

    async def fan_out(self, entries: list[Any]) -> int:
        """Schedule read entries for the subscriptions they match and acknowledge them."""
        # Read after the events: a subscription created since has created_at after them.
        subs = await self.store.subscriptions()
        plan: list[tuple[str, bytes | str, list[str]]] = []
        for entry_id, fields in entries:
            eid = _text(entry_id)
            data = (fields or {}).get(b"data")
            targets: list[str] = []
            if data is not None:
                try:
                    event = json.loads(data)
                except ValueError:
                    log.warning("webhooks_event_unreadable", entry=eid)
                    event = None
                if isinstance(event, dict):
                    written_ms = int(eid.partition("-")[0])
                    targets = [s.id for s in subs if s.matches(event, written_ms)]
            plan.append((eid, data or "", targets))
        wids = sorted({w for _, _, targets in plan for w in targets})
        scheduled = await self.store.schedule(GROUP, plan, wids)
        for wid in wids:
            endpoint = self.endpoints.get(wid)
            if endpoint is not None:
                endpoint.wake.set()
        return scheduled

    # Outcomes

    def record(self, sub: Subscription, delivery: Claimed, result: str) -> None:
        """Decide what an attempt's result means for the delivery; recorded soon after."""
        now_ms = self.now_ms()
        first_ms = delivery.first_attempt_ms or now_ms
        attempts = delivery.attempts + 1
        if result == "2xx":
            outcome = Outcome(delivery.id, delivery.leased, "delivered")
            metrics.DELIVERIES.labels(sub.id, "delivered").inc()
        else:
            when = next_attempt_ms(
                attempts,
                first_ms,
                now_ms,
                self.settings.webhook_retry_s,
                self.settings.webhook_backoff_max_s,
            )
            if when is None:
                failure = {
                    "webhook": sub.id,
                    "id": delivery.id,
                    "url": sub.url,
                    "attempts": attempts,
                    "error": result,
                    "first_attempt_ms": first_ms,
                }
                outcome = Outcome(delivery.id, delivery.leased, "failed", failure=failure)
                metrics.DELIVERIES.labels(sub.id, "failed").inc()
                log.warning(
                    "webhook_delivery_failed",
                    webhook=sub.id,
                    id=delivery.id,
                    attempts=attempts,
                    error=result,
                )
            else:
                outcome = Outcome(
                    delivery.id,
                    delivery.leased,
                    "retry",
                    next_ms=when,
                    attempts=attempts,
                    first_attempt_ms=first_ms,
                )
        self._outcomes.setdefault(sub.id, []).append(outcome)
        self._have_outcomes.set()

    async def _flush_loop(self) -> None:
        wait_s = REDIS_RETRY_S
        while True:
            await self._have_outcomes.wait()
            await asyncio.sleep(FLUSH_S)
            try:
                await self._flush_all()
                wait_s = REDIS_RETRY_S
            except RedisError as exc:
                log.warning("webhooks_record_failed", error=type(exc).__name__)
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, REDIS_RETRY_MAX_S)

    async def _flush_all(self) -> None:
        """Record every outcome waiting, one script call per subscription in one round trip;
        on a Redis error they are kept for the next try."""
        self._have_outcomes.clear()
        if not self._outcomes:
            return
        taken, self._outcomes = self._outcomes, {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for wid, outcomes in taken.items():
                    await self.store.settle_call(wid, outcomes, client=pipe)
                await pipe.execute()
        except RedisError:
            for wid, outcomes in taken.items():
                self._outcomes.setdefault(wid, [])[:0] = outcomes
            self._have_outcomes.set()
            raise

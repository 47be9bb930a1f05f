"""The delivery service in process, on a private redis-server with httpx mock endpoints: a
slow endpoint holds only its own deliveries, requests are signed, a stop finishes and records
what is in flight, and events a killed consumer read are taken over."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from smsq_testing import make_settings

from ledger.webhooks import WebhookStore
from webhooks import service as service_module
from webhooks import signing
from webhooks.service import GROUP, Service

STREAM = "smsq:events"
# A bound on waiting for a positive signal; reaching it fails the test.
PATIENCE_S = 20.0


async def until(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    async def loop() -> None:
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(loop(), PATIENCE_S)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


async def add_events(client: Redis, count: int) -> list[str]:
    ids = []
    for n in range(count):
        data = json.dumps({"type": "sent", "campaign_id": None, "n": n})
        ids.append((await client.xadd(STREAM, {"data": data})).decode())
    return ids


def test_a_slow_endpoint_delays_only_itself(redis_server: Any, real_redis: Any) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_server.url)
        settings = make_settings(webhook_allow_private=True, webhook_connections=2)
        store = WebhookStore(client, settings)
        slow = await store.create("http://slow.test/hook")
        fast = await store.create("http://fast.test/hook")
        release = asyncio.Event()
        answered: dict[str, list[httpx.Request]] = {"slow.test": [], "fast.test": []}
        waiting: list[httpx.Request] = []

        async def endpoint(request: httpx.Request) -> httpx.Response:
            if request.url.host == "slow.test":
                waiting.append(request)
                await release.wait()
            answered[request.url.host].append(request)
            return httpx.Response(204)

        service = Service(
            settings, client, "test-1", transport_for=lambda _: httpx.MockTransport(endpoint)
        )
        running = asyncio.create_task(service.run())
        ids = await add_events(client, 20)
        wanted = {f"msg_{e}" for e in ids}
        await until(lambda: len(waiting) == 2, "the slow endpoint's two connections busy")

        await until(
            lambda: {r.headers["webhook-id"] for r in answered["fast.test"]} == wanted,
            "every event delivered to the fast endpoint",
        )
        # Meanwhile the slow one holds its two connections and nothing of it was answered.
        assert len(waiting) == 2 and answered["slow.test"] == []
        release.set()
        await until(
            lambda: {r.headers["webhook-id"] for r in answered["slow.test"]} == wanted,
            "every event delivered to the slow endpoint",
        )
        for host, created in (("fast.test", fast), ("slow.test", slow)):
            for request in answered[host]:
                body = request.content
                assert signing.verify(created.secret, request.headers, body)
                assert json.loads(body)["type"] == "sent"

        async def nothing_owed() -> bool:
            return (
                await store.pending(fast.subscription.id)
                == 0
                == await store.pending(slow.subscription.id)
            )

        await until(nothing_owed, "every outcome recorded")
        service.stop()
        await running
        await client.aclose()

    asyncio.run(main())
    assert real_redis.xpending(STREAM, GROUP)["pending"] == 0


def test_stop_finishes_and_records_what_is_in_flight(redis_server: Any, real_redis: Any) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_server.url)
        settings = make_settings(webhook_allow_private=True)
        store = WebhookStore(client, settings)
        wid = (await store.create("http://hook.test/")).subscription.id
        started = asyncio.Event()
        release = asyncio.Event()

        async def endpoint(request: httpx.Request) -> httpx.Response:
            started.set()
            await release.wait()
            return httpx.Response(200)

        service = Service(
            settings, client, "test-1", transport_for=lambda _: httpx.MockTransport(endpoint)
        )
        running = asyncio.create_task(service.run())
        await add_events(client, 1)
        await asyncio.wait_for(started.wait(), PATIENCE_S)
        service.stop()
        await until(lambda: service.endpoints[wid].closing, "the sender closing")
        release.set()
        await asyncio.wait_for(running, PATIENCE_S)
        assert await store.pending(wid) == 0
        await client.aclose()

    asyncio.run(main())


def test_a_failed_attempt_is_retried_with_the_same_id(redis_server: Any, real_redis: Any) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_server.url)
        settings = make_settings(webhook_allow_private=True, webhook_backoff_max_s=0.05)
        store = WebhookStore(client, settings)
        created = await store.create("http://hook.test/")
        seen: list[httpx.Request] = []

        def endpoint(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            if len(seen) == 1:
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(500 if len(seen) == 2 else 202)

        service = Service(
            settings, client, "test-1", transport_for=lambda _: httpx.MockTransport(endpoint)
        )
        running = asyncio.create_task(service.run())
        (eid,) = await add_events(client, 1)
        await until(lambda: len(seen) == 3, "three tries")

        async def nothing_owed() -> bool:
            return await store.pending(created.subscription.id) == 0

        await until(nothing_owed, "the delivery recorded")
        service.stop()
        await running
        assert [r.headers["webhook-id"] for r in seen] == [f"msg_{eid}"] * 3
        assert all(signing.verify(created.secret, r.headers, r.content) for r in seen)
        assert await store.failures() == []
        await client.aclose()

    asyncio.run(main())


def test_events_a_killed_consumer_read_are_taken_over(
    redis_server: Any, real_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "RECLAIM_IDLE_MS", 0)
    monkeypatch.setattr(service_module, "FORGET_CONSUMER_MS", -1)

    async def main() -> None:
        client = Redis.from_url(redis_server.url)
        settings = make_settings(webhook_allow_private=True)
        store = WebhookStore(client, settings)
        wid = (await store.create("http://hook.test/")).subscription.id
        ids = await add_events(client, 3)
        await client.xgroup_create(STREAM, GROUP, id="0")
        # A process read them and died before scheduling them.
        await client.xreadgroup(GROUP, "dead-1", {STREAM: ">"})
        service = Service(settings, client, "test-1")
        await service._reclaim()
        claimed = await store.claim(wid, 10, lease_ms=1000)
        assert sorted(c.id for c in claimed) == sorted(f"msg_{e}" for e in ids)
        names = [c["name"] for c in await client.xinfo_consumers(STREAM, GROUP)]
        assert b"dead-1" not in names
        await client.aclose()

    asyncio.run(main())
    assert real_redis.xpending(STREAM, GROUP)["pending"] == 0


def test_a_loop_failing_on_a_bug_stops_the_process_with_an_error(
    redis_server: Any, real_redis: Any
) -> None:
    async def main() -> None:
        client = Redis.from_url(redis_server.url)
        settings = make_settings(webhook_allow_private=True)
        await WebhookStore(client, settings).create("http://hook.test/")
        service = Service(settings, client, "test-1")

        async def broken(entries: list[Any]) -> int:
            raise RuntimeError("a bug")

        service.fan_out = broken  # type: ignore[method-assign]
        running = asyncio.create_task(service.run())
        await add_events(client, 1)
        await asyncio.wait_for(running, PATIENCE_S)
        assert service.failed
        await client.aclose()

    asyncio.run(main())

"""Every kind of Redis client smsq makes (ledger/connection.py) finds the primary through
Sentinel and follows a failover without being made again: the Python API (the producer and
its Celery publisher, kombu's Sentinel transport), an event consumer, the asyncio clients of
the workers, the ingester and the HTTP API, and Flower. Real redis-servers and sentinels on
loopback (ops/ha.py); the whole stack through a failover is tests/integration/test_failover.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from dispatch import CAMPAIGN_QUEUE, celery_config, dispatch
from ledger import connection, keys
from ledger.settings import Settings
from ops.ha import RedisHA
from ops.stack import Stack, default_settings_env
from producer.consumer import EventConsumer
from producer.enqueue import Producer
from producer.numbers import normalize_many
from tests.integration.test_flower import LOGIN, poll, start_flower

T = TypeVar("T")
# From the kill to a client's first success: the sentinels' down-after (1 s), their vote and
# the promotion take 2-4 s on this machine.
FOLLOW_S = 20.0


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[RedisHA]:
    found = RedisHA(tmp_path).start()
    yield found
    found.stop()


def ha_settings(ha: RedisHA, min_replicas: int) -> Settings:
    env = ha.settings_env(min_replicas=min_replicas)
    return Settings(_env_file=None, **{k[len("SMSQ_") :].lower(): v for k, v in env.items()})  # type: ignore[call-arg]


def until_it_works(call: Callable[[], T], timeout_s: float = FOLLOW_S) -> tuple[T, float]:
    """call() until it stops raising a Redis error; (its result, seconds it took)."""
    started = time.monotonic()
    while True:
        try:
            return call(), time.monotonic() - started
        except (redis.RedisError, OSError, OperationalError):
            if time.monotonic() - started > timeout_s:
                raise
            time.sleep(0.2)


def test_every_client_finds_the_primary_and_follows_a_failover(ha: RedisHA) -> None:
    settings = ha_settings(ha, min_replicas=1)
    producer = Producer(settings)
    consumer = EventConsumer.from_settings("failover-test", "c1", settings, block_ms=100)
    consumer.ensure_group()
    numbers = normalize_many(["+37060000001", "+37060000002"])

    first = producer.enqueue("37041123456", "before", numbers)
    old = ha.current()
    on_old = old.client()
    try:
        assert on_old.exists(keys.campaign(first.campaign_id))
        # The batch task went through kombu's Sentinel transport to the same primary.
        assert on_old.llen(CAMPAIGN_QUEUE) == 1
    finally:
        on_old.close()

    ha.kill_primary()
    second, took = until_it_works(lambda: producer.enqueue("37041123456", "after", numbers))
    new = ha.wait_for_failover()
    assert new.port != old.port
    assert took < FOLLOW_S
    on_new = new.client()
    try:
        # Both campaigns (the first was on the replica before the kill: WAIT) and both
        # batch tasks are on the new primary.
        assert on_new.exists(keys.campaign(first.campaign_id))
        assert on_new.exists(keys.campaign(second.campaign_id))
        assert on_new.llen(CAMPAIGN_QUEUE) == 2
    finally:
        on_new.close()

    # The consumer reads on through the failover: an event written on the new primary.
    on_new = new.client()
    try:
        on_new.xadd(settings.events_stream, {"data": '{"type": "probe"}'})
    finally:
        on_new.close()
    seen, _ = until_it_works(lambda: [d.event for d in consumer.consume(follow=False)])
    assert {"type": "probe"} in seen
    consumer.close()
    producer.close()
    producer.celery.close()

    async def asyncio_clients() -> list[bool]:
        plain = connection.async_client(settings)
        bounded = connection.async_bounded_client(settings, 2, 5.0)
        try:
            return [bool(await plain.ping()), bool(await bounded.ping())]
        finally:
            await plain.aclose()
            await bounded.aclose()

    assert asyncio.run(asyncio_clients()) == [True, True]


def test_an_asyncio_client_made_before_the_failover_follows_it(ha: RedisHA) -> None:
    """The workers, the ingester and the HTTP API keep one client for their life."""
    settings = ha_settings(ha, min_replicas=0)

    async def go() -> float:
        client = connection.async_bounded_client(settings, 4, 5.0)
        try:
            await client.set("before", "1")
            ha.kill_primary()
            started = time.monotonic()
            while True:
                try:
                    await client.set("after", "1")
                    break
                except (redis.RedisError, OSError):
                    assert time.monotonic() - started < FOLLOW_S, "never followed the failover"
                    await asyncio.sleep(0.2)
            return time.monotonic() - started
        finally:
            await client.aclose()

    took = asyncio.run(go())
    assert took < FOLLOW_S
    assert ha.old_primary is not None and ha.primary_port() != ha.old_primary.port
    new = ha.current().client()
    try:
        assert new.get("after") == b"1"
    finally:
        new.close()


def test_flower_sees_a_workers_tasks_before_and_after_a_failover(ha: RedisHA) -> None:
    """Flower runs on the workers' Celery settings (kombu's Sentinel transport): its event
    receiver follows the failover, so a task run after it shows up too."""
    env = default_settings_env("redis://127.0.0.1:6379/0", **ha.settings_env(min_replicas=1))
    stack = Stack(ha.workdir, "", env)
    try:
        stack.start_worker("hatest")
        _, url = start_flower(stack)
        api = httpx.Client(base_url=url, auth=LOGIN, timeout=10.0)
        poll(
            "Flower to hear the worker",
            lambda: httpx.get(f"{url}/metrics", timeout=5.0).text,
            lambda text: 'flower_worker_online{worker="hatest@' in text,
        )
        settings = ha_settings(ha, min_replicas=1)
        app = Celery("failover-test")
        app.config_from_object(celery_config(settings))

        def seen(cid: str) -> Callable[[dict[str, Any]], bool]:
            def check(tasks: dict[str, Any]) -> bool:
                return any(
                    cid in (t.get("args") or "") and t.get("state") == "SUCCESS"
                    for t in tasks.values()
                )

            return check

        # Campaigns that do not exist: the task answers `missing`, which is all Flower needs.
        dispatch(app, "before0000000000", [0], trunk="default")
        poll("the task before", lambda: api.get("/api/tasks").json(), seen("before0000000000"))

        ha.kill_primary()
        ha.wait_for_failover()
        until_it_works(lambda: dispatch(app, "after00000000000", [0], trunk="default"))
        poll(
            "the task after the failover",
            lambda: api.get("/api/tasks").json(),
            seen("after00000000000"),
            timeout_s=60,
        )
        api.close()
        app.close()
    finally:
        stack.stop()

"""A full Redis (maxmemory, noeviction) refusing the producer's writes: before the campaign is
stored, NotStored and nothing left behind; after, StoredNotQueued naming the campaign, which
the same idempotency key completes. On the real redis-server of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from smsq_testing import make_settings

from ledger import keys
from producer.enqueue import NotStored, Producer, StoredNotQueued
from producer.numbers import normalize_many

NUMBERS = normalize_many(f"3706{i:07d}" for i in range(20_000))


@pytest.fixture
def producer(redis_server: Any, real_redis: Any) -> Iterator[Producer]:
    made = Producer(make_settings(redis_url=redis_server.url))
    yield made
    made.close()
    real_redis.config_set("maxmemory", 0)


def _full_after(client: Any, spare_bytes: int) -> None:
    """Let Redis take about spare_bytes more before it refuses writes."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + spare_bytes)


def _left(client: Any) -> list[bytes]:
    return sorted(k for k in client.keys("smsq:*") if not k.startswith(b"smsq:optout"))


def test_a_redis_full_before_the_campaign_is_stored_leaves_nothing(producer, real_redis) -> None:
    # 20,000 records are about 700 kB: Redis fills up while the batches are written. (The
    # producer's connection is made first: its buffers take memory too.)
    producer.plan("37041123456", "hi", NUMBERS)
    _full_after(real_redis, 200_000)
    with pytest.raises(NotStored) as refused:
        producer.enqueue("37041123456", "hi", NUMBERS, idempotency_key="order-1")
    assert not refused.value.maybe_stored
    assert "nothing was kept" in str(refused.value)
    assert "OutOfMemoryError" in str(refused.value)
    assert _left(real_redis) == []

    # Room again: the same request stores one campaign.
    real_redis.config_set("maxmemory", 0)
    result = producer.enqueue("37041123456", "hi", NUMBERS, idempotency_key="order-1")
    assert result.queued == 20_000
    assert real_redis.zrange(keys.campaigns(), 0, -1) == [result.campaign_id.encode()]


def test_a_failure_after_the_campaign_is_stored_names_it_and_the_key_completes_it(
    producer, real_redis
) -> None:
    # The broker refuses (here: unreachable) once the campaign is stored.
    producer.celery.conf.broker_url = "redis://127.0.0.1:9/0"
    producer.celery.conf.broker_connection_max_retries = 0
    with pytest.raises(StoredNotQueued) as incomplete:
        producer.enqueue("37041123456", "hi", NUMBERS, idempotency_key="order-2")
    cid = incomplete.value.campaign_id
    assert incomplete.value.result.queued == 20_000
    assert real_redis.exists(keys.campaign(cid)) == 1
    # Marked in progress, so the workers' supervisors finish it if nobody repeats it.
    assert real_redis.zcard(keys.enqueuing()) == 1

    retry = Producer(make_settings(redis_url=producer.settings.redis_url))
    try:
        again = retry.enqueue("37041123456", "hi", NUMBERS, idempotency_key="order-2")
    finally:
        retry.close()
    assert again.campaign_id == cid
    assert real_redis.zrange(keys.campaigns(), 0, -1) == [cid.encode()]
    assert real_redis.zcard(keys.enqueuing()) == 0
    assert real_redis.llen("smsq.campaigns") == 200

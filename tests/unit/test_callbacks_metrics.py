"""Tests for the figures the callbacks service's /metrics adds for alerts and the dashboard:
campaigns past their expected finish, the oldest queued age, Redis memory and replication, and
callback lag."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import fakeredis.aioredis
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from smsq_testing import TOKEN, make_settings, write_campaign

from callbacks.app import create_app
from callbacks.metrics import (
    OVERDUE_SHOWN,
    REGISTRY,
    exposition,
    observe_callback_lag,
    redis_figures,
    replicas_expected,
    replication_figures,
)
from ledger import keys
from ledger.campaigns import Campaign
from ledger.rate import RateParams
from ledger.redis_health import unsafe
from ledger.settings import Settings
from ledger.states import CampaignState, State
from ledger.store import Ledger
from ops.stack import RedisServer, wait_for

# At SMSQ_RATE_LIMIT=1 and the default headroom, a trunk paces 0.98 messages a second.
SLOW = {"rate_limit": 1}
PACED_PER_S = RateParams.of(1, 0.98).per_s


def campaign(sync: fakeredis.FakeRedis, messages: int, age_s: float, **fields: Any) -> str:
    """A campaign of queued messages created age_s ago; fields (Campaign's) overwrite its
    hash."""
    options = {k: fields.pop(k) for k in ("state", "segments") if k in fields}
    cid = write_campaign(sync, messages, **options)
    created = Campaign.encode(created_at=time.time() - age_s, **fields)
    sync.hset(keys.campaign(cid), mapping=created)
    return cid


def figures(server: fakeredis.FakeServer, cfg: Settings) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        try:
            return await redis_figures(Ledger(redis, cfg))
        finally:
            await redis.aclose()

    return asyncio.run(read())


def overdue(server: fakeredis.FakeServer, cfg: Settings) -> dict[str, float]:
    return {cid: seconds for _, cid, seconds in figures(server, cfg)["overdue"]}


def page(server: fakeredis.FakeServer, cfg: Settings) -> dict[tuple[str, tuple[Any, ...]], float]:
    async def scrape() -> str:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        app = create_app(cfg, redis=redis)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cb.test") as c:
                text = (await c.get("/metrics")).text
        await redis.aclose()
        return text

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(asyncio.run(scrape()))
        for s in family.samples
    }


# --- overdue campaigns


def test_a_campaign_past_its_expected_finish_is_overdue(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    late = campaign(sync_redis, 3, age_s=100)
    campaign(sync_redis, 3, age_s=1)
    got = page(server, make_settings(**SLOW))
    assert got[("smsq_campaigns_overdue", (("trunk", "default"),))] == 1
    seconds = got[("smsq_campaign_overdue_seconds", (("campaign", late), ("trunk", "default")))]
    assert seconds == pytest.approx(100 - 3 / PACED_PER_S, abs=5)
    assert len([k for k in got if k[0] == "smsq_campaign_overdue_seconds"]) == 1


def test_nothing_is_overdue_on_a_fresh_ledger(server: fakeredis.FakeServer) -> None:
    got = page(server, make_settings())
    assert got[("smsq_campaigns_overdue", (("trunk", "default"),))] == 0
    assert not [k for k in got if k[0] == "smsq_campaign_overdue_seconds"]


def test_campaigns_that_are_not_sending_are_not_overdue(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    future = time.time() + 3600
    campaign(sync_redis, 3, age_s=1000, state=CampaignState.PAUSED)
    campaign(sync_redis, 3, age_s=1000, state=CampaignState.CANCELLED)
    campaign(sync_redis, 3, age_s=1000, state=CampaignState.SCHEDULED, send_at=future)
    campaign(sync_redis, 3, age_s=1000, window="09:00-20:00")
    campaign(sync_redis, 3, age_s=1000, trunk="no-longer-configured")
    done = campaign(sync_redis, 3, age_s=1000)
    sync_redis.hset(keys.counts(done), mapping={State.QUEUED: 0, State.SENT: 3})
    assert overdue(server, make_settings(**SLOW)) == {}


def test_a_scheduled_campaign_is_due_from_its_send_at(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    send_at = time.time() - 50
    cid = campaign(sync_redis, 3, age_s=5000, state=CampaignState.SCHEDULED, send_at=send_at)
    assert overdue(server, make_settings(**SLOW))[cid] == pytest.approx(50 - 3 / PACED_PER_S, abs=5)
    got = figures(server, make_settings(**SLOW))
    assert got["oldest_queued_age_s"] == pytest.approx(50, abs=5)


def test_a_campaign_waiting_for_its_send_at_has_no_queue_age(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    future = time.time() + 3600
    campaign(sync_redis, 3, age_s=5000, state=CampaignState.SCHEDULED, send_at=future)
    assert figures(server, make_settings())["oldest_queued_age_s"] == 0


def test_a_trunks_campaigns_share_its_rate(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    # The first takes about 102 s at 0.98/s; the second, begun 10 s later, waits for it.
    first = campaign(sync_redis, 100, age_s=50)
    second = campaign(sync_redis, 2, age_s=40)
    assert overdue(server, make_settings(**SLOW)) == {}
    # Both much older: each is late, the second by about 2 s less than the first.
    for cid, age_s in ((first, 1000), (second, 990)):
        created = Campaign.encode(created_at=time.time() - age_s)
        sync_redis.hset(keys.campaign(cid), mapping=created)
    late = overdue(server, make_settings(**SLOW))
    assert late[first] == pytest.approx(1000 - 100 / PACED_PER_S, abs=5)
    assert late[second] == pytest.approx(late[first] - 2 / PACED_PER_S, abs=1)


def test_messages_already_posted_spend_the_rate_and_cancelled_ones_do_not(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    first = campaign(sync_redis, 100, age_s=60)
    second = campaign(sync_redis, 2, age_s=50)
    # Half the first was posted, the rest cancelled: it held the trunk about 51 s.
    sync_redis.hset(keys.counts(first), mapping={State.QUEUED: 0, State.SENT: 50})
    sync_redis.hset(keys.counts(first), State.CANCELLED, 50)
    assert second in overdue(server, make_settings(**SLOW))
    # Had all of it been posted (102 s), the second would not be late yet.
    sync_redis.hset(keys.counts(first), mapping={State.SENT: 100, State.CANCELLED: 0})
    assert overdue(server, make_settings(**SLOW)) == {}


def test_priority_campaigns_do_not_wait_for_the_others(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    campaign(sync_redis, 100, age_s=50)
    urgent = campaign(sync_redis, 1, age_s=40, priority="1")
    assert urgent in overdue(server, make_settings(**SLOW))


def test_segments_count_when_the_rate_does(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    # 10 messages of 3 segments: 10 s by message, 31 s by segment.
    cid = campaign(sync_redis, 10, age_s=20, segments=3)
    assert cid in overdue(server, make_settings(**SLOW))
    assert overdue(server, make_settings(**SLOW, rate_unit="segment")) == {}


def test_only_the_most_overdue_campaigns_are_shown_by_id(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    ages = [1000 + 100 * i for i in range(OVERDUE_SHOWN + 2)]
    cids = [campaign(sync_redis, 1, age_s=age) for age in ages]
    got = page(server, make_settings(**SLOW))
    assert got[("smsq_campaigns_overdue", (("trunk", "default"),))] == len(cids)
    shown = {
        dict(labels)["campaign"] for name, labels in got if name == "smsq_campaign_overdue_seconds"
    }
    # The two youngest (least overdue) are left out.
    assert shown == set(cids[2:])


# --- Redis memory


def test_redis_memory_is_left_out_where_info_is_refused(
    server: fakeredis.FakeServer, sync_redis: fakeredis.FakeRedis
) -> None:
    # fakeredis has no INFO, as a Redis behind a restrictive ACL or proxy may not.
    got = page(server, make_settings())
    assert ("smsq_messages", (("state", "queued"),)) in got
    assert not [k for k in got if k[0].startswith("smsq_redis_")]


def test_redis_memory_and_its_limit(redis_server: Any, real_redis: Any) -> None:
    async def read() -> dict[str, Any]:
        from redis.asyncio import Redis

        redis = Redis.from_url(redis_server.url)
        try:
            return await redis_figures(Ledger(redis, make_settings()))
        finally:
            await redis.aclose()

    used, limit = asyncio.run(read())["redis_memory"]
    assert used > 0
    assert limit == int(real_redis.config_get("maxmemory")["maxmemory"])


# --- callback lag


def lag(trunk: str = "default") -> tuple[float, float]:
    count = REGISTRY.get_sample_value("smsq_callback_lag_seconds_count", {"trunk": trunk})
    total = REGISTRY.get_sample_value("smsq_callback_lag_seconds_sum", {"trunk": trunk})
    return count or 0.0, total or 0.0


def iso(seconds_from_now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds_from_now))


@pytest.mark.parametrize(
    ("make_time_end", "observed", "seconds"),
    [
        (lambda: iso(-30), True, 30),
        (lambda: iso(-30).removesuffix("Z"), True, 30),  # no zone: UTC
        (lambda: iso(10), True, 0),  # a little ahead of our clock: no lag
        (lambda: iso(3600), False, 0),  # far ahead: a bad time
        (lambda: "2001-07-16T19:20:30.45Z", False, 0),  # years behind: a bad time too
        (lambda: "yesterday", False, 0),
        (lambda: None, False, 0),
    ],
    ids=["30s-ago", "no-zone", "ahead-10s", "ahead-1h", "years-ago", "unreadable", "missing"],
)
def test_a_stored_callback_observes_its_lag(
    server: fakeredis.FakeServer,
    make_time_end: Callable[[], str | None],
    observed: bool,
    seconds: float,
) -> None:
    cfg = make_settings()
    time_end = make_time_end()
    before = lag()
    attributes: dict[str, Any] = {
        "time_start": iso(-60),
        "destination": "37060000000",
        "source": "37041123456",
        "status": "Success",
        "code_id": None,
        "fragments_sent": 1,
    }
    if time_end is not None:
        attributes["time_end"] = time_end
    doc = {
        "data": {
            "type": "outbound_message_callbacks",
            "id": "8c5e1b2a-4f3d-4e6a-9b7c-0d1e2f3a4b5c",
            "attributes": attributes,
        }
    }

    async def post() -> httpx.Response:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        app = create_app(cfg, redis=redis)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cb.test") as c:
                response = await c.post(
                    f"/callbacks?token={TOKEN}",
                    json=doc,
                    headers={"Content-Type": "application/vnd.api+json"},
                )
        await redis.aclose()
        return response

    assert asyncio.run(post()).status_code == 200
    count, total = lag()
    assert count == before[0] + (1 if observed else 0)
    assert total - before[1] == pytest.approx(seconds, abs=5)


def test_a_refused_callback_observes_no_lag(server: fakeredis.FakeServer) -> None:
    before = lag()

    async def post() -> int:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        app = create_app(make_settings(), redis=redis)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cb.test") as c:
                status = (await c.post(f"/callbacks?token={TOKEN}", content=b"{}")).status_code
        await redis.aclose()
        return status

    assert asyncio.run(post()) == 415
    assert lag() == before


def test_lag_is_measured_from_time_end() -> None:
    before = lag("lag-test")
    observe_callback_lag("lag-test", "2030-01-01T00:00:00Z", now=1_893_456_000.0 + 42)
    count, total = lag("lag-test")
    assert (count - before[0], total - before[1]) == (1, 42)


def test_redis_hygiene_is_read_from_info(redis_server: Any, real_redis: Any) -> None:
    async def read() -> dict[str, Any]:
        from redis.asyncio import Redis

        redis = Redis.from_url(redis_server.url)
        try:
            return await redis_figures(Ledger(redis, make_settings()))
        finally:
            await redis.aclose()

    hygiene = asyncio.run(read())["redis_hygiene"]
    # The unit tests' Redis runs without AOF (ops/stack.py), and has evicted nothing.
    assert hygiene == {
        "aof_enabled": 0, "aof_last_write_ok": 1, "aof_rewrite_ok": 1, "evicted_keys": 0,
    }  # fmt: skip


def test_what_makes_a_redis_unsafe_is_each_said() -> None:
    safe = unsafe(
        {"aof_enabled": 1, "aof_last_write_status": "ok"},
        {"maxmemory_policy": "noeviction", "maxmemory": 100, "used_memory": 10},
        {"evicted_keys": 0},
    )
    assert safe == ()
    found = unsafe(
        {"aof_enabled": 1, "aof_last_write_status": "err"},
        {"maxmemory_policy": "allkeys-lru", "maxmemory": 0, "used_memory": 10},
        {"evicted_keys": 3},
    )
    assert found == (
        "Redis evicts keys under memory pressure (maxmemory-policy allkeys-lru)",
        "Redis has evicted 3 keys",
        "Redis cannot write its append-only file (aof_last_write_status: err)",
        "Redis has no maxmemory: a full host would kill it, not refuse writes (maxmemory)",
    )


# --- Redis replication

# INFO replication of a primary with two replicas, as redis-py returns it: one acknowledged
# 3 seconds ago and 500 bytes behind, one (on IPv6) still in its first full sync.
PRIMARY_INFO: dict[str, Any] = {
    "role": "master",
    "connected_slaves": 2,
    "slave0": {"ip": "10.0.0.2", "port": 6379, "state": "online", "offset": 99500, "lag": 3},
    "slave1": {"ip": "fd00::3", "port": 6380, "state": "wait_bgsave", "offset": 0, "lag": 0},
    "master_failover_state": "no-failover",
    "master_replid": "6f2c0d1e2b3a4c5d6e7f8091a2b3c4d5e6f70812",
    "master_replid2": "0000000000000000000000000000000000000000",
    "master_repl_offset": 100000,
    "second_repl_offset": -1,
    "repl_backlog_active": 1,
    "repl_backlog_size": 1048576,
    "repl_backlog_first_byte_offset": 1,
    "repl_backlog_histlen": 99999,
}


def test_replication_figures_from_info_replication() -> None:
    assert replication_figures(PRIMARY_INFO) == {
        "connected": 2,
        "replicas": {"10.0.0.2:6379": (3.0, 500), "[fd00::3]:6380": (0.0, 100000)},
    }


def test_a_primary_without_replicas_has_none() -> None:
    info = {"role": "master", "connected_slaves": 0, "master_repl_offset": 0}
    assert replication_figures(info) == {"connected": 0, "replicas": {}}


def test_a_replica_line_left_as_text_is_read_too() -> None:
    info = {
        "connected_slaves": 1,
        "slave0": "ip=redis-replica,port=6379,state=online,offset=4000,lag=1",
        "master_repl_offset": 4096,
    }
    assert replication_figures(info)["replicas"] == {"redis-replica:6379": (1.0, 96)}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, 0),
        ({"redis_sentinels": "s1:26379,s2:26379,s3:26379", "redis_master_name": "smsq"}, 1),
        ({"redis_min_replicas": 2}, 2),
        (
            {
                "redis_sentinels": "s1:26379,s2:26379,s3:26379",
                "redis_master_name": "smsq",
                "redis_min_replicas": 2,
            },
            2,
        ),
    ],
    ids=["single-redis", "sentinel", "min-replicas", "sentinel-and-min-replicas"],
)
def test_replicas_expected_follow_the_settings(overrides: dict[str, Any], expected: int) -> None:
    assert replicas_expected(make_settings(**overrides)) == expected


def samples(text: bytes) -> dict[tuple[str, tuple[Any, ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_replication_is_on_the_page(server: fakeredis.FakeServer) -> None:
    found = figures(server, make_settings(redis_min_replicas=1))
    found["redis_replication"] = replication_figures(PRIMARY_INFO)
    got = samples(exposition(found))
    assert got[("smsq_redis_connected_replicas", ())] == 2
    assert got[("smsq_redis_replicas_expected", ())] == 1
    assert got[("smsq_redis_replica_lag_seconds", (("replica", "10.0.0.2:6379"),))] == 3
    assert got[("smsq_redis_replica_behind_bytes", (("replica", "10.0.0.2:6379"),))] == 500
    assert got[("smsq_redis_replica_behind_bytes", (("replica", "[fd00::3]:6380"),))] == 100000


def test_replication_is_left_out_where_info_is_refused(server: fakeredis.FakeServer) -> None:
    # fakeredis has no INFO: neither what is there nor what is expected is shown.
    found = figures(server, make_settings(redis_min_replicas=1))
    assert found["redis_replication"] is None
    got = samples(exposition(found))
    assert ("smsq_messages", (("state", "queued"),)) in got
    assert not [k for k in got if "replica" in k[0]]


def test_replication_of_a_real_primary_and_replica(tmp_path: Any) -> None:
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(
        tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(primary.port)]
    ).start()
    client = primary.client()
    try:
        wait_for(
            lambda: client.info("replication").get("slave0", {}).get("state") == "online",
            10, "the replica",
        )  # fmt: skip
        client.set("k", "v" * 1000)

        async def read() -> dict[str, Any]:
            from redis.asyncio import Redis

            redis = Redis.from_url(primary.url)
            try:
                return await redis_figures(Ledger(redis, make_settings()))
            finally:
                await redis.aclose()

        got = asyncio.run(read())["redis_replication"]
    finally:
        client.close()
        replica.stop()
        primary.stop()
    assert got["connected"] == 1
    ((where, (lag_s, behind)),) = got["replicas"].items()
    assert where == f"127.0.0.1:{replica.port}"
    assert 0 <= lag_s <= 2
    # Acknowledged within a second: at most the write above is not yet.
    assert 0 <= behind <= 2000


def test_a_redis_without_replicas_lists_none(redis_server: Any, real_redis: Any) -> None:
    async def read() -> dict[str, Any]:
        from redis.asyncio import Redis

        redis = Redis.from_url(redis_server.url)
        try:
            return await redis_figures(Ledger(redis, make_settings()))
        finally:
            await redis.aclose()

    got = asyncio.run(read())
    assert got["redis_replication"] == {"connected": 0, "replicas": {}}
    assert got["replicas_expected"] == 0

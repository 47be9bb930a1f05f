"""Redis through Sentinel and writes that wait for replicas (ledger/connection.py,
LedgerCore.durably): the settings, the broker URL, and WAIT against a real primary with a
real replica. A failover itself is in tests/integration/test_failover.py and
test_sentinel_clients.py."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from smsq_testing import make_settings

from ledger import connection, keys
from ledger.errors import ConfigError, NotReplicated
from ledger.settings import load_settings
from ledger.store import Ledger
from ops.stack import RedisServer, StackError, wait_for

SENTINELS = "10.0.0.1:26379,10.0.0.2:26379,[fd00::3]:26380"


# --- settings and URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"redis_sentinels": "a:26379"}, "SMSQ_REDIS_MASTER_NAME must be too"),
        ({"redis_master_name": "smsq"}, "SMSQ_REDIS_SENTINELS must be too"),
        (
            {"redis_sentinels": "a:26379,b", "redis_master_name": "smsq"},
            "SMSQ_REDIS_SENTINELS: 'b' is not host:port",
        ),
        (
            {"redis_sentinels": "a:99999", "redis_master_name": "smsq"},
            "SMSQ_REDIS_SENTINELS: 'a:99999' is not host:port",
        ),
        (
            {"redis_sentinels": "a:1", "redis_master_name": "my master"},
            "SMSQ_REDIS_MASTER_NAME: letters, digits",
        ),
        (
            {"redis_sentinels": "a:1", "redis_master_name": "m", "redis_url": "unix:///r.sock"},
            "a unix:// socket cannot be found through Sentinel",
        ),
        ({"redis_min_replicas": "-1"}, "SMSQ_REDIS_MIN_REPLICAS"),
        ({"redis_wait_ms": "0"}, "SMSQ_REDIS_WAIT_MS"),
    ],
)
def test_bad_sentinel_settings_are_refused_in_one_line(given: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, **given)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_sentinels_are_read_as_host_port_pairs() -> None:
    settings = load_settings(_env_file=None, redis_sentinels=SENTINELS, redis_master_name="smsq")
    assert settings.sentinels() == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("fd00::3", 26380)]
    assert load_settings(_env_file=None).sentinels() == []


def test_the_broker_url_names_every_sentinel_with_the_urls_password_and_database() -> None:
    settings = load_settings(
        _env_file=None,
        redis_url="redis://:p%40ss@ignored:6379/3",
        redis_sentinels=SENTINELS,
        redis_master_name="smsq",
        redis_sentinel_password="sentinel-secret",
    )
    url, options = connection.broker(settings)
    assert url == (
        "sentinel://:p%40ss@10.0.0.1:26379/3;sentinel://:p%40ss@10.0.0.2:26379/3;"
        "sentinel://:p%40ss@[fd00::3]:26380/3"
    )
    assert options["master_name"] == "smsq"
    assert options["sentinel_kwargs"]["password"] == "sentinel-secret"
    # Without Sentinel: the URL as it is, nothing more.
    plain = load_settings(_env_file=None, redis_url="redis://h:6379/1")
    assert connection.broker(plain) == ("redis://h:6379/1", {})


def test_a_rediss_url_through_sentinel_makes_kombu_open_tls_connections_to_the_primary() -> None:
    """kombu's Sentinel transport uses TLS only when Celery's broker_use_ssl says so: the
    celery config carries the URL's ssl_* options, and kombu's channel then picks its
    Sentinel-managed SSL connection class with them (no server needed to read that)."""
    from celery import Celery
    from kombu.transport.redis import SentinelChannel, SentinelManagedSSLConnection

    from dispatch import celery_config

    settings = load_settings(
        _env_file=None,
        redis_url="rediss://:pw@ignored:6380/2?ssl_ca_certs=/etc/ssl/redis-ca.pem",
        redis_sentinels=SENTINELS,
        redis_master_name="smsq",
    )
    assert connection.broker_ssl(settings) == {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/etc/ssl/redis-ca.pem",
    }
    config = celery_config(settings)
    assert config["broker_use_ssl"] == connection.broker_ssl(settings)
    app = Celery("tls-test")
    app.config_from_object(config)
    with app.connection_for_write() as conn:
        # A channel that has not connected (its __init__ would): what it would connect with.
        channel = SentinelChannel.__new__(SentinelChannel)
        channel.connection = conn.transport
        params = channel._connparams()
        assert params["connection_class"] is SentinelManagedSSLConnection
        assert params["ssl_ca_certs"] == "/etc/ssl/redis-ca.pem"
    # Without TLS, or without Sentinel, nothing is added.
    for url, sentinels in (("redis://:pw@h:6379/2", SENTINELS), ("rediss://h:6380/0", "")):
        other = load_settings(
            _env_file=None,
            redis_url=url,
            redis_sentinels=sentinels,
            redis_master_name="smsq" if sentinels else "",
        )
        assert connection.broker_ssl(other) is None
        assert "broker_use_ssl" not in celery_config(other)


def test_the_sentinel_password_is_a_secret_and_never_described() -> None:
    settings = load_settings(
        _env_file=None,
        redis_url="redis://:urlpass@ignored:6379/0",
        redis_sentinels="a:1",
        redis_master_name="smsq",
        redis_sentinel_password="sentinel-secret",
    )
    assert {"urlpass", "sentinel-secret"} <= set(settings.secrets())
    described = connection.describe(settings)
    assert "smsq" in described and "secret" not in described and "urlpass" not in described
    plain = load_settings(_env_file=None, redis_url="redis://:urlpass@h:6379/0")
    assert connection.describe(plain) == "redis://h:6379"


@pytest.mark.parametrize(
    ("wanted", "listed", "waits_for"),
    [(0, None, 0), (1, None, 1), (2, 1, 1), (1, 0, 0), (1, 3, 1)],
)
def test_a_write_waits_for_the_replicas_wanted_or_as_many_as_the_primary_has(
    wanted: int, listed: int | None, waits_for: int
) -> None:
    settings = make_settings(redis_min_replicas=wanted)
    assert connection.replicas_to_wait_for(settings, listed) == waits_for


# --- WAIT on a real primary and replica -----------------------------------------------------


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer(tmp_path / "primary").start()
    replica = RedisServer(
        tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(primary.port)]
    ).start()
    client = primary.client()
    try:

        def online() -> bool:
            # Online and answering: a replica just synced may still be loading what it got.
            info = client.info("replication")
            if info.get("connected_slaves") != 1 or info["slave0"]["state"] != "online":
                return False
            client.set("smsq:test:synced", "1")
            return int(client.wait(1, 100)) == 1

        wait_for(online, 30, "the replica to sync")
        yield primary, replica
    except StackError:
        pytest.fail("the replica did not sync")
    finally:
        client.close()
        replica.stop()
        primary.stop()


def _ledger(primary: RedisServer, **settings: Any) -> Ledger:
    custom = make_settings(redis_url=primary.url, **settings)
    return Ledger(connection.async_client(custom), custom)


def test_a_durable_write_is_on_the_replica_when_it_returns(primary_and_replica) -> None:
    primary, replica = primary_and_replica
    field = keys.inflight_field("c1", 0, 7)

    async def go() -> None:
        ledger = _ledger(primary, redis_min_replicas=1, redis_wait_ms=1000)
        try:
            await ledger.hold("c1", 0, 7)
        finally:
            await ledger.redis.aclose()

    asyncio.run(go())
    # Read at once from the replica: WAIT said it has it.
    on_replica = replica.client()
    try:
        assert on_replica.hexists(keys.inflight(), field)
    finally:
        on_replica.close()


def test_a_write_a_stalled_replica_does_not_acknowledge_raises(primary_and_replica) -> None:
    """A replica still connected but not answering (stopped, cut off): the write is applied
    on the primary but refused as not replicated, NotReplicated carrying its reply; once the
    replica answers again, writes go on."""
    primary, replica = primary_and_replica
    assert replica.proc is not None and replica.proc.popen is not None
    pid = replica.proc.popen.pid

    async def go() -> tuple[NotReplicated, Any]:
        ledger = _ledger(primary, redis_min_replicas=1, redis_wait_ms=300)
        try:
            await ledger.hold("c1", 0, 7)
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(NotReplicated) as refused:
                    await ledger.hold("c1", 1, 7)
            finally:
                os.kill(pid, signal.SIGCONT)
            await ledger.hold("c1", 2, 7)
            return refused.value, ledger._replicas
        finally:
            await ledger.redis.aclose()

    refused, listed = asyncio.run(go())
    assert (refused.acknowledged, refused.wanted) == (0, 1)
    assert isinstance(refused, redis.RedisError)  # retried wherever Redis errors are
    assert listed == 1
    client = primary.client()
    try:
        fields = {f.decode() for f in client.hkeys(keys.inflight())}
    finally:
        client.close()
    # Applied on the primary all three times.
    assert fields == {keys.inflight_field("c1", b, 7) for b in range(3)}


def test_a_write_goes_on_when_the_primary_lost_its_only_replica(primary_and_replica) -> None:
    """Killed, the replica is dropped from the primary's list at once: nobody a failover
    could promote lacks the write, so it counts as replicated (and later writes do not
    wait at all)."""
    primary, replica = primary_and_replica

    async def go() -> tuple[int | None, int | None]:
        ledger = _ledger(primary, redis_min_replicas=1, redis_wait_ms=300)
        try:
            await ledger.hold("c1", 0, 7)
            replica.stop(signal.SIGKILL)
            client = primary.client()
            try:
                wait_for(lambda: client.info("replication")["connected_slaves"] == 0, 10, "drop")
            finally:
                client.close()
            before = ledger._replicas
            await ledger.hold("c1", 1, 7)
            return before, ledger._replicas
        finally:
            await ledger.redis.aclose()

    assert asyncio.run(go()) == (1, 0)


def test_without_min_replicas_nothing_waits_even_with_a_replica(primary_and_replica) -> None:
    primary, replica = primary_and_replica

    async def go() -> int | None:
        ledger = _ledger(primary, redis_min_replicas=0)
        try:
            replica.stop(signal.SIGKILL)
            await ledger.hold("c1", 0, 7)
            return ledger._replicas
        finally:
            await ledger.redis.aclose()

    # No WAIT and no ROLE: the count is never even looked at.
    assert asyncio.run(go()) is None

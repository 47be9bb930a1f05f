"""Shared unit-test fixtures: settings without the environment, one in-memory Redis per test
(fakeredis, Lua through lupa), a campaign factory that writes what producer/enqueue.py writes,
and a reader for the events stream.

Async code runs inside ``asyncio.run``; clients bound to an event loop are made inside the
coroutine from the shared ``FakeServer``, so the sync helpers here see the same data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import click.testing
import fakeredis
import fakeredis.aioredis
import pytest
from click.testing import CliRunner
from smsq_testing import make_settings, write_campaign

from ledger import connection, events, keys, records
from ledger.campaigns import Campaign
from ledger.settings import Settings
from ledger.store import Ledger
from producer import cli_common
from producer.cli import main as smsq_main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SMSQ_ variable from the developer's shell may leak into a test."""
    for name in list(os.environ):
        if name.startswith("SMSQ_"):
            monkeypatch.delenv(name)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def sync_redis(server: fakeredis.FakeServer) -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.close()


@pytest.fixture
def async_redis(server: fakeredis.FakeServer) -> Callable[[], fakeredis.aioredis.FakeRedis]:
    """Call inside a coroutine: an asyncio client on this test's server."""
    return lambda: fakeredis.aioredis.FakeRedis(server=server)


@pytest.fixture
def make_ledger(
    async_redis: Callable[[], fakeredis.aioredis.FakeRedis], settings: Settings
) -> Callable[..., Ledger]:
    """Call inside a coroutine: a Ledger on this test's server."""

    def make(custom: Settings | None = None) -> Ledger:
        return Ledger(async_redis(), custom or settings)

    return make


@pytest.fixture
def make_campaign(sync_redis: fakeredis.FakeRedis) -> Callable[..., str]:
    """write_campaign on this test's server."""
    return lambda *args, **kwargs: write_campaign(sync_redis, *args, **kwargs)


@pytest.fixture
def read_events(sync_redis: fakeredis.FakeRedis, settings: Settings) -> Callable[[], list[dict]]:
    """Every event on the stream so far, decoded, oldest first."""

    def read() -> list[dict[str, Any]]:
        return [events.decode(f) for _, f in sync_redis.xrange(settings.events_stream)]

    return read


@pytest.fixture
def counts(sync_redis: fakeredis.FakeRedis) -> Callable[[str], dict[str, int]]:
    """A campaign's counts hash, without zero entries."""

    def read(cid: str) -> dict[str, int]:
        raw = sync_redis.hgetall(keys.counts(cid))
        return {k.decode(): int(v) for k, v in raw.items() if int(v)}

    return read


@pytest.fixture
def states(sync_redis: fakeredis.FakeRedis) -> Callable[[str, int], dict[int, str]]:
    """Message index -> state, for one batch of a campaign."""

    def read(cid: str, batch_no: int = 0) -> dict[int, str]:
        found = Campaign.stored(cid, sync_redis.hgetall(keys.campaign(cid)))
        size = found.batch_size if found else 0
        data = sync_redis.get(keys.batch(cid, batch_no)) or b""
        return {r.index: str(r.state) for r in records.iter_batch(batch_no * size, data)}

    return read


# --- A real redis-server, for the ledger's Lua scripts as production runs them ------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One private redis-server per test process (pytest-xdist worker), on a free port."""
    from ops.stack import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def real_redis(redis_server: Any) -> Iterator[Any]:
    """A sync client on that server, emptied before each test (it is ours alone)."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def real_ledger(redis_server: Any, real_redis: Any, settings: Settings) -> Callable[..., Ledger]:
    """Call inside a coroutine: a Ledger on the real server."""
    from redis.asyncio import Redis

    def make(custom: Settings | None = None) -> Ledger:
        return Ledger(Redis.from_url(redis_server.url), custom or settings)

    return make


@pytest.fixture
def real_campaign(real_redis: Any) -> Callable[..., str]:
    """write_campaign on the real server."""
    return lambda *args, **kwargs: write_campaign(real_redis, *args, **kwargs)


@pytest.fixture
def smsq(
    server: fakeredis.FakeServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., click.testing.Result]:
    """Run `smsq ARGS` in this process against the test's fakeredis."""
    monkeypatch.setattr(cli_common, "load_settings", lambda: settings)
    monkeypatch.setattr(
        connection, "async_client", lambda *a, **k: fakeredis.aioredis.FakeRedis(server=server)
    )
    monkeypatch.setattr(
        connection, "sync_client", lambda *a, **k: fakeredis.FakeRedis(server=server)
    )
    monkeypatch.setattr(cli_common, "WAIT_POLL_S", 0)
    runner = CliRunner()

    def run(*args: str, input: str | bytes | None = None) -> click.testing.Result:
        return runner.invoke(smsq_main, list(args), input=input, catch_exceptions=False)

    return run

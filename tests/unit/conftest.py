"""Shared unit-test fixtures: settings without the environment, one in-memory Redis per test
(fakeredis, Lua through lupa), a campaign factory that writes what producer/enqueue.py writes,
and a reader for the events stream.

Async code runs inside ``asyncio.run``; clients bound to an event loop are made inside the
coroutine from the shared ``FakeServer``, so the sync helpers here see the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import fakeredis.aioredis
import pytest

from ledger import events, keys
from ledger.settings import Settings
from ledger.states import CampaignState, State
from ledger.store import Ledger, encode_record

PASSWORD = "pw-SECRET"
TOKEN = "tok-SECRET"
SOURCE = "37041123456"
TEXT = "Hello World!"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SMSQ_ variable from the developer's shell may leak into a test."""
    import os

    for name in list(os.environ):
        if name.startswith("SMSQ_"):
            monkeypatch.delenv(name)


def make_settings(**overrides: Any) -> Settings:
    """Settings for unit tests; no .env file is read."""
    values: dict[str, Any] = {
        "redis_url": "redis://fake.test:6379/0",
        "didww_url": "http://didww.test",
        "didww_username": "u",
        "didww_password": PASSWORD,
        "callback_token": TOKEN,
        "rate_limit": 1000,
        "events_maxlen": 1000,
        "retry_max_wait_s": 0.05,
        "retry_attempts": 3,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


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


_made = 0


def write_campaign(
    client: fakeredis.FakeRedis,
    destinations: list[str] | int = 3,
    *,
    batch_size: int = 100,
    ttl_s: float = 3600.0,
    state: CampaignState = CampaignState.ACTIVE,
    source: str = SOURCE,
    text: str = TEXT,
    name: str = "test",
) -> str:
    """Write a campaign the way producer/enqueue.py does; returns its id.

    ``destinations`` is a list of numbers, or how many to make up.
    """
    global _made
    _made += 1
    if isinstance(destinations, int):
        destinations = [f"3706{i:07d}" for i in range(destinations)]
    cid = f"c{_made:06d}"
    total = len(destinations)
    batches = (total + batch_size - 1) // batch_size
    now_s, now_us = client.time()
    created_at = now_s + now_us / 1_000_000
    pipe = client.pipeline(transaction=False)
    for start in range(0, total, batch_size):
        chunk = destinations[start : start + batch_size]
        pipe.hset(
            keys.batch(cid, start // batch_size),
            mapping={start + i: encode_record(State.QUEUED, d) for i, d in enumerate(chunk)},
        )
    pipe.hset(keys.counts(cid), str(State.QUEUED), total)
    pipe.hset(
        keys.campaign(cid),
        mapping={
            "source": source,
            "text": text,
            "name": name,
            "total": total,
            "batch_size": batch_size,
            "batches": batches,
            "created_at": f"{created_at:.3f}",
            "expires_at": f"{created_at + ttl_s:.3f}",
            "state": str(state),
            "encoding": "GSM-7",
            "segments": 1,
            "priority": "1" if total == 1 else "0",
        },
    )
    pipe.zadd(keys.campaigns(), {cid: created_at})
    pipe.execute()
    return cid


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
        raw = sync_redis.hgetall(keys.batch(cid, batch_no))
        return {int(k): v.decode().split("|")[0] for k, v in sorted(raw.items())}

    return read

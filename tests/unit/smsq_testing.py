"""Plain helpers the unit tests import (fixtures live in conftest.py): settings for tests
and a campaign writer that stores what producer/enqueue.py stores."""

from __future__ import annotations

from typing import Any

import fakeredis

from ledger import keys
from ledger.settings import Settings
from ledger.states import CampaignState, State
from ledger.store import encode_record

PASSWORD = "pw-SECRET"
TOKEN = "tok-SECRET"
SOURCE = "37041123456"
TEXT = "Hello World!"
# The worker process a unit test claims messages as.
OWNER = "testhost:1"


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

"""Plain helpers the unit tests import (fixtures live in conftest.py): settings for tests,
a campaign writer that stores a campaign through the ledger's codecs as producer/enqueue.py
does, and accept() for a message DIDWW has accepted."""

from __future__ import annotations

from typing import Any

from ledger import campaigns, events, keys, records
from ledger.campaigns import Campaign
from ledger.hotpath import Recorded, Result
from ledger.quiet_hours import QuietHours
from ledger.rate import RateParams
from ledger.settings import Settings
from ledger.states import CampaignState, State
from ledger.store import Ledger

PASSWORD = "pw-SECRET"
TOKEN = "tok-SECRET-callbacks-0123"
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
    client: Any,
    destinations: list[str] | int = 3,
    *,
    batch_size: int = 100,
    ttl_s: float = 3600.0,
    state: CampaignState = CampaignState.ACTIVE,
    source: str = SOURCE,
    text: str = TEXT,
    name: str = "test",
    trunk: str = "default",
    priority: bool | None = None,
    segments: int = 1,
    send_at: float = 0.0,
    values: list[list[str]] | None = None,
    fields: tuple[str, ...] = (),
    quiet_hours: QuietHours | None = None,
    urgent_lane: bool = False,
) -> str:
    """Write a campaign through the ledger's codecs, as producer/enqueue.py does; returns
    its id. ``destinations`` is a list of numbers, or how many to make up; ``values`` (with
    ``fields``) gives each message its template values. A priority campaign's messages go in
    its trunk's urgent lane, as the producer puts them, only with ``urgent_lane``: a test of
    the lane puts there just the messages it needs."""
    global _made
    _made += 1
    if isinstance(destinations, int):
        destinations = [f"3706{i:07d}" for i in range(destinations)]
    cid = f"{_made:016x}"
    total = len(destinations)
    batches = (total + batch_size - 1) // batch_size
    now_s, now_us = client.time()
    created_at = now_s + now_us / 1_000_000
    urgent = total == 1 if priority is None else priority
    pipe = client.pipeline(transaction=False)
    for start in range(0, total, batch_size):
        chunk = destinations[start : start + batch_size]
        pipe.set(
            keys.batch(cid, start // batch_size),
            records.pack_new(State.QUEUED, chunk, [segments] * len(chunk)),
        )
        if values is not None:
            joined = [campaigns.join_values(v) for v in values[start : start + batch_size]]
            pipe.hset(
                keys.fields(cid, start // batch_size), mapping=campaigns.values_hash(start, joined)
            )
    pipe.execute()
    campaign = Campaign(
        id=cid,
        source=source,
        text=text,
        name=name,
        trunk=trunk,
        total=total,
        batch_size=batch_size,
        batches=batches,
        created_at=round(created_at, 3),
        expires_at=round(created_at + ttl_s, 3),
        state=str(state),
        encoding="GSM-7",
        segments=segments,
        priority=urgent,
        send_at=send_at,
        fields=fields,
        window="09:00-20:00" if quiet_hours is not None else "",
    )
    pipe = client.pipeline(transaction=True)
    campaigns.queue_store(
        pipe,
        campaign,
        {str(State.QUEUED): total},
        quiet_hours=quiet_hours,
        urgent=[(i // batch_size, i) for i in range(total)] if urgent and urgent_lane else (),
    )
    pipe.execute()
    return cid


def stored(client: Any, cid: str) -> Campaign:
    """A campaign as its hash holds it now (through the ledger's codec)."""
    found = Campaign.stored(cid, client.hgetall(keys.campaign(cid)))
    assert found is not None, f"no campaign {cid}"
    return found


async def accept(ledger: Ledger, cid: str, didww_id: str, index: int = 0) -> Recorded:
    """Make message ``index`` of campaign ``cid`` accepted with ``didww_id`` the way a worker
    does: claim it (a rate of 100,000/s has free slots at once), then record DIDWW's 201."""
    c = await ledger.campaign(cid)
    assert c is not None, f"no campaign {cid}"
    batch_no = c.batch_of(index)
    reply = await ledger.claim(
        c.trunk,
        1,
        RateParams.of(100_000, 1.0),
        due=0,
        want=0,
        max_messages=1,
        batches=[(cid, batch_no, [index])],
        event_base=events.encode(events.message_event(None, None, "", "", None)),
    )
    found = [m for m in reply.claimed if (m.cid, m.index) == (cid, index)]
    assert found, f"message {cid}-{index} was not claimed: {reply}"
    claimed = found[0]
    event = events.message_event(
        cid, c.message_id(index), claimed.destination, c.source, didww_id, trunk=c.trunk
    )
    event["type"] = "accepted"
    key, raw = records.id_key(didww_id)
    result = Result(
        "accepted", cid, batch_no, index, events.encode(event), key, didww_id, "1" if raw else ""
    )
    recorded = await ledger.record([result], [])
    assert recorded.moved == [True], f"message {cid}-{index} was not accepted: {recorded}"
    return recorded


def kept_count(client: Any) -> int:
    """How many callbacks for unknown DIDWW ids the ledger keeps now (ledger/keys.py: kept)."""
    return int(client.hget(keys.kept_info(), "count") or 0)


def is_kept(client: Any, didww_id: str) -> bool:
    """Whether a callback for this DIDWW id is kept (not yet joined or matched)."""
    key, _ = records.id_key(didww_id)
    return bool(client.hexists(keys.kept_bucket(key), key))

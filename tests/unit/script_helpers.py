"""Helpers the ledger-script tests share (test_ledger.py, test_recovery.py and the
test_scripts_*.py files); it holds no tests. Every helper reads or drives the real Redis of
the `real_redis` and `real_ledger` fixtures.

The Ledger's client is bound to an event loop, so a test writes its steps as
``async def go(ledger)`` and runs them with ``run(real_ledger, go)``; the sync helpers read
Redis directly between or after the steps.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from smsq_testing import SOURCE, stored

from callbacks.document import parse
from ledger import events, keys, records
from ledger.hotpath import ClaimReply, Result
from ledger.rate import RateParams
from ledger.records import Record
from ledger.store import CallbackUpdate, Ledger

T = TypeVar("T")

# A rate no functional test runs into: 100,000 a second gives 2,001 free slots to a first
# claim (the catch-up), so only the rate tests see pacing or the cap.
FAST = RateParams.of(100_000, 1.0)
# The owner (worker process number) tests claim as, unless they need two.
OWNER = 7
# What the worker passes as the base of the events the claim script publishes.
CLAIM_BASE = events.encode(events.message_event(None, None, "", "", None, trunk="default"))
# DIDWW's times in the callbacks the tests send, and the same instants in Unix seconds.
TIME_START = "2024-07-16T19:20:30.45Z"
TIME_END = "2024-07-16T19:20:31.45Z"
TIME_START_S = 1721157630


def run(make_ledger: Callable[[], Ledger], body: Callable[[Ledger], Awaitable[T]]) -> T:
    """Run body(ledger) on a fresh event loop with a Ledger on the test's Redis."""

    async def go() -> T:
        ledger = make_ledger()
        try:
            return await body(ledger)
        finally:
            await ledger.redis.aclose()

    return asyncio.run(go())


def did(n: int) -> str:
    """A DIDWW id (a UUID, as DIDWW returns) made from a number, spread over the buckets."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"smsq-test-{n}"))


def iso(seconds: float) -> str:
    """A Unix time as DIDWW writes time_start and time_end."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def dest(i: int) -> str:
    """The destination write_campaign gives message i when told a count."""
    return f"3706{i:07d}"


async def claim(
    ledger: Ledger,
    cid: str,
    indexes: Sequence[int],
    *,
    batch: int = 0,
    owner: int = OWNER,
    trunk: str = "default",
    rate: RateParams = FAST,
    due: int = 0,
    want: int = 0,
    max_messages: int = 1000,
) -> ClaimReply:
    """One claim call offering one batch's indexes."""
    return await ledger.claim(
        trunk,
        owner,
        rate,
        due=due,
        want=want,
        max_messages=max_messages,
        batches=[(cid, batch, list(indexes))],
        event_base=CLAIM_BASE,
    )


def message_event(kind: str, cid: str, index: int, destination: str, **extra: Any) -> str:
    """An event as the worker builds it for record.lua: type included."""
    event = events.message_event(cid, keys.message_id(cid, index), destination, SOURCE, **extra)
    return events.encode({**event, "type": kind})


def accepted(cid: str, index: int, didww_id: str, *, batch: int = 0) -> Result:
    key, raw = records.id_key(didww_id)
    event = message_event("accepted", cid, index, dest(index), didww_id=didww_id)
    return Result("accepted", cid, batch, index, event, key, didww_id, "1" if raw else "")


def rejected(cid: str, index: int, *, batch: int = 0, detail: str = "Invalid request") -> Result:
    event = message_event("rejected", cid, index, dest(index), detail=detail)
    return Result("rejected", cid, batch, index, event)


def unknown(cid: str, index: int, posted_at: float, *, batch: int = 0) -> Result:
    event = message_event("unknown", cid, index, dest(index), detail="ReadTimeout")
    return Result("unknown", cid, batch, index, event, f"{posted_at:.0f}")


def retry(cid: str, index: int, *, batch: int = 0, at: float | None = None) -> Result:
    return Result("retry", cid, batch, index, "", "" if at is None else f"{at:.3f}")


def callback(
    didww_id: str,
    *,
    status: str = "Success",
    code_id: int | None = None,
    destination: str = "37060000000",
    fragments: int | None = 1,
    time_start: str = TIME_START,
    time_end: str = TIME_END,
) -> CallbackUpdate:
    """A DIDWW callback, parsed and validated as the ingester does."""
    body = {
        "data": {
            "type": "outbound_message_callbacks",
            "id": didww_id,
            "attributes": {
                "time_start": time_start,
                "end_time": time_end,
                "destination": destination,
                "source": SOURCE,
                "status": status,
                "code_id": code_id,
                "fragments_sent": fragments,
            },
        }
    }
    return parse(json.dumps(body).encode())


def read_events(client: Any, stream: str = "smsq:events") -> list[dict[str, Any]]:
    """Every event on the stream so far, oldest first."""
    return [events.decode(fields) for _, fields in client.xrange(stream)]


def read_records(client: Any, cid: str, batch: int = 0) -> list[Record]:
    size = stored(client, cid).batch_size
    return list(records.iter_batch(batch * size, client.get(keys.batch(cid, batch)) or b""))


def states(client: Any, cid: str, batch: int = 0) -> dict[int, str]:
    """Message index -> state name, for one batch."""
    return {r.index: str(r.state) for r in read_records(client, cid, batch)}


def counts(client: Any, cid: str) -> dict[str, int]:
    """A campaign's counts, without zero entries."""
    raw = client.hgetall(keys.counts(cid))
    return {k.decode(): int(v) for k, v in raw.items() if int(v)}


def redis_now(client: Any) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1_000_000


def snapshot(client: Any) -> dict[bytes, bytes]:
    """Every key and its serialised value: equal snapshots mean nothing was written."""
    return {key: client.dump(key) for key in sorted(client.keys("*"))}

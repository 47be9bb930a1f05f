"""Events for downstream consumers: one entry per state change on the Redis stream.

Each entry has one field, ``data``, holding a JSON object; its schema is in docs/events.md.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

# Alerts: a trunk stopped (auth_failed also stands for 3xx, 403, 404, 405 and 407, which
# mean a wrong URL or a proxy in the way, and are not the message's fault) or resumed.
AUTH_FAILED = "auth_failed"
AUTH_RESTORED = "auth_restored"
API_UNAVAILABLE = "api_unavailable"
API_RESTORED = "api_restored"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_event(
    campaign_id: str | None,
    message_id: str | None,
    destination: str,
    source: str,
    didww_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The fields every message event carries; the Lua scripts add ``type``."""
    return {
        "campaign_id": campaign_id,
        "message_id": message_id,
        "didww_id": didww_id,
        "destination": destination,
        "source": source,
        "at": now_iso(),
        **extra,
    }


def with_reference(encoded: str, reference: str) -> str:
    """An encoded message event with its message's reference (docs/events.md)."""
    event = json.loads(encoded)
    event["reference"] = reference
    return encode(event)


def alert_event(event_type: str, detail: str, trunk: str | None = None) -> dict[str, Any]:
    return {
        "type": event_type,
        "campaign_id": None,
        "message_id": None,
        "didww_id": None,
        "trunk": trunk,
        "detail": detail,
        "at": now_iso(),
    }


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def decode(fields: dict[Any, Any]) -> dict[str, Any]:
    raw = fields.get(b"data", fields.get("data"))
    if isinstance(raw, bytes):
        raw = raw.decode()
    return dict(json.loads(raw))


async def read(
    redis: Redis, stream: str, *, follow: bool = False, start: str = "0-0", block_ms: int = 1000
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Yield (entry id, event) from ``start``; with follow, wait for new ones forever."""
    last = start
    while True:
        reply = await redis.xread({stream: last}, count=500, block=block_ms if follow else None)
        if not reply:
            if not follow:
                return
            continue
        for entry_id, fields in reply[0][1]:
            last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            yield last, decode(fields)


async def read_group(
    redis: Redis,
    stream: str,
    group: str,
    consumer: str,
    *,
    follow: bool = False,
    block_ms: int = 1000,
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Yield a consumer group's events; the caller acks each with ``ack`` once handled.

    A consumer that crashed first gets back what it had read but not acked, then new events.
    """
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    # Start with this consumer's pending entries (read before a crash, never acked).
    pending_after: str | None = "0"
    while True:
        reply = await redis.xreadgroup(
            group,
            consumer,
            {stream: pending_after or ">"},
            count=500,
            block=None if pending_after or not follow else block_ms,
        )
        entries = reply[0][1] if reply else []
        if pending_after and not entries:
            pending_after = None
            continue
        if not entries and not follow:
            return
        for entry_id, fields in entries:
            eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            if pending_after:
                pending_after = eid
            if not fields:
                # A pending entry trimmed from the stream (SMSQ_EVENTS_MAXLEN): gone, so ack it.
                await redis.xack(stream, group, eid)
                continue
            yield eid, decode(fields)


async def ack(redis: Redis, stream: str, group: str, entry_id: str) -> None:
    await redis.xack(stream, group, entry_id)

"""Resending part of a campaign: a new campaign (its `parent` named) of exactly the
recipients whose messages ended in the chosen states, with their template values; never a
number that reached `sent` in the parent.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ledger import keys
from ledger.campaigns import FIELD_SEPARATOR, Campaign, scan_records
from ledger.errors import InputError
from producer.numbers import NumbersCollector, NumbersResult
from producer.report import Filter


async def recipients(redis: Redis, parent: Campaign, keep: Filter) -> NumbersResult:
    """The parent's recipients the filter picks, in index order, as a new campaign's input."""
    sent: set[str] = set()
    picked: list[tuple[int, str]] = []
    async for record in scan_records(redis, parent):
        if record.state == "sent":
            sent.add(record.destination)
        elif keep(record):
            picked.append((record.index, record.destination))
    picked = [(i, d) for i, d in picked if d not in sent]
    if not picked:
        raise InputError(f"campaign {parent.id} has no message in the chosen states to resend")
    values: dict[int, str] = {}
    if parent.templated:
        batches = sorted({parent.batch_of(i) for i, _ in picked})
        pipe = redis.pipeline(transaction=False)
        for batch_no in batches:
            pipe.hgetall(keys.fields(parent.id, batch_no))
        for found in await pipe.execute():
            values.update({int(k): v.decode() for k, v in found.items()})
    collector = NumbersCollector(parent.fields)
    empty = FIELD_SEPARATOR.join([""] * len(parent.fields))
    for position, (index, destination) in enumerate(picked, start=1):
        collector.add(position, destination, values.get(index, empty))
    return collector.result()


def options(parent: Campaign) -> dict[str, Any]:
    """The parent's options for its resend (its TTL from now, its trunk, its quiet hours)."""
    started = parent.send_at or parent.created_at
    return {
        "name": f"{parent.name} (resend)" if parent.name else f"resend of {parent.id}",
        "ttl_s": max(1, round(parent.expires_at - started)),
        "trunk": parent.trunk,
        "priority": parent.priority,
        "window": parent.window or None,
        "timezone": parent.timezone or None,
        "parent": parent.id,
    }

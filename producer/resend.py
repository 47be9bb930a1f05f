"""Resending part of a campaign: a new campaign (its `parent` named) of exactly the
recipients whose messages ended in the chosen states, with their template values and
references; never a number that reached `sent` in the parent.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ledger import keys
from ledger.campaigns import FIELD_SEPARATOR, Campaign, decode_refs, decode_values, scan_records
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
    references: dict[int, str] = {}
    batches = sorted({parent.batch_of(i) for i, _ in picked})
    if parent.templated:
        values = decode_values(
            await _read_batches(redis, [keys.fields(parent.id, b) for b in batches])
        )
    if parent.references:
        references = decode_refs(
            await _read_batches(redis, [keys.refs(parent.id, b) for b in batches])
        )
    collector = NumbersCollector(parent.fields, references=parent.references)
    empty = FIELD_SEPARATOR.join([""] * len(parent.fields))
    for position, (index, destination) in enumerate(picked, start=1):
        if parent.references:
            collector.add_referenced(
                position, destination, values.get(index, empty), references.get(index, "")
            )
        else:
            collector.add(position, destination, values.get(index, empty))
    return collector.result()


async def _read_batches(redis: Redis, names: list[str]) -> dict[bytes, bytes]:
    """The per-batch hashes `names` (fields or references) merged: index -> value."""
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    merged: dict[bytes, bytes] = {}
    for found in await pipe.execute():
        merged.update(found)
    return merged


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

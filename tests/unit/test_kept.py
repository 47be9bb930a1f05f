"""Kept callbacks (callbacks for DIDWW ids not yet indexed, ledger/lua/_common.lua: kept_*) on a
real Redis: a callback kept and joined later gives its message exactly what it would have
given it at once; what is kept is bounded by SMSQ_ORPHANS_MAX and SMSQ_ORPHAN_TTL_S at every
ingest and every settle pass, and the oldest go first, counted."""

from __future__ import annotations

from typing import Any

import pytest
from script_helpers import (
    accepted,
    callback,
    claim,
    did,
    read_events,
    read_records,
    run,
)
from smsq_testing import is_kept, kept_count, make_settings

from ledger import keys, records
from ledger.store import Ledger

# DIDWW's own spelling (two digits of the second: the seed's example), and others it might use.
CASES: dict[str, dict[str, Any]] = {
    "success": {},
    "failed, a documented code": {"status": "Failed", "code_id": 4},
    "routing error, an undocumented code": {"status": "Routing Error", "code_id": 9999},
    "no fragments": {"fragments": None},
    "whole seconds": {"time_start": "2024-07-16T19:20:30Z", "time_end": "2024-07-16T19:20:33Z"},
    "milliseconds": {
        "time_start": "2024-07-16T19:20:30.001Z",
        "time_end": "2024-07-16T19:20:30.999Z",
    },
    "an offset, kept as spelled": {
        "time_start": "2024-07-16T21:20:30.45+02:00",
        "time_end": "2024-07-16T19:20:31.5Z",
    },
    "microseconds, kept as spelled": {
        "time_start": "2024-07-16T19:20:30.123456Z",
        "time_end": "2024-07-16T19:20:31.654321Z",
    },
    "no times": {"time_start": None, "time_end": None},
    "an end only": {"time_start": None},
    "an unreadable start": {"time_start": "yesterday"},
    "a start before 1970": {"time_start": "1969-12-31T23:59:59.5Z"},
    "a raw id": {"didww_id": "not-a-uuid-17"},
    "non-ASCII text": {"destination": "3706ünïcödé"},
}


def _without_message(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in {"at", "campaign_id", "message_id", "late"}}


def _record_fields(r: records.Record) -> tuple[Any, ...]:
    return (r.state, r.fragments, r.flags, r.code_id, r.t1, r.t2)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_joined_callback_gives_what_it_would_have_given_at_once(
    real_ledger, real_campaign, real_redis, case: str
) -> None:
    """Two messages, the same callback for each (but its id): one applied to a message whose
    201 was recorded, one kept until its message's 201 came. Same record, same event."""
    attrs = dict(CASES[case])
    raw = attrs.pop("didww_id", None)
    first, second = (f"{raw}-a", f"{raw}-b") if raw else (did(1), did(2))
    at_once, kept_first = real_campaign(1), real_campaign(1)

    async def go(ledger: Ledger) -> tuple[str, str]:
        await claim(ledger, at_once, [0])
        await ledger.record([accepted(at_once, 0, first)])
        applied = await ledger.apply_callback(callback(first, **attrs))
        await claim(ledger, kept_first, [0])
        kept = await ledger.apply_callback(callback(second, **attrs))
        await ledger.record([accepted(kept_first, 0, second)])
        return applied, kept

    assert run(real_ledger, go) == ("applied", "orphan")
    assert kept_count(real_redis) == 0 and not is_kept(real_redis, second)
    final = [e for e in read_events(real_redis) if e["type"] != "accepted"]
    assert [e["campaign_id"] for e in final] == [at_once, kept_first]
    assert [e["didww_id"] for e in final] == [first, second]
    a, b = (_without_message(e) | {"didww_id": None} for e in final)
    assert b == a
    assert _record_fields(read_records(real_redis, kept_first)[0]) == _record_fields(
        read_records(real_redis, at_once)[0]
    )


def test_more_than_the_bound_drops_the_oldest_and_counts_them(real_ledger, real_redis) -> None:
    bound = make_settings(orphans_max=100)

    async def go(ledger: Ledger) -> list[str]:
        return [await ledger.apply_callback(callback(did(n))) for n in range(150)]

    assert run(lambda: real_ledger(bound), go) == ["orphan"] * 150
    assert kept_count(real_redis) == 100 and real_redis.xlen(keys.kept()) == 100
    assert [is_kept(real_redis, did(n)) for n in range(150)] == [False] * 50 + [True] * 100
    assert int(real_redis.hget(keys.stats(), "orphans_dropped")) == 50
    assert sum(real_redis.hlen(k) for k in real_redis.scan_iter("smsq:kept:???")) == 100


def _age_everything_kept(client: Any, seconds: int) -> None:
    """Make every kept callback look `seconds` older: the stream again, with older ids."""
    entries = client.xrange(keys.kept())
    client.delete(keys.kept())
    now_ms = int(client.time()[0]) * 1000
    for n, (_, fields) in enumerate(entries):
        client.xadd(keys.kept(), fields, id=f"{now_ms - seconds * 1000 + n}-0")


def test_callbacks_kept_longer_than_the_ttl_go_at_the_next_ingest(real_ledger, real_redis) -> None:
    ttl = make_settings(orphan_ttl_s=60)

    run(lambda: real_ledger(ttl), lambda ledger: ledger.apply_callback(callback(did(1))))
    run(lambda: real_ledger(ttl), lambda ledger: ledger.apply_callback(callback(did(2))))
    _age_everything_kept(real_redis, 61)
    run(lambda: real_ledger(ttl), lambda ledger: ledger.apply_callback(callback(did(3))))
    assert [is_kept(real_redis, did(n)) for n in (1, 2, 3)] == [False, False, True]
    assert kept_count(real_redis) == 1 and real_redis.xlen(keys.kept()) == 1
    assert int(real_redis.hget(keys.stats(), "orphans_expired")) == 2
    assert real_redis.hget(keys.stats(), "orphans_dropped") is None


def test_the_settle_pass_bounds_what_is_kept_without_an_ingest(real_ledger, real_redis) -> None:
    short = make_settings(orphan_ttl_s=60)
    for n in range(3):
        run(lambda: real_ledger(short), lambda ledger, n=n: ledger.apply_callback(callback(did(n))))
    _age_everything_kept(real_redis, 61)
    assert run(lambda: real_ledger(short), lambda ledger: ledger.settle_orphans(0)) == 0
    assert kept_count(real_redis) == 0 and real_redis.xlen(keys.kept()) == 0
    assert not list(real_redis.scan_iter("smsq:kept:???"))
    assert int(real_redis.hget(keys.stats(), "orphans_expired")) == 3


def test_a_joined_callback_leaves_the_stream_on_the_next_settle_pass(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger: Ledger) -> int:
        await claim(ledger, cid, [0])
        await ledger.apply_callback(callback(did(1)))
        await ledger.record([accepted(cid, 0, did(1))])
        return await ledger.settle_orphans(0)

    assert run(real_ledger, go) == 0
    assert kept_count(real_redis) == 0 and real_redis.xlen(keys.kept()) == 0


def test_the_settle_pass_takes_a_delay_in_fractions_of_a_second(real_ledger, real_redis) -> None:
    """settle_after is the read timeout plus the housekeeping interval: any float."""

    async def go(ledger: Ledger) -> int:
        await ledger.apply_callback(callback(did(1)))
        return await ledger.settle_orphans(0.0125)

    assert run(real_ledger, go) == 0
    assert is_kept(real_redis, did(1))


def test_a_settle_pass_with_nothing_kept_writes_nothing(real_ledger, real_redis) -> None:
    """The supervisors run it every few seconds on every Redis: it must not create keys."""
    assert run(real_ledger, lambda ledger: ledger.settle_orphans(0)) == 0
    assert real_redis.dbsize() == 0

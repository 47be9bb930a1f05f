"""The events stream is trimmed by age (SMSQ_EVENTS_RETENTION_S) as well as by count: what the
supervisors' housekeeping calls (ledger/retention.py: trim_events), on a real Redis."""

from __future__ import annotations

import time

from script_helpers import run

from ledger import events


def test_events_older_than_the_retention_are_trimmed_and_newer_kept(
    real_ledger, real_redis, settings
) -> None:
    stream = settings.events_stream
    now_ms = int(time.time() * 1000)
    # 150 events two days old (more than a listpack node holds: `~` would keep some), then 5
    # from the last minute.
    for n in range(150):
        real_redis.xadd(stream, {"data": "{}"}, id=f"{now_ms - 2 * 86_400_000 + n}-0")
    recent = [
        real_redis.xadd(stream, {"data": events.encode({"n": n})}, id=f"{now_ms - 60_000 + n}-0")
        for n in range(5)
    ]

    async def go(ledger):
        return await ledger.trim_events(86_400), await ledger.trim_events(86_400)

    assert run(real_ledger, go) == (150, 0)
    assert [entry_id for entry_id, _ in real_redis.xrange(stream)] == recent


def test_a_stream_that_is_not_there_trims_nothing(real_ledger, real_redis, settings) -> None:
    async def go(ledger):
        return await ledger.trim_events(60)

    assert run(real_ledger, go) == 0
    assert real_redis.exists(settings.events_stream) == 0

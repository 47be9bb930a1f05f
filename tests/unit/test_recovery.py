"""The ledger's recovery paths, on fakeredis: unknown messages settled by a callback matched
on source, destination and time; a lost worker's claims swept to unknown; parked batches,
heartbeats and the backoff flag."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from smsq_testing import OWNER, SOURCE, make_settings

from callbacks.document import parse
from ledger import keys
from ledger.states import State
from ledger.store import CallbackUpdate, Campaign, Ledger, Record

DEST = "37060000000"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def callback(didww_id: str, at: float, status: str = "Success", dest: str = DEST) -> CallbackUpdate:
    started = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    attrs = {
        "time_start": started,
        "end_time": started,
        "destination": dest,
        "source": SOURCE,
        "status": status,
        "code_id": None if status == "Success" else 101,
        "fragments_sent": 1,
    }
    doc = {"data": {"type": "outbound_message_callbacks", "id": didww_id, "attributes": attrs}}
    return parse(json.dumps(doc).encode())


async def claimed(ledger: Ledger, cid: str, *indexes: int) -> tuple[Campaign, list[Record]]:
    c = await ledger.campaign(cid)
    assert c is not None
    recs = await ledger.records(cid, 0)
    for i in indexes:
        assert await ledger.claim(c, recs[i], OWNER) == ["claimed"]
    return c, recs


def claim_time(sync_redis, cid: str, index: int) -> float:
    extra = sync_redis.hget(keys.batch(cid, 0), str(index)).decode().split("|")[2]
    return float(extra.split("@")[0])


def test_a_kept_callback_settles_an_unknown_message_by_source_destination_and_time(
    make_ledger, make_campaign, states, counts, read_events, sync_redis
) -> None:
    cid = make_campaign([DEST, "37060000001"])

    async def go() -> tuple[str, int, int, str, int]:
        ledger = make_ledger()
        c, recs = await claimed(ledger, cid, 0, 1)
        assert await ledger.mark_unknown(c, recs[0], "RemoteProtocolError") == ["unknown"]
        at = claim_time(sync_redis, cid, 0) + 0.2
        kept = await ledger.apply_callback(callback("lost-201", at))
        # Too young: its 201 could still be on its way, to another message.
        early = await ledger.settle_orphans(settle_after_s=60)
        settled = await ledger.settle_orphans(settle_after_s=0)
        again = await ledger.apply_callback(callback("lost-201", at))
        return kept, early, settled, again, (await ledger.trunk()).orphans_waiting

    assert run(go()) == ("orphan", 0, 1, "duplicate", 0)
    assert states(cid) == {0: "sent", 1: "sending"}
    assert counts(cid) == {"sent": 1, "sending": 1}
    sent = [e for e in read_events() if e["type"] == "sent"]
    assert len(sent) == 1
    assert sent[0]["campaign_id"] == cid and sent[0]["message_id"] == f"{cid}-0"
    assert sent[0]["didww_id"] == "lost-201"
    assert sent[0]["matched_by"] == "source, destination and time"
    assert sync_redis.get(keys.didww("lost-201")) == f"{cid}|0|0".encode()
    assert int(sync_redis.hget(keys.stats(), "callbacks_matched")) == 1


def test_a_callback_that_came_first_settles_the_message_once_it_is_unknown(
    make_ledger, make_campaign, states, read_events, sync_redis
) -> None:
    cid = make_campaign([DEST])

    async def go() -> tuple[str, int, list[str], int]:
        ledger = make_ledger()
        c, recs = await claimed(ledger, cid, 0)
        at = claim_time(sync_redis, cid, 0) + 0.1
        kept = await ledger.apply_callback(callback("early", at, status="Failed"))
        waiting = (await ledger.trunk()).orphans_waiting
        marked = await ledger.mark_unknown(c, recs[0], "ReadTimeout", posted_at=at - 0.05)
        return kept, waiting, marked, await ledger.settle_orphans(settle_after_s=0)

    assert run(go()) == ("orphan", 1, ["unknown"], 1)
    assert states(cid) == {0: "failed"}
    assert [e["type"] for e in read_events()] == ["unknown", "failed"]
    assert read_events()[-1]["message_id"] == f"{cid}-0"
    assert sync_redis.exists(keys.orphan("early")) == 0
    assert sync_redis.zcard(keys.orphans()) == 0


def test_the_nearest_unknown_message_in_time_wins_and_far_ones_never_match(
    make_ledger, make_campaign, states, sync_redis
) -> None:
    first = make_campaign([DEST])
    second = make_campaign([DEST])
    settings = make_settings(match_window_s=60)

    async def go() -> tuple[int, int]:
        ledger = make_ledger(settings)
        for cid in (first, second):
            c, recs = await claimed(ledger, cid, 0)
            await ledger.mark_unknown(
                c, recs[0], "timeout", posted_at=claim_time(sync_redis, cid, 0)
            )
        far = claim_time(sync_redis, first, 0) + 3600
        await ledger.apply_callback(callback("far", far))
        none = await ledger.settle_orphans(settle_after_s=0)
        near_second = claim_time(sync_redis, second, 0) + 0.001
        await ledger.apply_callback(callback("near", near_second))
        return none, await ledger.settle_orphans(settle_after_s=0)

    assert run(go()) == (0, 1)
    assert states(second) == {0: "sent"}
    assert states(first) == {0: "unknown"}
    # The far one stays kept, to be looked at again later.
    assert sync_redis.exists(keys.orphan("far")) == 1


def test_a_naive_time_start_is_utc() -> None:
    update = callback("x", 0.0)
    update.event["time_start"] = "2024-07-16T19:20:30"
    assert update.started_at == datetime(2024, 7, 16, 19, 20, 30, tzinfo=UTC).timestamp()


def test_sweep_marks_only_the_lost_owners_claims_unknown(
    make_ledger, make_campaign, states, counts, read_events
) -> None:
    cid = make_campaign(4)

    async def go() -> int:
        ledger = make_ledger()
        c, recs = await claimed(ledger, cid, 0, 1)
        assert await ledger.claim(c, recs[2], "otherhost:2") == ["claimed"]
        return await ledger.sweep(c, 0, OWNER, "the worker sending it was lost")

    assert run(go()) == 2
    assert states(cid) == {0: "unknown", 1: "unknown", 2: "sending", 3: "queued"}
    assert counts(cid) == {"unknown": 2, "sending": 1, "queued": 1}
    unknown = [e for e in read_events() if e["type"] == "unknown"]
    assert {e["message_id"] for e in unknown} == {f"{cid}-0", f"{cid}-1"}
    assert all(e["detail"] == "the worker sending it was lost" for e in unknown)
    assert unknown[0]["destination"] == "37060000000" and unknown[0]["source"] == SOURCE


def test_heartbeats_find_silent_batches(make_ledger, sync_redis) -> None:
    async def go() -> tuple[list, list, bool, bool]:
        ledger = make_ledger()
        await ledger.beat("c1", 0, OWNER)
        await ledger.beat("c1", 1, "other:9")
        sync_redis.hset(keys.inflight(), "c1|1|other:9", "1")  # silent since 1970
        silent = await ledger.silent_batches(15)
        fresh = await ledger.silent_batches(-1)
        return (
            silent,
            fresh,
            await ledger.end_batch("c1", 1, "other:9"),
            await ledger.end_batch("c1", 1, "other:9"),
        )

    silent, fresh, ended, again = run(go())
    assert silent == [("c1", 1, "other:9")]
    assert sorted(fresh) == [("c1", 0, OWNER), ("c1", 1, "other:9")]
    assert (ended, again) == (True, False)


def test_a_parked_batch_is_taken_by_one_caller_and_kept_until_published(
    make_ledger, sync_redis
) -> None:
    async def go() -> tuple:
        ledger = make_ledger()
        await ledger.park("c1", 3)
        await ledger.park("c2", 0, delay_s=3600)
        due = await ledger.unpark()
        first = await ledger.take_parked("c1", 3)
        second = await ledger.take_parked("c1", 3)  # another supervisor: no
        # Taken but not yet published: still parked, due again after the lease.
        still = await ledger.unpark(due_only=False)
        await ledger.done_parked("c1", 3)
        not_due = await ledger.take_parked("c2", 0)
        forced = await ledger.take_parked("c2", 0, force=True)
        return due, first, second, still, await ledger.unpark(due_only=False), not_due, forced

    due, first, second, still, left, not_due, forced = run(go())
    assert due == [("c1", 3)]
    assert (first, second) == (True, False)
    assert sorted(still) == [("c1", 3), ("c2", 0)]
    assert left == [("c2", 0)]
    assert (not_due, forced) == (False, True)


def test_backoff_stops_claims_and_alerts_once(make_ledger, make_campaign, read_events) -> None:
    cid = make_campaign(1)

    async def go() -> tuple[bool, bool, list[str], tuple, bool, list[str]]:
        ledger = make_ledger()
        c = await ledger.campaign(cid)
        assert c is not None
        [r] = await ledger.records(cid, 0)
        first = await ledger.back_off("HTTP 503", 30)
        second = await ledger.back_off("HTTP 503", 30)
        refused = await ledger.claim(c, r, OWNER)
        flags = await ledger.trunk_flags()
        cleared = await ledger.clear_backoff("probe answered")
        return first, second, refused, flags, cleared, await ledger.claim(c, r, OWNER)

    first, second, refused, flags, cleared, claimed_after = run(go())
    assert (first, second) == (True, False)
    assert refused == ["backoff"]
    assert flags[0] is None and json.loads(flags[1])["detail"] == "HTTP 503"
    assert cleared is True and claimed_after == ["claimed"]
    assert [e["type"] for e in read_events()] == ["api_unavailable", "api_restored"]


@pytest.mark.parametrize("first", [State.CANCELLED, State.QUEUED])
def test_cancel_moves_each_batch_in_one_step(
    first, make_ledger, make_campaign, counts, read_events
) -> None:
    cid = make_campaign(250, batch_size=100)

    async def go() -> int:
        ledger = make_ledger()
        c = await ledger.campaign(cid)
        assert c is not None
        if first is State.CANCELLED:
            [r, *_] = await ledger.records(cid, 2)
            await ledger.move(c, r, (State.QUEUED,), State.CANCELLED)
        return await ledger.cancel_queued(c)

    moved = run(go())
    assert moved == (249 if first is State.CANCELLED else 250)
    assert counts(cid) == {"cancelled": 250}
    assert len([e for e in read_events() if e["type"] == "cancelled"]) == 250

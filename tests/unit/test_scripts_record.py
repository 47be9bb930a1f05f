"""record.lua (Ledger.record: what DIDWW answered) and callback.lua (Ledger.apply_callback:
its status callbacks), on a real Redis: each move, its one event, the DIDWW-id index, kept
callbacks joined at once, and a campaign marked done when its last pending message settles."""

from __future__ import annotations

import pytest
from script_helpers import (
    OWNER,
    TIME_END,
    TIME_START,
    accepted,
    callback,
    claim,
    counts,
    dest,
    did,
    read_events,
    read_records,
    redis_now,
    rejected,
    retry,
    run,
    states,
    unknown,
)
from smsq_testing import SOURCE, is_kept, kept_count, stored

from ledger import keys, records
from ledger.hotpath import Result
from ledger.records import LATE, MATCHED, RAW_ID

CALLBACK_FIELDS = ("status", "code_id", "reason", "fragments_sent", "time_start", "time_end")


# --- record.lua -----------------------------------------------------------------------------


def test_accepted_indexes_the_didww_id_and_publishes_its_event(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2)

    async def go(ledger):
        await claim(ledger, cid, [0, 1])
        recorded = await ledger.record([accepted(cid, 1, did(1))])
        return recorded, await ledger.apply_callback(callback(did(1), destination=dest(1)))

    recorded, applied = run(real_ledger, go)
    assert (recorded.moved, recorded.settled) == ([True], [""])
    # A later callback finds it through the index.
    assert applied == "applied"
    assert states(real_redis, cid) == {0: "sending", 1: "sent"}
    accepted_event, sent_event = read_events(real_redis)
    assert (accepted_event["type"], accepted_event["message_id"], accepted_event["didww_id"]) == (
        "accepted",
        f"{cid}-1",
        did(1),
    )
    assert sent_event["type"] == "sent"
    # Its pair no longer counts as sending.
    assert real_redis.exists(keys.sending_by_pair(SOURCE, dest(1))) == 0


def test_an_accepted_record_holds_the_id_and_waits_in_the_accepting_set(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)
    before = int(redis_now(real_redis))

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.record([accepted(cid, 0, did(0))])

    run(real_ledger, go)
    [r] = read_records(real_redis, cid)
    assert (r.state, r.didww_id, r.flags) == ("accepted", did(0), 0)
    assert before <= r.t1 <= redis_now(real_redis)
    assert counts(real_redis, cid) == {"accepted": 1}
    assert real_redis.zscore(keys.accepting(), f"{cid}|0") == r.t1
    key, _ = records.id_key(did(0))
    assert key in real_redis.get(keys.id_bucket(key))


def test_an_id_that_is_not_a_uuid_is_kept_beside_the_campaign(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.record([accepted(cid, 0, "not-a-uuid")])
        return await ledger.apply_callback(callback("not-a-uuid", destination=dest(0)))

    assert run(real_ledger, go) == "applied"
    [r] = read_records(real_redis, cid)
    assert r.flags & RAW_ID and r.didww_id is None
    assert real_redis.hget(keys.raw_ids(cid), "0") == b"not-a-uuid"


def test_rejected_publishes_its_detail_and_settles_the_message(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await claim(ledger, cid, [0])
        return await ledger.record([rejected(cid, 0, detail="Invalid destination")])

    assert run(real_ledger, go).moved == [True]
    [r] = read_records(real_redis, cid)
    assert (r.state, r.id_key) == ("rejected", records.NO_ID)
    assert counts(real_redis, cid) == {"rejected": 1}
    [event] = read_events(real_redis)
    assert (event["type"], event["detail"]) == ("rejected", "Invalid destination")
    assert real_redis.exists(keys.sending_by_pair(SOURCE, dest(0))) == 0


def test_unknown_is_indexed_by_source_and_destination(
    real_ledger, real_campaign, real_redis, settings
) -> None:
    cid = real_campaign(1)
    posted_at = int(redis_now(real_redis)) - 3

    async def go(ledger):
        await claim(ledger, cid, [0])
        return await ledger.record([unknown(cid, 0, posted_at)])

    assert run(real_ledger, go).moved == [True]
    [r] = read_records(real_redis, cid)
    assert (r.state, r.t1) == ("unknown", posted_at)
    pair = keys.unknown_by_pair(SOURCE, dest(0))
    assert real_redis.zrange(pair, 0, -1, withscores=True) == [(f"{cid}|0|0".encode(), posted_at)]
    assert 0 < real_redis.ttl(pair) <= settings.orphan_ttl_s
    assert [e["type"] for e in read_events(real_redis)] == ["unknown"]
    assert real_redis.exists(keys.sending_by_pair(SOURCE, dest(0))) == 0


def test_retry_puts_the_message_back_without_an_event(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await claim(ledger, cid, [0])
        recorded = await ledger.record([retry(cid, 0)])
        return recorded, await claim(ledger, cid, [0])

    recorded, again = run(real_ledger, go)
    assert recorded.moved == [True]
    assert read_events(real_redis) == []
    assert real_redis.zcard(keys.parked()) == 0
    # Claimable again: its second attempt.
    assert [c.attempts for c in again.claimed] == [2]


def test_retry_with_a_time_parks_the_batch_keeping_the_earlier_time(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2)
    soon = redis_now(real_redis) + 30

    async def go(ledger):
        await claim(ledger, cid, [0, 1])
        await ledger.record([retry(cid, 0, at=soon)])
        await ledger.record([retry(cid, 1, at=soon + 60)])

    run(real_ledger, go)
    assert states(real_redis, cid) == {0: "queued", 1: "queued"}
    assert real_redis.zrange(keys.parked(), 0, -1, withscores=True) == [
        (f"{cid}|0".encode(), pytest.approx(soon, abs=0.001))
    ]


def test_results_for_messages_in_the_wrong_state_are_skipped(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3)

    async def go(ledger):
        await claim(ledger, cid, [1, 2])
        await ledger.record([accepted(cid, 1, did(1)), unknown(cid, 2, 0)])
        return await ledger.record(
            [
                accepted(cid, 0, did(0)),  # queued: never claimed
                rejected(cid, 1),  # accepted already
                unknown(cid, 2, 0),  # unknown already
                retry(cid, 1),  # accepted: its request surely reached DIDWW
                accepted(cid, 7, did(7)),  # no such message
            ]
        )

    recorded = run(real_ledger, go)
    assert recorded.moved == [False] * 5
    assert states(real_redis, cid) == {0: "queued", 1: "accepted", 2: "unknown"}
    assert [e["type"] for e in read_events(real_redis)] == ["accepted", "unknown"]


@pytest.mark.parametrize("kind", ["accepted", "rejected", "retry"])
def test_the_answer_of_a_message_swept_to_unknown_still_counts(
    real_ledger, real_campaign, real_redis, kind
) -> None:
    """A lost worker's claim is swept to unknown, then its answer comes after all."""
    cid = real_campaign(1)
    result = {"accepted": accepted(cid, 0, did(0)), "rejected": rejected(cid, 0)}.get(
        kind, retry(cid, 0)
    )

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.record([unknown(cid, 0, 0)])
        return await ledger.record([result])

    assert run(real_ledger, go).moved == [True]
    assert states(real_redis, cid) == {0: {"retry": "queued"}.get(kind, kind)}
    assert sum(counts(real_redis, cid).values()) == 1


def test_forget_deletes_finished_in_flight_entries(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(2, batch_size=1)

    async def go(ledger):
        await ledger.hold(cid, 0, 7)
        await ledger.hold(cid, 1, 7)
        return await ledger.record([], forget=[keys.inflight_field(cid, 0, 7)])

    recorded = run(real_ledger, go)
    assert (recorded.moved, recorded.settled) == ([], [])
    assert real_redis.hkeys(keys.inflight()) == [keys.inflight_field(cid, 1, 7).encode()]


def test_forget_releases_the_owners_claims_it_never_posted(
    real_ledger, real_campaign, real_redis
) -> None:
    """A claim whose reply the caller never got (the round trip failed) was never posted: once
    the caller lets the batch go, its number's claims still sending go back to queued."""
    cid = real_campaign(4)
    mine = keys.inflight_field(cid, 0, OWNER)

    async def go(ledger):
        await ledger.hold(cid, 0, OWNER)
        await claim(ledger, cid, [0, 1, 2])
        await claim(ledger, cid, [3], owner=8)
        # Message 0's answer is in the same call: recorded before the batch is let go.
        return await ledger.record([accepted(cid, 0, did(0))], forget=[mine])

    recorded = run(real_ledger, go)
    assert recorded.moved == [True]
    assert states(real_redis, cid) == {0: "accepted", 1: "queued", 2: "queued", 3: "sending"}
    assert counts(real_redis, cid) == {"accepted": 1, "queued": 2, "sending": 1}
    # No event: nothing happened to them that a consumer can see.
    assert [e["type"] for e in read_events(real_redis)] == ["accepted"]
    assert real_redis.zscore(keys.parked(), f"{cid}|0") == pytest.approx(
        redis_now(real_redis), abs=2
    )
    assert real_redis.hget(keys.stats(), "claims_released") == b"2"
    assert real_redis.hexists(keys.inflight(), mine) is False
    assert real_redis.exists(keys.sending_by_pair(SOURCE, dest(1))) == 0
    assert int(real_redis.get(keys.sending_by_pair(SOURCE, dest(3)))) == 1


def test_forget_with_nothing_left_sending_parks_nothing(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await ledger.hold(cid, 0, OWNER)
        await claim(ledger, cid, [0])
        await ledger.record([rejected(cid, 0)], forget=[keys.inflight_field(cid, 0, OWNER)])

    run(real_ledger, go)
    assert states(real_redis, cid) == {0: "rejected"}
    assert real_redis.zcard(keys.parked()) == 0


def test_a_callback_that_came_first_is_joined_when_the_id_is_recorded(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2)
    update = callback(did(1), status="Failed", code_id=2, destination=dest(1), fragments=2)

    async def go(ledger):
        await claim(ledger, cid, [0, 1])
        kept = await ledger.apply_callback(update)
        again = await ledger.apply_callback(update)
        return kept, again, await ledger.record([accepted(cid, 1, did(1))])

    kept, again, recorded = run(real_ledger, go)
    assert kept == "orphan"
    # A repeat of a kept callback is a duplicate, not a second orphan.
    assert again == "duplicate"
    assert (recorded.moved, recorded.settled) == ([True], ["failed"])
    assert states(real_redis, cid) == {0: "sending", 1: "failed"}
    assert counts(real_redis, cid) == {"sending": 1, "failed": 1}
    r = read_records(real_redis, cid)[1]
    assert (r.code_id, r.fragments, r.didww_id, r.flags & LATE) == (2, 2, did(1), 0)
    accepted_event, failed_event = read_events(real_redis)
    assert accepted_event["type"] == "accepted"
    assert (failed_event["type"], failed_event["campaign_id"], failed_event["message_id"]) == (
        "failed",
        cid,
        f"{cid}-1",
    )
    assert (failed_event["didww_id"], failed_event["code_id"], failed_event["reason"]) == (
        did(1),
        2,
        "No rate found",
    )
    assert not is_kept(real_redis, did(1)) and kept_count(real_redis) == 0
    # Settled at once: nothing waits for its callback.
    assert real_redis.zcard(keys.accepting()) == 0
    assert real_redis.hgetall(keys.stats()) == {
        b"orphans_kept": b"1",
        b"orphans_joined": b"1",
        b"callbacks_duplicate": b"1",
        # Per trunk, the campaign's: the callback came with a token that named no trunk.
        b"orphans_joined:default": b"1",
    }


def test_a_kept_callback_is_stored_compactly_in_order_and_publishes_nothing(
    real_ledger, real_redis
) -> None:
    async def go(ledger):
        return await ledger.apply_callback(callback(did(5), status="Failed", code_id=1))

    assert run(real_ledger, go) == "orphan"
    assert read_events(real_redis) == []
    assert is_kept(real_redis, did(5)) and kept_count(real_redis) == 1
    key, _ = records.id_key(did(5))
    [(_, entry)] = real_redis.xrange(keys.kept())
    assert entry == {b"k": key}
    # Its values, not the whole event: about 60 bytes.
    assert len(real_redis.hget(keys.kept_bucket(key), key)) <= 80


# --- callback.lua ---------------------------------------------------------------------------


async def accepted_messages(ledger, cid: str, *indexes: int) -> None:
    await claim(ledger, cid, indexes)
    await ledger.record([accepted(cid, i, did(i)) for i in indexes])


def test_a_success_callback_settles_sent_with_one_event(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await accepted_messages(ledger, cid, 0)
        return await ledger.apply_callback(callback(did(0), destination=dest(0), fragments=2))

    assert run(real_ledger, go) == "applied"
    [r] = read_records(real_redis, cid)
    assert (r.state, r.code_id, r.fragments, r.flags & LATE, r.didww_id) == (
        "sent",
        None,
        2,
        0,
        did(0),
    )
    assert r.status == "Success"
    # The record keeps DIDWW's times to the second.
    assert (r.time_start, r.time_end) == (TIME_START[:19] + "Z", TIME_END[:19] + "Z")
    assert counts(real_redis, cid) == {"sent": 1}
    sent = read_events(real_redis)[-1]
    assert (sent["type"], sent["campaign_id"], sent["message_id"], sent["didww_id"]) == (
        "sent",
        cid,
        f"{cid}-0",
        did(0),
    )
    assert {k: sent[k] for k in CALLBACK_FIELDS} == {
        "status": "Success",
        "code_id": None,
        "reason": "Message was sent successfully",
        "fragments_sent": 2,
        "time_start": TIME_START,
        "time_end": TIME_END,
    }
    assert "late" not in sent
    assert int(real_redis.hget(keys.stats(), "callbacks_applied")) == 1


@pytest.mark.parametrize("first", ["record", "callback"])
def test_a_callback_without_fragments_keeps_the_estimate(
    real_ledger, real_campaign, real_redis, first
) -> None:
    cid = real_campaign(1, segments=3)
    update = callback(did(0), destination=dest(0), fragments=None)

    async def go(ledger):
        await claim(ledger, cid, [0])
        if first == "callback":
            # Kept, then joined by record.lua.
            assert await ledger.apply_callback(update) == "orphan"
            await ledger.record([accepted(cid, 0, did(0))])
        else:
            await ledger.record([accepted(cid, 0, did(0))])
            assert await ledger.apply_callback(update) == "applied"

    run(real_ledger, go)
    [r] = read_records(real_redis, cid)
    assert (r.state, r.fragments) == ("sent", 3)


@pytest.mark.parametrize("status", ["Failed", "Routing Error"])
def test_a_failure_callback_settles_failed_with_its_code(
    real_ledger, real_campaign, real_redis, status
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await accepted_messages(ledger, cid, 0)
        return await ledger.apply_callback(
            callback(did(0), status=status, code_id=105, destination=dest(0))
        )

    assert run(real_ledger, go) == "applied"
    [r] = read_records(real_redis, cid)
    assert (r.state, r.code_id) == ("failed", 105)
    failed = read_events(real_redis)[-1]
    assert (failed["type"], failed["status"], failed["code_id"]) == ("failed", status, 105)


def test_a_second_callback_is_a_duplicate_and_publishes_nothing(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await accepted_messages(ledger, cid, 0)
        first = await ledger.apply_callback(callback(did(0), destination=dest(0)))
        # Even a contradicting one: the first callback settled it.
        second = await ledger.apply_callback(
            callback(did(0), status="Failed", code_id=4, destination=dest(0))
        )
        return first, second

    assert run(real_ledger, go) == ("applied", "duplicate")
    assert states(real_redis, cid) == {0: "sent"}
    assert [e["type"] for e in read_events(real_redis)] == ["accepted", "sent"]
    assert int(real_redis.hget(keys.stats(), "callbacks_duplicate")) == 1


def test_a_callback_for_a_purged_campaign_is_missing(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await accepted_messages(ledger, cid, 0)
        # The index entry outlived its campaign's hash (a purge cut short).
        await ledger.redis.delete(keys.campaign(cid))
        return await ledger.apply_callback(callback(did(0), destination=dest(0)))

    assert run(real_ledger, go) == "missing"
    [r] = records.iter_batch(0, real_redis.get(keys.batch(cid, 0)))
    assert r.state == "accepted"


@pytest.mark.parametrize("status", ["Success", "Failed"])
def test_a_callback_after_the_timeout_settles_an_unconfirmed_message_as_late(
    real_ledger, real_campaign, real_redis, status
) -> None:
    cid = real_campaign(1)
    final = {"Success": "sent", "Failed": "failed"}[status]

    async def go(ledger):
        await accepted_messages(ledger, cid, 0)
        assert await ledger.unconfirm(0) == 1
        code = None if status == "Success" else 1
        return await ledger.apply_callback(
            callback(did(0), status=status, code_id=code, destination=dest(0))
        )

    assert run(real_ledger, go) == "late"
    [r] = read_records(real_redis, cid)
    assert (r.state, r.flags & (LATE | MATCHED | RAW_ID), r.status) == (final, LATE, status)
    assert counts(real_redis, cid) == {final: 1}
    late = read_events(real_redis)[-1]
    assert (late["type"], late["late"], late["previous_state"], late["message_id"]) == (
        final,
        True,
        "unconfirmed",
        f"{cid}-0",
    )
    assert int(real_redis.hget(keys.stats(), "callbacks_late")) == 1


# --- a campaign is done when its last pending message settles --------------------------------


def test_the_campaign_is_done_when_its_last_pending_message_settles(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3)

    async def go(ledger):
        seen = []
        await accepted_messages(ledger, cid, 0, 1)
        await claim(ledger, cid, [2])
        await ledger.record([rejected(cid, 2)])
        seen.append(stored(real_redis, cid).done_at)
        await ledger.apply_callback(callback(did(0), destination=dest(0)))
        seen.append(stored(real_redis, cid).done_at)
        await ledger.apply_callback(
            callback(did(1), status="Failed", code_id=1, destination=dest(1))
        )
        return seen

    assert run(real_ledger, go) == [None, None]
    done_at = stored(real_redis, cid).done_at
    assert done_at is not None
    assert abs(int(done_at) - redis_now(real_redis)) <= 2
    assert real_redis.zscore(keys.retention(), cid) == int(done_at)
    assert counts(real_redis, cid) == {"sent": 1, "failed": 1, "rejected": 1}


@pytest.mark.parametrize("final", ["unknown", "rejected"])
def test_a_campaign_ended_by_record_is_done(real_ledger, real_campaign, real_redis, final) -> None:
    cid = real_campaign(1)
    result: Result = unknown(cid, 0, 0) if final == "unknown" else rejected(cid, 0)

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.record([result])

    run(real_ledger, go)
    assert real_redis.zscore(keys.retention(), cid) is not None

"""What keeps a campaign moving when parts of smsq fail, on a real Redis: kept callbacks
matched to unknown messages (settle.lua), a lost worker's batch recovered (hold, beat and
recover.lua), parked batches leased to one publisher (lease.lua, unlease.lua), and accepted
messages whose callback never comes (unconfirm.lua). The races named in the issue each have
a test here."""

from __future__ import annotations

import pytest
from script_helpers import (
    OWNER,
    accepted,
    callback,
    claim,
    counts,
    dest,
    did,
    iso,
    read_events,
    read_records,
    redis_now,
    retry,
    run,
    snapshot,
    states,
    unknown,
)
from smsq_testing import SOURCE, is_kept, kept_count, make_settings, stored

from ledger import keys, records
from ledger.parking import PARK_LEASE_S
from ledger.records import LATE, MATCHED
from ledger.states import State


def callback_at(didww_id: str, started: float, destination: str = dest(0), **kwargs):
    return callback(
        didww_id,
        destination=destination,
        time_start=iso(started),
        time_end=iso(started + 1),
        **kwargs,
    )


def due_now(client) -> float:
    """A parking time lease.lua finds due: it compares with Redis's time in whole seconds,
    so a batch parked at this very moment is leased only from the next second."""
    return redis_now(client) - 1


def stale(client, field: str) -> None:
    """Make an in-flight entry look silent since long ago."""
    client.hset(keys.inflight(), field, 1000)


# --- settle.lua: kept callbacks matched by source, destination and time ----------------------


def test_a_kept_callback_settles_the_unknown_message_nearest_in_time(
    real_ledger, real_campaign, real_redis
) -> None:
    first, second = real_campaign(1), real_campaign(1)
    posted = int(redis_now(real_redis)) - 200

    async def go(ledger):
        for cid, when in ((first, posted), (second, posted + 100)):
            await claim(ledger, cid, [0])
            await ledger.record([unknown(cid, 0, when)])
        kept = await ledger.apply_callback(callback_at(did(1), posted + 90))
        settled = await ledger.settle_orphans(0)
        again = await ledger.apply_callback(callback_at(did(1), posted + 90))
        return kept, settled, again

    assert run(real_ledger, go) == ("orphan", 1, "duplicate")
    assert states(real_redis, first) == {0: "unknown"}
    assert states(real_redis, second) == {0: "sent"}
    [r] = read_records(real_redis, second)
    assert (r.flags & (MATCHED | LATE), r.didww_id, r.t1) == (MATCHED | LATE, did(1), posted + 90)
    assert r.status == "Success"
    sent = read_events(real_redis)[-1]
    assert (sent["type"], sent["campaign_id"], sent["message_id"], sent["didww_id"]) == (
        "sent",
        second,
        f"{second}-0",
        did(1),
    )
    assert (sent["matched_by"], sent["late"], sent["previous_state"]) == (
        "source, destination and time",
        True,
        "unknown",
    )
    assert not is_kept(real_redis, did(1)) and kept_count(real_redis) == 0
    assert real_redis.xlen(keys.kept()) == 0
    assert real_redis.zrange(keys.unknown_by_pair(SOURCE, dest(0)), 0, -1) == [
        f"{first}|0|0".encode()
    ]
    assert int(real_redis.hget(keys.stats(), "callbacks_matched")) == 1
    assert real_redis.zscore(keys.retention(), second) is not None


def test_a_kept_callback_waits_until_it_is_old_enough(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)
    posted = int(redis_now(real_redis))

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.record([unknown(cid, 0, posted)])
        await ledger.apply_callback(callback_at(did(1), posted))
        return await ledger.settle_orphans(60)

    assert run(real_ledger, go) == 0
    assert states(real_redis, cid) == {0: "unknown"}


def test_a_callback_outside_the_match_window_is_kept_and_looked_at_later(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)
    posted = int(redis_now(real_redis)) - 7200

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.record([unknown(cid, 0, posted)])
        await ledger.apply_callback(callback_at(did(1), posted + 601))
        return await ledger.settle_orphans(0)

    assert run(real_ledger, go) == 0
    assert states(real_redis, cid) == {0: "unknown"}
    assert is_kept(real_redis, did(1))
    # Looked at again on the next pass: the settle pass starts again from the oldest.
    assert real_redis.hget(keys.kept_info(), "cursor") in (None, b"-")


def test_the_match_window_is_a_setting(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(1)
    posted = int(redis_now(real_redis)) - 7200

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.record([unknown(cid, 0, posted)])
        await ledger.apply_callback(callback_at(did(1), posted + 601))
        return await ledger.settle_orphans(0)

    assert run(lambda: real_ledger(make_settings(match_window_s=3600)), go) == 1


def test_a_callback_for_another_destination_never_matches(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)
    posted = int(redis_now(real_redis))

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.record([unknown(cid, 0, posted)])
        await ledger.apply_callback(callback_at(did(1), posted, destination="37069999999"))
        return await ledger.settle_orphans(0)

    assert run(real_ledger, go) == 0
    assert states(real_redis, cid) == {0: "unknown"}


def test_a_kept_callback_matches_only_an_unknown_message_of_its_tokens_trunk(
    real_ledger, real_campaign, real_redis
) -> None:
    ours, theirs = real_campaign(1, trunk="default"), real_campaign(1, trunk="eu")
    posted = int(redis_now(real_redis)) - 200

    async def go(ledger):
        for cid, when in ((ours, posted - 50), (theirs, posted)):
            await claim(ledger, cid, [0], trunk=stored(real_redis, cid).trunk)
            await ledger.record([unknown(cid, 0, when)])
        # The eu trunk's message is nearer in time, but the callback came with default's token.
        kept = await ledger.apply_callback(callback_at(did(1), posted + 1), "default")
        return kept, await ledger.settle_orphans(0)

    assert run(real_ledger, go) == ("orphan", 1)
    assert states(real_redis, ours) == {0: "sent"}
    assert states(real_redis, theirs) == {0: "unknown"}


def test_race_a_kept_callback_is_not_matched_while_a_message_to_its_pair_is_sending(
    real_ledger, real_campaign, real_redis
) -> None:
    """The issue: 'a kept callback is never matched to a message whose own callback may still
    come'. A is claimed, A's callback X comes before A's 201 and is kept, B (same number)
    becomes unknown: X must wait for A, not settle B."""
    number = "37061234567"
    a_campaign, b_campaign = real_campaign([number]), real_campaign([number])

    async def go(ledger):
        await claim(ledger, a_campaign, [0])
        await claim(ledger, b_campaign, [0])
        now = int(redis_now(real_redis))
        kept = await ledger.apply_callback(callback_at(did(1), now, destination=number))
        await ledger.record([unknown(b_campaign, 0, now)])
        settled = await ledger.settle_orphans(0)
        a_record = await ledger.record([accepted(a_campaign, 0, did(1))])
        return kept, settled, a_record

    kept, settled, a_record = run(real_ledger, go)
    assert (kept, settled) == ("orphan", 0)
    # A's 201 joins A with its own callback.
    assert a_record.settled == ["sent"]
    assert states(real_redis, a_campaign) == {0: "sent"}
    assert states(real_redis, b_campaign) == {0: "unknown"}
    assert not is_kept(real_redis, did(1))


def test_a_kept_callback_is_matched_once_nothing_to_its_pair_is_sending(
    real_ledger, real_campaign, real_redis
) -> None:
    number = "37061234567"
    a_campaign, b_campaign = real_campaign([number]), real_campaign([number])

    async def go(ledger):
        await claim(ledger, a_campaign, [0])
        await claim(ledger, b_campaign, [0])
        now = int(redis_now(real_redis))
        await ledger.apply_callback(callback_at(did(1), now, destination=number))
        await ledger.record([unknown(b_campaign, 0, now)])
        blocked = await ledger.settle_orphans(0)
        # A's 201 names another id: the kept callback is not A's.
        await ledger.record([accepted(a_campaign, 0, did(2))])
        return blocked, await ledger.settle_orphans(0)

    assert run(real_ledger, go) == (0, 1)
    assert states(real_redis, b_campaign) == {0: "sent"}
    assert states(real_redis, a_campaign) == {0: "accepted"}


# --- hold, beat and recover.lua: a lost worker's batch ---------------------------------------


def test_recover_marks_the_lost_owners_claims_unknown_and_parks_the_batch(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(4)
    lost, alive = keys.inflight_field(cid, 0, OWNER), keys.inflight_field(cid, 0, 8)

    async def go(ledger):
        await ledger.hold(cid, 0, OWNER)
        await ledger.hold(cid, 0, 8)
        await claim(ledger, cid, [0, 1])
        await claim(ledger, cid, [2], owner=8)
        stale(real_redis, lost)
        silent = await ledger.silent_batches(15)
        return silent, await ledger.recover(lost, 15), await ledger.beat([lost, alive])

    silent, swept, gone = run(real_ledger, go)
    assert silent == [lost]
    assert swept == 2
    assert states(real_redis, cid) == {0: "unknown", 1: "unknown", 2: "sending", 3: "queued"}
    assert counts(real_redis, cid) == {"unknown": 2, "sending": 1, "queued": 1}
    # The other owner's claim and entry are untouched; the lost one learns it was recovered.
    assert read_records(real_redis, cid)[2].owner == 8
    assert real_redis.hkeys(keys.inflight()) == [alive.encode()]
    assert gone == [lost]
    assert real_redis.zscore(keys.parked(), f"{cid}|0") == pytest.approx(
        redis_now(real_redis), abs=2
    )
    published = read_events(real_redis)
    assert [(e["type"], e["message_id"], e["destination"]) for e in published] == [
        ("unknown", f"{cid}-{i}", dest(i)) for i in (0, 1)
    ]
    assert {(e["campaign_id"], e["source"], e["detail"]) for e in published} == {
        (cid, SOURCE, "the worker sending it was lost")
    }
    # Each can still be settled by its callback, matched by number and time.
    claimed_at = read_records(real_redis, cid)[0].t1
    assert real_redis.zscore(keys.unknown_by_pair(SOURCE, dest(0)), f"{cid}|0|0") == claimed_at
    assert real_redis.exists(keys.sending_by_pair(SOURCE, dest(0))) == 0
    assert int(real_redis.get(keys.sending_by_pair(SOURCE, dest(2)))) == 1


def test_race_recover_after_a_fresh_beat_touches_nothing(
    real_ledger, real_campaign, real_redis
) -> None:
    """The issue: 'a stalled worker that beats again can have live claims swept, or a fresh
    heartbeat deleted'. The supervisor saw the entry silent; the worker beats before the
    recovery runs: the recovery must leave everything as it was."""
    cid = real_campaign(2)
    field = keys.inflight_field(cid, 0, OWNER)

    async def go(ledger):
        await ledger.hold(cid, 0, OWNER)
        await claim(ledger, cid, [0])
        stale(real_redis, field)
        silent = await ledger.silent_batches(15)
        gone = await ledger.beat([field])
        before = snapshot(real_redis)
        return silent, gone, before, await ledger.recover(field, 15)

    silent, gone, before, swept = run(real_ledger, go)
    assert (silent, gone, swept) == ([field], [], -1)
    assert snapshot(real_redis) == before
    assert states(real_redis, cid) == {0: "sending", 1: "queued"}
    assert real_redis.hexists(keys.inflight(), field)


def test_recover_of_a_forgotten_entry_touches_nothing(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await claim(ledger, cid, [0])
        before = snapshot(real_redis)
        return before, await ledger.recover(keys.inflight_field(cid, 0, OWNER), 0)

    before, swept = run(real_ledger, go)
    assert swept == -1
    assert snapshot(real_redis) == before


def test_hold_and_beat_use_redis_time(real_ledger, real_campaign, real_redis) -> None:
    field = keys.inflight_field("00000000000000aa", 3, OWNER)

    async def go(ledger):
        await ledger.hold("00000000000000aa", 3, OWNER)
        held = int(real_redis.hget(keys.inflight(), field))
        stale(real_redis, field)
        await ledger.beat([field])
        return held, await ledger.silent_batches(15)

    held, silent = run(real_ledger, go)
    assert abs(held - redis_now(real_redis)) <= 2
    assert silent == []
    assert abs(int(real_redis.hget(keys.inflight(), field)) - redis_now(real_redis)) <= 2


# --- lease.lua and unlease.lua: a parked batch published once --------------------------------


def test_one_caller_leases_a_due_parked_batch(real_ledger, real_redis) -> None:
    member = "00000000000000aa|0"

    async def go(ledger):
        await ledger.park("00000000000000aa", 0, at=due_now(real_redis))
        return await ledger.lease(member), await ledger.lease(member), await ledger.due_parked()

    first, second, due = run(real_ledger, go)
    assert first is not None and second is None
    token, score = first
    assert real_redis.get(keys.parked_lease(member)) == token.encode()
    # Still parked while leased: due again when the lease ends, if the publisher fails.
    assert real_redis.zscore(keys.parked(), member) == float(score)
    assert float(score) == pytest.approx(redis_now(real_redis) + PARK_LEASE_S, abs=2)
    assert due == []


def test_a_batch_not_due_is_leased_only_by_force(real_ledger, real_redis) -> None:
    member = "00000000000000aa|0"

    async def go(ledger):
        await ledger.park("00000000000000aa", 0, at=redis_now(real_redis) + 3600)
        return await ledger.lease(member), await ledger.lease(member, force=True)

    plain, forced = run(real_ledger, go)
    assert plain is None and forced is not None


def test_a_leased_batch_is_not_taken_even_by_force(real_ledger, real_redis) -> None:
    member = "00000000000000aa|0"

    async def go(ledger):
        await ledger.park("00000000000000aa", 0, at=due_now(real_redis))
        return await ledger.lease(member), await ledger.lease(member, force=True)

    first, forced = run(real_ledger, go)
    assert first is not None and forced is None


def test_unlease_removes_a_published_batch(real_ledger, real_redis) -> None:
    member = "00000000000000aa|0"

    async def go(ledger):
        await ledger.park("00000000000000aa", 0, at=due_now(real_redis))
        token, score = await ledger.lease(member)
        return await ledger.unlease(member, "not-mine", score), await ledger.unlease(
            member, token, score
        )

    assert run(real_ledger, go) == (False, True)
    assert real_redis.exists(keys.parked(), keys.parked_lease(member)) == 0


def test_race_a_batch_parked_again_after_its_lease_is_kept(real_ledger, real_redis) -> None:
    """The issue: 'done_parked removes a batch unconditionally, so a batch re-parked in
    between is dropped'."""
    member = "00000000000000aa|0"

    async def go(ledger):
        await ledger.park("00000000000000aa", 0, at=due_now(real_redis))
        token, score = await ledger.lease(member)
        await ledger.park("00000000000000aa", 0, at=redis_now(real_redis) + 10)
        return await ledger.unlease(member, token, score)

    assert run(real_ledger, go) is False
    assert real_redis.zscore(keys.parked(), member) == pytest.approx(
        redis_now(real_redis) + 10, abs=2
    )
    assert real_redis.exists(keys.parked_lease(member)) == 0


def test_race_a_retry_that_parks_a_leased_batch_is_kept(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)
    member = f"{cid}|0"

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.park(cid, 0, at=due_now(real_redis))
        token, score = await ledger.lease(member)
        await ledger.record([retry(cid, 0, at=redis_now(real_redis) + 5)])
        return await ledger.unlease(member, token, score)

    assert run(real_ledger, go) is False
    assert real_redis.zscore(keys.parked(), member) is not None
    assert states(real_redis, cid) == {0: "queued"}


def test_race_a_batch_parked_again_for_later_than_its_lease_is_kept(
    real_ledger, real_redis
) -> None:
    member = "00000000000000aa|0"

    async def go(ledger):
        await ledger.park("00000000000000aa", 0, at=due_now(real_redis))
        token, score = await ledger.lease(member)
        await ledger.park("00000000000000aa", 0, at=redis_now(real_redis) + 2 * PARK_LEASE_S)
        return await ledger.unlease(member, token, score)

    assert run(real_ledger, go) is False
    assert real_redis.zscore(keys.parked(), member) is not None


# --- unconfirm.lua: accepted messages whose callback never comes ------------------------------


def test_unconfirm_moves_accepted_messages_older_than_the_timeout(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2)

    async def go(ledger):
        await claim(ledger, cid, [0, 1])
        await ledger.record([accepted(cid, 0, did(0)), accepted(cid, 1, did(1))])
        return await ledger.unconfirm(3600), await ledger.unconfirm(0)

    assert run(real_ledger, go) == (0, 2)
    assert states(real_redis, cid) == {0: "unconfirmed", 1: "unconfirmed"}
    assert counts(real_redis, cid) == {"unconfirmed": 2}
    unconfirmed = read_events(real_redis)[2:]
    accepted_at = read_records(real_redis, cid)[0].t1
    assert [
        (e["type"], e["message_id"], e["destination"], e["accepted_at"]) for e in unconfirmed
    ] == [("unconfirmed", f"{cid}-{i}", dest(i), accepted_at) for i in (0, 1)]
    assert {(e["campaign_id"], e["source"]) for e in unconfirmed} == {(cid, SOURCE)}
    assert real_redis.zcard(keys.accepting()) == 0
    assert real_redis.zscore(keys.retention(), cid) is not None


def test_unconfirm_rescores_a_batch_by_its_oldest_remaining_acceptance(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2)
    now = int(redis_now(real_redis))

    async def go(ledger):
        await claim(ledger, cid, [0, 1])
        await ledger.record([accepted(cid, 0, did(0)), accepted(cid, 1, did(1))])
        # Message 0 was accepted an hour ago.
        old = records.pack(
            State.ACCEPTED, dest(0), attempts=1, t1=now - 3600, id_key=records.id_key(did(0))[0]
        )
        await ledger.redis.setrange(keys.batch(cid, 0), 0, old)
        await ledger.redis.zadd(keys.accepting(), {f"{cid}|0": now - 3600})
        return await ledger.unconfirm(600)

    assert run(real_ledger, go) == 1
    assert states(real_redis, cid) == {0: "unconfirmed", 1: "accepted"}
    assert real_redis.zscore(keys.accepting(), f"{cid}|0") == read_records(real_redis, cid)[1].t1
    assert stored(real_redis, cid).done_at is None

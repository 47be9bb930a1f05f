"""claim.lua through Ledger.claim, on a real Redis: queued -> sending only in the step that
finds the trunk, the campaign and the number free; the urgent lane; the trunk's rate (free
slots up to the catch-up, reservations paced `interval_us` apart, the hard cap)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from script_helpers import (
    CLAIM_BASE,
    FAST,
    OWNER,
    claim,
    counts,
    dest,
    read_events,
    read_records,
    redis_now,
    run,
    states,
)
from smsq_testing import SOURCE, stored

from ledger import keys
from ledger.rate import RateParams
from ledger.states import CampaignState


def window_units(client, trunk: str = "default") -> int:
    """Units the trunk's hard cap counts now (every claim of the last window)."""
    return sum(int(e.split()[1]) for e in client.lrange(keys.rate_window(trunk), 0, -1))


def no_unit_spent(client, trunk: str = "default") -> bool:
    return client.llen(keys.rate_window(trunk)) == 0


# --- what may be claimed -------------------------------------------------------------------


def test_claim_moves_queued_to_sending_with_owner_attempts_and_time(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3)
    before = int(redis_now(real_redis))

    async def go(ledger):
        return await claim(ledger, cid, [0, 1])

    reply = run(real_ledger, go)
    assert reply.status == "ok"
    assert [
        (c.cid, c.batch, c.index, c.destination, c.units, c.attempts) for c in reply.claimed
    ] == [
        (cid, 0, 0, dest(0), 1, 1),
        (cid, 0, 1, dest(1), 1, 1),
    ]
    # Campaign messages carry no content: the caller holds their campaign.
    assert {(c.source, c.text, c.fields) for c in reply.claimed} == {("", "", "")}
    [outcome] = reply.outcomes
    assert (outcome.cid, outcome.batch, outcome.examined, outcome.outcome) == (cid, 0, 2, "ok")
    assert states(real_redis, cid) == {0: "sending", 1: "sending", 2: "queued"}
    assert counts(real_redis, cid) == {"queued": 1, "sending": 2}
    for r in read_records(real_redis, cid)[:2]:
        assert r.owner == OWNER and r.attempts == 1
        assert before <= r.t1 <= redis_now(real_redis)
    assert int(real_redis.get(keys.sending_by_pair(SOURCE, dest(0)))) == 1
    # Claiming publishes nothing: sending is not an event.
    assert read_events(real_redis) == []


def test_a_sending_message_is_not_claimed_by_another_owner(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await claim(ledger, cid, [0])
        return await claim(ledger, cid, [0], owner=8)

    again = run(real_ledger, go)
    assert again.claimed == []
    # Examined: it is settled for this caller, who stops offering it.
    assert again.outcomes[0].examined == 1
    [r] = read_records(real_redis, cid)
    assert (r.owner, r.attempts) == (OWNER, 1)
    assert window_units(real_redis) == 1


def test_a_claim_whose_reply_was_lost_is_claimed_again_by_its_owner(
    real_ledger, real_campaign, real_redis
) -> None:
    """The caller never got the reply of its claim (a broken connection), so it never posted:
    offered again by the same owner, the message is claimed anew, not counted twice."""
    cid = real_campaign(1)

    async def go(ledger):
        await claim(ledger, cid, [0])
        return await claim(ledger, cid, [0])

    again = run(real_ledger, go)
    assert [(c.index, c.attempts) for c in again.claimed] == [(0, 1)]
    [r] = read_records(real_redis, cid)
    assert (r.state, r.owner, r.attempts) == ("sending", OWNER, 1)
    assert counts(real_redis, cid) == {"sending": 1}
    assert int(real_redis.get(keys.sending_by_pair(SOURCE, dest(0)))) == 1
    # Its slot is paid again: the first one went unused.
    assert window_units(real_redis) == 2


def test_a_lost_reply_reclaim_of_a_number_opted_out_meanwhile_keeps_the_counts(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2)

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.optout_change("add", [dest(0)])
        return await claim(ledger, cid, [0])

    again = run(real_ledger, go)
    assert again.claimed == []
    assert states(real_redis, cid) == {0: "suppressed", 1: "queued"}
    assert counts(real_redis, cid) == {"suppressed": 1, "queued": 1}
    assert real_redis.exists(keys.sending_by_pair(SOURCE, dest(0))) == 0


def test_claims_count_posts_per_second_for_the_send_rate(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3)

    async def go(ledger):
        await claim(ledger, cid, [0, 1])
        return await claim(ledger, cid, [2])

    run(real_ledger, go)
    ring = {k.decode(): int(v) for k, v in real_redis.hgetall(keys.posted(cid)).items()}
    assert sum(v for k, v in ring.items() if k.startswith("n")) == 3
    assert all(ring[f"s{k[1:]}"] > 0 for k in ring if k.startswith("n"))


@pytest.mark.parametrize("flag", ["halt", "backoff"])
def test_a_stopped_trunk_claims_nothing(real_ledger, real_campaign, real_redis, flag) -> None:
    cid = real_campaign(2)

    async def go(ledger):
        if flag == "halt":
            await ledger.halt("default", "Authorization failed")
        else:
            await ledger.back_off("default", "HTTP 503", 30)
        return await claim(ledger, cid, [0, 1], want=5)

    reply = run(real_ledger, go)
    assert reply.status == {"halt": "halted", "backoff": "backoff"}[flag]
    assert (reply.claimed, reply.outcomes, reply.wake_us) == ([], [], -1)
    assert states(real_redis, cid) == {0: "queued", 1: "queued"}
    # Nothing reserved either: the rate is untouched.
    assert real_redis.exists(keys.rate("default"), keys.rate_window("default")) == 0


def test_a_halt_on_one_trunk_does_not_stop_another(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await ledger.halt("eu", "Authorization failed")
        on_eu = await claim(ledger, cid, [0], trunk="eu")
        return on_eu, await claim(ledger, cid, [0], trunk="default")

    on_eu, on_default = run(real_ledger, go)
    assert on_eu.status == "halted"
    assert [c.index for c in on_default.claimed] == [0]


def test_a_paused_campaign_keeps_its_messages_queued(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2, state=CampaignState.PAUSED)

    async def go(ledger):
        return await claim(ledger, cid, [0, 1])

    reply = run(real_ledger, go)
    assert reply.claimed == []
    [outcome] = reply.outcomes
    assert (outcome.examined, outcome.outcome) == (0, "paused")
    assert states(real_redis, cid) == {0: "queued", 1: "queued"}
    assert read_events(real_redis) == []
    assert no_unit_spent(real_redis)


@pytest.mark.parametrize(
    ("setup", "final"),
    [({"state": CampaignState.CANCELLED}, "cancelled"), ({"ttl_s": -5}, "expired")],
)
def test_a_cancelled_or_expired_campaign_ends_every_queued_message_of_the_batch(
    real_ledger, real_campaign, real_redis, setup, final
) -> None:
    cid = real_campaign(4, **setup)
    # One message was claimed before: it stays sending (its request may be on the wire).
    real_redis.setrange(keys.batch(cid, 0), 0, b"\x01")
    real_redis.hset(keys.counts(cid), mapping={"queued": 3, "sending": 1})

    async def go(ledger):
        # Offered only index 2: the whole batch ends anyway.
        return await claim(ledger, cid, [2])

    reply = run(real_ledger, go)
    assert reply.claimed == []
    [outcome] = reply.outcomes
    assert (outcome.examined, outcome.outcome) == (1, final)
    assert states(real_redis, cid) == {0: "sending", 1: final, 2: final, 3: final}
    assert counts(real_redis, cid) == {"sending": 1, final: 3}
    published = read_events(real_redis)
    assert [(e["type"], e["message_id"], e["destination"]) for e in published] == [
        (final, f"{cid}-{i}", dest(i)) for i in (1, 2, 3)
    ]
    assert {(e["campaign_id"], e["source"], e["trunk"]) for e in published} == {
        (cid, SOURCE, "default")
    }
    assert no_unit_spent(real_redis)
    # One message still pending (sending): not done yet.
    assert stored(real_redis, cid).done_at is None


def test_a_campaign_ended_by_a_claim_is_done(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(2, ttl_s=-5)

    async def go(ledger):
        return await claim(ledger, cid, [0])

    run(real_ledger, go)
    done_at = stored(real_redis, cid).done_at
    assert done_at is not None
    assert real_redis.zscore(keys.retention(), cid) == int(done_at)


def test_a_scheduled_campaign_waits_for_send_at(real_ledger, real_campaign, real_redis) -> None:
    send_at = redis_now(real_redis) + 3600
    cid = real_campaign(2, state=CampaignState.SCHEDULED, send_at=send_at)

    async def go(ledger):
        return await claim(ledger, cid, [0, 1])

    reply = run(real_ledger, go)
    assert reply.claimed == []
    [outcome] = reply.outcomes
    assert (outcome.examined, outcome.outcome, outcome.value) == (0, "scheduled", str(int(send_at)))
    assert states(real_redis, cid) == {0: "queued", 1: "queued"}
    assert stored(real_redis, cid).state == "scheduled"
    assert no_unit_spent(real_redis)


def test_a_scheduled_campaign_becomes_active_once_send_at_has_passed(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1, state=CampaignState.SCHEDULED, send_at=redis_now(real_redis) - 1)

    async def go(ledger):
        return await claim(ledger, cid, [0])

    reply = run(real_ledger, go)
    assert [c.index for c in reply.claimed] == [0]
    assert reply.outcomes[0].outcome == "ok"
    assert stored(real_redis, cid).state == "active"


def test_a_missing_campaign(real_ledger, real_redis) -> None:
    async def go(ledger):
        return await claim(ledger, "00000000000000ff", [0])

    reply = run(real_ledger, go)
    assert reply.claimed == []
    assert [(o.examined, o.outcome) for o in reply.outcomes] == [(0, "missing")]


def test_opted_out_numbers_are_suppressed_without_spending_a_unit(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3)

    async def go(ledger):
        await ledger.optout_change("add", [dest(1)])
        return await claim(ledger, cid, [0, 1, 2])

    reply = run(real_ledger, go)
    assert [c.index for c in reply.claimed] == [0, 2]
    assert reply.outcomes[0].examined == 3
    assert states(real_redis, cid) == {0: "sending", 1: "suppressed", 2: "sending"}
    assert counts(real_redis, cid) == {"sending": 2, "suppressed": 1}
    [event] = read_events(real_redis)
    assert (event["type"], event["message_id"], event["destination"], event["source"]) == (
        "suppressed",
        f"{cid}-1",
        dest(1),
        SOURCE,
    )
    assert window_units(real_redis) == 2


def test_max_messages_is_respected(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(5)

    async def go(ledger):
        return await claim(ledger, cid, [0, 1, 2, 3, 4], max_messages=2)

    reply = run(real_ledger, go)
    assert [c.index for c in reply.claimed] == [0, 1]
    assert reply.outcomes[0].examined == 2
    assert counts(real_redis, cid) == {"queued": 3, "sending": 2}


def test_batches_are_claimed_in_the_order_given(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(4, batch_size=2)

    async def go(ledger):
        return await ledger.claim(
            "default",
            OWNER,
            FAST,
            due=0,
            want=0,
            max_messages=3,
            batches=[(cid, 1, [2, 3]), (cid, 0, [0, 1])],
            event_base=CLAIM_BASE,
        )

    reply = run(real_ledger, go)
    assert [(c.batch, c.index) for c in reply.claimed] == [(1, 2), (1, 3), (0, 0)]
    assert [(o.batch, o.examined) for o in reply.outcomes] == [(1, 2), (0, 1)]


# --- the urgent lane -------------------------------------------------------------------------


def urgent(client, cid: str, *indexes: int, trunk: str = "default", batch_size: int = 100) -> None:
    """Put messages on the trunk's urgent lane, as producer/enqueue.py does."""
    client.rpush(
        keys.urgent(trunk), *[keys.urgent_member(cid, i // batch_size, i) for i in indexes]
    )


async def claim_lane(ledger, *, trunk: str = "default", max_messages: int = 1000):
    """A claim call offering no batch: only the urgent lane can be claimed."""
    return await ledger.claim(
        trunk,
        OWNER,
        FAST,
        due=0,
        want=0,
        max_messages=max_messages,
        batches=[],
        event_base=CLAIM_BASE,
    )


def test_the_urgent_lane_is_taken_first_with_its_source_text_and_fields(
    real_ledger, real_campaign, real_redis
) -> None:
    otp = real_campaign(1, source="4420000000", text="Code {code}")
    real_redis.hset(keys.fields(otp, 0), "0", "123456")
    bulk = real_campaign(3)
    urgent(real_redis, otp, 0)

    async def go(ledger):
        return await claim(ledger, bulk, [0, 1, 2], max_messages=2)

    reply = run(real_ledger, go)
    first, second = reply.claimed
    assert (first.cid, first.index, first.source, first.text, first.fields) == (
        otp,
        0,
        "4420000000",
        "Code {code}",
        "123456",
    )
    assert (second.cid, second.index, second.source, second.text) == (bulk, 0, "", "")
    assert real_redis.llen(keys.urgent("default")) == 0
    assert states(real_redis, otp) == {0: "sending"}
    second = read_records(real_redis, otp)[0].t1
    slot = second % keys.POSTED_RING_S
    assert real_redis.hmget(keys.posted(otp), f"s{slot}", f"n{slot}") == [
        str(second).encode(),
        b"1",
    ]


def test_the_urgent_lane_respects_max_messages(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(3, priority=True)
    urgent(real_redis, cid, 0, 1, 2)

    async def go(ledger):
        return await claim_lane(ledger, max_messages=2)

    reply = run(real_ledger, go)
    assert [c.index for c in reply.claimed] == [0, 1]
    assert real_redis.lrange(keys.urgent("default"), 0, -1) == [f"{cid}|0|2".encode()]


def test_the_urgent_lane_belongs_to_its_trunk(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(1, trunk="eu")
    urgent(real_redis, cid, 0, trunk="eu")

    async def go(ledger):
        return await claim_lane(ledger, trunk="default"), await claim_lane(ledger, trunk="eu")

    on_default, on_eu = run(real_ledger, go)
    assert on_default.claimed == []
    assert [c.index for c in on_eu.claimed] == [0]


def test_urgent_messages_of_a_cancelled_campaign_are_cancelled(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2, state=CampaignState.CANCELLED)
    urgent(real_redis, cid, 1)

    async def go(ledger):
        return await claim_lane(ledger)

    reply = run(real_ledger, go)
    assert reply.claimed == []
    # Only the lane's message: the batch itself was not offered.
    assert states(real_redis, cid) == {0: "queued", 1: "cancelled"}
    assert [(e["type"], e["message_id"]) for e in read_events(real_redis)] == [
        ("cancelled", f"{cid}-1")
    ]
    assert real_redis.llen(keys.urgent("default")) == 0


def test_urgent_messages_of_a_paused_campaign_leave_the_lane_and_stay_queued(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1, state=CampaignState.PAUSED)
    urgent(real_redis, cid, 0)

    async def go(ledger):
        return await claim_lane(ledger)

    reply = run(real_ledger, go)
    assert reply.claimed == []
    assert states(real_redis, cid) == {0: "queued"}
    # Its batch task takes it once resumed (producer/control.py publishes queued batches).
    assert real_redis.llen(keys.urgent("default")) == 0


def test_an_urgent_claim_registers_its_in_flight_entry(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1, priority=True)
    urgent(real_redis, cid, 0)

    async def go(ledger):
        return await claim_lane(ledger)

    reply = run(real_ledger, go)
    assert [c.index for c in reply.claimed] == [0]
    assert real_redis.hexists(keys.inflight(), f"{cid}|0|{OWNER}")


# --- the rate -------------------------------------------------------------------------------

# 1,000 a second: slots 1 ms apart, a catch-up of 20 ms.
PER_MS = RateParams.of(1000, 1.0)
# 5 a second: the hard cap is reached in one call.
SLOW = RateParams.of(5, 1.0)


def test_rate_params_of_a_rate() -> None:
    assert (PER_MS.limit, PER_MS.window_us, PER_MS.interval_us, PER_MS.catchup_us) == (
        1000,
        1_000_000,
        1000.0,
        20_000,
    )
    # Headroom slows the pace and lengthens the cap's window beyond a second by 3/4 of it, so
    # jittered arrivals stay under the rate; `limit` paced slots span more than the window,
    # so a claim a little late does not meet the cap.
    half = RateParams.of(10, 0.5)
    assert (half.limit, half.window_us, half.interval_us) == (10, 1_750_000, 200_000.0)
    assert half.allowance_us == 750_000
    default = RateParams.of(100, 0.98)
    assert default.limit * default.interval_us - default.window_us > 5_000
    assert default.window_us - 1_000_000 == default.allowance_us > 15_000


def test_a_claim_reserves_no_more_than_half_the_margin_of_slots() -> None:
    # Claimed together at the last one's slot, reserved units bunch: never more than half the
    # margin between the pace and the cap, and about span_s of slots where that is less.
    for rate in (1, 100, 300, 1000, 10_000):
        params = RateParams.of(rate, 0.98)
        units = params.span_units(0.01)
        assert units >= 1
        assert (units - 1) * params.interval_us <= params.margin_us / 2
        assert units <= max(1, round(10_000 / params.interval_us))
    assert RateParams.of(300, 0.98).span_units(0.01) == 1
    assert RateParams.of(10_000, 0.98).span_units(0.01) == 26
    assert RateParams.of(10_000, 1.0).span_units(0.01) == 1
    assert RateParams.of(0.5, 1.0).limit == 1
    assert RateParams.of(10, 1.0, "segment").by_segment


def test_a_first_claim_takes_free_slots_only_up_to_the_catch_up(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(50)

    async def go(ledger):
        return await claim(ledger, cid, range(50), rate=PER_MS)

    reply = run(real_ledger, go)
    # The slots from now - catch-up to now, both ends included.
    assert len(reply.claimed) == PER_MS.catchup_us // PER_MS.interval_us + 1 == 21
    assert (reply.wake_us, reply.leftover, reply.cap_wait_us) == (-1, 0, -1)
    assert window_units(real_redis) == 21


def test_after_a_pause_a_first_claim_takes_past_slots_only_within_half_the_margin(
    real_ledger, real_campaign, real_redis
) -> None:
    # At 1,000/s and the default headroom the margin is 5.1 ms: slots in the last 2.55 ms, 3.
    rate = RateParams.of(1000, 0.98)
    cid = real_campaign(50)

    async def go(ledger):
        return await claim(ledger, cid, range(50), rate=rate)

    reply = run(real_ledger, go)
    assert len(reply.claimed) == 1 + int(rate.margin_us / 2 // rate.interval_us) == 3
    assert window_units(real_redis) == 3


def test_want_reserves_units_paced_interval_apart(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        started = time.monotonic()
        first = await claim(ledger, cid, [], rate=PER_MS, want=5)
        second = await claim(ledger, cid, [], rate=PER_MS, want=3)
        return first, second, (time.monotonic() - started) * 1_000_000

    first, second, elapsed_us = run(real_ledger, go)
    # The last of the five reserved units is due four intervals from now.
    assert first.wake_us == 4 * PER_MS.interval_us
    # The next caller's three come after those five.
    assert 7 * PER_MS.interval_us - elapsed_us <= second.wake_us <= 7 * PER_MS.interval_us
    assert (first.claimed, second.claimed) == ([], [])


def test_reserved_units_are_claimed_when_due_and_free_slots_are_not_taken_twice(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(10)

    async def go(ledger):
        # The reservation moves the trunk's cursor past now.
        await claim(ledger, cid, [], rate=SLOW, want=3)
        without = await claim(ledger, cid, range(10), rate=SLOW)
        with_due = await claim(ledger, cid, range(10), rate=SLOW, due=3)
        return without, with_due

    without, with_due = run(real_ledger, go)
    # Nothing is free for a caller with none due; the reserved units go at once.
    assert without.claimed == []
    assert [c.index for c in with_due.claimed] == [0, 1, 2]
    assert (with_due.leftover, with_due.cap_wait_us) == (0, -1)


def test_due_units_are_kept_when_the_hard_cap_is_full(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(10)

    async def go(ledger):
        first = await claim(ledger, cid, range(10), rate=SLOW, due=5)
        second = await claim(ledger, cid, range(5, 10), rate=SLOW, due=3)
        return first, second

    first, second = run(real_ledger, go)
    assert len(first.claimed) == 5
    assert second.claimed == []
    # The caller keeps its three units and comes back when the oldest claim leaves the window.
    assert second.leftover == 3
    assert 0 <= second.cap_wait_us <= SLOW.window_us
    assert window_units(real_redis) == SLOW.limit


def test_a_call_that_fills_the_cap_itself_keeps_its_due_units(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(10)

    async def go(ledger):
        return await claim(ledger, cid, range(10), rate=SLOW, due=8)

    reply = run(real_ledger, go)
    assert len(reply.claimed) == SLOW.limit
    assert reply.leftover == 3
    assert 0 <= reply.cap_wait_us <= SLOW.window_us


def test_segment_mode_counts_each_fragment(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(2, segments=3)
    by_segment = RateParams.of(1000, 1.0, "segment")

    async def go(ledger):
        return await claim(ledger, cid, [0, 1], rate=by_segment)

    reply = run(real_ledger, go)
    assert [c.units for c in reply.claimed] == [3, 3]
    assert window_units(real_redis) == 6
    assert real_redis.hget(keys.rate("default"), "sum") == b"6"


def test_message_mode_counts_a_long_message_once(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(2, segments=3)

    async def go(ledger):
        return await claim(ledger, cid, [0, 1])

    reply = run(real_ledger, go)
    assert [c.units for c in reply.claimed] == [1, 1]
    assert window_units(real_redis) == 2


def test_a_message_costing_more_than_the_limit_is_still_sent(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2, segments=3)
    two_segments = RateParams.of(2, 1.0, "segment")

    async def go(ledger):
        return await claim(ledger, cid, [0, 1], rate=two_segments, due=3)

    reply = run(real_ledger, go)
    assert [c.index for c in reply.claimed] == [0]


def sliding_window_max(entries: list[tuple[int, int]], window_us: int) -> int:
    """The most units claimed in any window_us (half open) among (time_us, units) claims."""
    ordered = sorted(entries)
    best, total, start = 0, 0, 0
    for at, units in ordered:
        total += units
        while ordered[start][0] <= at - window_us:
            total -= ordered[start][1]
            start += 1
        best = max(best, total)
    return best


async def callers(
    ledger_factory, cid: str, rate: RateParams, seconds: float, honest: bool, seed: int
):
    """Several callers claiming one campaign for `seconds`, each on its own connection: honest
    ones like worker/engine.py (due = what was reserved, back at wake_us or cap_wait_us),
    the others asking at random. Returns the window entries seen and the units claimed."""
    rng = random.Random(seed)
    seen: set[bytes] = set()
    claimed_units = 0
    offered = iter(range(10_000))
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal claimed_units
        ledger = ledger_factory()
        reserved, reserved_at, leftover, cap_until = 0, 0.0, 0, 0.0
        try:
            while time.monotonic() < deadline:
                now = time.monotonic()
                if honest:
                    wait = max(cap_until, reserved_at if reserved and not leftover else 0.0)
                    if wait > now:
                        await asyncio.sleep(wait - now)
                        continue
                    due = leftover
                    if reserved and now >= reserved_at:
                        due, reserved = due + reserved, 0
                    want = 0 if reserved else rng.randint(1, 4)
                else:
                    due, want = rng.randint(0, 2 * rate.limit), rng.randint(0, 10)
                batch = [next(offered) for _ in range(rng.randint(1, 8))]
                reply = await claim(ledger, cid, batch, rate=rate, due=due, want=want)
                claimed_units += sum(c.units for c in reply.claimed)
                if reply.claimed:
                    seen.update(await ledger.redis.lrange(keys.rate_window("default"), 0, -1))
                now = time.monotonic()
                leftover = reply.leftover
                cap_until = now + reply.cap_wait_us / 1e6 if reply.cap_wait_us >= 0 else 0.0
                if reply.wake_us >= 0:
                    reserved, reserved_at = want, now + reply.wake_us / 1e6
                if not honest:
                    await asyncio.sleep(rng.random() * 0.03)
        finally:
            await ledger.redis.aclose()

    await asyncio.gather(*(caller() for _ in range(4)))
    entries = [(int(e.split()[0]), int(e.split()[1])) for e in seen]
    return entries, claimed_units


@pytest.mark.parametrize("honest", [True, False], ids=["paced-callers", "random-callers"])
def test_no_window_ever_holds_more_than_the_limit(
    real_ledger, real_campaign, real_redis, honest
) -> None:
    cid = real_campaign(10_000, batch_size=10_000)
    rate = RateParams.of(50, 1.0)
    seconds = 2.5

    entries, claimed_units = asyncio.run(
        callers(real_ledger, cid, rate, seconds, honest, seed=20240716)
    )
    # Every claim was seen in the window list: the count below covers them all.
    assert sum(units for _, units in entries) == claimed_units
    assert sliding_window_max(entries, rate.window_us) <= rate.limit
    assert claimed_units <= rate.limit * (seconds + 1)
    if honest:
        # Slots are not wasted: paced callers get close to the rate.
        assert claimed_units >= 0.8 * rate.limit * seconds

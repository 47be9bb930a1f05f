"""The Ledger as a whole, on a real Redis: keys built in Lua agree with ledger/keys.py;
campaign state, cancel and status; trunk flags; the opt-out list; retention (purge and the
DIDWW-id index); and random interleavings of every operation, which must keep the counts,
the allowed moves and the events consistent.

Each script's own behaviour is tested in test_scripts_claim.py, test_scripts_record.py and
test_recovery.py."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
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
    rejected,
    retry,
    run,
    states,
    unknown,
)
from smsq_testing import SOURCE, stored

from callbacks.document import FINAL_STATES
from ledger import keys, optouts, records
from ledger.campaigns import Campaign
from ledger.errors import CampaignFinished, InputError
from ledger.reasons import SUCCESS_REASON
from ledger.states import PENDING, CampaignState, Code, State, can_move
from producer import control

CID = "0123456789abcdef"


# --- Lua and Python agree ----------------------------------------------------------------------


def lua_common(client: Any, body: str, *args: Any) -> Any:
    """Run `body` after the helpers every ledger script starts with (ledger/lua/_common.lua)."""
    common = (resources.files("ledger") / "lua" / "_common.lua").read_text(encoding="utf-8")
    return client.eval(common + "\n" + body, 0, *args)


def test_keys_built_in_lua_agree_with_keys_py(real_redis) -> None:
    id_key = uuid.UUID("abcdef01-2345-6789-abcd-ef0123456789").bytes
    built = lua_common(
        real_redis,
        """return {campaign_key(ARGV[1]), counts_key(ARGV[1]), batch_key(ARGV[1], 7),
          fields_key(ARGV[1], 7), refs_key(ARGV[1], 7), rawids_key(ARGV[1]), posted_key(ARGV[1]),
          kept_bucket(ARGV[5]), KEPT, KEPT_INFO,
          unknown_by_pair(ARGV[3], ARGV[4]), sending_by_pair(ARGV[3], ARGV[4]),
          id_bucket(ARGV[5]), STATS, ACCEPTING, RETENTION, PARKED, INFLIGHT}""",
        CID,
        did(1),
        SOURCE,
        dest(1),
        id_key,
    )
    assert [k.decode() for k in built] == [
        keys.campaign(CID),
        keys.counts(CID),
        keys.batch(CID, 7),
        keys.fields(CID, 7),
        keys.refs(CID, 7),
        keys.raw_ids(CID),
        keys.posted(CID),
        keys.kept_bucket(id_key),
        keys.kept(),
        keys.kept_info(),
        keys.unknown_by_pair(SOURCE, dest(1)),
        keys.sending_by_pair(SOURCE, dest(1)),
        keys.id_bucket(id_key),
        keys.stats(),
        keys.accepting(),
        keys.retention(),
        keys.parked(),
        keys.inflight(),
    ]
    assert keys.id_bucket(id_key) == "smsq:ids:abc"
    assert keys.kept_bucket(id_key) == "smsq:kept:abc"


def test_the_success_reason_and_statuses_agree_with_python(real_redis) -> None:
    reason, statuses = lua_common(
        real_redis,
        """local names = {}
        for code, name in pairs(STATUS_NAMES) do names[#names + 1] = name end
        table.sort(names)
        return {SUCCESS_REASON, names}""",
    )
    assert reason.decode() == SUCCESS_REASON
    assert sorted(s.decode() for s in statuses) == sorted(FINAL_STATES)


@pytest.mark.parametrize(
    "ms", [0, 1, 999, 951782400000, 1709164800123, 1733580000123, 4102444799999, 2**32 * 1000]
)
def test_kept_times_are_written_as_python_writes_them(real_redis, ms: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    python = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert lua_common(real_redis, "return iso_ms(tonumber(ARGV[1]), 3)", ms).decode() == python


def test_states_flags_and_the_record_layout_agree_with_python(real_redis) -> None:
    names, size, flags, packed = lua_common(
        real_redis,
        """local names = {}
        for code = 0, #NAMES do names[#names + 1] = NAMES[code] end
        local m = rec_unpack(ARGV[1])
        m.attempts = m.attempts + 1
        return {names, R, {LATE, MATCHED, RAW_ID}, rec_pack(m)}""",
        records.pack(
            State.SENT,
            "447700900123",
            attempts=2,
            fragments=3,
            flags=records.MATCHED,
            code_id=105,
            t1=1721157630,
            t2=70000,
            id_key=uuid.UUID(did(1)).bytes,
        ),
    )
    assert [n.decode() for n in names] == [code.name.lower() for code in sorted(Code)]
    assert size == records.SIZE == 35
    assert flags == [records.LATE, records.MATCHED, records.RAW_ID]
    r = records.unpack(0, packed)
    assert (r.state, r.destination, r.attempts, r.fragments, r.code_id) == (
        State.SENT,
        "447700900123",
        3,
        3,
        105,
    )
    assert (r.t1, r.t2, r.didww_id) == (1721157630, 65535, did(1))


# --- campaign state, cancel and status -----------------------------------------------------------


def test_set_state_pauses_resumes_and_cancels(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        seen = []
        for state in ("paused", "active", "cancelled"):
            seen.append((await ledger.set_state(cid, CampaignState(state)), state))
        return seen, await ledger.set_state("00000000000000ff", CampaignState.PAUSED)

    seen, missing = run(real_ledger, go)
    assert seen == [(True, "paused"), (True, "active"), (True, "cancelled")]
    assert missing is False
    assert stored(real_redis, cid).state == "cancelled"


def test_a_cancelled_campaign_stays_cancelled(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(1, state=CampaignState.CANCELLED)

    async def go(ledger):
        refused = []
        for state in ("paused", "active", "cancelled"):
            with pytest.raises(CampaignFinished, match=f"campaign {cid} is cancelled") as caught:
                await ledger.set_state(cid, CampaignState(state))
            refused.append(caught.value.code)
        return refused

    assert run(real_ledger, go) == ["campaign_finished"] * 3
    assert stored(real_redis, cid).state == "cancelled"


@pytest.mark.parametrize("how", ["nothing pending", "done_at"])
def test_a_done_campaign_cannot_be_paused_resumed_or_cancelled(
    real_ledger, real_campaign, real_redis, how: str
) -> None:
    cid = real_campaign(2)
    if how == "nothing pending":
        # Both messages delivered: the counts say so, and no done_at is written yet.
        real_redis.hset(keys.counts(cid), mapping={"queued": 0, "delivered": 2})
    else:
        real_redis.hset(keys.campaign(cid), mapping=Campaign.encode(done_at=time.time()))
    before = real_redis.hgetall(keys.campaign(cid))

    async def go(ledger):
        for state in ("paused", "active", "cancelled"):
            with pytest.raises(CampaignFinished, match=f"campaign {cid} is done"):
                await ledger.set_state(cid, CampaignState(state))

    run(real_ledger, go)
    assert real_redis.hgetall(keys.campaign(cid)) == before


def test_resuming_a_scheduled_campaign_keeps_it_scheduled(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1, state=CampaignState.SCHEDULED, send_at=redis_now(real_redis) + 3600)

    async def go(ledger):
        return await ledger.set_state(cid, CampaignState.ACTIVE)

    assert run(real_ledger, go) is True
    assert stored(real_redis, cid).state == "scheduled"


def test_pausing_and_resuming_a_scheduled_campaign_keeps_its_schedule(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1, state=CampaignState.SCHEDULED, send_at=redis_now(real_redis) + 3600)

    async def go(ledger):
        await ledger.set_state(cid, CampaignState.PAUSED)
        await ledger.set_state(cid, CampaignState.ACTIVE)
        return await claim(ledger, cid, [0])

    reply = run(real_ledger, go)
    assert reply.claimed == []
    assert reply.outcomes[0].outcome == "scheduled"


def test_cancel_queued_cancels_every_queued_message_of_every_batch(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(250, batch_size=100)

    async def go(ledger):
        await claim(ledger, cid, [101], batch=1)
        first = await control.cancel(ledger, cid)
        with pytest.raises(CampaignFinished, match="is cancelled"):
            await control.cancel(ledger, cid)
        return first

    assert run(real_ledger, go) == 249
    assert counts(real_redis, cid) == {"cancelled": 249, "sending": 1}
    assert states(real_redis, cid, 1)[101] == "sending"
    cancelled = read_events(real_redis)
    assert len(cancelled) == 249
    assert cancelled[0] | {"at": None} == {
        "type": "cancelled",
        "campaign_id": cid,
        "message_id": f"{cid}-0",
        "didww_id": None,
        "destination": dest(0),
        "source": SOURCE,
        "trunk": "default",
        "at": None,
    }
    # The message on the wire is still pending.
    assert stored(real_redis, cid).done_at is None


def test_a_cancel_cut_short_is_finished_by_the_next_one(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3)

    async def go(ledger):
        # The first cancel's process stopped after the state and before the messages.
        await ledger.set_state(cid, CampaignState.CANCELLED)
        with pytest.raises(CampaignFinished):
            await control.cancel(ledger, cid)

    run(real_ledger, go)
    assert counts(real_redis, cid) == {"cancelled": 3}


def test_cancel_of_a_missing_campaign(real_ledger, real_redis) -> None:
    async def go(ledger):
        return await control.cancel(ledger, "00000000000000ff")

    assert run(real_ledger, go) is None


def test_cancelling_the_last_queued_messages_makes_the_campaign_done(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2)

    async def go(ledger):
        await claim(ledger, cid, [0])
        await ledger.record([rejected(cid, 0)])
        return await control.cancel(ledger, cid)

    assert run(real_ledger, go) == 1
    assert real_redis.zscore(keys.retention(), cid) is not None


def test_batches_with_queued(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(5, batch_size=2)

    async def go(ledger):
        await claim(ledger, cid, [2, 3], batch=1)
        return await ledger.batches_with_queued(await ledger.campaign(cid))

    assert run(real_ledger, go) == [0, 2]


async def status_state(ledger, cid: str) -> str:
    status = await ledger.status(cid, with_warnings=False)
    assert status is not None
    assert status.as_dict()["state"] == status.state
    return status.state


def test_status_names_each_campaign_state(real_ledger, real_campaign, real_redis) -> None:
    scheduled = real_campaign(1, state=CampaignState.SCHEDULED, send_at=redis_now(real_redis) + 60)
    due = real_campaign(1, state=CampaignState.SCHEDULED, send_at=redis_now(real_redis) - 1)
    active = real_campaign(1)
    paused = real_campaign(1, state=CampaignState.PAUSED)
    cancelled = real_campaign(1, state=CampaignState.CANCELLED)
    done = real_campaign(1)

    async def go(ledger):
        await claim(ledger, done, [0])
        await ledger.record([rejected(done, 0)])
        # Cancelled and nothing pending: still cancelled, not done.
        await ledger.cancel_queued(await ledger.campaign(cancelled))
        return [
            await status_state(ledger, cid)
            for cid in (scheduled, due, active, paused, cancelled, done)
        ]

    assert run(real_ledger, go) == ["scheduled", "active", "active", "paused", "cancelled", "done"]


def test_status_counts_every_state_and_is_done_only_when_nothing_is_pending(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3)

    async def go(ledger):
        seen = []

        async def snap() -> None:
            status = await ledger.status(cid, with_warnings=False)
            assert status.as_dict()["done"] is status.done
            seen.append((status.done, {k: v for k, v in status.counts.items() if v}))
            assert set(status.counts) == {str(s) for s in State}

        await snap()
        await claim(ledger, cid, [0, 1, 2])
        await ledger.record([accepted(cid, i, did(i)) for i in range(3)])
        await snap()
        await ledger.apply_callback(callback(did(0), destination=dest(0)))
        await ledger.apply_callback(
            callback(did(1), status="Failed", code_id=1, destination=dest(1))
        )
        await snap()
        await ledger.apply_callback(callback(did(2), destination=dest(2)))
        await snap()
        return seen

    assert run(real_ledger, go) == [
        (False, {"queued": 3}),
        (False, {"accepted": 3}),
        (False, {"sent": 1, "failed": 1, "accepted": 1}),
        (True, {"sent": 2, "failed": 1}),
    ]


def test_status_of_a_missing_campaign_is_none(real_ledger, real_redis) -> None:
    async def go(ledger):
        return await ledger.status("00000000000000ff"), await ledger.status("not-an-id")

    assert run(real_ledger, go) == (None, None)


def test_status_rate_averages_from_the_first_busy_second(
    real_ledger, real_campaign, real_redis, monkeypatch
) -> None:
    cid, idle = real_campaign(1), real_campaign(1)
    now = int(time.time())
    # Pinned, so a second boundary cannot shift the window under the test.
    monkeypatch.setattr("ledger.campaigns.time.time", lambda: now + 0.5)
    ring = keys.POSTED_RING_S
    real_redis.hset(
        keys.posted(cid),
        mapping={
            f"s{(now - 2) % ring}": now - 2,
            f"n{(now - 2) % ring}": 10,
            f"s{(now - 1) % ring}": now - 1,
            f"n{(now - 1) % ring}": 20,
            # A slot left from an older second does not count.
            f"s{now % ring}": now - ring,
            f"n{now % ring}": 99,
        },
    )

    async def go(ledger):
        return [(await ledger.status(c, with_warnings=False)).rate_per_s for c in (cid, idle)]

    assert run(real_ledger, go) == [15.0, 0.0]


def test_status_shows_the_trunk_and_redis_warnings(real_ledger, real_campaign, real_redis) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await ledger.halt("default", "Authorization failed")
        return (await ledger.status(cid)).as_dict()

    shown = run(real_ledger, go)
    assert shown["trunk_status"]["halted"] is True
    assert shown["trunk_status"]["halted_why"] == "Authorization failed"
    # The test server runs without AOF.
    assert any("AOF" in w for w in shown["warnings"])


# --- trunk flags ---------------------------------------------------------------------------------


def test_halt_raises_one_alert_and_clear_halt_restores(real_ledger, real_redis) -> None:
    async def go(ledger):
        first = await ledger.halt("default", "Authorization failed")
        second = await ledger.halt("default", "Authorization failed")
        flags = await ledger.trunk_flags("default")
        cleared = await ledger.clear_halt("default", "probe succeeded")
        again = await ledger.clear_halt("default", "probe succeeded")
        return first, second, flags, cleared, again, await ledger.trunk_flags("default")

    first, second, flags, cleared, again, after = run(real_ledger, go)
    assert (first, second, cleared, again) == (True, False, True, False)
    assert json.loads(flags[0])["detail"] == "Authorization failed" and flags[1] is None
    assert after == (None, None)
    assert [(e["type"], e["trunk"], e["detail"]) for e in read_events(real_redis)] == [
        ("auth_failed", "default", "Authorization failed"),
        ("auth_restored", "default", "probe succeeded"),
    ]


def test_back_off_expires_and_can_be_extended_or_cleared(real_ledger, real_redis) -> None:
    async def go(ledger):
        first = await ledger.back_off("default", "HTTP 503", 30)
        second = await ledger.back_off("default", "HTTP 503", 30)
        ttl = real_redis.pttl(keys.backoff("default"))
        extended = await ledger.extend_backoff("default", 90)
        longer = real_redis.pttl(keys.backoff("default"))
        cleared = await ledger.clear_backoff("default", "probe answered")
        return (
            first,
            second,
            ttl,
            extended,
            longer,
            cleared,
            await ledger.extend_backoff("default", 90),
        )

    first, second, ttl, extended, longer, cleared, late = run(real_ledger, go)
    assert (first, second, extended, cleared, late) == (True, False, True, True, False)
    assert 29_000 < ttl <= 30_000 and 89_000 < longer <= 90_000
    assert [e["type"] for e in read_events(real_redis)] == ["api_unavailable", "api_restored"]


def test_flags_and_probe_turns_are_per_trunk(real_ledger, real_redis, settings) -> None:
    async def go(ledger):
        await ledger.halt("eu", "Authorization failed")
        return (
            await ledger.trunk_flags("default"),
            # The halt took eu's probe lock: its first probe waits one interval.
            await ledger.take_probe_turn("eu", "a"),
            await ledger.take_probe_turn("default", "a"),
            await ledger.take_probe_turn("default", "b"),
        )

    assert run(real_ledger, go) == ((None, None), False, True, False)
    ttl_ms = real_redis.pttl(keys.probe_lock("default"))
    assert 0 < ttl_ms <= settings.probe_interval_s * 1000


# --- the opt-out list ----------------------------------------------------------------------------


def test_optout_change_adds_and_removes_keeping_the_count(real_ledger, real_redis) -> None:
    async def go(ledger):
        added = await ledger.optout_change("add", [dest(1), dest(1), dest(2)])
        contains = await ledger.optout_contains([dest(1), dest(2), dest(3)])
        removed = await ledger.optout_change("remove", [dest(1), dest(3)])
        numbers = [n async for n in ledger.optout_numbers()]
        return added, contains, removed, numbers, await ledger.optout_count()

    assert run(real_ledger, go) == (2, [True, True, False], 1, [dest(2)], 1)
    # Lua put it in the bucket keys.py names.
    assert real_redis.smembers(keys.optout(int(dest(2)))) == {dest(2).encode()}
    assert real_redis.get(keys.optout_count()) == b"1"


def test_optout_change_of_many_numbers_goes_in_chunks(real_ledger, real_redis) -> None:
    numbers = [f"4477009{i:05d}" for i in range(4500)]

    async def go(ledger):
        return await ledger.optout_change("add", numbers), await ledger.optout_count()

    assert run(real_ledger, go) == (4500, 4500)


def test_on_list_finds_the_positions_of_listed_numbers_across_script_calls(
    real_ledger, real_redis, monkeypatch
) -> None:
    # Three script calls (CHECK_CHUNK numbers each), two round trips.
    monkeypatch.setattr(optouts, "CHECK_CALLS_PER_ROUND_TRIP", 2)
    numbers = [f"4477008{i:05d}" for i in range(2 * optouts.CHECK_CHUNK + 7)]
    listed = [*numbers[3::101], numbers[-1]]
    assert optouts.listed(real_redis) == 0

    async def go(ledger):
        return await ledger.optout_change("add", listed)

    run(real_ledger, go)
    assert optouts.listed(real_redis) == len(listed)
    found = optouts.on_list(real_redis, numbers)
    assert [numbers[p] for p in found] == listed
    assert optouts.on_list(real_redis, []) == []


def test_publish_suppressed_appends_the_encoded_events_in_order(real_redis) -> None:
    texts = [json.dumps({"n": n}) for n in range(1203)]
    pipe = real_redis.pipeline(transaction=False)
    optouts.publish_suppressed(pipe, "events-test", 100_000, texts[:600])
    optouts.publish_suppressed(pipe, "events-test", 100_000, texts[600:])
    assert pipe.execute() == [600, 603]
    stored = real_redis.xrange("events-test")
    assert [fields[b"data"].decode() for _, fields in stored] == texts


# --- retention -----------------------------------------------------------------------------------


def bucket_id(prefix: str, n: int) -> str:
    """A DIDWW id whose key falls in the index bucket smsq:ids:{prefix}."""
    return f"{prefix}{n:05x}-0000-4000-8000-{n:012x}"


def test_purge_deletes_every_key_the_campaign_owns_and_only_its_index_entries(
    real_ledger, real_campaign, real_redis
) -> None:
    gone, kept = real_campaign(4, batch_size=2), real_campaign(2)
    # A templated campaign with quiet hours: its fields and windows keys go too.
    real_redis.hset(keys.campaign(gone), mapping=Campaign.encode(fields=("name",)))
    real_redis.hset(keys.fields(gone, 0), mapping={"0": "Ann", "1": "Bob"})
    real_redis.hset(keys.fields(gone, 1), mapping={"2": "Cy", "3": "Di"})
    real_redis.hset(keys.windows(gone), "0", "[]")

    async def go(ledger):
        await claim(ledger, gone, [0, 1])
        await claim(ledger, gone, [2, 3], batch=1)
        await claim(ledger, kept, [0, 1])
        # Entries of both campaigns share bucket abc; bucket def holds only the purged one's.
        await ledger.record(
            [
                accepted(gone, 0, bucket_id("abc", 1)),
                accepted(gone, 1, "raw-id-1"),
                accepted(gone, 2, bucket_id("def", 2), batch=1),
                accepted(kept, 0, bucket_id("abc", 3)),
                accepted(kept, 1, bucket_id("abc", 4)),
            ]
        )
        await ledger.record([rejected(gone, 3, batch=1)])
        before = set(real_redis.keys("*"))
        purged = await ledger.purge(gone)
        after = set(real_redis.keys("*"))
        again = await ledger.purge(gone)
        callbacks = [
            await ledger.apply_callback(callback(bucket_id("abc", 3), destination=dest(0))),
            await ledger.apply_callback(callback(bucket_id("abc", 1), destination=dest(0))),
        ]
        return before, purged, after, again, callbacks

    before, purged, after, again, callbacks = run(real_ledger, go)
    assert (purged, again) == (True, False)
    posted: set[bytes] = set()
    # Its posted-per-second ring goes with it.
    assert keys.posted(gone).encode() in before
    # Index buckets that held only its entries go too.
    only_its = {
        keys.id_bucket(records.id_key(i)[0]).encode() for i in ("raw-id-1", bucket_id("def", 2))
    }
    assert after - posted == {k for k in before if gone.encode() not in k} - only_its
    # The other campaign's entries survive in the shared bucket; the purged one's id is
    # unknown now (its callback is kept as an orphan).
    assert len(real_redis.get("smsq:ids:abc")) == 2 * 28
    assert callbacks == ["applied", "orphan"]
    assert real_redis.zscore(keys.campaigns(), gone) is None
    assert real_redis.zscore(keys.campaigns(), kept) is not None


def test_purge_of_a_missing_campaign_forgets_it(real_ledger, real_redis) -> None:
    real_redis.zadd(keys.retention(), {CID: 1})
    real_redis.zadd(keys.campaigns(), {CID: 1})

    async def go(ledger):
        return await ledger.purge(CID)

    assert run(real_ledger, go) is False
    assert real_redis.exists(keys.retention(), keys.campaigns()) == 0


def test_purge_refuses_while_requests_are_on_the_wire_and_leaves_no_message_half_way(
    real_ledger, real_campaign, real_redis
) -> None:
    """A cancelled campaign with one message sending and one accepted: purge refuses, saying
    why; once the answer is in, the accepted messages become unconfirmed (their events
    published) before everything goes, and no pair counter is left behind."""
    cid = real_campaign(3)

    async def go(ledger):
        await claim(ledger, cid, [0, 1])
        await ledger.record([accepted(cid, 0, did(0))])
        assert await control.cancel(ledger, cid) == 1
        try:
            await control.purge(ledger, cid)
        except InputError as exc:
            refused = str(exc)
        else:
            refused = ""
        before = counts(real_redis, cid)
        await ledger.record([accepted(cid, 1, did(1))])
        return refused, before, await control.purge(ledger, cid)

    refused, before, purged = run(real_ledger, go)
    assert refused == (
        f"campaign {cid} has 1 messages being sent right now; purge it again once their "
        "answers are in (seconds)"
    )
    assert before == {"accepted": 1, "sending": 1, "cancelled": 1}
    assert purged is True
    unconfirmed = [e for e in read_events(real_redis) if e["type"] == "unconfirmed"]
    assert sorted(e["message_id"] for e in unconfirmed) == [f"{cid}-0", f"{cid}-1"]
    assert real_redis.exists(keys.campaign(cid), keys.counts(cid), keys.batch(cid, 0)) == 0
    assert real_redis.keys("smsq:sending:*") == []
    assert real_redis.zcard(keys.accepting()) == 0


def test_unindex_removes_only_the_campaigns_entries(real_ledger, real_redis) -> None:
    other = "fedcba9876543210"
    entry = records.id_key(bucket_id("abc", 1))[0]
    # A crafted bucket: an entry of CID between two of another campaign, and an id key that
    # holds CID's bytes where a misaligned search would find them.
    tricky = bytes.fromhex("abc0") + bytes.fromhex(CID) + bytes(6)
    bucket = (
        tricky + bytes.fromhex(other) + (1).to_bytes(4, "big")
        + entry + bytes.fromhex(CID) + (2).to_bytes(4, "big")
        + entry + bytes.fromhex(other) + (3).to_bytes(4, "big")
    )  # fmt: skip
    real_redis.set("smsq:ids:abc", bucket)
    real_redis.set("smsq:ids:abd", entry + bytes.fromhex(CID) + (4).to_bytes(4, "big"))

    async def go(ledger):
        return await ledger.scripts["unindex"](keys=["smsq:ids:abc", "smsq:ids:abd"], args=[CID])

    assert run(real_ledger, go) == 2
    assert real_redis.get("smsq:ids:abc") == bucket[:28] + bucket[56:]
    assert real_redis.exists("smsq:ids:abd") == 0


def test_due_purges_lists_campaigns_done_longer_ago_than_the_retention(
    real_ledger, real_campaign, real_redis
) -> None:
    done, busy = real_campaign(1), real_campaign(1)

    async def go(ledger):
        await claim(ledger, done, [0])
        await ledger.record([rejected(done, 0)])
        return await ledger.due_purges(0), await ledger.due_purges(3600)

    assert run(real_ledger, go) == ([done], [])
    assert real_redis.zscore(keys.retention(), busy) is None


def test_a_campaign_whose_message_goes_back_to_pending_is_no_longer_done(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1)

    async def go(ledger):
        await claim(ledger, cid, [0])
        # The worker was thought lost: its claim was swept to unknown, the campaign is done.
        await ledger.record([unknown(cid, 0, 0)])
        # Its answer comes after all: the request never reached DIDWW.
        await ledger.record([retry(cid, 0)])
        return await ledger.status(cid, with_warnings=False)

    status = run(real_ledger, go)
    assert status.counts["queued"] == 1
    assert status.done is False
    assert real_redis.zscore(keys.retention(), cid) is None


# --- random interleavings of every operation -----------------------------------------------------

TOTAL = 4
OPERATIONS = (
    "claim",
    "accepted",
    "rejected",
    "unknown",
    "retry",
    "sent",
    "failed",
    "cancel",
    "pause",
    "resume",
    "expire",
    "unconfirm",
    "settle",
    "recover",
    "forget",
)
# The moves that make the interesting states come more often than those that end everything.
WEIGHTED = OPERATIONS + ("claim",) * 4 + ("accepted", "sent", "unknown", "settle", "recover") * 2


async def apply(ledger, client, cid: str, op: str, i: int) -> None:
    """One operation on message i (or on the whole campaign) of a 4-message, 2-batch one."""
    b = i // 2
    now = redis_now(client)
    if op == "claim":
        await claim(ledger, cid, [i], batch=b)
    elif op == "accepted":
        await ledger.record([accepted(cid, i, did(i), batch=b)])
    elif op == "rejected":
        await ledger.record([rejected(cid, i, batch=b)])
    elif op == "unknown":
        await ledger.record([unknown(cid, i, now, batch=b)])
    elif op == "retry":
        await ledger.record([retry(cid, i, batch=b, at=now + 30)])
    elif op in ("sent", "failed"):
        status, code = ("Success", None) if op == "sent" else ("Failed", 1)
        await ledger.apply_callback(
            callback(
                did(i),
                status=status,
                code_id=code,
                destination=dest(i),
                time_start=iso(now),
                time_end=iso(now + 1),
            )
        )
    elif op in ("cancel", "pause", "resume"):
        # Refused, changing nothing, exactly when the campaign has ended.
        ended = (await ledger.status(cid, with_warnings=False)).state in ("cancelled", "done")
        try:
            if op == "cancel":
                await control.cancel(ledger, cid)
            else:
                state = CampaignState.PAUSED if op == "pause" else CampaignState.ACTIVE
                await ledger.set_state(cid, state)
        except CampaignFinished:
            assert ended, f"{op} refused though the campaign had not ended"
        else:
            assert not ended, f"{op} of an ended campaign was not refused"
    elif op == "expire":
        client.hset(keys.campaign(cid), mapping=Campaign.encode(expires_at=now - 1))
    elif op == "unconfirm":
        await ledger.unconfirm(0)
    elif op == "settle":
        await ledger.settle_orphans(0)
    elif op == "recover":
        await ledger.hold(cid, b, OWNER)
        client.hset(keys.inflight(), keys.inflight_field(cid, b, OWNER), 0)
        await ledger.recover(keys.inflight_field(cid, b, OWNER), 1)
    elif op == "forget":
        await ledger.record([], forget=[keys.inflight_field(cid, b, OWNER)])


def check_step(
    cid: str, before: dict[int, State], after: dict[int, State], new: list[dict]
) -> None:
    """Every message moved only as ALLOWED, with one event per published state it passed."""
    by_message: dict[int, list[dict]] = {i: [] for i in before}
    for event in new:
        assert event["campaign_id"] == cid
        index = int(event["message_id"].rpartition("-")[2])
        assert event["destination"] == dest(index) and event["source"] == SOURCE
        by_message[index].append(event)
    for i, old in before.items():
        events_i = by_message[i]
        if after[i] is old:
            assert events_i == [], (i, old, events_i)
            continue
        if after[i] in (State.SENDING, State.QUEUED):
            # Claims and retries publish nothing.
            assert events_i == [] and can_move(old, after[i]), (i, old, after[i])
            continue
        path = [old] + [State(e["type"]) for e in events_i]
        assert path[-1] is after[i], (i, path, after[i])
        for src, dst in itertools.pairwise(path):
            assert can_move(src, dst), (i, path)
        for src, event in zip(path[:-1], events_i, strict=True):
            late = src in (State.UNKNOWN, State.UNCONFIRMED) and event["type"] in ("sent", "failed")
            assert event.get("late", False) is late, (i, path, event)
            if late:
                assert event["previous_state"] == src


@hsettings(
    max_examples=150,
    deadline=None,
    # The same examples on every run, and nothing written to .hypothesis/.
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    opted_out=st.sets(st.integers(0, TOTAL - 1), max_size=2),
    ops=st.lists(st.tuples(st.sampled_from(WEIGHTED), st.integers(0, TOTAL - 1)), max_size=30),
)
def test_random_interleavings_keep_counts_moves_and_events_consistent(
    real_ledger, real_campaign, real_redis, opted_out, ops
) -> None:
    """Numbers are opted out before the first claim: one opted out while its message is
    sending meets the bug that test_scripts_claim.py's
    test_a_lost_reply_reclaim_of_a_number_opted_out_meanwhile_keeps_the_counts shows."""
    real_redis.flushall()
    cid = real_campaign(TOTAL, batch_size=2)
    if opted_out:
        run(real_ledger, lambda ledger: ledger.optout_change("add", [dest(i) for i in opted_out]))

    def read() -> dict[int, State]:
        return {r.index: r.state for b in (0, 1) for r in read_records(real_redis, cid, b)}

    async def go(ledger):
        seen = 0
        last = read()
        for op, i in ops:
            await apply(ledger, real_redis, cid, op, i)
            now = read()
            published = read_events(real_redis)
            check_step(cid, last, now, published[seen:])
            counted = {k.decode(): int(v) for k, v in real_redis.hgetall(keys.counts(cid)).items()}
            assert all(v >= 0 for v in counted.values())
            assert sum(counted.values()) == TOTAL
            assert {k: v for k, v in counted.items() if v} == {
                str(s): n for s in State if (n := sum(1 for x in now.values() if x is s))
            }
            for index, state in now.items():
                sending = real_redis.get(keys.sending_by_pair(SOURCE, dest(index)))
                assert int(sending or 0) == (state is State.SENDING), (index, state, sending)
            if not any(s in PENDING for s in now.values()):
                assert stored(real_redis, cid).done_at is not None
            seen, last = len(published), now

    run(real_ledger, go)

"""Tests for ledger.store and its Lua scripts, on fakeredis: every transition, its event,
and the counts that must always add up to the campaign's total."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import fakeredis.aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from smsq_testing import OWNER, SOURCE, make_settings, write_campaign

from callbacks.document import parse
from ledger import keys
from ledger.states import TERMINAL, CampaignState, State, can_move
from ledger.store import CallbackUpdate, Campaign, Ledger, Record

CALLBACK_FIELDS = ("status", "code_id", "reason", "fragments_sent", "time_start", "time_end")


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def callback(
    didww_id: str,
    status: str = "Success",
    code_id: int | None = None,
    destination: str = "37060000000",
) -> CallbackUpdate:
    body = {
        "data": {
            "type": "outbound_message_callbacks",
            "id": didww_id,
            "attributes": {
                "time_start": "2024-07-16T19:20:30.45Z",
                "end_time": "2024-07-16T19:20:31.45Z",
                "destination": destination,
                "source": SOURCE,
                "status": status,
                "code_id": code_id,
                "fragments_sent": 1,
            },
        }
    }
    return parse(json.dumps(body).encode())


async def open_campaign(ledger: Ledger, cid: str) -> tuple[Campaign, list[Record]]:
    c = await ledger.campaign(cid)
    assert c is not None
    return c, await ledger.records(cid, 0)


def test_claim_moves_queued_to_sending_once(
    make_ledger, make_campaign, states, counts, read_events, sync_redis
) -> None:
    cid = make_campaign(3)

    async def go() -> tuple[list[str], list[str]]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        return await ledger.claim(c, recs[0], OWNER), await ledger.claim(c, recs[0], OWNER)

    first, second = run(go())
    assert first == ["claimed"]
    assert second == ["skip", "sending"]
    assert states(cid) == {0: "sending", 1: "queued", 2: "queued"}
    assert counts(cid) == {"queued": 2, "sending": 1}
    # Claiming publishes nothing; the send rate counter moved.
    assert read_events() == []
    posted = [k for k in sync_redis.keys("smsq:campaign:*:posted:*")]
    assert len(posted) == 1 and int(sync_redis.get(posted[0])) == 1


def test_claim_on_paused_campaign_leaves_message_queued(
    make_ledger, make_campaign, states, counts, read_events
) -> None:
    cid = make_campaign(2, state=CampaignState.PAUSED)

    async def go() -> list[str]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        return await ledger.claim(c, recs[0], OWNER)

    assert run(go()) == ["paused"]
    assert states(cid) == {0: "queued", 1: "queued"}
    assert counts(cid) == {"queued": 2}
    assert read_events() == []


def test_claim_while_halted_returns_halted(make_ledger, make_campaign, states) -> None:
    cid = make_campaign(1)

    async def go() -> list[str]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        await ledger.halt("Authorization failed")
        return await ledger.claim(c, recs[0], OWNER)

    assert run(go()) == ["halted"]
    assert states(cid) == {0: "queued"}


def test_claim_on_expired_campaign_expires_the_message(
    make_ledger, make_campaign, states, counts, read_events
) -> None:
    cid = make_campaign(["37060000001", "37060000002"], ttl_s=-5)

    async def go() -> list[str]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        return await ledger.claim(c, recs[1], OWNER)

    assert run(go()) == ["expired"]
    assert states(cid) == {0: "queued", 1: "expired"}
    assert counts(cid) == {"queued": 1, "expired": 1}
    [event] = read_events()
    assert event["type"] == "expired"
    assert event["campaign_id"] == cid
    assert event["message_id"] == f"{cid}-1"
    assert event["destination"] == "37060000002"
    assert event["source"] == SOURCE


def test_claim_on_cancelled_campaign_cancels_the_message(
    make_ledger, make_campaign, states, counts, read_events
) -> None:
    cid = make_campaign(1, state=CampaignState.CANCELLED)

    async def go() -> list[str]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        return await ledger.claim(c, recs[0], OWNER)

    assert run(go()) == ["cancelled"]
    assert states(cid) == {0: "cancelled"}
    assert counts(cid) == {"cancelled": 1}
    assert [e["type"] for e in read_events()] == ["cancelled"]


def test_claim_of_a_missing_message(make_ledger, make_campaign) -> None:
    cid = make_campaign(1)

    async def go() -> list[str]:
        ledger = make_ledger()
        c, _ = await open_campaign(ledger, cid)
        return await ledger.claim(c, Record(7, State.QUEUED, "37060000007", ""), OWNER)

    assert run(go()) == ["missing"]


def test_accept_indexes_the_didww_id_and_publishes(
    make_ledger, make_campaign, states, counts, read_events, sync_redis, settings
) -> None:
    cid = make_campaign(["37060000001"])

    async def go() -> list[str]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        await ledger.claim(c, recs[0], OWNER)
        return await ledger.accept(c, recs[0], "d-1")

    assert run(go()) == ["accepted"]
    assert states(cid) == {0: "accepted"}
    assert counts(cid) == {"accepted": 1}
    assert sync_redis.hget(keys.batch(cid, 0), "0") == b"accepted|37060000001|d-1"
    assert sync_redis.get(keys.didww("d-1")) == f"{cid}|0|0".encode()
    assert 0 < sync_redis.ttl(keys.didww("d-1")) <= settings.didww_id_ttl_s
    [event] = read_events()
    assert event["type"] == "accepted"
    assert event["campaign_id"] == cid
    assert event["message_id"] == f"{cid}-0"
    assert event["didww_id"] == "d-1"
    assert event["destination"] == "37060000001"
    assert event["source"] == SOURCE


def test_accept_needs_a_claimed_message(make_ledger, make_campaign, states, read_events) -> None:
    cid = make_campaign(1)

    async def go() -> list[str]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        return await ledger.accept(c, recs[0], "d-1")

    assert run(go()) == ["skip", "queued"]
    assert states(cid) == {0: "queued"}
    assert read_events() == []


async def _accepted(ledger: Ledger, cid: str, index: int, didww_id: str) -> None:
    c, recs = await open_campaign(ledger, cid)
    assert await ledger.claim(c, recs[index], OWNER) == ["claimed"]
    assert (await ledger.accept(c, recs[index], didww_id))[0] == "accepted"


def test_success_callback_settles_sent_with_one_event(
    make_ledger, make_campaign, states, counts, read_events
) -> None:
    cid = make_campaign(["37060000000"])

    async def go() -> str:
        ledger = make_ledger()
        await _accepted(ledger, cid, 0, "d-1")
        return await ledger.apply_callback(callback("d-1"))

    assert run(go()) == "applied"
    assert states(cid) == {0: "sent"}
    assert counts(cid) == {"sent": 1}
    accepted, sent = read_events()
    assert accepted["type"] == "accepted"
    assert sent["type"] == "sent"
    assert sent["campaign_id"] == cid
    assert sent["message_id"] == f"{cid}-0"
    assert sent["didww_id"] == "d-1"
    assert {k: sent[k] for k in CALLBACK_FIELDS} == {
        "status": "Success",
        "code_id": None,
        "reason": "Message was sent successfully",
        "fragments_sent": 1,
        "time_start": "2024-07-16T19:20:30.45Z",
        "time_end": "2024-07-16T19:20:31.45Z",
    }


def test_failed_callback_settles_failed_with_reason(
    make_ledger, make_campaign, states, read_events
) -> None:
    cid = make_campaign(1)

    async def go() -> str:
        ledger = make_ledger()
        await _accepted(ledger, cid, 0, "d-1")
        return await ledger.apply_callback(callback("d-1", "Failed", 2))

    assert run(go()) == "applied"
    assert states(cid) == {0: "failed"}
    failed = read_events()[-1]
    assert failed["type"] == "failed"
    assert failed["status"] == "Failed"
    assert failed["code_id"] == 2
    assert failed["reason"] == "No rate found"


def test_duplicate_callback_publishes_nothing(
    make_ledger, make_campaign, states, read_events, sync_redis
) -> None:
    cid = make_campaign(1)

    async def go() -> tuple[str, str]:
        ledger = make_ledger()
        await _accepted(ledger, cid, 0, "d-1")
        return (
            await ledger.apply_callback(callback("d-1")),
            await ledger.apply_callback(callback("d-1")),
        )

    assert run(go()) == ("applied", "duplicate")
    assert [e["type"] for e in read_events()] == ["accepted", "sent"]
    assert int(sync_redis.hget(keys.stats(), "callbacks_duplicate")) == 1


def test_late_failed_after_success_is_a_duplicate(
    make_ledger, make_campaign, states, counts, read_events
) -> None:
    cid = make_campaign(1)

    async def go() -> tuple[str, str]:
        ledger = make_ledger()
        await _accepted(ledger, cid, 0, "d-1")
        return (
            await ledger.apply_callback(callback("d-1")),
            await ledger.apply_callback(callback("d-1", "Failed", 4)),
        )

    assert run(go()) == ("applied", "duplicate")
    assert states(cid) == {0: "sent"}
    assert counts(cid) == {"sent": 1}
    assert [e["type"] for e in read_events()] == ["accepted", "sent"]


def test_callback_before_accept_is_kept_then_joined(
    make_ledger, make_campaign, states, counts, read_events, sync_redis
) -> None:
    cid = make_campaign(["37060000000", "37060000001"])

    async def go() -> tuple[str, str, list[str]]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        await ledger.claim(c, recs[1], OWNER)
        first = await ledger.apply_callback(callback("d-9", destination="37060000001"))
        again = await ledger.apply_callback(callback("d-9", destination="37060000001"))
        joined = await ledger.accept(c, recs[1], "d-9")
        return first, again, joined

    first, again, joined = run(go())
    assert first == "orphan"
    # A repeat of a kept callback is a duplicate, not a second orphan.
    assert again == "duplicate"
    assert joined == ["accepted", "sent"]
    assert states(cid) == {0: "queued", 1: "sent"}
    assert counts(cid) == {"queued": 1, "sent": 1}
    assert sync_redis.exists(keys.orphan("d-9")) == 0
    accepted, sent = read_events()
    assert accepted["type"] == "accepted"
    assert sent["type"] == "sent"
    assert sent["campaign_id"] == cid
    assert sent["message_id"] == f"{cid}-1"
    assert sent["didww_id"] == "d-9"
    assert sent["status"] == "Success"
    stats = {k.decode(): int(v) for k, v in sync_redis.hgetall(keys.stats()).items()}
    assert stats["orphans_kept"] == 1
    assert stats["orphans_joined"] == 1


def test_orphan_is_kept_with_a_ttl_and_publishes_nothing(
    make_ledger, read_events, sync_redis, settings
) -> None:
    async def go() -> str:
        return await make_ledger().apply_callback(callback("d-x", "Failed", 1))

    assert run(go()) == "orphan"
    assert read_events() == []
    kept = json.loads(sync_redis.get(keys.orphan("d-x")))
    assert kept["state"] == "failed"
    assert kept["event"]["code_id"] == 1
    assert 0 < sync_redis.ttl(keys.orphan("d-x")) <= settings.orphan_ttl_s


def test_callback_retries_when_the_index_appears_meanwhile(
    make_ledger, make_campaign, states, monkeypatch
) -> None:
    """The worker stores the DIDWW id between the ingester's GET and its script."""
    cid = make_campaign(1)

    async def go() -> str:
        ledger = make_ledger()
        await _accepted(ledger, cid, 0, "d-1")
        real_get = ledger.redis.get
        calls = 0

        async def stale_get(name: str) -> Any:
            nonlocal calls
            calls += 1
            return None if calls == 1 else await real_get(name)

        monkeypatch.setattr(ledger.redis, "get", stale_get)
        return await ledger.apply_callback(callback("d-1"))

    assert run(go()) == "applied"
    assert states(cid) == {0: "sent"}


def test_reject_publishes_detail(make_ledger, make_campaign, states, read_events) -> None:
    cid = make_campaign(1)

    async def go() -> tuple[bool, bool]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        await ledger.claim(c, recs[0], OWNER)
        return await ledger.reject(c, recs[0], "Invalid request"), await ledger.reject(
            c, recs[0], "again"
        )

    assert run(go()) == (True, False)
    assert states(cid) == {0: "rejected"}
    [event] = read_events()
    assert event["type"] == "rejected"
    assert event["detail"] == "Invalid request"
    assert event["message_id"] == f"{cid}-0"


def test_mark_unknown_publishes_detail(
    make_ledger, make_campaign, states, read_events, sync_redis
) -> None:
    cid = make_campaign(1)

    async def go() -> list[str]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        await ledger.claim(c, recs[0], OWNER)
        return await ledger.mark_unknown(c, recs[0], "ReadTimeout: no answer")

    before = time.time()
    assert run(go()) == ["unknown"]
    assert states(cid) == {0: "unknown"}
    [event] = read_events()
    assert event["type"] == "unknown"
    assert event["detail"] == "ReadTimeout: no answer"
    extra = sync_redis.hget(keys.batch(cid, 0), "0").decode().split("|")[2]
    assert before - 1 <= float(extra) <= time.time() + 1


def test_release_puts_sending_back_without_an_event(
    make_ledger, make_campaign, states, counts, read_events
) -> None:
    cid = make_campaign(2)

    async def go() -> tuple[bool, bool, list[str]]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        await ledger.claim(c, recs[0], OWNER)
        released = await ledger.release(c, recs[0])
        again = await ledger.release(c, recs[0])
        return released, again, await ledger.claim(c, recs[0], OWNER)

    released, again, reclaimed = run(go())
    assert released is True
    assert again is False
    # Released means it can be claimed and posted again.
    assert reclaimed == ["claimed"]
    assert counts(cid) == {"queued": 1, "sending": 1}
    assert read_events() == []


def test_halt_raises_one_alert_and_clear_halt_restores(
    make_ledger, read_events, sync_redis
) -> None:
    async def go() -> tuple[Any, ...]:
        ledger = make_ledger()
        first = await ledger.halt("Authorization failed")
        second = await ledger.halt("Authorization failed")
        why, _ = await ledger.trunk_flags()
        cleared = await ledger.clear_halt("probe succeeded")
        cleared_again = await ledger.clear_halt("probe succeeded")
        return first, second, why, cleared, cleared_again, (await ledger.trunk_flags())[0]

    first, second, why, cleared, cleared_again, after = run(go())
    assert (first, second) == (True, False)
    assert json.loads(why)["detail"] == "Authorization failed"
    assert (cleared, cleared_again, after) == (True, False, None)
    alerts = read_events()
    assert [e["type"] for e in alerts] == ["auth_failed", "auth_restored"]
    assert alerts[0]["detail"] == "Authorization failed"
    assert alerts[1]["detail"] == "probe succeeded"


def test_halt_takes_the_probe_lock(make_ledger, sync_redis) -> None:
    async def go() -> tuple[bool, bool]:
        ledger = make_ledger()
        await ledger.halt("Authorization failed")
        return await ledger.take_probe_turn("a"), await ledger.take_probe_turn("b")

    assert run(go()) == (False, False)
    sync_redis.delete(keys.probe_lock())

    async def again() -> tuple[bool, bool]:
        ledger = make_ledger()
        return await ledger.take_probe_turn("a"), await ledger.take_probe_turn("b")

    assert run(again()) == (True, False)


def test_status_done_only_when_nothing_is_pending(make_ledger, make_campaign) -> None:
    cid = make_campaign(3)

    async def go() -> list[tuple[bool, dict[str, int]]]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        seen = []

        async def snap() -> None:
            status = await ledger.status(cid)
            assert status is not None
            assert status.as_dict()["done"] is status.done
            seen.append((status.done, {k: v for k, v in status.counts.items() if v}))

        await snap()  # all queued
        for i, r in enumerate(recs):
            await ledger.claim(c, r, OWNER)
            await ledger.accept(c, r, f"d-{i}")
        await snap()  # all accepted: still waiting for callbacks
        await ledger.apply_callback(callback("d-0"))
        await ledger.apply_callback(callback("d-1", "Failed", 1))
        await snap()  # one still accepted
        await ledger.apply_callback(callback("d-2", "Routing Error", 3))
        await snap()
        return seen

    seen = run(go())
    assert [done for done, _ in seen] == [False, False, False, True]
    assert seen[-1][1] == {"sent": 1, "failed": 2}


def test_status_done_with_rejected_and_unknown(make_ledger, make_campaign) -> None:
    cid = make_campaign(2)

    async def go() -> bool:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        await ledger.claim(c, recs[0], OWNER)
        await ledger.claim(c, recs[1], OWNER)
        await ledger.reject(c, recs[0], "bad")
        await ledger.mark_unknown(c, recs[1], "timeout")
        status = await ledger.status(cid)
        assert status is not None
        return status.done

    assert run(go()) is True


def test_status_of_missing_campaign_and_rate(
    make_ledger, make_campaign, sync_redis, monkeypatch
) -> None:
    cid = make_campaign(1)
    idle = make_campaign(1)
    now = int(time.time())
    # Pin the clock so a second boundary cannot shift the window under the test.
    monkeypatch.setattr("ledger.store.time.time", lambda: now + 0.5)
    sync_redis.set(keys.posted(cid, now - 2), 10)
    sync_redis.set(keys.posted(cid, now - 1), 20)

    async def go() -> tuple[Any, float, float]:
        ledger = make_ledger()
        status = await ledger.status(cid)
        quiet = await ledger.status(idle)
        assert status is not None and quiet is not None
        return await ledger.status("nope"), status.rate_per_s, quiet.rate_per_s

    missing, rate, idle_rate = run(go())
    assert missing is None
    # Averaged from the first busy second of the window: 30 posts over 2 seconds.
    assert rate == 15.0
    assert idle_rate == 0.0


def test_set_state_and_cancel_queued(
    make_ledger, make_campaign, states, counts, read_events
) -> None:
    cid = make_campaign(3)

    async def go() -> tuple[Any, ...]:
        ledger = make_ledger()
        c, recs = await open_campaign(ledger, cid)
        await ledger.claim(c, recs[0], OWNER)
        paused = await ledger.set_state(cid, CampaignState.PAUSED)
        cancelled = await ledger.set_state(cid, CampaignState.CANCELLED)
        resumed = await ledger.set_state(cid, CampaignState.ACTIVE)
        missing = await ledger.set_state("nope", CampaignState.PAUSED)
        c = await ledger.campaign(cid)
        assert c is not None
        moved = await ledger.cancel_queued(c)
        return paused, cancelled, resumed, missing, c.state, moved

    assert run(go()) == (True, True, False, False, "cancelled", 2)
    assert states(cid) == {0: "sending", 1: "cancelled", 2: "cancelled"}
    assert counts(cid) == {"sending": 1, "cancelled": 2}
    assert [e["type"] for e in read_events()] == ["cancelled", "cancelled"]


def test_batches_with_queued(make_ledger, make_campaign) -> None:
    busy = make_campaign(5, batch_size=2)

    async def go() -> list[int]:
        ledger = make_ledger()
        c = await ledger.campaign(busy)
        assert c is not None and c.batches == 3
        for r in await ledger.records(busy, 1):
            await ledger.claim(c, r, OWNER)
        return await ledger.batches_with_queued(c)

    assert run(go()) == [0, 2]


# The counts invariant, over random sequences of every operation.

OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["claim", "accept", "reject", "unknown", "release", "sent", "failed", "cancel"]
        ),
        st.integers(0, 3),
    ),
    max_size=25,
)


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_counts_always_sum_to_total_and_states_only_move_forward(
    ops: list[tuple[str, int]],
) -> None:
    server = fakeredis.FakeServer()
    cfg = make_settings()
    total = 4
    sync = fakeredis.FakeRedis(server=server)
    cid = write_campaign(sync, total)

    async def go() -> None:
        client = fakeredis.aioredis.FakeRedis(server=server)
        ledger = Ledger(client, cfg)
        c, recs = await open_campaign(ledger, cid)
        last = {r.index: State.QUEUED for r in recs}
        actions: dict[str, Callable[[Record], Awaitable[Any]]] = {
            "claim": lambda r: ledger.claim(c, r, OWNER),
            "accept": lambda r: ledger.accept(c, r, f"d-{r.index}"),
            "reject": lambda r: ledger.reject(c, r, "bad"),
            "unknown": lambda r: ledger.mark_unknown(c, r, "timeout"),
            "release": lambda r: ledger.release(c, r),
            "sent": lambda r: ledger.apply_callback(callback(f"d-{r.index}")),
            "failed": lambda r: ledger.apply_callback(callback(f"d-{r.index}", "Failed", 1)),
            "cancel": lambda r: ledger.move(c, r, (State.QUEUED,), State.CANCELLED),
        }
        for name, index in ops:
            await actions[name](recs[index])
            now = {r.index: r.state for r in await ledger.records(cid, 0)}
            counted = await ledger.counts(cid)
            assert sum(counted.values()) == total
            assert all(v >= 0 for v in counted.values())
            assert counted == {str(s): sum(1 for x in now.values() if x is s) for s in State}
            for i, state in now.items():
                if state is not last[i]:
                    assert last[i] not in TERMINAL
                    # accept joining an orphan takes two allowed steps at once.
                    assert can_move(last[i], state) or any(
                        can_move(last[i], mid) and can_move(mid, state) for mid in State
                    )
            last = now
        await client.aclose()

    try:
        asyncio.run(go())
    finally:
        sync.close()

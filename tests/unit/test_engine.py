"""The sending engine in process, step by step, against a real Redis and the DIDWW simulator
(ops/simulator.py) on the same event loop: take, claim, post, record and drain. No claim loop,
recorder loop or heartbeat runs: each test calls the step it checks and awaits what it starts
(Engine.settle), so nothing sleeps for time to pass."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from script_helpers import counts, read_events, read_records, run, states
from smsq_testing import PASSWORD, make_settings

from ledger import keys
from ledger.states import CampaignState
from ledger.store import Ledger
from ops.simulator import Simulator, SimulatorConfig
from worker import engine as engine_module
from worker.batches import HeldBatch, Lane
from worker.engine import Engine

T = TypeVar("T")
OWNER = 7
# The fastest trunk the settings allow: a slot every 0.1 ms, so a few claim calls take a
# batch (a trunk that starts takes only a few past slots at once: docs/architecture.md §5).
FAST = 10_000


@pytest.fixture(autouse=True)
def claims_are_never_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loaded machine a claim call can take longer than the trunk's window allows, and is
    then given back unwritten (test_a_claim_answered_too_late_is_given_back_unwritten); the
    other tests here assert what a claim writes, so none of their claims is late."""
    monkeypatch.setattr(Lane, "stale_claim_s", property(lambda self: 3600.0))


def drive(
    real_ledger: Callable[[], Ledger],
    body: Callable[[Engine, Simulator], Awaitable[T]],
    *,
    settings: dict[str, Any] | None = None,
    **simulator: Any,
) -> T:
    """Run body(engine, simulator) with an engine posting to a simulator on this loop."""

    async def go(ledger: Ledger) -> T:
        config = SimulatorConfig(**{"username": "u", "password": PASSWORD, **simulator})
        async with Simulator(config) as sim:
            custom = make_settings(**{"didww_url": sim.url, "rate_limit": FAST, **(settings or {})})
            engine = Engine(custom, Ledger(ledger.redis, custom), OWNER, "test")
            try:
                return await body(engine, sim)
            finally:
                for lane in engine.lanes.values():
                    await lane.client.aclose()

    return run(real_ledger, go)


def lane_of(engine: Engine) -> Lane:
    return engine.lanes["default"]


async def claim_once(engine: Engine) -> list[int]:
    """One claim call offering everything held now, as the claim loop makes it."""
    lane = lane_of(engine)
    offer, _ = engine.claimer.offer(lane, asyncio.get_running_loop().time(), time.time())
    reply = await engine.claimer.claim(
        lane, offer, due=0, want=0, max_messages=engine.inflight.free
    )
    return [c.index for c in reply.claimed]


async def claim_all(engine: Engine, expected: int) -> list[int]:
    """Claim calls until `expected` messages are claimed (each takes the slots due by then),
    or until a call takes none of what is offered."""
    claimed: list[int] = []
    for _ in range(10_000):
        lane = lane_of(engine)
        if len(claimed) >= expected or not any(h.ready for h in lane.batches if h.open):
            break
        claimed += await claim_once(engine)
    return sorted(claimed)


# --- take -------------------------------------------------------------------------------------


def test_take_holds_the_batchs_queued_messages_and_its_entry_beats(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(5)

    async def body(engine: Engine, _: Simulator) -> tuple[list[str], list[int]]:
        outcomes = [await engine.take(cid, 0), await engine.take(cid, 0)]
        outcomes.append(await engine.take("00000000000000ff", 0))
        held = lane_of(engine).find(cid, 0)
        assert held is not None
        return outcomes, list(held.ready)

    outcomes, ready = drive(real_ledger, body)
    assert outcomes == ["held", "already_held", "missing"]
    assert ready == [0, 1, 2, 3, 4]
    assert real_redis.hkeys(keys.inflight()) == [keys.inflight_field(cid, 0, OWNER).encode()]


def test_a_batch_with_nothing_queued_is_let_go_at_once(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3)

    async def body(engine: Engine, _: Simulator) -> tuple[str, list[HeldBatch]]:
        await engine.ledger.cancel_queued(await engine.ledger.campaign(cid))
        outcome = await engine.take(cid, 0)
        await engine.recorder.flush()
        return outcome, lane_of(engine).batches

    assert drive(real_ledger, body) == ("held", [])
    assert real_redis.hlen(keys.inflight()) == 0


def test_take_parks_a_batch_when_this_process_holds_enough_of_its_trunk(
    real_ledger, real_campaign, real_redis, monkeypatch
) -> None:
    monkeypatch.setattr(engine_module, "TAKE_WAIT_S", 0.0)
    first, second = real_campaign(5), real_campaign(5)

    async def body(engine: Engine, _: Simulator) -> list[str]:
        # Nothing claimed yet: five held messages are more than the pace calls for.
        outcomes = [await engine.take(first, 0), await engine.take(second, 0)]
        await engine.recorder.flush()
        return outcomes

    before = time.time()
    assert drive(real_ledger, body) == ["held", "busy"]
    score = real_redis.zscore(keys.parked(), keys.batch_member(second, 0))
    assert score is not None and before + engine_module.PARK_BUSY_S <= score
    assert score <= time.time() + engine_module.PARK_BUSY_S
    # The busy batch's entry is forgotten; the held one's beats on.
    assert real_redis.hkeys(keys.inflight()) == [keys.inflight_field(first, 0, OWNER).encode()]


def test_take_parks_a_batch_of_a_trunk_this_process_does_not_know(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(2, trunk="nowhere")
    assert drive(real_ledger, lambda engine, _: engine.take(cid, 0)) == "no_trunk"
    assert real_redis.zscore(keys.parked(), keys.batch_member(cid, 0)) > time.time() + 50


def test_an_urgent_or_priority_batch_is_offered_before_the_batches_held(
    real_ledger, real_campaign, monkeypatch
) -> None:
    # Room for every batch: no claim loop runs here to make the pace that room is judged by.
    monkeypatch.setattr(Lane, "has_room", lambda self: True)
    first, second = real_campaign(5), real_campaign(5)
    urgent = real_campaign(1)
    priority = real_campaign(2, priority=True)
    last = real_campaign(5)
    takes = [(first, False), (second, False), (urgent, True), (priority, False), (last, False)]

    async def body(engine: Engine, _: Simulator) -> tuple[list[str], list[str]]:
        outcomes = [await engine.take(cid, 0, urgent=is_urgent) for cid, is_urgent in takes]
        return outcomes, [held.campaign.id for held in lane_of(engine).batches]

    outcomes, order = drive(real_ledger, body)
    assert outcomes == ["held"] * 5
    # Offered in this order (Claimer.offer): the latest urgent one first, ordinary ones last.
    assert order == [priority, urgent, first, second, last]


# --- claim ------------------------------------------------------------------------------------


def test_a_claim_writes_each_claimed_request_at_once_and_counts_it_in_flight(
    real_ledger, real_campaign, real_redis
) -> None:
    numbers = [f"3706{i:07d}" for i in range(5)]
    cid = real_campaign(numbers)
    seen: dict[str, Any] = {}

    async def body(engine: Engine, sim: Simulator) -> None:
        await engine.take(cid, 0)
        lane = lane_of(engine)
        held = lane.find(cid, 0)
        assert held is not None
        seen["claimed"] = await claim_all(engine, 5)
        seen["in_flight"] = (engine.inflight.count, lane.in_flight, held.in_flight)
        seen["states"] = states(real_redis, cid)
        await engine.settle()
        seen["after"] = (engine.inflight.count, lane.in_flight, held.in_flight, lane.batches)
        seen["posted"] = sorted(m.destination for m in sim.messages)

    drive(real_ledger, body)
    assert seen["claimed"] == [0, 1, 2, 3, 4]
    assert seen["in_flight"] == (5, 5, 5)
    assert set(seen["states"].values()) == {"sending"}
    assert seen["posted"] == numbers
    assert seen["after"] == (0, 0, 0, [])
    assert counts(real_redis, cid) == {"accepted": 5}
    assert [e["type"] for e in read_events(real_redis)] == ["accepted"] * 5
    # The batch is done here: its entry is forgotten.
    assert real_redis.hlen(keys.inflight()) == 0


def test_a_claim_that_finds_the_campaign_paused_lets_the_batch_go_unparked(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3, state=CampaignState.PAUSED)

    async def body(engine: Engine, sim: Simulator) -> tuple[list[int], list[HeldBatch], int]:
        await engine.take(cid, 0)
        claimed = await claim_once(engine)
        await engine.settle()
        return claimed, lane_of(engine).batches, len(sim.requests)

    assert drive(real_ledger, body) == ([], [], 0)
    assert counts(real_redis, cid) == {"queued": 3}
    # `resume` publishes it again; nothing parks it meanwhile.
    assert real_redis.zcard(keys.parked()) == 0


def test_a_claim_answered_too_late_is_given_back_unwritten(
    real_ledger, real_campaign, real_redis, monkeypatch
) -> None:
    monkeypatch.setattr(Lane, "stale_claim_s", property(lambda self: -1.0))
    cid = real_campaign(3)

    async def body(engine: Engine, sim: Simulator) -> tuple[list[int], list[int], int]:
        await engine.take(cid, 0)
        claimed = await claim_once(engine)
        await engine.settle()
        held = lane_of(engine).find(cid, 0)
        assert held is not None
        return claimed, sorted(index for _, index in held.retries), len(sim.requests)

    claimed, retries, posted = drive(real_ledger, body)
    assert (claimed, posted) == ([], 0)
    # Queued again, the attempt taken back, and offered again once that is recorded.
    assert retries and retries == sorted(set(retries))
    assert counts(real_redis, cid) == {"queued": 3}
    assert {r.attempts for r in read_records(real_redis, cid)} == {0}


def test_a_claim_too_few_replicas_acknowledged_is_given_back_unwritten(
    real_ledger, real_campaign, real_redis
) -> None:
    """The claim is applied on the primary but WAIT comes back short (a replica stalled:
    tests/unit/test_replicas.py), so nothing is written and the messages go back."""
    from ledger.errors import NotReplicated

    cid = real_campaign(3)

    async def body(engine: Engine, sim: Simulator) -> tuple[int, list[int], int]:
        await engine.take(cid, 0)
        real_claim = engine.ledger.claim

        async def claim(*args: Any, **kwargs: Any) -> Any:
            engine.ledger.claim = real_claim  # type: ignore[method-assign]
            raise NotReplicated(0, 1, await real_claim(*args, **kwargs))

        engine.ledger.claim = claim  # type: ignore[method-assign]
        with pytest.raises(NotReplicated):
            await claim_once(engine)
        await engine.settle()
        posted_then = len(sim.requests)
        held = lane_of(engine).find(cid, 0)
        assert held is not None
        retries = sorted(index for _, index in held.retries)
        # Offered again once the give-back is recorded: now sent, each once.
        for _ in range(3):
            held.ready.extend(index for _, index in held.retries)
            held.retries.clear()
            await claim_all(engine, 3)
            await engine.settle()
        return posted_then, retries, len(sim.requests)

    posted_then, retries, posted = drive(real_ledger, body)
    assert posted_then == 0
    assert retries == [0, 1, 2]
    assert posted == 3
    assert counts(real_redis, cid) == {"accepted": 3}
    assert {r.attempts for r in read_records(real_redis, cid)} == {1}


@pytest.mark.parametrize("park_fails", [False, True], ids=["parked", "park failed"])
def test_a_batch_let_go_is_forgotten_only_after_its_park(
    real_ledger, real_campaign, real_redis, park_fails: bool
) -> None:
    """Forgotten before its park was done, a crash or a failover between the two would leave
    the batch neither held nor parked; a park that failed leaves the entry, which no longer
    beats, so recover.lua parks the batch."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    cid = real_campaign(3)

    async def body(engine: Engine, _: Simulator) -> tuple[bool, bool]:
        await engine.take(cid, 0)
        real_park = engine.ledger.park
        gate = asyncio.Event()

        async def park(*args: Any) -> None:
            await gate.wait()
            if park_fails:
                raise RedisConnectionError("Redis went away")
            await real_park(*args)

        engine.ledger.park = park  # type: ignore[method-assign]
        lane = lane_of(engine)
        held = lane.find(cid, 0)
        assert held is not None
        engine.let_go(lane, held, park_at=time.time())
        await engine.recorder.flush()  # the park is not done: the entry stays
        kept_while_parking = bool(real_redis.hexists(keys.inflight(), held.field))
        gate.set()
        with contextlib.suppress(RedisConnectionError):
            await engine.settle()
        await engine.recorder.flush()
        return kept_while_parking, bool(real_redis.hexists(keys.inflight(), held.field))

    kept_while_parking, kept_after = drive(real_ledger, body)
    assert kept_while_parking is True
    assert kept_after is park_fails
    parked = real_redis.zrange(keys.parked(), 0, -1)
    assert parked == ([] if park_fails else [keys.batch_member(cid, 0).encode()])


# --- post -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("simulator", "text", "state", "event"),
    [
        ({"fail_5xx": 1.0}, "hi", "queued", None),
        ({"drop_after": 1.0}, "hi", "unknown", "unknown"),
        ({}, "", "rejected", "rejected"),
    ],
    ids=["503 retry", "answer lost: unknown", "400 rejected"],
)
def test_post_records_each_answer_by_its_outcome(
    real_ledger, real_campaign, real_redis, simulator, text, state, event
) -> None:
    cid = real_campaign(1, text=text)

    async def body(engine: Engine, _: Simulator) -> list[tuple[float, int]]:
        await engine.take(cid, 0)
        assert await claim_all(engine, 1) == [0]
        await engine.settle()
        held = lane_of(engine).find(cid, 0)
        return list(held.retries) if held else []

    retries = drive(real_ledger, body, **simulator)
    assert states(real_redis, cid) == {0: state}
    assert [e["type"] for e in read_events(real_redis)] == ([event] if event else [])
    if state == "queued":
        # Back in its batch's turn, after the backoff (tenacity's, at most the settings' 0.05 s).
        assert [index for _, index in retries] == [0]
        assert read_records(real_redis, cid)[0].attempts == 1


def test_a_401_halts_the_trunk_and_parks_what_it_held(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(3)

    async def body(engine: Engine, _: Simulator) -> list[HeldBatch]:
        await engine.take(cid, 0)
        await claim_once(engine)
        await engine.settle()
        return lane_of(engine).batches

    assert drive(real_ledger, body, password="revoked") == []
    assert real_redis.exists(keys.halt("default")) == 1
    assert counts(real_redis, cid) == {"queued": 3}
    assert real_redis.zscore(keys.parked(), keys.batch_member(cid, 0)) <= time.time()
    assert [e["type"] for e in read_events(real_redis)] == ["auth_failed"]


def test_a_retry_that_would_come_after_the_campaign_expires_waits_only_for_the_expiry(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(1, ttl_s=2.0)

    async def body(engine: Engine, _: Simulator) -> float:
        await engine.take(cid, 0)
        assert await claim_all(engine, 1) == [0]
        await engine.settle()
        held = lane_of(engine).find(cid, 0)
        assert held is not None and held.retries
        return held.retries[0][0] - asyncio.get_running_loop().time()

    # The simulator asks for 30 s; the campaign expires in about 2.
    wait_s = drive(real_ledger, body, fail_429=1.0, retry_after_s=30)
    assert 0 < wait_s <= 2.0 + 1.0 + 0.1
    assert states(real_redis, cid) == {0: "queued"}


# --- record -----------------------------------------------------------------------------------


def test_answers_are_recorded_many_per_round_trip_and_kept_through_a_redis_error(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(10)
    calls: list[int] = []

    async def body(engine: Engine, _: Simulator) -> tuple[bool, bool]:
        real_record = engine.ledger.record

        async def record(results, forget=()):
            calls.append(len(results))
            if len(calls) == 1:
                from redis.exceptions import ConnectionError as RedisConnectionError

                raise RedisConnectionError("Redis went away")
            return await real_record(results, forget)

        engine.ledger.record = record  # type: ignore[method-assign]
        await engine.take(cid, 0)
        assert len(await claim_all(engine, 10)) == 10
        while engine._posts:
            await asyncio.gather(*list(engine._posts))
        from redis.exceptions import RedisError

        with pytest.raises(RedisError):
            await engine.recorder.flush()
        kept = engine.recorder.pending
        await engine.recorder.flush()
        return kept, engine.recorder.pending

    kept, pending_after = drive(real_ledger, body)
    assert kept is True and pending_after is False
    # Ten answers (and the finished batch's entry) in one call, tried again whole.
    assert calls == [10, 10]
    assert counts(real_redis, cid) == {"accepted": 10}


# --- drain ------------------------------------------------------------------------------------


def test_drain_waits_for_the_answers_in_flight_and_parks_what_is_still_queued(
    real_ledger, real_campaign, real_redis
) -> None:
    cid = real_campaign(40)

    async def body(engine: Engine, sim: Simulator) -> tuple[int, int, list[HeldBatch]]:
        await engine.take(cid, 0)
        claimed = await claim_once(engine)
        await engine.drain(timeout_s=10)
        return len(claimed), len(sim.messages), lane_of(engine).batches

    # The simulator takes 50 ms to answer: the drain waits for all of it.
    claimed, posted, left = drive(real_ledger, body, latency_ms=50)
    assert 0 < claimed < 40 and posted == claimed and left == []
    assert counts(real_redis, cid) == {"accepted": claimed, "queued": 40 - claimed}
    assert real_redis.zscore(keys.parked(), keys.batch_member(cid, 0)) is not None
    assert real_redis.hlen(keys.inflight()) == 0

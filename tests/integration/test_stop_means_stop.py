"""Claim at the wire: a message leaves `queued` only as its request is written, so
a 401, a pause or a cancel stops requests at once, and a worker killed mid-campaign leaves
`unknown` only the requests it had written. The simulator answers slowly, so many requests
are in flight whenever these happen; time is read from the simulator's arrival stamps."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

from tests.integration.conftest import TestStack, write_numbers
from tests.integration.test_faults import wait_callbacks_settled

RATE_PER_S = 100
LATENCY_S = 0.4
# A request claimed just before the stop still reaches the simulator a moment later (the
# write, the loopback hop, a busy CPU): no request may arrive later than this after it.
SLACK_S = 0.25


def arrivals(stack: TestStack) -> list[tuple[float, int]]:
    """(arrival time, status) of every API request, oldest first."""
    return sorted((float(t), int(o)) for t, o in stack.sim("requests"))


def arrived_for(stack: TestStack, numbers: set[str]) -> list[float]:
    return sorted(m["arrived_at"] for m in stack.sim("messages") if m["destination"] in numbers)


def slow_stack(make_stack, **env: str) -> TestStack:
    stack = make_stack(rate_per_s=RATE_PER_S, **env)
    stack.start_callbacks()
    stack.start_simulator("--latency-ms", str(int(LATENCY_S * 1000)), "--callback-delay-ms", "50")
    stack.start_worker("one", concurrency=2)
    stack.start_worker("two", concurrency=2)
    return stack


@pytest.mark.serial
@pytest.mark.timeout(180)
def test_a_401_stops_every_worker_with_only_the_requests_already_written(
    make_stack, tmp_path: Path
):
    # No probe during the test: every request after the revocation is a message's.
    stack = slow_stack(make_stack, SMSQ_PROBE_INTERVAL_S="3600")
    numbers = write_numbers(tmp_path / "n.csv", 1500)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "hi")["campaign_id"]
    stack.wait_until(cid, lambda s: s["counts"]["sent"] >= 100)

    stack.sim("config", {"password": "revoked"})
    # Every worker had its chance to write after the 401: each batch with queued messages
    # was taken and set aside (parked), none is held any more, and nothing is in flight.
    stack.wait_for(lambda: stack.set_aside(cid), "the workers to set the campaign aside")
    seen = arrivals(stack)
    refused = [t for t, status in seen if status == 401]
    assert refused, "no request was refused"
    # The first 401 is answered LATENCY_S after it arrived; the worker that reads it stops
    # at once and halts the trunk in Redis, which every other worker checks at each claim.
    stopped_at = refused[0] + LATENCY_S
    later = [t for t, _ in seen if t > stopped_at + SLACK_S]
    assert not later, f"{len(later)} requests written after the first 401 was answered"
    # Those refused were written before any worker knew: at most the rate times the latency.
    assert len(refused) <= RATE_PER_S * (LATENCY_S + SLACK_S)
    status = stack.status(cid)
    assert status["trunk_status"]["halted"] and status["counts"]["queued"] > 0
    assert status["counts"]["rejected"] == status["counts"]["failed"] == 0

    stack.sim("config", {"password": stack.settings_env["SMSQ_DIDWW_PASSWORD"]})
    assert stack.smsq("resume", cid).returncode == 0
    assert stack.wait_done(cid, timeout_s=90)["counts"]["sent"] == 1500
    accepted = collections.Counter(m["destination"] for m in stack.sim("messages"))
    assert set(accepted) == set(numbers) and set(accepted.values()) == {1}


@pytest.mark.serial
@pytest.mark.parametrize("command", ["pause", "cancel"])
@pytest.mark.timeout(180)
def test_pause_and_cancel_stop_requests_at_once(make_stack, tmp_path: Path, command: str):
    stack = slow_stack(make_stack)
    numbers = set(write_numbers(tmp_path / "n.csv", 1500))
    write_numbers(tmp_path / "other.csv", 200, start=50_000)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "hi")["campaign_id"]
    stack.wait_until(cid, lambda s: s["counts"]["sent"] >= 100)

    result = stack.smsq(command, cid)
    assert result.returncode == 0, result.stderr
    # The command has returned: its change is in Redis, and every claim checks it.
    stopped_at = time.time()
    other = stack.send("--recipients", str(tmp_path / "other.csv"), "--text", "yo")
    # Other campaigns go on meanwhile: the same four processes, which had the campaign's
    # batches in hand (its batches still on the queue come before this one's), send all of
    # one enqueued after the stop.
    assert stack.wait_done(other["campaign_id"], timeout_s=60)["counts"]["sent"] == 200
    later = [t for t in arrived_for(stack, numbers) if t > stopped_at + SLACK_S]
    assert not later, f"{len(later)} requests of the campaign written after the {command}"

    if command == "pause":
        assert stack.status(cid)["state"] == "paused"
        assert stack.smsq("resume", cid).returncode == 0
        assert stack.wait_done(cid, timeout_s=90)["counts"]["sent"] == 1500
    else:
        counts = stack.wait_done(cid, timeout_s=30)["counts"]
        assert counts["cancelled"] > 0 and counts["queued"] == counts["sending"] == 0
        assert counts["sent"] + counts["cancelled"] == 1500
    accepted = collections.Counter(
        m["destination"] for m in stack.sim("messages") if m["destination"] in numbers
    )
    assert set(accepted.values()) == {1}


@pytest.mark.serial
@pytest.mark.timeout(240)
def test_a_killed_worker_leaves_unknown_only_the_requests_it_had_written(
    make_stack, tmp_path: Path
):
    stack = make_stack(rate_per_s=RATE_PER_S)
    stack.start_callbacks()
    stack.start_simulator("--latency-ms", "1000", "--callback-delay-ms", "100")
    doomed = stack.start_worker("doomed", concurrency=2)
    stack.start_worker("staying", concurrency=2)
    numbers = write_numbers(tmp_path / "n.csv", 1500)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "kill")["campaign_id"]
    stack.wait_until(cid, lambda s: s["counts"]["sent"] >= 200)

    doomed.kill_group()  # SIGKILL to the worker and its pool processes, mid-request
    killed_at = time.time()
    stack.workers.remove(doomed)
    stack.wait_done(cid, timeout_s=150)
    wait_callbacks_settled(stack)

    received = {m["destination"]: m["arrived_at"] for m in stack.sim("messages")}
    per_destination = collections.Counter(m["destination"] for m in stack.sim("messages"))
    assert set(per_destination) == set(numbers), "a message never reached the API"
    assert set(per_destination.values()) == {1}, "a message reached the API twice"
    unknown = {e["destination"] for e in stack.events() if e["type"] == "unknown"}
    assert unknown, "the killed worker had nothing in flight"
    # Every message made unknown had been written before the kill: the claims it had not
    # written yet (there are none: claimed means written) were never swept.
    assert all(received[d] <= killed_at + SLACK_S for d in unknown)
    # ~1 s of requests were in flight across four processes; the killed two had about half.
    assert len(unknown) <= RATE_PER_S * (1.0 + SLACK_S)
    # Their callbacks settled them, matched by number and time: none is left unknown.
    states = collections.Counter(stack.states(cid).values())
    assert states == {"sent": 1500}

"""Faults injected for real: a flaky API, an outage, a worker killed or stopped,
Redis restarted. Each run checks the two promises: nothing lost, nothing sent twice."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import TestStack, write_numbers

# Pending states a finished campaign may not hold; unknown is allowed only for a message
# the simulator never received (its request was dropped before DIDWW read it).
PENDING = ("queued", "sending", "accepted")
# The outage lasts this long; the issue asks for two minutes (override to iterate faster).
OUTAGE_S = float(os.environ.get("SMSQ_TEST_OUTAGE_S", "120"))


def ledger_states(stack: TestStack, cid: str) -> dict[str, str]:
    """destination -> state, read straight from the ledger's batches."""
    return stack.states(cid)


def check_once_and_settled(stack: TestStack, cid: str, numbers: list[str]) -> dict[str, Any]:
    """No number reached the API twice; each message the API took is settled by its callback;
    any unknown message is one the API never took. Returns the tallies."""
    wanted = set(numbers)
    received = [m for m in stack.sim("messages") if m["destination"] in wanted]
    per_destination = collections.Counter(m["destination"] for m in received)
    twice = [d for d, n in per_destination.items() if n > 1]
    assert not twice, f"sent twice: {twice[:5]}"
    states = ledger_states(stack, cid)
    assert set(states) == set(numbers), "a message went missing from the ledger"
    tally = collections.Counter(states.values())
    assert not any(tally[s] for s in PENDING), f"not finished: {dict(tally)}"
    for m in received:
        assert states[m["destination"]] in ("sent", "failed"), (m, states[m["destination"]])
    unknown = [d for d, s in states.items() if s == "unknown"]
    assert not set(unknown) & set(per_destination), "an unknown message had reached the API"
    return {"states": dict(tally), "received": len(received), "unknown": len(unknown)}


@pytest.mark.timeout(240)
def test_a_flaky_api_loses_nothing_and_sends_nothing_twice(make_stack, tmp_path: Path):
    stack = make_stack(rate_per_s=300, SMSQ_RETRY_MAX_WAIT_S="1", SMSQ_CONCURRENCY="30")
    stack.start_callbacks()
    stack.start_simulator(
        "--latency-ms", "35", "--latency-jitter-ms", "15",
        "--fail-5xx", "0.05", "--fail-429", "0.03", "--retry-after-s", "1",
        "--drop-before", "0.02", "--drop-after", "0.01",
        "--callback-delay-ms", "300", "--seed", "11",
    )  # fmt: skip
    stack.start_worker("one", concurrency=2)
    stack.start_worker("two", concurrency=2)
    numbers = write_numbers(tmp_path / "n.csv", 3000)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "flaky")["campaign_id"]
    stack.wait_done(cid, timeout_s=150)
    wait_callbacks_settled(stack)
    tally = wait_settled(stack, cid, numbers)
    outcomes = stack.sim("stats")["by_outcome"]
    # The faults really happened, and every drop after acceptance was settled by matching.
    assert outcomes["503"] > 50 and outcomes["429"] > 30
    assert outcomes["drop_before"] > 20 and outcomes["drop_after"] > 10
    dropped_after = [m for m in stack.sim("messages") if m["dropped_after"]]
    stats = stack.status(cid)["trunk_status"]["stats"]
    assert stats.get("callbacks_matched", 0) == len(dropped_after)
    # Unknown is exactly the drops DIDWW never read: no callback can ever settle them.
    assert tally["unknown"] == outcomes["drop_before"]
    assert tally["states"]["sent"] == tally["received"] == len(numbers) - tally["unknown"]


def wait_settled(
    stack: TestStack, cid: str, numbers: list[str], timeout_s: float = 60
) -> dict[str, Any]:
    """check_once_and_settled, once the supervisors have matched the kept callbacks of
    unknown messages (they wait out the read timeout first, SMSQ_READ_TIMEOUT_S=5 here)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check_once_and_settled(stack, cid, numbers)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def wait_callbacks_settled(stack: TestStack, timeout_s: float = 30) -> None:
    """`done` comes before the last callbacks: wait until the simulator has none pending."""
    deadline = time.monotonic() + timeout_s
    while stack.sim("stats")["callbacks_pending"] and time.monotonic() < deadline:
        time.sleep(0.3)


def arrival_of(stack: TestStack, destination: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in stack.sim("messages"):
            if m["destination"] == destination:
                return float(m["arrived_at"])
        time.sleep(0.2)
    raise AssertionError(f"{destination} never reached the API\n{stack.logs_tail()}")


@pytest.mark.timeout(OUTAGE_S + 180)
def test_an_outage_is_ridden_out_with_probes_and_expired_messages_are_never_sent(
    make_stack, tmp_path: Path
):
    stack = make_stack(rate_per_s=100, SMSQ_RETRY_LATER_S="5", SMSQ_RETRY_MAX_WAIT_S="1")
    stack.start_callbacks()
    stack.start_simulator("--latency-ms", "5", "--callback-delay-ms", "50")
    stack.start_worker("one", concurrency=2)
    stack.start_worker("two", concurrency=2)
    numbers = write_numbers(tmp_path / "n.csv", 1500)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "big")["campaign_id"]
    stack.wait_until(cid, lambda s: s["counts"]["sent"] >= 100)

    stack.sim("config", {"outage": True})
    down_at = time.monotonic()
    time.sleep(3)
    # During the outage: an urgent message, and a campaign that will outlive its TTL.
    urgent = "4915100000001"
    stack.send("--to", urgent, "--text", "your code is 1234")
    write_numbers(tmp_path / "short.csv", 20, start=50_000)
    short_lived = stack.send(
        "--recipients", str(tmp_path / "short.csv"), "--text", "too late",
        "--ttl", str(max(2, int(OUTAGE_S / 3))),
    )["campaign_id"]  # fmt: skip
    time.sleep(5)
    requests_at = len(stack.sim("requests"))
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    quiet_s = time.monotonic() - down_at - 8

    # Backing off: about one probe per second from all workers, not every message's retries.
    during = len(stack.sim("requests")) - requests_at
    assert during <= 1.5 * quiet_s + 10, f"{during} requests in {quiet_s:.0f} s of outage"
    status = stack.status(cid)
    assert status["trunk_status"]["backing_off"] is True
    assert status["counts"]["failed"] == status["counts"]["rejected"] == 0
    assert status["counts"]["queued"] > 0
    assert [e["type"] for e in stack.events()].count("api_unavailable") == 1

    stack.sim("config", {"outage": False})
    back_at = time.time()
    # The urgent message goes out within a few seconds of DIDWW answering again.
    assert arrival_of(stack, urgent, timeout_s=15) - back_at < 5
    stack.wait_done(cid, timeout_s=120)
    wait_callbacks_settled(stack)
    tally = check_once_and_settled(stack, cid, numbers)
    assert tally["states"] == {"sent": 1500}
    expired = stack.status(short_lived)["counts"]
    assert expired["expired"] == 20
    received = {m["destination"] for m in stack.sim("messages")}
    assert not any(f"4930{50_000 + i:08d}" in received for i in range(20))
    assert "api_restored" in [e["type"] for e in stack.events()]


def test_a_killed_worker_loses_nothing_and_its_in_flight_messages_are_not_resent(
    make_stack, tmp_path: Path
):
    stack = make_stack(rate_per_s=100)
    stack.start_callbacks()
    stack.start_simulator("--latency-ms", "300", "--callback-delay-ms", "200")
    doomed = stack.start_worker("doomed", concurrency=2)
    stack.start_worker("two", concurrency=2)
    numbers = write_numbers(tmp_path / "n.csv", 2000)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "kill")["campaign_id"]
    stack.wait_until(cid, lambda s: s["counts"]["sent"] >= 300)

    doomed.kill_group()  # the worker and its pool children, mid-request
    stack.workers.remove(doomed)
    stack.start_worker("three", concurrency=2)
    stack.wait_done(cid, timeout_s=120)
    wait_callbacks_settled(stack)

    tally = wait_settled(stack, cid, numbers)
    logs = "".join(w.log() for w in stack.workers)
    assert "lost_batch_recovered" in logs
    # Requests in flight at the kill reached the API: swept to unknown, then settled by
    # their callbacks, matched by number and time; none was posted again.
    assert stack.status(cid)["trunk_status"]["stats"].get("callbacks_matched", 0) >= 1
    assert tally["states"].get("sent", 0) + tally["unknown"] == 2000


def test_sigterm_hands_over_cleanly(make_stack, tmp_path: Path):
    stack = make_stack(rate_per_s=100)
    stack.start_callbacks()
    stack.start_simulator("--latency-ms", "50", "--callback-delay-ms", "50")
    leaving = stack.start_worker("leaving", concurrency=2)
    stack.start_worker("staying", concurrency=2)
    numbers = write_numbers(tmp_path / "n.csv", 1500)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "bye")["campaign_id"]
    stack.wait_until(cid, lambda s: s["counts"]["sent"] >= 200)

    stack.workers.remove(leaving)
    started = time.monotonic()
    assert leaving.stop(timeout_s=60) == 0
    assert time.monotonic() - started < 30, "warm shutdown took too long"
    stack.wait_done(cid, timeout_s=90)
    wait_callbacks_settled(stack)
    tally = check_once_and_settled(stack, cid, numbers)
    assert tally["states"] == {"sent": 1500}
    assert "lost_batch_recovered" not in stack.workers[0].log()


def test_a_redis_restart_is_ridden_out_by_every_component(make_stack, tmp_path: Path):
    from ledger.settings import Settings
    from producer.enqueue import Producer
    from producer.numbers import normalize_many

    stack = make_stack(rate_per_s=100, appendonly=True)
    stack.start_callbacks()
    # DIDWW retries a refused callback for a while; so does the simulator here.
    stack.start_simulator(
        "--latency-ms", "20", "--callback-delay-ms", "100",
        "--callback-attempts", "10", "--callback-backoff-s", "0.2",
    )  # fmt: skip
    stack.start_worker("one", concurrency=2)
    stack.start_worker("two", concurrency=2)
    producer = Producer(Settings(_env_file=None, **_settings_kwargs(stack)))  # type: ignore[call-arg]
    numbers = write_numbers(tmp_path / "n.csv", 1000)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "restart")["campaign_id"]
    stack.wait_until(cid, lambda s: s["counts"]["sent"] >= 200)

    stack.server.stop()  # SIGTERM: Redis writes its AOF and exits
    time.sleep(3)
    stack.server.start()  # same port, same directory
    # The same Producer object works again without being rebuilt.
    later = [f"4940{i:08d}" for i in range(50)]
    second = producer.enqueue("37041123456", "after", normalize_many(later)).campaign_id
    producer.close()

    stack.wait_done(cid, timeout_s=120)
    stack.wait_done(second, timeout_s=60)
    wait_callbacks_settled(stack, timeout_s=60)
    tally = wait_settled(stack, cid, numbers)
    assert tally["states"].get("sent", 0) + tally["unknown"] == 1000
    assert check_once_and_settled(stack, second, later)["states"] == {"sent": 50}
    for proc in [*stack.workers, stack.callbacks]:
        assert proc is not None and proc.running


def _settings_kwargs(stack: TestStack) -> dict[str, Any]:
    return {k.removeprefix("SMSQ_").lower(): v for k, v in stack.settings_env.items()}

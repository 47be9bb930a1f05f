"""The whole path, for real: smsq send -> Redis -> two Celery workers -> the simulator ->
callbacks -> the ingester -> events on the stream."""

from __future__ import annotations

import collections
from pathlib import Path

from tests.integration.conftest import SOURCE, max_in_any_window, write_numbers

CAMPAIGN_SIZE = 1200
RATE_PER_S = 150


def test_campaign_reaches_didww_once_per_number_within_the_rate(make_stack, tmp_path: Path):
    stack = make_stack(rate_per_s=RATE_PER_S)
    stack.start_callbacks()
    stack.start_simulator(
        "--latency-ms", "15", "--latency-jitter-ms", "10",
        "--callback-delay-ms", "200", "--callback-failure-ratio", "0.1",
        "--end-time-key", "random", "--seed", "3", "--record-callbacks",
    )  # fmt: skip
    stack.start_worker("one")
    stack.start_worker("two")
    numbers = write_numbers(tmp_path / "numbers.csv", CAMPAIGN_SIZE)

    sent = stack.send("--recipients", str(tmp_path / "numbers.csv"), "--text", "Hello, world")
    assert sent["queued"] == CAMPAIGN_SIZE
    assert (sent["rejected"], sent["duplicates"], sent["segments"]) == (0, 0, 1)
    status = stack.wait_done(sent["campaign_id"])

    # Exactly once per number at the API.
    accepted = stack.sim("messages")
    per_destination = collections.Counter(m["destination"] for m in accepted)
    assert set(per_destination) == set(numbers)
    assert max(per_destination.values()) == 1
    assert all(m["source"] == SOURCE and m["content"] == "Hello, world" for m in accepted)

    # Never above the trunk's rate in any one-second window, both workers together.
    arrivals = [t for t, _ in stack.sim("requests")]
    assert len(arrivals) == CAMPAIGN_SIZE
    assert max_in_any_window(arrivals) <= RATE_PER_S

    # Every message ends with exactly one terminal event that matches its callback.
    callbacks = {c["id"]: c for c in stack.sim("callbacks")}
    assert len(callbacks) == CAMPAIGN_SIZE
    assert {"time_end" in c for c in callbacks.values()} == {True, False}
    didww_ids = {m["destination"]: m["id"] for m in accepted}
    events = stack.events()
    terminal = [e for e in events if e["type"] in ("sent", "failed")]
    by_message = collections.Counter(e["message_id"] for e in terminal)
    assert len(by_message) == CAMPAIGN_SIZE and set(by_message.values()) == {1}
    for event in terminal:
        callback = callbacks[event["didww_id"]]
        assert didww_ids[event["destination"]] == event["didww_id"]
        assert event["campaign_id"] == sent["campaign_id"]
        assert event["source"] == SOURCE
        assert event["status"] == callback["status"]
        assert event["type"] == ("sent" if callback["status"] == "Success" else "failed")
        assert event["code_id"] == callback["code_id"]
        assert event["fragments_sent"] == callback["fragments_sent"]
        assert event["time_start"] == callback["time_start"]
        # DIDWW spells it both ways; the event always says time_end.
        assert event["time_end"] == callback.get("time_end", callback.get("end_time"))
        assert event["reason"]
    accepted_events = [e for e in events if e["type"] == "accepted"]
    assert len(accepted_events) == CAMPAIGN_SIZE

    counts = status["counts"]
    assert counts["sent"] + counts["failed"] == CAMPAIGN_SIZE
    assert counts["failed"] == sum(1 for c in callbacks.values() if c["status"] != "Success")
    assert status["done"] is True

"""The whole path, for real: smsq send -> Redis -> two Celery workers -> the simulator ->
callbacks -> the ingester -> events on the stream."""

from __future__ import annotations

import collections
from pathlib import Path

import httpx
import pytest

from ops.stack import max_in_any_window
from tests.integration.conftest import SOURCE, write_numbers
from tests.unit.smsq_testing import kept_count

CAMPAIGN_SIZE = 1200
RATE_PER_S = 150


@pytest.mark.serial
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
    assert (sent["rejected"], sent["duplicates"], sent["max_segments"]) == (0, 0, 1)
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


def test_callbacks_that_beat_the_201_are_kept_and_joined(make_stack, tmp_path: Path):
    """With the API answering after 400 ms and callbacks sent after 20 ms, every callback
    reaches the ingester before the worker has stored the DIDWW id."""
    stack = make_stack(rate_per_s=100)
    stack.start_callbacks()
    stack.start_simulator("--latency-ms", "400", "--callback-delay-ms", "20")
    stack.start_worker("one")
    write_numbers(tmp_path / "n.csv", 60)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "hi")["campaign_id"]
    status = stack.wait_done(cid, timeout_s=60)

    assert status["counts"]["sent"] == 60
    client = stack.redis()
    try:
        stats = {k.decode(): int(v) for k, v in client.hgetall("smsq:stats").items()}
        assert kept_count(client) == 0
    finally:
        client.close()
    assert stats["orphans_kept"] == stats["orphans_joined"] == 60
    events = stack.events()
    assert sum(e["type"] == "sent" for e in events) == 60
    assert sum(e["type"] == "accepted" for e in events) == 60


def test_no_secret_in_any_log_or_event(make_stack, tmp_path: Path):
    stack = make_stack(rate_per_s=200, SMSQ_LOG_LEVEL="DEBUG")
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20", "--fail-5xx", "0.1", "--fail-429", "0.1")
    stack.start_worker("one")
    write_numbers(tmp_path / "n.csv", 100)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "hi")["campaign_id"]
    stack.wait_done(cid, timeout_s=60)
    # A wrong token is refused and not echoed either.
    refused = httpx.post(f"{stack.callbacks_url}/callbacks?token=nope", json={})
    assert refused.status_code == 401

    password = stack.settings_env["SMSQ_DIDWW_PASSWORD"]
    token = stack.settings_env["SMSQ_CALLBACK_TOKEN"]
    logs = {p.name: p.read_text() for p in [w.log_path for w in stack.workers]}
    logs["callbacks"] = stack.callbacks.log()
    assert "retrying" in logs[stack.workers[0].log_path.name]
    assert "callback_handled" in logs["callbacks"]
    for name, text in logs.items():
        assert password not in text, name
        assert token not in text, name
    events_text = str(stack.events())
    assert password not in events_text and token not in events_text

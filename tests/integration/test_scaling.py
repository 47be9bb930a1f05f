"""Four workers with their own names share one campaign and one rate limit; a worker added
mid-campaign takes work at once; one stopped with SIGTERM loses nothing. Their metrics, and
the callbacks service's, are read the way Prometheus scrapes them."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.stack import max_in_any_window
from tests.integration.conftest import write_numbers
from tests.integration.test_faults import check_once_and_settled, wait_callbacks_settled

RATE_PER_S = 100
# Enough that work is still queued when the late worker is up (a worker process holds about
# a second of its share of the rate, plus the batch it waits to take).
SIZE = 2500


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    text = httpx.get(url, timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def logged(log: str, event: str) -> list[dict]:
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [entry for entry in lines if entry.get("event") == event]


@pytest.mark.serial
@pytest.mark.timeout(180)
def test_four_workers_share_one_campaign_and_one_rate(make_stack, tmp_path: Path):
    stack = make_stack(rate_per_s=RATE_PER_S)
    stack.start_callbacks()
    stack.start_simulator("--latency-ms", "30", "--callback-delay-ms", "50")
    for name in ("east", "west", "north"):
        stack.start_worker(name)
    numbers = write_numbers(tmp_path / "n.csv", SIZE)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "scale")["campaign_id"]
    stack.wait_until(cid, lambda s: s["counts"]["sent"] >= 300)

    # A fourth worker, two pool processes, joins and takes batches at once.
    late = stack.start_worker("south", concurrency=2)
    joined_at = time.monotonic()
    while not logged(late.log(), "message_accepted"):
        assert time.monotonic() - joined_at < 15, "the new worker took no work"
        time.sleep(0.2)
    # One leaves with SIGTERM: it finishes the batch in hand and exits cleanly.
    leaving = stack.workers[0]
    stack.workers.remove(leaving)
    assert leaving.stop(timeout_s=60) == 0

    stack.wait_done(cid, timeout_s=120)
    wait_callbacks_settled(stack)
    assert check_once_and_settled(stack, cid, numbers)["states"] == {"sent": SIZE}
    # One rate for all of them, whoever sent what.
    arrivals = [t for t, _ in stack.sim("requests")]
    assert max_in_any_window(arrivals) <= RATE_PER_S
    names = {w.name: logged(w.log(), "batch_done") for w in [leaving, *stack.workers]}
    assert all(names.values()), f"a worker sent nothing: { {k: len(v) for k, v in names.items()} }"

    # Worker metrics add up across the pool processes of one worker.
    samples = scrape(late.metrics_url)
    in_log = len(logged(late.log(), "message_accepted"))
    trunk = ("trunk", "default")
    assert samples[("smsq_worker_messages_total", (("outcome", "accepted"), trunk))] == in_log > 0
    api = samples[("smsq_api_request_seconds_count", (("result", "accepted"), trunk))]
    assert api >= in_log
    assert samples[("smsq_claim_lateness_seconds_count", (trunk,))] > 0

    # The callbacks service reports what lives in Redis.
    figures = scrape(f"{stack.callbacks_url}/metrics")
    assert figures[("smsq_messages", (("state", "sent"),))] == SIZE
    assert figures[("smsq_messages", (("state", "queued"),))] == 0
    assert figures[("smsq_queue_depth", (("queue", "smsq.campaigns"),))] == 0
    assert figures[("smsq_oldest_queued_age_seconds", ())] == 0
    assert figures[("smsq_events_stream_length", ())] >= 2 * SIZE
    # Each Success callback was applied, or kept because it beat its 201 (then joined).
    success = sum(
        figures.get(("smsq_callbacks_total", (("outcome", outcome), ("status", "Success"))), 0)
        for outcome in ("applied", "orphan")
    )
    assert success == SIZE
    by_state = collections.Counter(
        {labels[0][1]: v for (name, labels), v in figures.items() if name == "smsq_messages"}
    )
    assert sum(by_state.values()) == SIZE


def test_logs_are_json_lines_and_every_message_line_carries_its_ids(make_stack, tmp_path: Path):
    stack = make_stack(rate_per_s=200)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20")
    worker = stack.start_worker("logs")
    write_numbers(tmp_path / "n.csv", 120)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "logs")["campaign_id"]
    stack.wait_done(cid)
    wait_callbacks_settled(stack)

    lines = [json.loads(x) for x in worker.log().splitlines() if x.startswith("{")]
    # Celery's own loggers come out as the same JSON lines as ours.
    assert any(e.get("logger", "").startswith("celery") for e in lines)
    accepted = [e for e in lines if e["event"] == "message_accepted"]
    assert len(accepted) == 120
    assert all(e["campaign_id"] == cid and e["message_id"] and e["didww_id"] for e in accepted)
    assert all({"timestamp", "level"} <= set(e) for e in lines)
    assert stack.callbacks is not None
    handled = [
        json.loads(x)
        for x in stack.callbacks.log().splitlines()
        if x.startswith("{") and "callback_handled" in x
    ]
    assert len(handled) >= 120 and all(e["didww_id"] for e in handled)
    # uvicorn's own lines are JSON too (its startup line), and no line is plain text.
    assert any(
        e.get("logger", "").startswith("uvicorn")
        for e in map(
            json.loads, (x for x in stack.callbacks.log().splitlines() if x.startswith("{"))
        )
    )
    assert all(x.startswith("{") for x in stack.callbacks.log().splitlines() if x.strip())

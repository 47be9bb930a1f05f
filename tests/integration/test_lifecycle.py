"""A campaign's whole life, for real: it always finishes (lost callbacks become
unconfirmed), it is enqueued once (idempotency keys, also after a SIGKILL mid-enqueue), its
per-recipient report matches what the API saw, its failures can be resent, and it is gone
from Redis after its retention."""

from __future__ import annotations

import collections
import csv
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import SOURCE, TestStack, write_numbers
from tests.integration.test_faults import wait_callbacks_settled


def delivered_ids(stack: TestStack) -> set[str]:
    """DIDWW ids whose status callback the ingester took (the simulator lists those)."""
    return {c["id"] for c in stack.sim("callbacks")}


@pytest.mark.timeout(120)
def test_a_campaign_whose_callbacks_were_lost_ends_done_with_exactly_those_unconfirmed(
    make_stack, tmp_path: Path
):
    stack = make_stack(rate_per_s=100, SMSQ_CALLBACK_TIMEOUT_S="3")
    stack.start_callbacks()
    # One attempt per callback: whatever the ingester misses is lost for good.
    stack.start_simulator(
        "--callback-delay-ms", "100", "--callback-attempts", "1", "--record-callbacks"
    )
    stack.start_worker("one", concurrency=2)
    write_numbers(tmp_path / "n.csv", 600)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "hi")["campaign_id"]
    stack.wait_until(cid, lambda s: s["counts"]["sent"] >= 150)
    assert stack.callbacks is not None
    stack.callbacks.stop()  # the ingester is down: DIDWW's callbacks meanwhile are lost
    failed_at = int(stack.sim("stats")["callbacks_failed"])
    stack.wait_for(
        lambda: int(stack.sim("stats")["callbacks_failed"]) >= failed_at + 50,
        "callbacks lost while the ingester is down",
    )
    stack.start_callbacks()
    stack.sim(
        "config", {"callback_url": f"{stack.callbacks_url}/callbacks?token=demo-callback-token"}
    )

    status = stack.wait_done(cid, timeout_s=60)
    wait_callbacks_settled(stack)
    records = stack.records(cid)
    unconfirmed = {r.didww_id for r in records.values() if r.state == "unconfirmed"}
    got = delivered_ids(stack)
    accepted_ids = {m["id"] for m in stack.sim("messages")}
    assert unconfirmed, "no callback was lost"
    assert unconfirmed == accepted_ids - got
    assert status["counts"]["unconfirmed"] == len(unconfirmed)
    assert status["counts"]["sent"] + len(unconfirmed) == 600
    events = [e for e in stack.events() if e["type"] == "unconfirmed"]
    assert {e["didww_id"] for e in events} == unconfirmed

    # A callback that comes after all still settles its message, marked late.
    late_id = sorted(unconfirmed)[0]
    destination = next(r.destination for r in records.values() if r.didww_id == late_id)
    body = {
        "data": {
            "type": "outbound_message_callbacks",
            "id": late_id,
            "attributes": {
                "time_start": "2026-12-02T10:00:00Z",
                "end_time": "2026-12-02T10:00:02Z",
                "destination": destination,
                "source": SOURCE,
                "status": "Success",
                "code_id": None,
                "fragments_sent": 1,
            },
        }
    }
    answer = httpx.post(
        f"{stack.callbacks_url}/callbacks?token=demo-callback-token",
        content=json.dumps(body),
        headers={"Content-Type": "application/vnd.api+json"},
    )
    assert answer.json() == {"result": "late"}
    late = [e for e in stack.events() if e.get("didww_id") == late_id and e["type"] == "sent"]
    assert late and late[0]["late"] is True and late[0]["previous_state"] == "unconfirmed"
    assert stack.status(cid)["counts"]["unconfirmed"] == len(unconfirmed) - 1


@pytest.mark.timeout(150)
def test_the_same_idempotency_key_gives_one_campaign_even_after_a_sigkill_mid_enqueue(
    make_stack, tmp_path: Path
):
    # Batches of one message: enqueueing 3,000 takes seconds, time for a kill mid-way.
    stack = make_stack(rate_per_s=1000, SMSQ_BATCH_SIZE="1")
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20")
    stack.start_worker("one", concurrency=2)
    path = tmp_path / "n.csv"
    numbers = write_numbers(path, 3000)
    smsq = str(Path(sys.executable).with_name("smsq"))
    argv = [smsq, "send", "--source", SOURCE, "--recipients", str(path), "--text", "once"]
    argv += ["--idempotency-key", "order-42", "--json"]
    killed = subprocess.Popen(argv, env=stack.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sending_while_enqueuing() -> bool:
        assert killed.poll() is None, "the enqueue ended before it could be killed"
        return int(stack.sim("stats")["accepted"]) > 0

    # Killed mid-enqueue: the campaign is stored and its first batches are sending, while
    # the rest are still being queued.
    stack.wait_for(sending_while_enqueuing, "the first messages of the enqueue in progress")
    killed.send_signal(signal.SIGKILL)
    out, _ = killed.communicate(timeout=10)
    assert killed.returncode == -signal.SIGKILL and not out, "the enqueue finished first"

    first = subprocess.run(argv, env=stack.env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(argv, env=stack.env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["campaign_id"] == two["campaign_id"] and two["repeated"] is True
    stack.wait_done(one["campaign_id"], timeout_s=90)
    client = stack.redis()
    try:
        assert client.zcard("smsq:campaigns") == 1, "a second campaign was created"
    finally:
        client.close()
    at_api = collections.Counter(m["destination"] for m in stack.sim("messages"))
    assert set(at_api) == set(numbers) and set(at_api.values()) == {1}

    # The same key for other recipients is refused, saying why.
    other = argv.copy()
    other[other.index("once")] = "another text"
    refused = subprocess.run(other, env=stack.env(), capture_output=True, text=True, timeout=60)
    # With --json, the error is the HTTP API's problem object, on stdout.
    problem = json.loads(refused.stdout)
    assert refused.returncode == 2 and problem["code"] == "idempotency_conflict"
    assert "different campaign" in problem["detail"]


@pytest.mark.timeout(150)
def test_report_matches_the_api_and_resend_sends_exactly_the_failed_numbers(
    make_stack, tmp_path: Path
):
    stack = make_stack(rate_per_s=300)
    stack.start_callbacks()
    stack.start_simulator(
        "--callback-delay-ms", "20", "--callback-failure-ratio", "0.2", "--record-callbacks"
    )
    stack.start_worker("one", concurrency=2)
    numbers = write_numbers(tmp_path / "n.csv", 500)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "report")["campaign_id"]
    stack.wait_done(cid, timeout_s=60)
    wait_callbacks_settled(stack)

    result = stack.smsq("report", cid, "--output", str(tmp_path / "r.csv"))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert len(rows) == 500 and {r["destination"] for r in rows} == set(numbers)
    callbacks = {c["id"]: c for c in stack.sim("callbacks")}
    for message in stack.sim("messages"):
        row = next(r for r in rows if r["destination"] == message["destination"])
        callback = callbacks[message["id"]]
        assert row["didww_id"] == message["id"]
        assert row["status"] == callback["status"]
        assert row["state"] == ("sent" if callback["status"] == "Success" else "failed")
        assert row["code_id"] == ("" if callback["code_id"] is None else str(callback["code_id"]))
        assert row["reason"] and row["time_start"] and row["attempts"] == "1"
    failed = {r["destination"] for r in rows if r["state"] == "failed"}
    assert failed, "the simulator failed nothing"
    jsonl = stack.smsq("report", cid, "--state", "failed", "--format", "jsonl")
    assert {json.loads(line)["destination"] for line in jsonl.stdout.splitlines()} == failed

    before = collections.Counter(m["destination"] for m in stack.sim("messages"))
    again = stack.smsq("resend", cid, "--state", "failed", "--json")
    assert again.returncode == 0, again.stderr
    child = json.loads(again.stdout)
    assert child["queued"] == len(failed) and child["parent"] == cid
    stack.wait_done(child["campaign_id"], timeout_s=60)
    after = collections.Counter(m["destination"] for m in stack.sim("messages"))
    assert after - before == collections.Counter(failed)
    assert stack.status(child["campaign_id"])["parent"] == cid


@pytest.mark.timeout(120)
def test_a_finished_campaign_is_gone_after_its_retention(make_stack, tmp_path: Path):
    # A short stream cap, so the events of a campaign do not count as what it keeps.
    stack = make_stack(rate_per_s=500, SMSQ_RETENTION_S="4", SMSQ_EVENTS_MAXLEN="1000")
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20")
    stack.start_worker("one", concurrency=2)
    write_numbers(tmp_path / "warm.csv", 200)
    warm = stack.send("--recipients", str(tmp_path / "warm.csv"), "--text", "warm")["campaign_id"]
    stack.wait_done(warm, timeout_s=60)
    wait_callbacks_settled(stack)
    client = stack.redis()
    try:
        _wait_gone(client, warm)
        before = int(client.info("memory")["used_memory"])
        write_numbers(tmp_path / "n.csv", 3000, start=10_000)
        cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "kept")["campaign_id"]
        stack.wait_done(cid, timeout_s=60)
        wait_callbacks_settled(stack)
        kept = int(client.info("memory")["used_memory"])
        assert kept > before, "the campaign kept nothing while retained"
        _wait_gone(client, cid)
        after = int(client.info("memory")["used_memory"])
        assert abs(after - before) < 1_000_000, (before, kept, after)
        leftovers = [k for k in client.scan_iter(match=f"*{cid}*", count=1000)]
        assert not leftovers, leftovers[:5]
        assert client.zscore("smsq:campaigns", cid) is None
    finally:
        client.close()


def _wait_gone(client: object, cid: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while client.exists(f"smsq:campaign:{cid}"):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"campaign {cid} was not purged"
        time.sleep(0.5)

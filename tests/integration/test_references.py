"""References for real: a CSV's `reference` column goes with each message through a worker,
the simulator and the callback ingester, and comes back in every event, the report and a
resend; a reference too long rejects its line; messages without one carry none."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

COUNT = 120


def write_orders(path: Path) -> tuple[dict[str, str], int]:
    """A CSV (number, reference, name): every 4th recipient has no reference, the 10th's is
    65 characters (its line is rejected). Returns number -> reference for those kept with
    one, and the rejected line."""
    lines = ["Reference,phone number,name"]
    references = {}
    rejected_line = 0
    for i in range(COUNT):
        number = f"4930{i:08d}"
        reference = "" if i % 4 == 0 else f"order-{i:04d}/é"
        if i == 10:
            reference, rejected_line = "x" * 65, i + 2
        elif reference:
            references[number] = reference
        lines.append(f"{reference},+{number},Guest {i}")
    path.write_text("\n".join(lines) + "\n")
    return references, rejected_line


@pytest.mark.timeout(150)
def test_references_come_back_in_events_report_and_resend(make_stack, tmp_path: Path) -> None:
    stack = make_stack(rate_per_s=500)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20", "--callback-failure-ratio", "0.3")
    stack.start_worker("one", concurrency=2)
    references, rejected_line = write_orders(tmp_path / "orders.csv")
    # One recipient opted out before: its `suppressed` event is written at enqueue.
    opted = "493000000005"
    assert stack.smsq("optout", "add", opted).returncode == 0

    out = stack.send("--recipients", str(tmp_path / "orders.csv"), "--text", "Hi {name}")
    assert [(r["line"], r["reason"]) for r in out["rejections"]] == [
        (rejected_line, "reference is 65 characters long; at most 64")
    ]
    cid = out["campaign_id"]
    stack.wait_done(cid, timeout_s=60)

    by_number: dict[str, list[dict]] = {}
    for event in stack.events():
        if event["campaign_id"] == cid:
            by_number.setdefault(event["destination"], []).append(event)
    assert len(by_number) == COUNT - 1
    types = set()
    for number, found in by_number.items():
        for event in found:
            types.add(event["type"])
            if number in references:
                assert event["reference"] == references[number], event
            else:
                assert "reference" not in event, event
    assert {"accepted", "sent", "failed", "suppressed"} <= types
    assert [e["type"] for e in by_number[opted]] == ["suppressed"]

    # The report's reference column: the same references, empty for the others.
    report = stack.smsq("report", cid, "--format", "csv")
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert len(rows) == COUNT - 1
    assert {r["destination"]: r["reference"] for r in rows if r["reference"]} == references
    failed = {r["destination"] for r in rows if r["state"] == "failed"}
    assert failed

    # A resend of the failed ones keeps their references, in its events too.
    resent = stack.smsq("resend", cid, "--state", "failed", "--json")
    assert resent.returncode == 0, resent.stderr
    child = json.loads(resent.stdout)["campaign_id"]
    stack.wait_done(child, timeout_s=60)
    child_events = [e for e in stack.events() if e["campaign_id"] == child]
    assert {e["destination"] for e in child_events} == failed
    for event in child_events:
        assert event.get("reference") == references.get(event["destination"]), event


@pytest.mark.timeout(120)
def test_a_cancelled_campaigns_messages_keep_their_references(make_stack, tmp_path: Path) -> None:
    stack = make_stack(rate_per_s=100)
    stack.start_simulator()
    stack.start_worker("one")
    path = tmp_path / "orders.csv"
    path.write_text("phone,reference\n" + "".join(f"+4930{i:08d},o{i}\n" for i in range(30)))
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat(timespec="minutes")
    out = stack.send("--recipients", str(path), "--text", "Hi", "--at", later)
    cid = out["campaign_id"]
    cancel = stack.smsq("cancel", cid)
    assert cancel.returncode == 0, cancel.stderr
    stack.wait_done(cid, timeout_s=60)
    cancelled = [e for e in stack.events() if e["campaign_id"] == cid]
    assert len(cancelled) == 30 and {e["type"] for e in cancelled} == {"cancelled"}
    assert {e["destination"]: e["reference"] for e in cancelled} == {
        f"4930{i:08d}": f"o{i}" for i in range(30)
    }

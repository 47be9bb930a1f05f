"""When and through which trunk, for real: scheduled campaigns wait in Redis and
start on time, through restarts; quiet hours hold back the recipients whose local time is
outside the window without occupying a worker; two trunks keep their own credentials, rates
and halts."""

from __future__ import annotations

import collections
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from ops.stack import Proc, free_port, max_in_any_window, wait_for
from tests.integration.conftest import TestStack, write_numbers


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def arrivals(stack: TestStack, numbers: set[str], url: str | None = None) -> list[float]:
    base = url or stack.simulator_url
    messages = httpx.get(f"{base}/_sim/messages").json()
    return sorted(m["arrived_at"] for m in messages if m["destination"] in numbers)


@pytest.mark.serial
@pytest.mark.timeout(120)
def test_a_scheduled_campaign_starts_on_time_and_can_be_moved_or_cancelled(
    make_stack, tmp_path: Path
):
    stack = make_stack(rate_per_s=200)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20")
    stack.start_worker("one", concurrency=2)
    numbers = set(write_numbers(tmp_path / "n.csv", 50))
    at = time.time() + 5
    out = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "later", "--at", iso(at))
    status = stack.status(out["campaign_id"])
    assert status["state"] == "scheduled" and abs(status["send_at"] - at) < 0.01
    stack.wait_done(out["campaign_id"], timeout_s=30)
    times = arrivals(stack, numbers)
    assert len(times) == 50
    assert times[0] >= at, f"sent {at - times[0]:.3f} s early"
    assert times[0] <= at + 1.0, f"started {times[0] - at:.3f} s late"

    # Rescheduled earlier, then cancelled: the first goes at its new time, the other never.
    moved = set(write_numbers(tmp_path / "m.csv", 20, start=1000))
    gone = set(write_numbers(tmp_path / "c.csv", 20, start=2000))
    first = stack.send(
        "--recipients", str(tmp_path / "m.csv"), "--text", "m", "--at", iso(time.time() + 60)
    )
    second = stack.send(
        "--recipients", str(tmp_path / "c.csv"), "--text", "c", "--at", iso(time.time() + 4)
    )
    new_at = time.time() + 3
    assert stack.smsq("reschedule", first["campaign_id"], "--at", iso(new_at)).returncode == 0
    assert stack.smsq("cancel", second["campaign_id"]).returncode == 0
    stack.wait_done(first["campaign_id"], timeout_s=30)
    times = arrivals(stack, moved)
    assert len(times) == 20 and new_at <= times[0] <= new_at + 1.0
    # At its old time the cancelled campaign's batch still went to a worker, which sent none.
    stack.wait_for(
        lambda: bool(stack.logged("batch_taken", campaign_id=second["campaign_id"])),
        "the cancelled campaign's batch taken at its time",
    )
    assert not arrivals(stack, gone)
    assert stack.status(second["campaign_id"])["counts"]["cancelled"] == 20

    for when, why in ((time.time() - 60, "in the past"), (time.time() + 400 * 86400, "year")):
        refused = stack.smsq("send", "--source", "37041123456", "--to", "4930111222333",
                             "--text", "x", "--at", iso(when))  # fmt: skip
        assert refused.returncode == 2 and why in refused.stderr
    zoneless = stack.smsq("send", "--source", "37041123456", "--to", "4930111222333",
                          "--text", "x", "--at", "2030-01-01T09:00")  # fmt: skip
    assert zoneless.returncode == 2 and "time zone" in zoneless.stderr


@pytest.mark.serial
@pytest.mark.timeout(150)
def test_a_schedule_survives_a_restart_of_workers_and_redis(make_stack, tmp_path: Path):
    stack = make_stack(rate_per_s=200, appendonly=True)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20", "--callback-attempts", "10")
    worker = stack.start_worker("one", concurrency=2)
    numbers = set(write_numbers(tmp_path / "n.csv", 100))
    at = time.time() + 20
    out = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "later", "--at", iso(at))
    stack.workers.remove(worker)
    assert worker.stop() == 0
    stack.server.stop()
    stack.server.start()
    stack.start_worker("two", concurrency=2)
    # The restarted worker sends what is due: a campaign sent now goes out, the scheduled
    # one waits.
    now = set(write_numbers(tmp_path / "now.csv", 10, start=5000))
    meanwhile = stack.send("--recipients", str(tmp_path / "now.csv"), "--text", "now")
    stack.wait_done(meanwhile["campaign_id"], timeout_s=30)
    assert len(arrivals(stack, now)) == 10
    assert time.time() < at - 3, "the restarts took too long for this test"
    assert not arrivals(stack, numbers)
    stack.wait_done(out["campaign_id"], timeout_s=60)
    times = arrivals(stack, numbers)
    assert len(times) == 100 and at <= times[0] <= at + 1.5


def _window_around_now() -> tuple[str, float]:
    """A window open now in Berlin but opening within a minute or two in London (an hour
    behind in any season): it starts at London's next whole minute."""
    london = datetime.now(ZoneInfo("Europe/London"))
    start = (london + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (start - london).total_seconds() < 8:
        start += timedelta(minutes=1)
    end = start + timedelta(hours=6)
    return f"{start:%H:%M}-{end:%H:%M}", start.timestamp()


# Serial: it compares arrival times with the window's edges, which a stack beside it on 2
# cores can push past (seen with three test processes).
@pytest.mark.serial
@pytest.mark.timeout(180)
def test_quiet_hours_hold_back_recipients_outside_their_window_without_a_busy_worker(
    make_stack, tmp_path: Path
):
    stack = make_stack(rate_per_s=100)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20")
    stack.start_worker("one", concurrency=1)
    berlin = {f"49301234{i:04d}" for i in range(30)}
    london = {f"44207946{i:04d}" for i in range(30)}
    (tmp_path / "n.csv").write_text("destination\n" + "\n".join(sorted(london | berlin)) + "\n")
    window, opens_at = _window_around_now()
    out = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "hi", "--window", window)
    assert out["queued"] == 60 and out["window"]["waiting"] == 30
    # A message whose time to live ends before its window opens expires.
    (tmp_path / "short.csv").write_text("destination\n442079469999\n")
    short = stack.send(
        "--recipients", str(tmp_path / "short.csv"), "--text", "x", "--window", window,
        "--ttl", "5",
    )  # fmt: skip

    stack.wait_until(out["campaign_id"], lambda s: s["counts"]["sent"] >= 30, timeout_s=30)
    assert len(arrivals(stack, berlin)) == 30 and not arrivals(stack, london)
    status = stack.status(out["campaign_id"])
    assert status["window"]["waiting"] == 30
    assert abs(status["window"]["next_open"] - opens_at) <= 1
    # Waiting takes no worker: the London batch is parked, held by no process, and the only
    # pool process sends another campaign meanwhile.
    client = stack.redis()
    try:
        parked = {m.decode() for m in client.zrange("smsq:parked", 0, -1)}
        held = {f.decode().rsplit("|", 1)[0] for f in client.hkeys("smsq:inflight")}
    finally:
        client.close()
    waiting = {m for m in parked if m.startswith(out["campaign_id"])}
    assert waiting and not waiting & held
    other = set(write_numbers(tmp_path / "o.csv", 20, start=5000))
    meanwhile = stack.send("--recipients", str(tmp_path / "o.csv"), "--text", "now")
    stack.wait_done(meanwhile["campaign_id"], timeout_s=30)
    assert len(arrivals(stack, other)) == 20 and not arrivals(stack, london)

    stack.wait_done(out["campaign_id"], timeout_s=max(10, opens_at - time.time() + 30))
    first_london = arrivals(stack, london)[0]
    assert first_london >= opens_at and max(arrivals(stack, berlin)) < first_london
    assert stack.status(short["campaign_id"])["counts"]["expired"] == 1
    assert not arrivals(stack, {"442079469999"})


def _second_simulator(stack: TestStack, username: str, password: str, token: str) -> str:
    port = free_port()
    argv = [
        sys.executable, "-m", "ops.simulator", "--port", str(port),
        "--username", username, "--password", password,
        "--callback-url", f"{stack.callbacks_url}/callbacks?token={token}",
        "--callback-delay-ms", "20",
    ]  # fmt: skip
    proc = Proc("simulator-eu", argv, stack.env(), stack.workdir / "simulator-eu.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/_sim/stats").status_code == 200, 30, "simulator eu")
    stack.workers.append(proc)  # stopped with the stack
    return url


@pytest.mark.serial
@pytest.mark.timeout(180)
def test_two_trunks_keep_their_own_credentials_rates_and_halts(make_stack, tmp_path: Path):
    eu = {
        "SMSQ_TRUNKS": "eu",
        "SMSQ_TRUNK_EU_USERNAME": "eu-user",
        "SMSQ_TRUNK_EU_PASSWORD": "eu-password",
        "SMSQ_TRUNK_EU_RATE_LIMIT": "20",
        "SMSQ_TRUNK_EU_CALLBACK_TOKEN": "eu-callback-token-0001",
        "SMSQ_TRUNK_EU_SOURCES": "37041999999",
    }
    stack = make_stack(rate_per_s=60, SMSQ_PROBE_INTERVAL_S="3600", **eu)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20")
    eu_url = _second_simulator(stack, "eu-user", "eu-password", "eu-callback-token-0001")
    stack.settings_env["SMSQ_TRUNK_EU_URL"] = eu_url
    stack.start_worker("one", concurrency=2)
    home = set(write_numbers(tmp_path / "a.csv", 240))
    away = set(write_numbers(tmp_path / "b.csv", 100, start=9000))
    a = stack.send("--recipients", str(tmp_path / "a.csv"), "--text", "a")
    # Routed to the trunk eu by its source number; the other names its trunk.
    b = stack.smsq("send", "--source", "37041999999", "--recipients", str(tmp_path / "b.csv"),
                   "--text", "b", "--json")  # fmt: skip
    assert b.returncode == 0, b.stderr
    b_cid = __import__("json").loads(b.stdout)["campaign_id"]
    assert (
        stack.status(b_cid)["trunk"] == "eu"
        and stack.status(a["campaign_id"])["trunk"] == "default"
    )

    stack.wait_until(b_cid, lambda s: s["counts"]["sent"] >= 30, timeout_s=60)
    httpx.post(f"{eu_url}/_sim/config", json={"password": "revoked"})
    stack.wait_done(a["campaign_id"], timeout_s=60)
    eu_status = stack.status(b_cid)
    assert eu_status["trunk_status"]["halted"] and eu_status["counts"]["queued"] > 0
    home_status = stack.status(a["campaign_id"])["trunk_status"]
    assert not home_status["halted"]
    # Each trunk's figures are its own: the halted trunk's batches wait parked, the other
    # trunk has none; each trunk counts the callbacks of its own campaigns.
    stack.wait_for(
        lambda: stack.status(b_cid)["trunk_status"]["parked_batches"] > 0, "eu's parked batches"
    )
    home_status = stack.status(a["campaign_id"])["trunk_status"]
    eu_trunk = stack.status(b_cid)["trunk_status"]
    assert home_status["parked_batches"] == 0 and home_status["name"] == "default"
    settled = ("callbacks_applied", "callbacks_late")
    assert sum(home_status["stats"].get(name, 0) for name in settled) == 240
    assert 30 <= sum(eu_trunk["stats"].get(name, 0) for name in settled) < 100

    at_home = [m for m in httpx.get(f"{stack.simulator_url}/_sim/messages").json()]
    at_eu = [m for m in httpx.get(f"{eu_url}/_sim/messages").json()]
    assert {m["destination"] for m in at_home} == home
    assert {m["destination"] for m in at_eu} <= away
    assert collections.Counter(m["destination"] for m in at_home).most_common(1)[0][1] == 1
    assert max_in_any_window([m["arrived_at"] for m in at_home]) <= 60
    assert max_in_any_window([m["arrived_at"] for m in at_eu]) <= 20
    alerts = [e for e in stack.events() if e["type"] == "auth_failed"]
    assert [e["trunk"] for e in alerts] == ["eu"]

    httpx.post(f"{eu_url}/_sim/config", json={"password": "eu-password"})
    assert stack.smsq("resume", b_cid).returncode == 0
    stack.wait_done(b_cid, timeout_s=60)
    at_eu = [m["destination"] for m in httpx.get(f"{eu_url}/_sim/messages").json()]
    assert set(at_eu) == away and len(at_eu) == len(away)

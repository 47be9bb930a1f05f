"""A Redis failover in the middle of a campaign, on real processes: a primary, a replica and
three sentinels on loopback (ops/ha.py), two workers, the ingester, the simulator and the
HTTP API, all finding the primary through the sentinels, with SMSQ_REDIS_MIN_REPLICAS=1.
The primary is SIGKILLed 40% of the way through a 3,000-number campaign at 200/s; then:

- the HTTP API answers a campaign's status within 10 s of the kill;
- the campaign is done within 60 s of the kill;
- no number reached the simulator twice;
- every message ends terminal, unknown only for a request on the wire at the kill;
- one terminal event on the events stream per message the simulator took, none for others.

The second run brings the killed server back (empty, as without persistence) once the
sentinels promoted the replica: it must rejoin as a replica of the new primary, in sync, and
never take a write from smsq's clients.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger import keys
from ledger.campaigns import Campaign
from ledger.records import iter_batch
from ledger.states import TERMINAL
from ops.ha import RedisHA
from ops.stack import Proc, RedisServer
from tests.integration.conftest import SOURCE, HATestStack, write_numbers
from tests.integration.test_http_api import start_api

NUMBERS = 3000
RATE_PER_S = 200
# The primary dies once this share of the numbers reached the simulator.
KILL_AT = 0.4
# The simulator answers each request this long after it arrived.
LATENCY_MS = 20
# The promises, from the kill.
API_WITHIN_S = 10.0
DONE_WITHIN_S = 60.0
# A request is on the wire at the kill from its claim (written at once) until its answer is
# recorded on a replica: it reached the simulator at most LATENCY_MS plus a recording
# (worker.recorder.FLUSH_S, then one round trip with its WAIT) before the kill; RECORD_S
# allows for a worker process stalled by CPU contention on a loaded 2-core runner. Arrivals
# are stamped when the simulator reads a request, up to RECORD_S late too; and no request is
# claimed between the kill and the failover (over a second: DOWN_AFTER_MS in ops/ha.py).
# Only such a request may end unknown: any earlier one was recorded, and replicated, before
# the kill, and a later one was claimed on the new primary.
RECORD_S = 0.25
ON_WIRE = (-(LATENCY_MS / 1000 + RECORD_S), RECORD_S)
# The events that end a message (docs/events.md): at most one each, after any `accepted`.
FINAL_EVENTS = ("sent", "failed", "rejected", "expired", "cancelled", "suppressed")
# Commands smsq's clients send all the time and that a replica never gets from its primary
# (the primary replicates writes only, and a script by its effects), nor from a sentinel or
# from ops/ha.py's checks: the ledger's scripts, Celery's blocking pops, the ledger's reads.
# Any of them on the returned server means one of smsq's clients talked to it.
SMSQ_ONLY_COMMANDS = (
    "evalsha", "eval", "evalsha_ro", "eval_ro", "script", "fcall",
    "brpop", "blpop", "blmove", "brpoplpush",
    "get", "mget", "hget", "hmget", "hgetall", "hkeys", "zrange", "zrangebyscore", "xrange",
    "time",
)  # fmt: skip


@dataclass
class Kill:
    """The kill, as the test saw it."""

    at: float  # time.monotonic()
    wall: float  # time.time(), as the simulator stamps arrivals
    server: RedisServer


def start_stack(
    make_ha_stack: Callable[..., HATestStack], request: pytest.FixtureRequest
) -> tuple[HATestStack, Proc, httpx.Client]:
    stack = make_ha_stack(rate_per_s=RATE_PER_S, min_replicas=1)
    stack.start_callbacks()
    # DIDWW retries a refused callback for hours; so does the simulator here, for about a
    # minute: the ingester answers 503 while no primary (or no replica) has a callback.
    stack.start_simulator(
        "--latency-ms", str(LATENCY_MS), "--callback-delay-ms", "100",
        "--callback-attempts", "40", "--callback-backoff-s", "0.2",
    )  # fmt: skip
    # Both workers and the API come up at once: a cold Celery worker takes seconds.
    with ThreadPoolExecutor(3) as pool:
        workers = [pool.submit(stack.start_worker, name, concurrency=2) for name in ("a", "b")]
        # Its requests give up after 2 s: an API stuck on a dead primary counts as no answer.
        api = pool.submit(start_api, stack, request, 2.0)
        for started in workers:
            started.result()
        proc, client, _ = api.result()
        return stack, proc, client


def kill_when_reached(stack: HATestStack, count: int) -> Kill:
    """SIGKILL the primary once `count` messages reached the simulator."""
    stack.wait_for(lambda: stack.sim("stats")["accepted"] >= count, f"{count} messages sent")
    server = stack.ha.kill_primary()
    return Kill(time.monotonic(), time.time(), server)


def first_answer(api: httpx.Client, cid: str, kill: Kill) -> tuple[float, dict[str, Any]]:
    """Seconds from the kill to the API's first 200 for the campaign, and what it said
    before: every status code (or error) it gave until then."""
    tried: collections.Counter[str] = collections.Counter()
    while time.monotonic() - kill.at < API_WITHIN_S + 5:
        try:
            response = api.get(f"/v1/campaigns/{cid}")
        except httpx.HTTPError as exc:
            tried[type(exc).__name__] += 1
        else:
            if response.status_code == 200:
                return time.monotonic() - kill.at, dict(tried)
            tried[str(response.status_code)] += 1
        time.sleep(0.1)
    raise AssertionError(f"the API never answered 200 after the kill: {dict(tried)}")


def wait_done(stack: HATestStack, api: httpx.Client, cid: str, kill: Kill) -> float:
    """Seconds from the kill until the API says the campaign is done, DONE_WITHIN_S at most.
    Every answer must be a 200 now that the API answered once (the new primary serves)."""
    deadline = kill.at + DONE_WITHIN_S
    while True:
        response = api.get(f"/v1/campaigns/{cid}")
        assert response.status_code == 200, response.text
        status = response.json()
        if status["done"]:
            return time.monotonic() - kill.at
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not done {DONE_WITHIN_S:.0f} s after the kill: {status['counts']}\n"
                f"{stack.logs_tail()}"
            )
        for proc in stack.workers:
            proc.check_alive()
        time.sleep(0.25)


def check_outcome(stack: HATestStack, cid: str, numbers: list[str], kill: Kill) -> dict:
    """The promises about messages and events; returns the tallies for the report."""
    # `done` can come before the simulator's last retries of callbacks the ingester had
    # already stored (answered 503 while not yet replicated): let them finish first.
    stack.wait_for(lambda: not stack.sim("stats")["callbacks_pending"], "the last callbacks")
    wanted = set(numbers)
    received = [m for m in stack.sim("messages") if m["destination"] in wanted]
    per_destination = collections.Counter(m["destination"] for m in received)
    twice = sorted(d for d, n in per_destination.items() if n > 1)
    assert not twice, f"{len(twice)} numbers reached the simulator twice: {twice[:5]}"
    arrived = {m["destination"]: m["arrived_at"] - kill.wall for m in received}

    states = stack.states(cid)
    assert set(states) == wanted, "a message went missing from the ledger"
    tally = collections.Counter(states.values())
    assert set(tally) <= {str(s) for s in TERMINAL} | {"unknown"}, dict(tally)
    # Every request reached the simulator and got its callback: sent, unless unknown.
    assert {states[d] for d in arrived} <= {"sent", "unknown"}, dict(tally)
    unknown = sorted(d for d, s in states.items() if s == "unknown")
    on_wire = {d for d, t in arrived.items() if ON_WIRE[0] <= t <= ON_WIRE[1]}
    not_on_wire = {d: arrived.get(d) for d in unknown if d not in on_wire}
    assert not not_on_wire, f"unknown, yet not on the wire at the kill: {not_on_wire}"
    assert len(unknown) <= len(on_wire)
    # What was never received was never posted: nothing else is missing.
    assert tally["sent"] + len(unknown) == len(received) == NUMBERS, dict(tally)

    events = [e for e in stack.events() if e.get("campaign_id") == cid]
    final = collections.Counter(e["destination"] for e in events if e["type"] in FINAL_EVENTS)
    accepted = collections.Counter(e["destination"] for e in events if e["type"] == "accepted")
    wrong = {d: final[d] for d in wanted if final[d] != (1 if d in arrived else 0)}
    assert not wrong, f"terminal events per number, where not one per message taken: {wrong}"
    repeated = {d: n for d, n in accepted.items() if n > 1}
    assert not repeated, f"accepted more than once on the stream: {repeated}"
    return {
        "states": dict(tally),
        "unknown": len(unknown),
        "on_wire_at_kill": len(on_wire),
        "in_simulator_at_kill": sum(-LATENCY_MS / 1000 <= t <= 0 for t in arrived.values()),
        "events": dict(collections.Counter(e["type"] for e in events)),
    }


def sending_after(worker: Proc, wall: float) -> int:
    """How many messages the worker logged accepted after this time (Unix seconds)."""
    count = 0
    for line in worker.log().splitlines():
        if '"message_accepted"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the line being written
        at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        count += at > wall
    return count


def commandstats(server: RedisServer) -> dict[str, dict[str, int]]:
    client = server.client()
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {
        name.removeprefix("cmdstat_"): {k: int(v) for k, v in value.items() if k.endswith("calls")}
        for name, value in stats.items()
    }


def check_rejoined(ha: RedisHA, old: RedisServer, new: RedisServer) -> dict[str, Any]:
    """The returned server is a replica of the new primary, in sync, and the sentinels
    never named it primary again; no smsq client ever sent it a command."""
    assert ha.primary_port() == new.port, "the sentinels moved the primary again"
    client = old.client()
    try:
        role = client.role()
        info = client.info("replication")
    finally:
        client.close()
    assert role[0] == b"slave" and role[1] == b"127.0.0.1" and role[2] == new.port, role
    assert info["master_link_status"] == "up", info
    used = {
        name: calls
        for name, calls in commandstats(old).items()
        if name.partition("|")[0] in SMSQ_ONLY_COMMANDS
    }
    assert not used, f"smsq's clients sent commands to the returned server: {used}"
    # The sentinels made it a replica, and nothing else did (Redis logs who sent REPLICAOF).
    log = old.proc.log() if old.proc else ""
    turned = [line for line in log.splitlines() if "REPLICAOF" in line and "enabled" in line]
    assert turned and all("sentinel-" in line for line in turned), turned
    return {"commands": sorted(commandstats(old))}


def states_on(server: RedisServer, cid: str) -> dict[str, str]:
    """destination -> state, as this server's copy of the ledger has them."""
    client = server.client()
    try:
        c = Campaign.from_hash(cid, client.hgetall(keys.campaign(cid)))
        found = {}
        for batch_no in range(c.batches):
            data = client.get(keys.batch(cid, batch_no)) or b""
            for record in iter_batch(c.first_index(batch_no), data):
                found[record.destination] = str(record.state)
        return found
    finally:
        client.close()


def in_sync(old: RedisServer, new: RedisServer) -> bool:
    primary, replica = new.client(), old.client()
    try:
        offset = primary.info("replication")["master_repl_offset"]
        return int(replica.info("replication")["slave_repl_offset"]) >= int(offset)
    finally:
        primary.close()
        replica.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("bring_back", [False, True], ids=["stays-down", "brought-back"])
def test_a_failover_mid_campaign_loses_nothing_and_sends_nothing_twice(
    make_ha_stack, tmp_path: Path, request, bring_back: bool
) -> None:
    started = time.monotonic()
    stack, api_proc, api = start_stack(make_ha_stack, request)
    numbers = write_numbers(tmp_path / "n.csv", NUMBERS)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "failover")["campaign_id"]

    kill = kill_when_reached(stack, int(NUMBERS * KILL_AT))
    answered_s, before = first_answer(api, cid, kill)
    assert answered_s <= API_WITHIN_S, (answered_s, before)
    new = stack.ha.wait_for_failover()
    failover_s = time.monotonic() - kill.at
    report: dict[str, Any] = {}
    if bring_back:
        old = stack.ha.bring_back()
        report["rejoined_s"] = round(time.monotonic() - kill.at, 2)

    done_s = wait_done(stack, api, cid, kill)
    report.update(check_outcome(stack, cid, numbers, kill))
    if bring_back:
        # With a replica again, writes wait for it (WAIT 1): a campaign created now is
        # stored on both before the API answers 201 (202: not replicated), and is sent.
        later = [f"4940{i:08d}" for i in range(50)]
        created = api.post(
            "/v1/campaigns",
            json={"source": SOURCE, "text": "after", "destinations": [f"+{n}" for n in later]},
        )
        assert created.status_code == 201, created.text
        second = created.json()["campaign_id"]
        wait_done(stack, api, second, kill)
        stack.wait_for(lambda: in_sync(old, new), "the returned server in sync")
        # Before anything below reads from it: the commands it got so far are all there is.
        report.update(check_rejoined(stack.ha, old, new))
        # It holds the same ledger: read from it, every message is as on the primary.
        assert states_on(old, cid) == stack.states(cid)
        assert states_on(old, second) == dict.fromkeys(later, "sent")
        received = collections.Counter(m["destination"] for m in stack.sim("messages"))
        assert all(received[n] == 1 for n in later)
    # Every component followed the failover: each worker went on sending through the new
    # primary (not one worker carrying the campaign while the other is stuck), and none
    # of them, nor the ingester or the API, exited.
    after = {w.name: sending_after(w, kill.wall + failover_s) for w in stack.workers}
    assert all(after.values()), f"messages accepted after the failover, by worker: {after}"
    for proc in [*stack.workers, stack.callbacks, api_proc]:
        proc.check_alive()
    report.update(
        api_answered_s=round(answered_s, 2),
        api_before=before,
        failover_s=round(failover_s, 2),
        accepted_after_failover=after,
        done_s=round(done_s, 2),
        wall_s=round(time.monotonic() - started, 1),
    )
    print(json.dumps(report))

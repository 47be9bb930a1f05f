"""The campaign hash, the quiet-hours hash and the template values each have one codec in the
ledger: every field round-trips, the writers and readers agree, and the Lua scripts name only
fields the codec writes."""

from __future__ import annotations

import asyncio
import re
from dataclasses import fields
from importlib import resources
from pathlib import Path

import pytest
from smsq_testing import make_settings, write_campaign

from ledger import campaigns, keys, quiet_hours
from ledger.campaigns import Campaign, CampaignHead
from ledger.quiet_hours import Group, QuietHours
from ledger.states import CampaignState
from ledger.store import Ledger

ROOT = Path(__file__).resolve().parents[2]

# A campaign with every field set to something other than its default.
FULL = Campaign(
    id="0123456789abcdef",
    source="37041123456",
    text="Hi {name|friend}, code {code}",
    name="promo, winter",
    trunk="eu",
    total=250,
    batch_size=100,
    batches=3,
    created_at=1_765_000_000.125,
    expires_at=1_765_086_400.5,
    state=str(CampaignState.SCHEDULED),
    encoding="UCS-2",
    segments=2,
    priority=True,
    send_at=1_765_003_600.25,
    fields=("name", "code"),
    window="09:00-20:00",
    timezone="Europe/Vilnius",
    parent="fedcba9876543210",
    done_at=1_765_090_000.0,
    enqueue={"rejected": 1, "duplicates": 2, "segments_per_message": {"2": 250}},
)


def test_every_field_round_trips() -> None:
    stored = FULL.to_hash()
    # Every attribute but the id is a field, and each was given a value unlike its default.
    assert set(stored) == {f.name for f in fields(Campaign)} - {"id"} == set(Campaign.FIELDS)
    back = Campaign.from_hash(FULL.id, {k.encode(): v.encode() for k, v in stored.items()})
    assert back == FULL


def test_defaults_round_trip_and_absent_fields_read_as_defaults() -> None:
    plain = Campaign(
        id=FULL.id,
        source="37041123456",
        text="Hello",
        name="",
        trunk="default",
        total=1,
        batch_size=100,
        batches=1,
        created_at=1.5,
        expires_at=2.5,
        state="active",
        encoding="GSM-7",
        segments=1,
        priority=False,
    )
    stored = plain.to_hash()
    assert "done_at" not in stored and stored["send_at"] == "" and stored["fields"] == ""
    assert Campaign.from_hash(plain.id, stored) == plain
    # A hash written before the optional fields existed still reads.
    required = {k: stored[k] for k in ("source", "text", "total", "batch_size", "batches")}
    required |= {"created_at": "1.500", "expires_at": "2.500"}
    old = Campaign.from_hash(plain.id, required)
    assert (old.trunk, old.state, old.priority, old.send_at, old.done_at, old.fields) == (
        "default",
        "active",
        False,
        0.0,
        None,
        (),
    )


def test_a_hash_that_is_not_a_whole_campaign_is_none() -> None:
    assert Campaign.stored(FULL.id, {}) is None
    assert Campaign.stored(FULL.id, {b"state": b"paused"}) is None
    with pytest.raises(KeyError):
        Campaign.from_hash(FULL.id, {b"state": b"paused"})


def test_encode_gives_the_stored_form_of_some_fields_and_refuses_others() -> None:
    assert Campaign.encode(send_at=12.0, priority=True) == {"send_at": "12.000", "priority": "1"}
    with pytest.raises(ValueError, match="not a campaign field"):
        Campaign.encode(colour="blue")


def test_the_head_reads_what_the_full_hash_holds() -> None:
    stored = FULL.to_hash()
    head = CampaignHead.from_values(FULL.id, [stored[f].encode() for f in CampaignHead.FIELDS])
    assert head == CampaignHead(
        FULL.id,
        FULL.created_at,
        FULL.send_at,
        FULL.state,
        FULL.trunk,
        FULL.segments,
        FULL.window,
        FULL.priority,
    )
    assert head.start == FULL.send_at
    # Fields gone (a purge racing the scrape) read as a campaign that has not begun.
    gone = CampaignHead.from_values(FULL.id, [None] * len(CampaignHead.FIELDS))
    assert (gone.start, gone.trunk, gone.state, gone.priority) == (0.0, "default", "active", False)


def test_the_lua_scripts_name_only_fields_the_campaign_codec_writes() -> None:
    folder = resources.files("ledger") / "lua"
    named: set[str] = set()
    call = re.compile(
        r"redis\.call\('(HGET|HMGET|HSET|HSETNX|HDEL)',\s*campaign_key\([^)]*\),([^)]*)\)"
    )
    for script in folder.iterdir():
        if script.name.endswith(".lua"):
            for command, rest in call.findall(script.read_text()):
                args = [a.strip() for a in rest.split(",")]
                if command in ("HSET", "HSETNX"):
                    args = args[::2]  # field, value, field, value, ...
                named.update(a.strip("'") for a in args if re.fullmatch(r"'[a-z_]+'", a))
    assert named, "no campaign field found in the scripts: the pattern no longer matches them"
    assert named <= set(Campaign.FIELDS)


def test_no_module_outside_the_ledger_names_a_campaign_field_in_a_redis_call() -> None:
    """The campaign hash is read and written through Campaign alone: no other module passes
    one of its field names to a hash command on keys.campaign()."""
    field_names = "|".join(Campaign.FIELDS)
    pattern = re.compile(
        rf"h(?:get|mget|set|setnx|del)\(\s*keys\.campaign\([^)]*\),\s*[\"'({{].*?[\"']({field_names})[\"']"
    )
    offenders = []
    for package in ("producer", "worker", "callbacks", "dispatch", "web", "ops", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_quiet_hours_round_trip() -> None:
    hours = QuietHours(
        (
            Group(((100, 200), (300, 400)), ("Europe/Vilnius",), 120),
            Group((), ("America/Boise", "America/Los_Angeles"), 3),
        ),
        {0: 0, 1: 0, 2: 1},
    )
    stored = hours.to_hash()
    assert stored["g:0"] == "100-200,300-400" and stored["b:2"] == "1"
    assert QuietHours.from_hash({k.encode(): v.encode() for k, v in stored.items()}) == hours
    moved = hours.with_intervals([[(500, 600)], []])
    assert moved.groups[0].intervals == ((500, 600),)
    assert moved.groups[0].zones == ("Europe/Vilnius",)
    assert moved.batch_groups == hours.batch_groups
    with pytest.raises(ValueError):
        hours.with_intervals([[(1, 2)]])


def test_template_values_round_trip() -> None:
    joined = [campaigns.join_values(["Ana", "1,2"]), campaigns.join_values(["", ""])]
    stored = campaigns.values_hash(200, joined)
    assert set(stored) == {b"200", b"201"}
    decoded = campaigns.decode_values(stored)
    assert [campaigns.split_values(decoded[i]) for i in (200, 201)] == [["Ana", "1,2"], ["", ""]]


def test_what_the_test_helper_writes_the_ledger_reads_back(real_redis, redis_server) -> None:
    """write_campaign goes through queue_store, as the producer does; the Ledger's readers
    (the hash, the template values, a batch's quiet hours) read it back."""
    hours = QuietHours((Group(((10, 20),), ("Europe/Vilnius",), 150),), {0: 0, 1: 0})
    cid = write_campaign(
        real_redis,
        150,
        fields=("name",),
        values=[[f"n{i}"] for i in range(150)],
        quiet_hours=hours,
        priority=True,
        urgent_lane=True,
    )

    async def read() -> tuple[Campaign | None, dict[int, str], list[tuple[int, int]], QuietHours]:
        from redis.asyncio import Redis

        client = Redis.from_url(redis_server.url)
        try:
            ledger = Ledger(client, make_settings())
            return (
                await ledger.campaign(cid),
                await ledger.template_values(cid, 1),
                await ledger.batch_intervals(cid, 1),
                await quiet_hours.read(client, cid),
            )
        finally:
            await client.aclose()

    c, values, intervals, read_hours = asyncio.run(read())
    assert c is not None and c.total == 150 and c.batches == 2 and c.fields == ("name",)
    assert c.priority and c.window
    assert values[100] == "n100" and len(values) == 50
    assert intervals == [(10, 20)] and read_hours == hours
    # A priority campaign's messages wait in its trunk's urgent lane.
    assert real_redis.llen(keys.urgent("default")) == 150

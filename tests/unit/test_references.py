"""References (a recipient's own id for its message, docs/api.md "References"), on the real
Redis of the unit tests: every message event each ledger script publishes carries the
message's `reference`, and an event of a message without one (or of a campaign without the
`references` flag) has no `reference` key at all; reading them from a CSV or from recipient
objects; the enqueue storing them per batch (and the suppressed events at enqueue); the report,
the lookups, a resend and the purge.

The Lua tests write campaigns of three messages in batches of two (messages 0 and 1 in batch 0,
message 2 in batch 1), so a script reading the wrong batch's refs hash is seen: REFS gives
messages 0 and 2 a reference and message 1 none. Beside each, a campaign without the flag whose
refs hash holds the same references (left there on purpose): the flag, not the hash, decides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from script_helpers import (
    CLAIM_BASE,
    FAST,
    OWNER,
    accepted,
    callback,
    claim,
    did,
    iso,
    read_events,
    redis_now,
    rejected,
    run,
    states,
    unknown,
)
from smsq_testing import SOURCE, make_settings, stored, write_campaign

from ledger import campaigns, events, keys, records
from ledger.campaigns import MAX_REFERENCE_CHARS, Campaign, decode_refs, refs_hash
from ledger.errors import InputError
from ledger.hotpath import Result
from ledger.states import ALL_STATES, CampaignState, State
from producer import control
from producer import report as reports
from producer import resend as resends
from producer.enqueue import Producer, enqueue_campaign
from producer.numbers import NumbersCollector, Rejection, normalize_recipients
from producer.recipients import read_recipients

# Message index -> reference, for the Lua tests' campaigns: message 1 has none. One is plain,
# one has what JSON escapes or cjson spells its own way (quotes, a slash, non-ASCII).
REFS = {0: "order-1017", 2: 'ord "2"/ü-€'}
BATCH = 2
# The campaign without the flag sends to other numbers, so callbacks and kept callbacks matched
# by source and destination never mix the two.
PLAIN = [f"3707{i:07d}" for i in range(3)]
# What a reference is shown as when its event has no `reference` key (None would be a JSON
# null, which is not the same thing).
ABSENT = "<no reference key>"


def mine(i: int) -> str:
    """The destination write_campaign gives message i of the campaign with references."""
    return f"3706{i:07d}"


def with_references(
    client: Any, cid: str, refs: dict[int, str], *, batch_size: int = BATCH, flag: bool = True
) -> None:
    """Give a campaign written by write_campaign references as producer/enqueue.py stores them:
    a refs hash per batch holding only its messages that have one and, with `flag`, the
    campaign's `references` field."""
    batches: dict[int, list[int]] = {}
    for index in sorted(refs):
        batches.setdefault(index // batch_size, []).append(index)
    for b, indexes in batches.items():
        mapping = {str(i): refs[i] for i in indexes}
        client.hset(keys.refs(cid, b), mapping=mapping)
    if flag:
        client.hset(keys.campaign(cid), mapping=Campaign.encode(references=True))


def two_campaigns(client: Any, **options: Any) -> tuple[str, str]:
    """A campaign of three messages with REFS and the flag, and one without the flag (its refs
    hash written all the same)."""
    cid = write_campaign(client, 3, batch_size=BATCH, **options)
    with_references(client, cid, REFS)
    plain = write_campaign(client, PLAIN, batch_size=BATCH, **options)
    with_references(client, plain, REFS, flag=False)
    return cid, plain


def references_in(found: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Message id -> the `reference` of its `kind` event (ABSENT when it has no such key)."""
    return {e["message_id"]: e.get("reference", ABSENT) for e in found if e["type"] == kind}


def expected(cid: str, plain: str, indexes: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any]:
    """What references_in should give for these messages of both campaigns."""
    out = {f"{cid}-{i}": REFS.get(i, ABSENT) for i in indexes}
    out.update({f"{plain}-{i}": ABSENT for i in indexes})
    return out


async def claim_all(ledger, cid: str, *, owner: int = OWNER):
    """One claim call offering every message of a three-message campaign (both batches)."""
    return await ledger.claim(
        "default",
        owner,
        FAST,
        due=0,
        want=0,
        max_messages=1000,
        batches=[(cid, 0, [0, 1]), (cid, 1, [2])],
        event_base=CLAIM_BASE,
    )


def raw_events(client: Any) -> dict[str, bytes]:
    """Message id and type -> the event's text as the stream holds it."""
    out = {}
    for _, fields in client.xrange("smsq:events"):
        event = json.loads(fields[b"data"])
        out[f"{event['message_id']} {event['type']}"] = fields[b"data"]
    return out


# --- claim.lua: end_message --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "final"),
    [({"state": CampaignState.CANCELLED}, "cancelled"), ({"ttl_s": -5}, "expired")],
)
def test_a_claim_ends_a_cancelled_or_expired_campaigns_messages_with_their_references(
    real_ledger, real_redis, setup, final
) -> None:
    cid, plain = two_campaigns(real_redis, **setup)

    async def go(ledger):
        await claim_all(ledger, cid)
        await claim_all(ledger, plain)

    run(real_ledger, go)
    assert states(real_redis, cid, 1) == {2: final}
    assert references_in(read_events(real_redis), final) == expected(cid, plain)


def test_the_urgent_lane_ends_a_cancelled_campaigns_messages_with_their_references(
    real_ledger, real_redis
) -> None:
    cid, plain = two_campaigns(real_redis, state=CampaignState.CANCELLED)
    real_redis.rpush(
        keys.urgent("default"),
        *[keys.urgent_member(c, i // BATCH, i) for c in (cid, plain) for i in range(3)],
    )

    async def go(ledger):
        return await ledger.claim(
            "default", OWNER, FAST, due=0, want=0, max_messages=1000, batches=[],
            event_base=CLAIM_BASE,
        )  # fmt: skip

    assert run(real_ledger, go).claimed == []
    assert references_in(read_events(real_redis), "cancelled") == expected(cid, plain)


def test_opted_out_numbers_suppressed_at_claim_carry_their_references(
    real_ledger, real_redis
) -> None:
    cid, plain = two_campaigns(real_redis)

    async def go(ledger):
        await ledger.optout_change("add", [mine(0), mine(1), mine(2), *PLAIN])
        await claim_all(ledger, cid)
        await claim_all(ledger, plain)

    run(real_ledger, go)
    assert references_in(read_events(real_redis), "suppressed") == expected(cid, plain)


# --- record.lua: accepted, rejected, unknown ----------------------------------------------------


def _result(kind: str, cid: str, index: int, n: int) -> Result:
    batch = index // BATCH
    if kind == "accepted":
        return accepted(cid, index, did(n), batch=batch)
    if kind == "rejected":
        return rejected(cid, index, batch=batch, detail="Invalid destination")
    return unknown(cid, index, 1_700_000_000 + n, batch=batch)


@pytest.mark.parametrize("kind", ["accepted", "rejected", "unknown"])
def test_recorded_answers_carry_the_reference_and_keep_every_other_field(
    real_ledger, real_redis, kind
) -> None:
    cid, plain = two_campaigns(real_redis)
    results = [_result(kind, cid, i, i) for i in range(3)]
    results += [_result(kind, plain, i, 10 + i) for i in range(3)]

    async def go(ledger):
        await claim_all(ledger, cid)
        await claim_all(ledger, plain)
        return await ledger.record(results)

    assert run(real_ledger, go).moved == [True] * 6
    assert references_in(read_events(real_redis), kind) == expected(cid, plain)
    # The event the worker built, with the reference and nothing else changed; one without a
    # reference is published as the worker wrote it.
    raw = raw_events(real_redis)
    for r in results:
        published = raw[f"{r.cid}-{r.index} {kind}"]
        reference = REFS.get(r.index) if r.cid == cid else None
        if reference is None:
            assert published.decode() == r.event
        else:
            assert json.loads(published) == {**json.loads(r.event), "reference": reference}


def test_a_callback_that_came_first_joined_at_record_carries_the_reference(
    real_ledger, real_redis
) -> None:
    cid, plain = two_campaigns(real_redis)
    numbers = {cid: [mine(i) for i in range(3)], plain: PLAIN}
    ids = {cid: [did(i) for i in range(3)], plain: [did(10 + i) for i in range(3)]}

    async def go(ledger):
        for c in (cid, plain):
            await claim_all(ledger, c)
            for i in range(3):
                update = callback(ids[c][i], status="Failed", code_id=2, destination=numbers[c][i])
                assert await ledger.apply_callback(update) == "orphan"
        return await ledger.record(
            [accepted(c, i, ids[c][i], batch=i // BATCH) for c in (cid, plain) for i in range(3)]
        )

    assert run(real_ledger, go).settled == ["failed"] * 6
    published = read_events(real_redis)
    assert references_in(published, "accepted") == expected(cid, plain)
    assert references_in(published, "failed") == expected(cid, plain)


# --- callback.lua ---------------------------------------------------------------------------


@pytest.mark.parametrize("late", [False, True])
def test_a_callback_carries_the_reference_on_time_or_late(real_ledger, real_redis, late) -> None:
    cid, plain = two_campaigns(real_redis)
    numbers = {cid: [mine(i) for i in range(3)], plain: PLAIN}
    ids = {cid: [did(i) for i in range(3)], plain: [did(10 + i) for i in range(3)]}

    async def go(ledger):
        for c in (cid, plain):
            await claim_all(ledger, c)
            await ledger.record([accepted(c, i, ids[c][i], batch=i // BATCH) for i in range(3)])
        if late:
            assert await ledger.unconfirm(0) == 6
        return [
            await ledger.apply_callback(callback(ids[c][i], destination=numbers[c][i]))
            for c in (cid, plain)
            for i in range(3)
        ]

    assert run(real_ledger, go) == ["late" if late else "applied"] * 6
    published = read_events(real_redis)
    assert references_in(published, "sent") == expected(cid, plain)
    assert {e.get("late", False) for e in published if e["type"] == "sent"} == {late}


# --- settle.lua -------------------------------------------------------------------------------


def test_a_kept_callback_matched_to_an_unknown_message_carries_the_reference(
    real_ledger, real_redis
) -> None:
    cid, plain = two_campaigns(real_redis)
    numbers = {cid: [mine(i) for i in range(3)], plain: PLAIN}
    posted = int(redis_now(real_redis)) - 100

    async def go(ledger):
        for n, c in enumerate((cid, plain)):
            await claim_all(ledger, c)
            await ledger.record([unknown(c, i, posted, batch=i // BATCH) for i in range(3)])
            for i in range(3):
                update = callback(
                    did(10 * n + i),
                    destination=numbers[c][i],
                    time_start=iso(posted),
                    time_end=iso(posted + 1),
                )
                assert await ledger.apply_callback(update) == "orphan"
        return await ledger.settle_orphans(0)

    assert run(real_ledger, go) == 6
    published = read_events(real_redis)
    assert {e.get("matched_by") for e in published if e["type"] == "sent"} == {
        "source, destination and time"
    }
    assert references_in(published, "sent") == expected(cid, plain)


# --- cancel.lua, unconfirm.lua, recover.lua -----------------------------------------------------


def test_cancelling_a_campaign_publishes_each_message_with_its_reference(
    real_ledger, real_redis
) -> None:
    cid, plain = two_campaigns(real_redis)

    async def go(ledger):
        return await control.cancel(ledger, cid), await control.cancel(ledger, plain)

    assert run(real_ledger, go) == (3, 3)
    assert references_in(read_events(real_redis), "cancelled") == expected(cid, plain)


@pytest.mark.parametrize("whole_campaign", [False, True])
def test_unconfirmed_messages_carry_their_references(
    real_ledger, real_redis, whole_campaign
) -> None:
    cid, plain = two_campaigns(real_redis)

    async def go(ledger):
        for n, c in enumerate((cid, plain)):
            await claim_all(ledger, c)
            await ledger.record(
                [accepted(c, i, did(10 * n + i), batch=i // BATCH) for i in range(3)]
            )
        if whole_campaign:
            # As a purge does.
            return [await ledger.unconfirm_campaign(c, 2) for c in (cid, plain)]
        return [await ledger.unconfirm(0)]

    assert sum(run(real_ledger, go)) == 6
    assert references_in(read_events(real_redis), "unconfirmed") == expected(cid, plain)


def test_a_lost_workers_claims_become_unknown_with_their_references(
    real_ledger, real_redis
) -> None:
    cid, plain = two_campaigns(real_redis)
    fields = [keys.inflight_field(c, b, OWNER) for c in (cid, plain) for b in (0, 1)]

    async def go(ledger):
        for c in (cid, plain):
            await ledger.hold(c, 0, OWNER)
            await ledger.hold(c, 1, OWNER)
            await claim_all(ledger, c)
        for field in fields:
            real_redis.hset(keys.inflight(), field, 1000)
        return [await ledger.recover(field, 15) for field in fields]

    assert run(real_ledger, go) == [2, 1, 2, 1]
    published = read_events(real_redis)
    assert references_in(published, "unknown") == expected(cid, plain)
    assert {e["detail"] for e in published} == {"the worker sending it was lost"}


def test_a_campaign_without_references_reads_no_refs_hash_in_its_scripts(
    real_ledger, real_redis
) -> None:
    """The flag is read with the campaign's other fields: a campaign without it publishes
    events without a `reference` key even when a refs hash for it exists."""
    plain = write_campaign(real_redis, 2)
    with_references(real_redis, plain, {0: "x", 1: "y"}, batch_size=100, flag=False)
    real_redis.hset(keys.campaign(plain), mapping=Campaign.encode(references=False))

    async def go(ledger):
        await claim(ledger, plain, [0, 1])
        await ledger.record([accepted(plain, 0, did(0)), rejected(plain, 1)])
        await ledger.apply_callback(callback(did(0), destination=mine(0)))

    run(real_ledger, go)
    published = read_events(real_redis)
    assert [e["type"] for e in published] == ["accepted", "rejected", "sent"]
    assert all("reference" not in e for e in published)


# --- reading references: a CSV, recipient objects -----------------------------------------------

UK = "442079460958"
FR = "33612345678"
US = "15550109999"


def write(tmp_path: Path, content: str, name: str = "to.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode())
    return path


@pytest.mark.parametrize(
    "header", ["reference", "Reference", " REFERENCE ", "refer_ence", "Refer ence"]
)
def test_a_csv_reference_column_gives_each_number_its_reference_and_is_not_a_field(
    tmp_path: Path, header: str
) -> None:
    path = write(
        tmp_path,
        f"phone,{header},name\n{UK},order-1,Ana\n{FR},,Bob\n{US},order-3,Cy\n{UK},order-9,Dup\n",
    )
    result = read_recipients(path)
    assert result.numbers == [UK, FR, US]
    # A number given twice is one message, with its first line's reference.
    assert result.references == ["order-1", "", "order-3"]
    assert result.duplicates == 1
    assert result.columns == ("name",)
    assert [result.row(i) for i in range(3)] == [["Ana"], ["Bob"], ["Cy"]]
    assert result.rejections == []


def test_a_csv_of_numbers_and_references_only_has_no_fields(tmp_path: Path) -> None:
    path = write(tmp_path, f"Reference;Phone Number\n  ref-a  ;{UK}\nref-b;{FR}\n")
    result = read_recipients(path)
    assert result.numbers == [UK, FR]
    assert result.references == ["ref-a", "ref-b"]
    assert result.columns == ()
    assert result.values == []


def test_a_csv_reference_that_cannot_be_one_rejects_its_line(tmp_path: Path) -> None:
    longest = "r" * MAX_REFERENCE_CHARS
    path = write(
        tmp_path,
        "destination,reference,name\n"
        f"{UK},{longest},Ana\n"
        f'"{FR}","{longest}x",Bob\n'
        f"{US},ord\x07er,Cy\n"
        f"37060000001,fine,Di\n",
    )
    result = read_recipients(path)
    assert result.numbers == [UK, "37060000001"]
    assert result.references == [longest, "fine"]
    assert result.rejections == [
        Rejection(3, FR, f"reference is 65 characters long; at most {MAX_REFERENCE_CHARS}"),
        Rejection(4, US, "reference contains a control character"),
    ]
    assert result.lines == 4
    # Rejected lines leave no reference behind: references stay aligned with the numbers.
    assert len(result.references) == len(result.numbers)


def test_a_csv_reference_column_left_empty_is_no_references(tmp_path: Path) -> None:
    path = write(tmp_path, f"phone,reference,name\n{UK},,Ana\n{FR}, ,Bob\n")
    result = read_recipients(path)
    assert result.numbers == [UK, FR]
    assert result.references == []
    assert result.columns == ("name",)


def test_a_csv_without_a_reference_column_has_no_references(tmp_path: Path) -> None:
    result = read_recipients(write(tmp_path, f"phone,ref,name\n{UK},order-1,Ana\n"))
    assert result.references == []
    assert result.columns == ("ref", "name")


def test_recipient_objects_carry_references_kept_with_each_numbers_first_occurrence() -> None:
    result = normalize_recipients(
        [
            {"destination": UK, "fields": {"name": "Ana"}, "reference": "order-1"},
            FR,
            {"destination": US, "reference": 17},
            {"destination": UK, "reference": "order-9"},
            {"destination": "37060000001", "fields": {"name": "Di"}, "reference": ""},
            {"destination": "37060000002", "reference": None},
        ]
    )
    assert result.numbers == [UK, FR, US, "37060000001", "37060000002"]
    assert result.references == ["order-1", "", "17", "", ""]
    assert result.duplicates == 1
    assert result.columns == ("name",)
    assert result.rejections == []


@pytest.mark.parametrize("reference", [True, 1.5, ["order-1"], {"id": 1}])
def test_a_reference_that_is_not_text_rejects_its_recipient(reference: Any) -> None:
    result = normalize_recipients(
        [
            {"destination": UK, "reference": "order-1"},
            {"destination": FR, "reference": reference},
            {"destination": US, "reference": "order-3"},
        ]
    )
    assert result.numbers == [UK, US]
    assert result.references == ["order-1", "order-3"]
    assert result.rejections == [Rejection(2, FR, "reference must be text")]


def test_a_recipient_objects_reference_too_long_or_with_a_control_character_is_rejected() -> None:
    result = normalize_recipients(
        [
            {"destination": UK, "reference": "r" * (MAX_REFERENCE_CHARS + 1)},
            {"destination": FR, "reference": "line\nbreak"},
            {"destination": US, "reference": "r" * MAX_REFERENCE_CHARS},
        ]
    )
    assert result.numbers == [US]
    assert result.references == ["r" * MAX_REFERENCE_CHARS]
    assert [(r.line, r.value, r.reason) for r in result.rejections] == [
        (1, UK, f"reference is 65 characters long; at most {MAX_REFERENCE_CHARS}"),
        (2, FR, "reference contains a control character"),
    ]


def test_recipients_without_references_have_none() -> None:
    given = [UK, {"destination": FR, "fields": {"name": "Bob"}}, {"destination": US}]
    assert normalize_recipients(given).references == []
    assert normalize_recipients([{"destination": UK, "reference": ""}]).references == []


def test_a_collector_made_without_references_refuses_one() -> None:
    collector = NumbersCollector()
    with pytest.raises(ValueError, match="without references"):
        collector.add_referenced(1, UK, "", "order-1")


def test_refs_hash_leaves_out_messages_without_a_reference_and_decodes_back() -> None:
    mapping = refs_hash(200, ["a", "", "c"])
    assert mapping == {b"200": b"a", b"202": b"c"}
    assert decode_refs(mapping) == {200: "a", 202: "c"}
    assert Campaign.encode(references=True) == {"references": "1"}


# --- the enqueue --------------------------------------------------------------------------------


@pytest.fixture
def producer(redis_server: Any, real_redis: Any):
    """A Producer on the test's redis-server, in batches of two."""
    made = Producer(make_settings(redis_url=redis_server.url, batch_size=BATCH))
    yield made
    made.close()


def stored_references(client: Any, cid: str) -> dict[str, str | None]:
    """Destination -> the reference its message's batch holds for it (None for none); checks
    that each batch's refs hash names only that batch's messages."""
    c = stored(client, cid)
    out: dict[str, str | None] = {}
    for b in range(c.batches):
        found = records.iter_batch(c.first_index(b), client.get(keys.batch(cid, b)) or b"")
        by_index = {r.index: r.destination for r in found}
        refs = decode_refs(client.hgetall(keys.refs(cid, b)))
        assert set(refs) <= set(by_index), f"batch {b} holds references of other batches"
        out.update({d: refs.get(i) for i, d in by_index.items()})
    return out


def refs_keys(client: Any, cid: str) -> list[bytes]:
    return sorted(client.keys(keys.refs(cid, 0)[:-1] + "*"))


def test_an_enqueue_stores_the_references_per_batch_and_flags_the_campaign(
    producer, real_redis
) -> None:
    numbers = normalize_recipients(
        [
            {"destination": UK, "fields": {"name": "Ana"}, "reference": "order-1"},
            {"destination": FR, "fields": {"name": "Bob"}},
            {"destination": US, "fields": {"name": "Cy"}, "reference": "order-3"},
            {"destination": "37060000001", "fields": {"name": "Di"}, "reference": "order-4"},
            {"destination": "37060000002", "fields": {"name": "Ed"}},
        ]
    )
    result = producer.enqueue(SOURCE, "Hi {name}", numbers)
    cid = result.campaign_id
    assert result.queued == 5
    assert stored(real_redis, cid).references is True
    assert stored_references(real_redis, cid) == {
        UK: "order-1",
        FR: None,
        US: "order-3",
        "37060000001": "order-4",
        "37060000002": None,
    }
    # The last batch (one message without a reference) has no refs hash at all.
    assert refs_keys(real_redis, cid) == [keys.refs(cid, 0).encode(), keys.refs(cid, 1).encode()]
    # The references are not template values.
    values = {}
    for b in range(3):
        values.update(campaigns.decode_values(real_redis.hgetall(keys.fields(cid, b))))
    assert sorted(values.values()) == ["Ana", "Bob", "Cy", "Di", "Ed"]


@pytest.mark.parametrize(
    "given",
    [
        [UK, FR, US],
        [{"destination": UK, "reference": ""}, {"destination": FR}, {"destination": US}],
    ],
    ids=["numbers", "empty references"],
)
def test_an_enqueue_without_references_stores_none(producer, real_redis, given) -> None:
    cid = producer.enqueue(SOURCE, "hi", normalize_recipients(given)).campaign_id
    assert stored(real_redis, cid).references is False
    assert real_redis.hget(keys.campaign(cid), "references") in (None, b"0")
    assert refs_keys(real_redis, cid) == []
    assert real_redis.keys("smsq:campaign:*:refs:*") == []


def test_the_python_api_takes_references(redis_server, real_redis, real_ledger) -> None:
    result = enqueue_campaign(
        SOURCE,
        "hi",
        [{"destination": UK, "reference": "order-1"}, FR],
        settings=make_settings(redis_url=redis_server.url),
    )
    cid = result.campaign_id

    async def go(ledger):
        return [await ledger.message(f"{cid}-{i}") for i in range(2)]

    found = run(real_ledger, go)
    assert {(r.destination, reference) for _, r, _, reference in found} == {
        (UK, "order-1"),
        (FR, None),
    }


def test_opted_out_numbers_suppressed_at_enqueue_carry_their_references(
    producer, real_redis, real_ledger
) -> None:
    async def go(ledger):
        await ledger.optout_change("add", [FR, US, "37060000002"])

    run(real_ledger, go)
    numbers = normalize_recipients(
        [
            {"destination": UK, "reference": "order-1"},
            {"destination": FR, "reference": "order-2"},
            {"destination": US},
            {"destination": "37060000001"},
            {"destination": "37060000002", "reference": 'ord "5"/ü'},
        ]
    )
    result = producer.enqueue(SOURCE, "hi", numbers)
    cid = result.campaign_id
    assert (result.queued, result.suppressed) == (2, 3)
    suppressed = [e for e in read_events(real_redis) if e["type"] == "suppressed"]
    assert {e["destination"]: e.get("reference", ABSENT) for e in suppressed} == {
        FR: "order-2",
        US: ABSENT,
        "37060000002": 'ord "5"/ü',
    }
    assert {e["message_id"] for e in suppressed} <= {f"{cid}-{i}" for i in range(5)}
    # Stored with their messages too (the last batches), for the report and the lookups.
    assert stored_references(real_redis, cid) == {
        UK: "order-1",
        FR: "order-2",
        US: None,
        "37060000001": None,
        "37060000002": 'ord "5"/ü',
    }


def test_the_same_idempotency_key_with_other_references_is_another_request(producer) -> None:
    """docs/api.md: "the same key with a different request is 422 (idempotency_conflict)". The
    same numbers with other references are another request: repeating it must not answer the
    first campaign as if it were this one (its messages' events would carry the first
    request's references)."""
    first = normalize_recipients([{"destination": UK, "reference": "order-1"}, FR])
    again = normalize_recipients([{"destination": UK, "reference": "order-1"}, FR])
    other = normalize_recipients([{"destination": UK, "reference": "order-2"}, FR])
    created = producer.enqueue(SOURCE, "hi", first, idempotency_key="refs-1")
    repeated = producer.enqueue(SOURCE, "hi", again, idempotency_key="refs-1")
    assert (repeated.campaign_id, repeated.repeated) == (created.campaign_id, True)
    with pytest.raises(InputError) as refused:
        producer.enqueue(SOURCE, "hi", other, idempotency_key="refs-1")
    assert refused.value.code == "idempotency_conflict"


# --- the report and the lookups -------------------------------------------------------------------

# Five messages in batches of two: references in every batch, and a message without one in each
# of the first two.
FIVE = {0: "a-0", 3: "d-3", 4: "e-4"}


def test_report_rows_end_with_the_reference(real_ledger, real_redis) -> None:
    cid = write_campaign(real_redis, 5, batch_size=BATCH)
    with_references(real_redis, cid, FIVE)
    plain = write_campaign(real_redis, 5, batch_size=BATCH)
    with_references(real_redis, plain, FIVE, flag=False)
    every = reports.Filter(frozenset(ALL_STATES))

    async def go(ledger):
        await claim(ledger, cid, [2, 3], batch=1)
        out = {}
        for c in (cid, plain):
            campaign = await ledger.campaign(c)
            out[c] = [r async for r in reports.rows(ledger.redis, campaign, every)]
        sending = reports.Filter(frozenset({State.SENDING}))
        campaign = await ledger.campaign(cid)
        out["sending"] = [r async for r in reports.rows(ledger.redis, campaign, sending)]
        out["csv"] = "".join(
            [t async for t in reports.render(ledger.redis, campaign, every, "csv")]
        )
        out["jsonl"] = "".join(
            [t async for t in reports.render(ledger.redis, campaign, every, "jsonl")]
        )
        return out

    out = run(real_ledger, go)
    assert reports.COLUMNS[-1] == "reference"
    assert [row["reference"] for row in out[cid]] == ["a-0", None, None, "d-3", "e-4"]
    assert [row["reference"] for row in out[plain]] == [None] * 5
    assert [(row["index"], row["reference"]) for row in out["sending"]] == [(2, None), (3, "d-3")]
    lines = out["csv"].splitlines()
    assert lines[0].endswith(",attempts,reference")
    assert [line.rsplit(",", 1)[1] for line in lines[1:]] == ["a-0", "", "", "d-3", "e-4"]
    assert [json.loads(line)["reference"] for line in out["jsonl"].splitlines()] == [
        "a-0",
        None,
        None,
        "d-3",
        "e-4",
    ]


def test_a_row_without_references_given_has_a_null_reference(real_redis) -> None:
    cid = write_campaign(real_redis, 1)
    c = stored(real_redis, cid)
    [record] = records.iter_batch(0, real_redis.get(keys.batch(cid, 0)))
    assert reports.row(c, record, {})["reference"] is None
    assert reports.row(c, record, {}, {0: "order-1"})["reference"] == "order-1"


def test_a_message_looked_up_by_id_gives_its_reference(real_ledger, real_redis) -> None:
    cid = write_campaign(real_redis, 5, batch_size=BATCH)
    with_references(real_redis, cid, FIVE)
    plain = write_campaign(real_redis, 5, batch_size=BATCH)
    with_references(real_redis, plain, FIVE, flag=False)

    async def go(ledger):
        return {c: [(await ledger.message(f"{c}-{i}"))[3] for i in range(5)] for c in (cid, plain)}

    found = run(real_ledger, go)
    assert found[cid] == ["a-0", None, None, "d-3", "e-4"]
    assert found[plain] == [None] * 5


def test_message_pages_give_the_references_of_their_messages(real_ledger, real_redis) -> None:
    cid = write_campaign(real_redis, 5, batch_size=BATCH)
    with_references(real_redis, cid, FIVE)
    plain = write_campaign(real_redis, 5, batch_size=BATCH)
    with_references(real_redis, plain, FIVE, flag=False)

    async def pages(ledger, c: str, limit: int, only=None):
        campaign = await ledger.campaign(c)
        out, cursor = [], None
        while True:
            found, _, references, cursor = await ledger.message_page(campaign, limit, cursor, only)
            out.append([(r.index, references.get(r.index)) for r in found])
            if cursor is None:
                return out

    async def go(ledger):
        await claim(ledger, cid, [1], batch=0)
        await claim(ledger, cid, [4], batch=2)
        return (
            await pages(ledger, cid, 3),
            await pages(ledger, plain, 5),
            await pages(ledger, cid, 5, frozenset({State.SENDING})),
        )

    by_three, plain_pages, sending = run(real_ledger, go)
    assert by_three == [[(0, "a-0"), (1, None), (2, None)], [(3, "d-3"), (4, "e-4")]]
    assert plain_pages == [[(i, None) for i in range(5)]]
    # A page whose messages span batches 0 to 2 has the references of each.
    assert sending == [[(1, None), (4, "e-4")]]


# --- a resend ----------------------------------------------------------------------------------


def test_a_resend_keeps_each_recipients_reference(producer, real_ledger, real_redis) -> None:
    parent = write_campaign(real_redis, 5, batch_size=BATCH)
    with_references(real_redis, parent, FIVE)

    async def go(ledger):
        await claim(ledger, parent, [0], batch=0)
        await ledger.record([rejected(parent, 0)])
        await control.cancel(ledger, parent)
        c = await ledger.campaign(parent)
        cancelled = await resends.recipients(
            ledger.redis, c, reports.Filter(frozenset({State.CANCELLED}))
        )
        rejected_only = await resends.recipients(
            ledger.redis, c, reports.Filter(frozenset({State.REJECTED}))
        )
        return c, cancelled, rejected_only

    c, cancelled, rejected_only = run(real_ledger, go)
    assert cancelled.numbers == [mine(i) for i in (1, 2, 3, 4)]
    assert cancelled.references == ["", "", "d-3", "e-4"]
    assert (rejected_only.numbers, rejected_only.references) == ([mine(0)], ["a-0"])

    child = producer.enqueue(c.source, c.text, cancelled, **resends.options(c)).campaign_id
    assert stored(real_redis, child).parent == parent
    assert stored(real_redis, child).references is True
    assert stored_references(real_redis, child) == {
        mine(1): None,
        mine(2): None,
        mine(3): "d-3",
        mine(4): "e-4",
    }


def test_a_resend_of_recipients_without_references_stores_none(
    producer, real_ledger, real_redis
) -> None:
    with_flag = write_campaign(real_redis, 3, batch_size=BATCH)
    with_references(real_redis, with_flag, {0: "a-0"})
    plain = write_campaign(real_redis, 3, batch_size=BATCH)
    cancelled = reports.Filter(frozenset({State.CANCELLED}))

    async def go(ledger):
        out = []
        for cid in (with_flag, plain):
            await claim(ledger, cid, [0], batch=0)
            await ledger.record([rejected(cid, 0)])
            await control.cancel(ledger, cid)
            c = await ledger.campaign(cid)
            out.append((c, await resends.recipients(ledger.redis, c, cancelled)))
        return out

    for c, numbers in run(real_ledger, go):
        # Message 0, the only one with a reference, is not resent.
        assert numbers.numbers == [mine(1), mine(2)]
        assert numbers.references == []
        child = producer.enqueue(c.source, c.text, numbers, **resends.options(c)).campaign_id
        assert stored(real_redis, child).references is False
        assert refs_keys(real_redis, child) == []


# --- the purge -----------------------------------------------------------------------------------


def test_the_purge_deletes_the_refs_hashes(real_ledger, real_redis) -> None:
    gone = write_campaign(real_redis, 5, batch_size=BATCH)
    with_references(real_redis, gone, FIVE)
    kept = write_campaign(real_redis, 5, batch_size=BATCH)
    with_references(real_redis, kept, FIVE)
    assert len(refs_keys(real_redis, gone)) == 3

    async def go(ledger):
        return await ledger.purge(gone)

    assert run(real_ledger, go) is True
    assert real_redis.keys(f"smsq:campaign:{gone}*") == []
    assert len(refs_keys(real_redis, kept)) == 3


def test_an_enqueue_that_never_stored_its_campaign_has_its_refs_hashes_discarded(
    real_ledger, real_redis
) -> None:
    cid = "00000000000000ab"
    real_redis.set(keys.batch(cid, 0), b"")
    real_redis.hset(keys.refs(cid, 0), "0", "order-1")
    real_redis.hset(keys.refs(cid, 1), "2", "order-3")

    async def go(ledger):
        await ledger.discard_partial(cid, 2)

    run(real_ledger, go)
    assert real_redis.keys(f"smsq:campaign:{cid}*") == []


def test_with_reference_adds_the_reference_and_keeps_the_rest() -> None:
    event = events.encode(events.message_event("c", "c-1", UK, SOURCE, None, trunk="default"))
    assert json.loads(events.with_reference(event, 'ord "1"/ü')) == {
        **json.loads(event),
        "reference": 'ord "1"/ü',
    }

"""Store a campaign in the ledger and queue its batches: the producer's one write path.

Everything is validated first (producer/plan.py), so bad input enqueues nothing. With an
idempotency key, the same request repeated within 24 hours returns the same campaign, and a
repeat of one that was cut short (a crash, Ctrl-C, a Redis error) completes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery import Celery

from dispatch import celery_config, declare_queues, send
from ledger import campaigns, connection, events, keys, optouts, records
from ledger.campaigns import Campaign
from ledger.enqueuing import ENQUEUE_STALL_S, IDEMPOTENCY_TTL_S
from ledger.errors import InputError, NotReplicated, SmsqError
from ledger.quiet_hours import Group, QuietHours, next_open
from ledger.settings import Settings, load_settings
from ledger.states import CampaignState, State
from producer.numbers import NumbersResult, Rejection, normalize_recipients
from producer.plan import Options, Plan, Planner

# Batches written per Redis round trip.
WRITE_CHUNK_BATCHES = 200
# Broker commands (a task and its task-sent event are two) buffered per Redis round trip.
PUBLISH_CHUNK_COMMANDS = 1000
# Events of opted-out numbers per script call, and script calls per Redis round trip.
SUPPRESSED_EVENTS_PER_CALL = 500
SUPPRESSED_CALLS_PER_ROUND_TRIP = 40

__all__ = ["EnqueueResult", "NotStored", "Producer", "StoredNotQueued", "enqueue_campaign"]
# Redis answers the producer cannot get past while it writes (a full Redis refuses writes).
WRITE_ERRORS = (redis.RedisError, OSError)
# How long the producer keeps asking Redis whether a transaction it lost the answer to was
# applied, before it says it cannot tell.
EXEC_CHECK_S = 3.0


class NotStored(SmsqError):
    """Redis failed before the campaign was stored: what was written of it is deleted again,
    so nothing is left and repeating the request is safe. `maybe_stored` when Redis could not
    even be asked whether the last step went through: check `campaign_id` before repeating
    without the idempotency key."""

    def __init__(self, detail: str, campaign_id: str, *, maybe_stored: bool = False) -> None:
        if maybe_stored:
            message = (
                f"Redis failed while campaign {campaign_id} was being stored ({detail}); it may "
                "have been stored: check it before repeating, or repeat with the same "
                "idempotency key"
            )
        else:
            message = f"Redis failed before the campaign was stored ({detail}); nothing was kept"
        super().__init__(message)
        self.campaign_id = campaign_id
        self.maybe_stored = maybe_stored


class StoredNotQueued(SmsqError):
    """The campaign is stored whole but not all its batches are queued (Redis or the broker
    failed after): the workers' supervisors queue the rest within ENQUEUE_STALL_S, and a
    repeat with the same idempotency key does it at once. Never repeat it without the key:
    that would be a second campaign."""

    def __init__(self, result: EnqueueResult, detail: str) -> None:
        super().__init__(
            f"campaign {result.campaign_id} is stored but not all its batches are queued "
            f"({detail}); the workers queue the rest within {ENQUEUE_STALL_S:.0f} s"
        )
        self.campaign_id = result.campaign_id
        self.result = result


@dataclass
class EnqueueResult:
    campaign_id: str
    queued: int
    rejected: int
    duplicates: int
    rejections: list[Rejection] = field(repr=False)
    # The most segments any message needs (every message's count for a plain text).
    max_segments: int
    encoding: str
    suppressed: int = 0
    total_segments: int = 0
    segments_per_message: dict[str, int] = field(default_factory=dict)
    # True when an idempotency key found this campaign already enqueued: nothing was queued.
    repeated: bool = False
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The plan's summary (the names a dry run shows) with this campaign's id: the same
        object in the Python API, `smsq send --json` and the HTTP API."""
        return {
            **self.summary,
            "campaign_id": self.campaign_id,
            "dry_run": False,
            "repeated": self.repeated,
        }


def _result(cid: str, plan: Plan, repeated: bool = False) -> EnqueueResult:
    summary = plan.summary()
    return EnqueueResult(
        campaign_id=cid,
        queued=plan.messages,
        rejected=len(plan.rejections),
        duplicates=plan.numbers.duplicates,
        rejections=plan.rejections,
        max_segments=max(plan.distribution, default=0),
        encoding=plan.encoding,
        suppressed=len(plan.suppressed),
        total_segments=plan.total_segments,
        segments_per_message=summary["segments_per_message"],
        repeated=repeated,
        summary=summary,
    )


def _digest(plan: Plan) -> str:
    """What makes two requests the same campaign, for an idempotency key."""
    h = hashlib.sha256()
    for part in (plan.source, plan.template.text, plan.trunk, plan.window, plan.timezone):
        h.update(part.encode() + b"\0")
    h.update(f"{plan.send_at:.0f}|{plan.expires_at - plan.created_at:.0f}|{plan.priority}".encode())
    numbers = plan.numbers.numbers
    h.update("\n".join(numbers[i] + plan.values.get(i, "") for i in plan.order).encode())
    references = plan.numbers.references
    if references:
        # Only when there are some: a request without them keeps the digest it always had.
        h.update(b"\0references\0" + "\n".join(references[i] for i in plan.order).encode())
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Layout:
    """Which message index and batch each recipient gets: batches never mix quiet-hours
    groups, so a whole batch waits or goes; opted-out numbers fill the last batches."""

    batch_size: int
    # (batch number, group number or -1 for opted-out, [recipient indexes]) in batch order.
    batches: list[tuple[int, int, list[int]]]

    @classmethod
    def of(cls, plan: Plan, batch_size: int) -> Layout:
        out: list[tuple[int, int, list[int]]] = []
        chunks = [(g, group.members) for g, group in enumerate(plan.groups)]
        chunks.append((-1, plan.suppressed))
        for group_no, members in chunks:
            for start in range(0, len(members), batch_size):
                out.append((len(out), group_no, members[start : start + batch_size]))
        return cls(batch_size, out)


class Producer:
    """Writes campaigns to Redis and publishes their batches; reuse one per process."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.redis = connection.sync_client(self.settings)
        self.celery = Celery("smsq-producer")
        self.celery.config_from_object(celery_config(self.settings))
        self.planner = Planner(self.settings, self.redis)
        # The campaign being enqueued, known before anything is written (Ctrl-C reports it).
        self.campaign_id: str | None = None
        # Replicas the primary listed at the last enqueue (ledger.connection.replicas_listed).
        self._replicas: int | None = None

    def plan(self, source: str, text: str, numbers: NumbersResult, **options: Any) -> Plan:
        """Validate everything and compute the campaign, writing nothing (a dry run)."""
        return self.planner.plan(source, text, numbers, Options(**options))

    def enqueue(
        self,
        source: str,
        text: str,
        numbers: NumbersResult,
        *,
        idempotency_key: str | None = None,
        progress: Callable[[int], None] | None = None,
        **options: Any,
    ) -> EnqueueResult:
        """Store and queue a campaign; raises InputError for bad input (nothing written)."""
        plan = self.plan(source, text, numbers, **options)
        return self.write(plan, idempotency_key=idempotency_key, progress=progress)

    def write(
        self,
        plan: Plan,
        *,
        idempotency_key: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> EnqueueResult:
        """Store and queue a planned campaign. Raises NotStored when Redis fails before the
        campaign is stored (nothing is left), StoredNotQueued when anything fails after (the
        workers finish it)."""
        repeat = False
        if idempotency_key:
            found = self._claim_key(idempotency_key, _digest(plan))
            if found.get("done"):
                self.campaign_id = found["cid"]
                return _result(found["cid"], plan, repeated=True)
            cid, repeat = found["cid"], found.get("repeat", False)
        else:
            cid = secrets.token_hex(8)
        self.campaign_id = cid
        layout = Layout.of(plan, self.settings.batch_size)
        member = keys.enqueue_member(cid, len(layout.batches))
        stored = self._store(cid, plan, layout, repeat, progress, idempotency_key)
        try:
            if stored:
                self._publish_suppressed(cid, plan, layout)
            self._publish(cid, plan, layout)
            self._unmark(member)
            if idempotency_key:
                self._finish_key(idempotency_key, cid, _digest(plan))
        except Exception as exc:
            # Stored whole, whatever failed after (Redis, the broker, kombu's batch publish):
            # the workers' supervisors queue what is left (ledger/enqueuing.py).
            raise StoredNotQueued(_result(cid, plan), _describe(exc)) from exc
        return _result(cid, plan)

    def _store(
        self,
        cid: str,
        plan: Plan,
        layout: Layout,
        repeat: bool,
        progress: Callable[[int], None] | None,
        idempotency_key: str | None,
    ) -> bool:
        """Mark the enqueue, write the batches, then the campaign (True if this call stored
        it). A Redis error before the campaign is stored deletes what was written (NotStored);
        one whose transaction may or may not have been applied is checked first."""
        member = keys.enqueue_member(cid, len(layout.batches))
        try:
            self.redis.zadd(keys.enqueuing(), {member: time.time()})
            self._write_batches(cid, plan, layout, repeat, progress)
        except WRITE_ERRORS as exc:
            self._discard(cid, layout, idempotency_key)
            raise NotStored(_describe(exc), cid) from exc
        try:
            return self._write_campaign(cid, plan, layout)
        except redis.ResponseError as exc:
            # Refused (a full Redis): the transaction was not applied.
            self._discard(cid, layout, idempotency_key)
            raise NotStored(_describe(exc), cid) from exc
        except WRITE_ERRORS as exc:
            # The connection broke around EXEC: ask whether the campaign is there.
            found = self._campaign_exists(cid)
            if found:
                return True
            if found is None:
                raise NotStored(_describe(exc), cid, maybe_stored=True) from exc
            self._discard(cid, layout, idempotency_key)
            raise NotStored(_describe(exc), cid) from exc

    def _unmark(self, member: str) -> None:
        """The enqueue is whole: drop its mark. With SMSQ_REDIS_MIN_REPLICAS, on that many
        replicas too before the caller hears it is (WAIT after this last write covers every
        write before it); NotReplicated if not in time (the caller answers 202)."""
        if not self.settings.redis_min_replicas:
            self.redis.zrem(keys.enqueuing(), member)
            return
        wanted = connection.replicas_to_wait_for(self.settings, self._replicas)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.enqueuing(), member)
            if wanted:
                pipe.wait(wanted, self.settings.redis_wait_ms)
            pipe.role()
            found = pipe.execute()
        self._replicas = connection.replicas_listed(found[-1])
        if wanted and found[1] < min(wanted, self._replicas):
            raise NotReplicated(found[1], wanted)

    def _campaign_exists(self, cid: str) -> bool | None:
        """Whether the campaign's hash is in Redis; None if Redis cannot say within
        EXEC_CHECK_S."""
        deadline = time.monotonic() + EXEC_CHECK_S
        while True:
            try:
                return bool(self.redis.exists(keys.campaign(cid)))
            except WRITE_ERRORS:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.2)

    def _discard(self, cid: str, layout: Layout, idempotency_key: str | None) -> None:
        """Delete what an enqueue that did not store its campaign wrote: its batches, their
        template values and references, its mark and its idempotency key. Deleting works on a
        full Redis; if Redis is gone, the supervisors delete them once the key can no longer
        be used."""
        names = [keys.batch(cid, b) for b, _, _ in layout.batches]
        names += [keys.fields(cid, b) for b, _, _ in layout.batches]
        names += [keys.refs(cid, b) for b, _, _ in layout.batches]
        try:
            for start in range(0, len(names), 1000):
                self.redis.unlink(*names[start : start + 1000])
            if idempotency_key:
                self.redis.delete(keys.idempotency(_key_hash(idempotency_key)))
            self.redis.zrem(keys.enqueuing(), keys.enqueue_member(cid, len(layout.batches)))
        except WRITE_ERRORS:
            pass

    # --- idempotency ------------------------------------------------------------------

    def _claim_key(self, key: str, digest: str) -> dict[str, Any]:
        """Take the key for a new campaign, or find the campaign it already names."""
        name = keys.idempotency(_key_hash(key))
        fresh = {"cid": secrets.token_hex(8), "digest": digest, "done": False}
        if self.redis.set(name, json.dumps(fresh), nx=True, ex=IDEMPOTENCY_TTL_S):
            return fresh
        raw = self.redis.get(name)
        if raw is None:  # expired between the two calls
            return self._claim_key(key, digest)
        found = dict(json.loads(raw))
        if found.get("digest") != digest:
            raise InputError(
                "this idempotency key was used within 24 hours for a different campaign "
                f"({found['cid']}); use a new key for a new campaign",
                code="idempotency_conflict",
            )
        if found.get("done") and self.redis.exists(keys.campaign(found["cid"])) == 0:
            raise InputError(
                f"this idempotency key's campaign {found['cid']} was already purged",
                code="idempotency_conflict",
            )
        found["repeat"] = True
        return found

    def _finish_key(self, key: str, cid: str, digest: str) -> None:
        name = keys.idempotency(_key_hash(key))
        done = {"cid": cid, "digest": digest, "done": True}
        self.redis.set(name, json.dumps(done), keepttl=True)

    # --- writing ----------------------------------------------------------------------

    def _write_batches(
        self,
        cid: str,
        plan: Plan,
        layout: Layout,
        repeat: bool,
        progress: Callable[[int], None] | None,
    ) -> None:
        """The batches' records (and template values); on a repeat, only those missing, as
        one written whole by a cut-short attempt may already be sending."""
        numbers, references = plan.numbers.numbers, plan.numbers.references
        segments, values = plan.segments, plan.values
        pack = records.pack_new
        pipe = self.redis.pipeline(transaction=False)
        pending = 0
        for batch_no, group_no, members in layout.batches:
            dests = [numbers[i] for i in members]
            if group_no < 0:
                data = pack(State.SUPPRESSED, dests, [segments.get(i, 1) for i in members])
            else:
                data = pack(State.QUEUED, dests, [segments[i] for i in members])
            pipe.set(keys.batch(cid, batch_no), data, nx=repeat)
            if values and group_no >= 0:
                mapping = campaigns.values_hash(
                    batch_no * layout.batch_size, [values[i] for i in members]
                )
                pipe.hset(keys.fields(cid, batch_no), mapping=mapping)
            if references:
                mapping = campaigns.refs_hash(
                    batch_no * layout.batch_size, [references[i] for i in members]
                )
                if mapping:
                    pipe.hset(keys.refs(cid, batch_no), mapping=mapping)
            pending += len(members)
            if len(pipe) >= WRITE_CHUNK_BATCHES:
                pipe.zadd(
                    keys.enqueuing(),
                    {keys.enqueue_member(cid, len(layout.batches)): time.time()},
                    xx=True,
                )
                pipe.execute()
                if progress:
                    progress(pending)
                pending = 0
        pipe.execute()
        if progress and pending:
            progress(pending)

    def _write_campaign(self, cid: str, plan: Plan, layout: Layout) -> bool:
        """The campaign's hash, counts and index entries, in one transaction: from here on a
        task can send it. Written once: a repeat finds it there and leaves it (False)."""
        if self.redis.exists(keys.campaign(cid)):
            return False
        campaign = _campaign(cid, plan, layout)
        counts = {str(State.QUEUED): plan.messages, str(State.SUPPRESSED): len(plan.suppressed)}
        # The trunk's urgent lane: every worker that claims takes these first.
        urgent = (
            [
                (b, b * layout.batch_size + p)
                for b, g, members in layout.batches
                if g >= 0
                for p in range(len(members))
            ]
            if plan.priority
            else []
        )
        pipe = self.redis.pipeline(transaction=True)
        campaigns.queue_store(
            pipe,
            campaign,
            counts,
            quiet_hours=_quiet_hours(plan, layout) if plan.window else None,
            urgent=urgent,
        )
        pipe.execute()
        return True

    def _publish_suppressed(self, cid: str, plan: Plan, layout: Layout) -> None:
        """An event per opted-out number, SUPPRESSED_EVENTS_PER_CALL to a script call
        (ledger.optouts.publish_suppressed)."""
        stream, maxlen = self.settings.events_stream, self.settings.events_maxlen
        numbers, references = plan.numbers.numbers, plan.numbers.references
        event = _suppressed_event(cid, plan)
        message_id = keys.message_id
        clock, now_iso = time.time_ns, events.now_iso
        # Each event's time, to the millisecond, as message_event gives it; formatted once a
        # millisecond, not once an event.
        last_ms, at = -1, ""
        pipe = self.redis.pipeline(transaction=False)
        chunk: list[str] = []
        for b, g, members in layout.batches:
            if g >= 0:
                continue
            for index, i in enumerate(members, b * layout.batch_size):
                ms = clock() // 1_000_000
                if ms != last_ms:
                    last_ms, at = ms, now_iso()
                text = event(message_id(cid, index), numbers[i], at)
                if references and references[i]:
                    text = events.with_reference(text, references[i])
                chunk.append(text)
            if len(chunk) >= SUPPRESSED_EVENTS_PER_CALL:
                optouts.publish_suppressed(pipe, stream, maxlen, chunk)
                chunk = []
                if len(pipe) >= SUPPRESSED_CALLS_PER_ROUND_TRIP:
                    pipe.execute()
        if chunk:
            optouts.publish_suppressed(pipe, stream, maxlen, chunk)
        pipe.execute()

    def _publish(self, cid: str, plan: Plan, layout: Layout) -> None:
        """Queue the batches that can go now, with kombu's publish batching (one Redis round
        trip per PUBLISH_CHUNK_COMMANDS instead of two per task: docs/architecture.md D17);
        park the others in Redis until their time (a schedule, quiet hours)."""
        now = time.time()
        parked: dict[str, float] = {}
        ready: list[int] = []
        intervals = [g.intervals for g in plan.groups]
        for batch_no, group_no, _ in layout.batches:
            if group_no < 0:
                continue
            at = plan.send_at if plan.send_at > now else 0.0
            if plan.window:
                inside, opens = next_open(intervals[group_no], max(now, at))
                if not inside:
                    at = min(opens or plan.expires_at, plan.expires_at)
            if at:
                parked[keys.batch_member(cid, batch_no)] = at
            else:
                ready.append(batch_no)
        for start in range(0, len(parked), 1000):
            chunk = dict(list(parked.items())[start : start + 1000])
            self.redis.zadd(keys.parked(), chunk)
        with self.celery.producer_or_acquire() as producer:
            declare_queues(producer)
            # kombu before 5.7 (allowed by celery>=5.4) has no Producer.batch: publish one by one.
            batch = getattr(producer, "batch", None)
            with batch(max_size=PUBLISH_CHUNK_COMMANDS) if batch else contextlib.nullcontext():
                for batch_no in ready:
                    send(self.celery, producer, cid, batch_no, plan.trunk, plan.priority)

    def close(self) -> None:
        self.redis.close()


def _key_hash(key: str) -> str:
    """How an idempotency key is named in Redis: its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()


def _describe(exc: BaseException) -> str:
    """An error in one line, for a message: its class and its text."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _campaign(cid: str, plan: Plan, layout: Layout) -> Campaign:
    """The campaign's hash, as the plan makes it."""
    summary = plan.summary()
    return Campaign(
        id=cid,
        source=plan.source,
        text=plan.template.text,
        name=plan.name,
        trunk=plan.trunk,
        total=plan.messages + len(plan.suppressed),
        batch_size=layout.batch_size,
        batches=len(layout.batches),
        created_at=plan.created_at,
        expires_at=plan.expires_at,
        send_at=plan.send_at,
        state=str(CampaignState.SCHEDULED if plan.send_at else CampaignState.ACTIVE),
        encoding=plan.encoding,
        segments=max(plan.distribution, default=1),
        priority=plan.priority,
        fields=tuple(plan.template.fields),
        references=bool(plan.numbers.references),
        window=plan.window,
        timezone=plan.timezone,
        parent=plan.parent,
        # Everyone opted out: done at once, and purged after the retention.
        done_at=None if plan.messages else plan.created_at,
        # As stored since the first release: "segments" is the campaign's total.
        enqueue={
            "rejected": summary["rejected"],
            "duplicates": summary["duplicates"],
            "suppressed": summary["suppressed"],
            "segments": summary["total_segments"],
            "segments_per_message": summary["segments_per_message"],
        },
    )


def _quiet_hours(plan: Plan, layout: Layout) -> QuietHours:
    """Per group its intervals, zones (to compute them again for a new time) and size; per
    batch its group."""
    return QuietHours(
        tuple(Group(tuple(g.intervals), g.zones, len(g.members)) for g in plan.groups),
        {b: g for b, g, _ in layout.batches if g >= 0},
    )


def _suppressed_event(cid: str, plan: Plan) -> Callable[[str, str, str], str]:
    """A function (message id, destination, time) -> the encoded event of an opted-out
    number: the text events.encode gives for it, filled into the text of the first one
    instead of built and encoded each time (docs/architecture.md D17)."""

    def encoded(message_id: str, destination: str, at: str) -> str:
        event = events.message_event(
            cid,
            message_id,
            destination,
            plan.source,
            None,
            trunk=plan.trunk,
            detail="on the opt-out list",
        )
        event["at"] = at
        event["type"] = str(State.SUPPRESSED)
        return events.encode(event)

    # Stand-ins that JSON spells with escapes, found once each in the text (else each event is
    # built in full); the values put in their place (an id of hex digits, '-' and digits, a
    # number's digits, an ISO time) are spelled in JSON as they are.
    slots = ("\0\1", "\0\2", "\0\3")
    text = encoded(*slots)
    spelled = [json.dumps(slot)[1:-1] for slot in slots]
    sample = keys.message_id(cid, 0)
    if json.dumps(sample) != f'"{sample}"' or any(text.count(s) != 1 for s in spelled):
        return encoded
    template = text.replace("{", "{{").replace("}", "}}")
    for n, slot in enumerate(spelled):
        template = template.replace(slot, f"{{{n}}}")
    return template.format


def enqueue_campaign(
    source: str,
    text: str,
    recipients: Iterable[str | Mapping[str, object]],
    name: str | None = None,
    *,
    ttl_s: int | None = None,
    trunk: str | None = None,
    priority: bool = False,
    send_at: Any = None,
    window: str | None = None,
    timezone: str | None = None,
    idempotency_key: str | None = None,
    dry_run: bool = False,
    settings: Settings | None = None,
) -> EnqueueResult | dict[str, Any]:
    """Queue a campaign: normalise and de-duplicate the numbers, render a templated text per
    recipient, leave out opted-out numbers, store the text once, and publish its batches.

    recipients: numbers, or objects {"destination": "...", "fields": {"name": "Ana"},
    "reference": "order-1017"} (fields and reference optional; a reference is at most 64
    characters and comes back in the message's events, report row and lookup).
    send_at: a timezone-aware datetime (or ISO 8601 text with a zone) to send at; window:
    quiet hours "09:00-20:00" in each recipient's local time (timezone: the fallback zone).
    A campaign of one message, or one made with priority=True, takes the trunk's urgent lane.
    With idempotency_key, a repeat within 24 hours returns the same campaign. dry_run:
    validate and return the preview (a dict), writing nothing.
    Raises ledger.errors.InputError for bad input (nothing is queued)."""
    producer = Producer(settings)
    try:
        options: dict[str, Any] = {
            "name": name,
            "ttl_s": ttl_s,
            "trunk": trunk,
            "priority": priority,
            "send_at": parse_send_at(send_at),
            "window": window,
            "timezone": timezone,
        }
        numbers = normalize_recipients(recipients)
        plan = producer.plan(source, text, numbers, **options)
        if dry_run:
            return plan.summary()
        return producer.write(plan, idempotency_key=idempotency_key)
    finally:
        producer.close()


def parse_send_at(value: Any) -> datetime | None:
    """A send time from text (ISO 8601) or a datetime; None stays None."""
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise InputError(
            "send_at must be ISO 8601 text with a time zone, or a datetime", code="invalid_send_at"
        )
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"send_at {value!r} is not an ISO 8601 time (e.g. 2026-12-24T09:00+01:00)",
            code="invalid_send_at",
        ) from None

"""Store a campaign in the ledger and queue its batches: the producer's one write path.

Everything is validated before the first write, so bad input enqueues nothing.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery

from ledger import keys, records
from ledger.dispatch import celery_config, send
from ledger.errors import InputError, SmsqError
from ledger.settings import Settings, load_settings
from ledger.states import CampaignState, State
from producer.numbers import InvalidNumber, NumbersResult, Rejection, normalize, normalize_many
from producer.segments import segment_info

# --json lists this many rejections; the rest are counted.
MAX_REPORTED_REJECTIONS = 100
# Batches written per Redis round trip.
WRITE_CHUNK_BATCHES = 200
# Broker commands (a task and its task-sent event are two) buffered per Redis round trip.
PUBLISH_CHUNK_COMMANDS = 1000


@dataclass
class EnqueueResult:
    campaign_id: str
    queued: int
    rejected: int
    duplicates: int
    rejections: list[Rejection] = field(repr=False)
    segments: int
    encoding: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "queued": self.queued,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "rejections": [
                {"line": r.line, "value": r.value, "reason": r.reason}
                for r in self.rejections[:MAX_REPORTED_REJECTIONS]
            ],
            "segments": self.segments,
            "encoding": self.encoding,
        }


def _require_utf8(label: str, value: str) -> None:
    """Text a terminal in another encoding passes as lone surrogates, which Redis cannot store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"the {label} is not valid UTF-8 text (check the terminal's encoding)"
        ) from None


class Producer:
    """Writes campaigns to Redis and publishes their batches; reuse one per process."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.celery = Celery("smsq-producer")
        self.celery.config_from_object(celery_config(self.settings))

    def validate(self, source: str, text: str) -> tuple[str, Any]:
        if not text or not text.strip():
            raise InputError("the message text is empty")
        _require_utf8("message text", text)
        _require_utf8("source", source)
        try:
            source = normalize(source)
        except InvalidNumber as exc:
            raise InputError(f"invalid source number {source!r}: {exc.reason}") from None
        info = segment_info(text)
        if info.segments > self.settings.max_segments:
            raise InputError(
                f"the text needs {info.segments} SMS segments ({info.encoding}); "
                f"the limit is {self.settings.max_segments} (SMSQ_MAX_SEGMENTS)"
            )
        return source, info

    def enqueue(
        self,
        source: str,
        text: str,
        numbers: NumbersResult,
        *,
        name: str | None = None,
        ttl_s: int | None = None,
        trunk: str | None = None,
        priority: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> EnqueueResult:
        """Store and queue a campaign for already-parsed numbers; raises InputError if none."""
        source, info = self.validate(source, text)
        if name is not None:
            _require_utf8("campaign name", name)
        if not numbers.numbers:
            raise InputError(f"no valid destination number ({len(numbers.rejections)} rejected)")
        ttl_s = ttl_s or self.settings.ttl_s
        if ttl_s <= 0:
            raise InputError("the time to live must be a positive number of seconds")
        trunk = self._trunk(trunk)
        cid = secrets.token_hex(8)
        batch_size = self.settings.batch_size
        total = len(numbers.numbers)
        batches = (total + batch_size - 1) // batch_size
        priority = priority or total == 1
        now_s, now_us = self.redis.time()
        created_at = now_s + now_us / 1_000_000
        try:
            self._write_batches(cid, numbers.numbers, batch_size, info.segments, progress)
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(keys.counts(cid), str(State.QUEUED), total)
            pipe.hset(
                keys.campaign(cid),
                mapping={
                    "source": source,
                    "text": text,
                    "name": name or "",
                    "trunk": trunk,
                    "total": total,
                    "batch_size": batch_size,
                    "batches": batches,
                    "created_at": f"{created_at:.3f}",
                    "expires_at": f"{created_at + ttl_s:.3f}",
                    "state": str(CampaignState.ACTIVE),
                    "encoding": info.encoding,
                    "segments": info.segments,
                    "priority": "1" if priority else "0",
                },
            )
            pipe.zadd(keys.campaigns(), {cid: created_at})
            if priority:
                # The trunk's urgent lane: every worker that claims takes these first.
                lane = [f"{cid}|{i // batch_size}|{i}" for i in range(total)]
                for start in range(0, total, 1000):
                    pipe.rpush(keys.urgent(trunk), *lane[start : start + 1000])
            pipe.execute()
        except BaseException:
            self._discard(cid, batches)
            raise
        try:
            self._publish(cid, batches, trunk, priority)
        except Exception as exc:
            raise SmsqError(
                f"campaign {cid} is stored but not all its batches were queued ({exc}); "
                f"run `smsq resume {cid}` once Redis is reachable"
            ) from None
        return EnqueueResult(
            campaign_id=cid,
            queued=total,
            rejected=len(numbers.rejections),
            duplicates=numbers.duplicates,
            rejections=numbers.rejections,
            segments=info.segments,
            encoding=info.encoding,
        )

    def _trunk(self, trunk: str | None) -> str:
        configured = self.settings.trunks()
        name = trunk or next(iter(configured))
        if name not in configured:
            raise InputError(f"no trunk {name!r} (configured: {', '.join(configured)})")
        return name

    def _write_batches(
        self,
        cid: str,
        numbers: list[str],
        batch_size: int,
        segments: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pending = 0
        queued = records.queued
        for start in range(0, len(numbers), batch_size):
            chunk = numbers[start : start + batch_size]
            data = b"".join([queued(number, segments) for number in chunk])
            pipe.set(keys.batch(cid, start // batch_size), data)
            pending += len(chunk)
            if len(pipe) >= WRITE_CHUNK_BATCHES:
                pipe.execute()
                if progress:
                    progress(pending)
                pending = 0
        pipe.execute()
        if progress and pending:
            progress(pending)

    def _publish(self, cid: str, batches: int, trunk: str, priority: bool) -> None:
        """ledger.dispatch.dispatch() with kombu's publish batching: one Redis round trip per
        PUBLISH_CHUNK_COMMANDS instead of two per task (10,000 tasks: 6.8 s -> 3.8 s on 2
        cores). A failure discards what was not yet sent, as dispatch() would stop there."""
        with self.celery.producer_or_acquire() as producer:
            # kombu before 5.7 (allowed by celery>=5.4) has no Producer.batch: publish one by one.
            batch = getattr(producer, "batch", None)
            with batch(max_size=PUBLISH_CHUNK_COMMANDS) if batch else contextlib.nullcontext():
                for batch_no in range(batches):
                    send(self.celery, producer, cid, batch_no, trunk, priority)

    def _discard(self, cid: str, batches: int) -> None:
        """Best effort: remove what a failed enqueue wrote, so nothing is half-enqueued."""
        try:
            names = [keys.batch(cid, b) for b in range(batches)]
            names += [keys.counts(cid), keys.campaign(cid)]
            for start in range(0, len(names), 1000):
                self.redis.delete(*names[start : start + 1000])
            self.redis.zrem(keys.campaigns(), cid)
        except redis.RedisError:
            pass

    def close(self) -> None:
        self.redis.close()


def enqueue_campaign(
    source: str,
    text: str,
    destinations: Iterable[str],
    name: str | None = None,
    *,
    ttl_s: int | None = None,
    trunk: str | None = None,
    priority: bool = False,
    settings: Settings | None = None,
) -> EnqueueResult:
    """Queue a campaign: normalise and de-duplicate the numbers, store the text once, and
    publish its batches. Raises ledger.errors.InputError for bad input (nothing is queued).
    A campaign of one message, or one made with priority=True, takes the trunk's urgent lane:
    its messages go before any campaign's, within the same rate limit."""
    producer = Producer(settings)
    try:
        return producer.enqueue(
            source,
            text,
            normalize_many(destinations),
            name=name,
            ttl_s=ttl_s,
            trunk=trunk,
            priority=priority,
        )
    finally:
        producer.close()

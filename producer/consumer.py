"""Read smsq's events as a Redis stream consumer group, from any Python application.

Each group gets every event; within a group each event goes to one consumer, is acked once
handled, and is handed out again if its consumer died first (at-least-once delivery).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ResponseError

from ledger import connection, events
from ledger.settings import Settings, load_settings

# The stream smsq writes to unless SMSQ_EVENTS_STREAM says otherwise.
DEFAULT_STREAM: str = Settings.model_fields["events_stream"].default
# Entries fetched per XREADGROUP: big enough to amortise the round trip, small enough that a
# crash leaves few read-but-unhandled entries to hand out again.
DEFAULT_COUNT = 100
# How long one XREADGROUP waits for new entries; bounds how late stop() takes effect.
DEFAULT_BLOCK_MS = 1000


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event handed to this consumer: the stream entry id and the decoded event."""

    id: str
    event: dict[str, Any]


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class EventConsumer:
    """A consumer in a consumer group of the events stream.

    ``for delivery in consumer:`` blocks for new events and acks each one when the loop body
    for it finishes (when the next one is asked for); if the body raises, or the process dies,
    the event stays pending and is delivered again. ``run(handler)`` does the same with a
    function. Use a stable ``consumer`` name per instance (a host or pod name): a consumer
    restarted under the same name first gets back what it had read but not acked.

    ``start`` applies only when the group is created: ``"0"`` (the default) gives a new group
    every event still on the stream, ``"$"`` only those added from then on.

    With ``claim_idle_ms``, entries another consumer of the group read but has not acked for
    that long (it crashed and will not come back under its name) are claimed and handled here.
    An entry's idle time runs from when it was read, and a read fetches ``count`` entries, so
    set it well above ``count`` times the slowest handler, or a live consumer's entries are
    taken from it and handled twice.
    """

    def __init__(
        self,
        redis_or_url: redis.Redis | str,
        group: str,
        consumer: str,
        *,
        stream: str = DEFAULT_STREAM,
        start: str = "0",
        count: int = DEFAULT_COUNT,
        block_ms: int = DEFAULT_BLOCK_MS,
        claim_idle_ms: int | None = None,
    ) -> None:
        if not group or not consumer:
            raise ValueError("group and consumer names must not be empty")
        self._owned = isinstance(redis_or_url, str)
        self.redis: redis.Redis = (
            redis.Redis.from_url(redis_or_url) if isinstance(redis_or_url, str) else redis_or_url
        )
        self.group = group
        self.consumer = consumer
        self.stream = stream
        self.start = start
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._stopping = threading.Event()
        self._group_ready = False

    @classmethod
    def from_settings(
        cls, group: str, consumer: str, settings: Settings | None = None, **options: Any
    ) -> EventConsumer:
        """A consumer of SMSQ_EVENTS_STREAM on SMSQ_REDIS_URL (or its Sentinel primary)."""
        settings = settings or load_settings()
        client = connection.sync_client(settings)
        found = cls(client, group, consumer, stream=settings.events_stream, **options)
        found._owned = True
        return found

    def ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id=self.start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def ack(self, entry_id: str) -> None:
        self.redis.xack(self.stream, self.group, entry_id)

    def stop(self) -> None:
        """Make the loop return after the current read, for good; safe from a signal handler
        or another thread."""
        self._stopping.set()

    def __iter__(self) -> Iterator[Delivery]:
        return self.consume()

    def consume(self, *, follow: bool = True) -> Iterator[Delivery]:
        """Yield deliveries, acking each when the next is asked for.

        Without ``follow`` it returns once nothing new is waiting, instead of blocking.
        """
        for delivery in self._deliveries(follow):
            yield delivery
            # Reached only when the caller asks for the next one: the body did not raise.
            self.ack(delivery.id)

    def run(self, handler: Callable[[dict[str, Any]], object], *, follow: bool = True) -> int:
        """Call ``handler(event)`` for each event and ack it once the handler returns.

        An exception from the handler stops the loop and leaves that event pending, so it
        is delivered again on the next start. Returns how many events were handled.
        """
        handled = 0
        for delivery in self.consume(follow=follow):
            handler(delivery.event)
            handled += 1
        return handled

    def close(self) -> None:
        if self._owned:
            self.redis.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _deliveries(self, follow: bool) -> Iterator[Delivery]:
        if not self._group_ready:
            self.ensure_group()
        # What this consumer read before a crash and never acked comes first, oldest first.
        yield from self._read_from("0")
        next_claim_s = 0.0
        while not self._stopping.is_set():
            if self.claim_idle_ms is not None and time.monotonic() >= next_claim_s:
                yield from self._claim_stale()
                next_claim_s = time.monotonic() + self.claim_idle_ms / 2000
            reply = self.redis.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=self.count,
                block=self.block_ms if follow else None,
            )
            entries = reply[0][1] if reply else []
            if not entries and not follow:
                return
            for entry_id, fields in entries:
                yield from self._deliver(_str(entry_id), fields)

    def _read_from(self, after: str) -> Iterator[Delivery]:
        """This consumer's own pending entries after ``after`` (XREADGROUP with an id)."""
        while True:
            reply = self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: after}, count=self.count
            )
            entries = reply[0][1] if reply else []
            if not entries:
                return
            for entry_id, fields in entries:
                after = _str(entry_id)
                yield from self._deliver(after, fields)

    def _claim_stale(self) -> Iterator[Delivery]:
        """Take over entries other consumers of the group left unacked for claim_idle_ms."""
        cursor = "0-0"
        while True:
            cursor_raw, entries, *_deleted = self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms or 0,
                start_id=cursor,
                count=self.count,
            )
            for entry_id, fields in entries:
                yield from self._deliver(_str(entry_id), fields)
            cursor = _str(cursor_raw)
            if cursor == "0-0":
                return

    def _deliver(self, entry_id: str, fields: dict[Any, Any] | None) -> Iterator[Delivery]:
        if not fields:
            # A pending entry the stream trimmed away (SMSQ_EVENTS_MAXLEN) before it was
            # handled: nothing is left to deliver, so only clear it from the pending list.
            self.ack(entry_id)
            return
        yield Delivery(entry_id, events.decode(fields))

"""kombu's Redis and Sentinel transports, made safe for a full Redis (maxmemory reached,
noeviction): a worker neither stops nor loses a task while Redis refuses writes
(docs/reliability.md "A full Redis").

kombu keeps a task it has taken from a queue (BRPOP) in an "unacked" hash and index until
Celery acknowledges it, so that a worker that dies gives it back after the visibility timeout.
A full Redis refuses a MULTI with anything in it, even commands it accepts alone (HDEL, ZREM,
LLEN), and kombu wraps most of its calls in one. Unchanged, moving a task just taken to the
unacked set failed (the task, already out of its list, was lost) and so did acknowledging one,
stopping the worker ("Unrecoverable error: OutOfMemoryError"). Here:

- a task taken is moved to the unacked set again until Redis accepts it, the task held in
  memory meanwhile: the worker's consumer takes nothing else while it waits (its pool
  processes go on sending), and a warm shutdown waits too;
- an acknowledgement is sent without MULTI: HDEL and ZREM free memory, which Redis accepts;
- a task given back (a rejection, a worker stopping) that Redis refuses to queue again stays
  in the unacked set, which gives it back after the visibility timeout once there is room; the
  sweep that does so waits for room too (its lock is a write);
- declaring a queue that exists (Celery does so when a remote-control reply was refused, and
  on reconnecting) reads its length without MULTI and accepts a refused binding that is there.

Events and Celery's worker heartbeats are PUBLISHed, which a full Redis accepts.

kombu finds a transport by the broker URL's scheme (redis, rediss, sentinel), also when it
moves to the next sentinel of a Sentinel URL, so importing this module points those schemes at
these classes in this process; dispatch imports it, so every Celery app smsq makes uses them.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from redis.exceptions import OutOfMemoryError, ResponseError

log = structlog.stdlib.get_logger("smsq.broker")

# Retrying a refused move to the unacked set: the first wait, the longest, and how often a
# wait that goes on is logged again.
FIRST_WAIT_S = 0.05
MAX_WAIT_S = 1.0
LOG_EVERY_S = 10.0


def refused_for_memory(exc: ResponseError) -> bool:
    """Whether Redis refused a command because it is full: OOM (redis-py's
    OutOfMemoryError), or EXECABORT naming OOM (a transaction queued just before memory ran
    out, its EXEC after)."""
    return isinstance(exc, OutOfMemoryError) or "OOM command not allowed" in str(exc)


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        """Move a task just taken from its queue to the unacked set, waiting for a full Redis
        to accept it: the task is out of its queue already, so giving up would lose it."""
        wait_s, logged_at = FIRST_WAIT_S, 0.0
        while True:
            try:
                super().append(message, delivery_tag)
                break
            except ResponseError as exc:
                if not refused_for_memory(exc):
                    raise
                if time.monotonic() - logged_at >= LOG_EVERY_S:
                    logged_at = time.monotonic()
                    log.warning("broker_full_task_held", delivery_tag=delivery_tag, error=str(exc))
                time.sleep(wait_s)
                wait_s = min(2 * wait_s, MAX_WAIT_S)
        if logged_at:
            log.info("broker_task_unacked", delivery_tag=delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        # Acknowledging (and rejecting without requeue) pass no pipe: one round trip without
        # MULTI. The payload goes first: an index entry left alone is harmless (the sweep finds
        # no payload and drops it). A transaction passes its own pipe and keeps kombu's way.
        if pipe is not None:
            return super()._remove_from_indices(delivery_tag, pipe)
        with self.channel.conn_or_acquire() as client:
            return (
                client.pipeline(transaction=False)
                .hdel(self.unacked_key, delivery_tag)
                .zrem(self.unacked_index_key, delivery_tag)
            )

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        # The transaction that queues a task again is refused whole, so the task stays in the
        # unacked set, for the sweep.
        try:
            super().restore_by_tag(tag, client=client, leftmost=leftmost)
        except ResponseError as exc:
            if not refused_for_memory(exc):
                raise
            log.warning("broker_full_task_left_unacked", delivery_tag=tag, error=str(exc))

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        # The sweep runs when a consumer (re)connects and then every few seconds; it starts by
        # taking a lock (SET NX), which a full Redis refuses. It tries again next time.
        try:
            super().restore_visible(*args, **kwargs)
        except ResponseError as exc:
            if not refused_for_memory(exc):
                raise
            log.warning("broker_full_sweep_skipped", error=str(exc))


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _size(self, queue: str) -> int:
        # kombu reads the lengths of a queue's priority lists in a MULTI; reads alone pass.
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for pri in self.priority_steps:
                pipe.llen(self._q_for_pri(queue, pri))
            return sum(size for size in pipe.execute() if isinstance(size, int))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)
        except ResponseError as exc:
            if not refused_for_memory(exc):
                raise
            member = self.sep.join([routing_key or "", pattern or "", queue or ""])
            with self.conn_or_acquire() as client:
                if not client.sismember(self.keyprefix_queue % (exchange,), member):
                    raise


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORT_ALIASES.update(
    redis=f"{__name__}:Transport",
    rediss=f"{__name__}:Transport",
    sentinel=f"{__name__}:SentinelTransport",
)

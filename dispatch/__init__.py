"""How work reaches the workers: Celery task names, queues and broker settings.

The producer, the CLI and the workers' supervisors all publish batches through dispatch();
only the worker package defines the task itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue

# Imported for what it does: kombu's redis, rediss and sentinel schemes name smsq's
# transports, safe for a full Redis (docs/reliability.md "A full Redis").
from dispatch import broker  # noqa: F401
from ledger import connection, keys
from ledger.settings import Settings

if TYPE_CHECKING:
    from ledger.store import Ledger

SEND_BATCH = "smsq.send_batch"
PRIORITY_QUEUE = "smsq.priority"
CAMPAIGN_QUEUE = "smsq.campaigns"
# Unacked tasks come back after this long. A task only hands its batch to the worker
# process's engine (worker.engine.TAKE_WAIT_S at most, then the batch is held or parked), so
# a task is never unacked this long unless its worker died; the batches a dead worker held or
# waited for come back sooner (recover.lua).
VISIBILITY_TIMEOUT_S = 300


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


# Every queue smsq publishes to, most urgent first.
QUEUES = (_queue(PRIORITY_QUEUE), _queue(CAMPAIGN_QUEUE))


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for side-effecting tasks (docs/architecture.md D9)."""
    broker_url, sentinel_options = connection.broker(settings)
    tls = connection.broker_ssl(settings)
    return ({"broker_use_ssl": tls} if tls else {}) | {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            # Poll queues in the order given, so the priority queue always drains first.
            "queue_order_strategy": "priority",
            **sentinel_options,
        },
        "task_queues": list(QUEUES),
        "task_default_queue": CAMPAIGN_QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


def task_name(trunk: str) -> str:
    """The name Flower shows for a batch of this trunk (Celery's shadow name)."""
    return f"{SEND_BATCH}[{trunk}]"


def send(app: Any, producer: Any, cid: str, batch_no: int, trunk: str, priority: bool) -> None:
    """Publish one batch's task on `producer`, whose connection has declared the queues
    (declare_queues). Its arguments' texts for Flower are given, as Celery's own would read,
    and the queue is not declared again per task: a third of the producer's time per task
    (docs/performance.md "Ten fields per recipient")."""
    args = [cid, batch_no]
    kwargs = {"trunk": trunk, "urgent": priority}
    app.send_task(
        SEND_BATCH,
        args=args,
        kwargs=kwargs,
        queue=PRIORITY_QUEUE if priority else CAMPAIGN_QUEUE,
        producer=producer,
        shadow=task_name(trunk),
        argsrepr=repr(args),
        kwargsrepr=repr(kwargs),
        declare=(),
    )


def declare_queues(producer: Any) -> None:
    """Declare smsq's queues on the producer's connection (once per connection: kombu
    remembers), before send() publishes on it."""
    for queue in QUEUES:
        producer.maybe_declare(queue)


def dispatch(
    app: Any, cid: str, batches: Iterable[int], *, trunk: str, priority: bool = False
) -> int:
    """Publish one send task per batch; returns how many were published."""
    count = 0
    with app.producer_or_acquire() as producer:
        declare_queues(producer)
        for batch_no in batches:
            send(app, producer, cid, batch_no, trunk, priority)
            count += 1
    return count


async def dispatch_parked(
    app: Any, ledger: Ledger, *, due_only: bool = True, stopped: frozenset[str] = frozenset()
) -> int:
    """Put parked batches back on the queues, except those of trunks in `stopped` (halted or
    backing off); a priority campaign's go on the priority queue. A batch leaves the parked
    set only once published and only if it was not parked again meanwhile, so a failure
    between the two leaves it parked, never with no task at all."""
    published = 0
    campaigns: dict[str, tuple[str, bool] | None] = {}
    for member in await ledger.due_parked(due_only=due_only):
        cid, batch_no = keys.parse_batch_member(member)
        if cid not in campaigns:
            c = await ledger.campaign(cid)
            campaigns[cid] = (c.trunk, c.priority) if c else None
        found = campaigns[cid]
        if found is not None and found[0] in stopped:
            continue
        lease = await ledger.lease(member, force=not due_only)
        if lease is None:
            continue  # another worker's supervisor took it
        if found is not None:
            published += dispatch(app, cid, [batch_no], trunk=found[0], priority=found[1])
        # A campaign that is gone (purged) leaves nothing to publish: its member just goes.
        await ledger.unlease(member, *lease)
    return published

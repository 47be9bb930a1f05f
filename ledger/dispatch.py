"""How work reaches the workers: Celery task names, queues and broker settings.

The producer, the CLI and the workers all publish batches through dispatch(); only the worker
package defines the tasks themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue

from ledger.settings import Settings

if TYPE_CHECKING:
    from ledger.store import Ledger

SEND_BATCH = "smsq.send_batch"
PRIORITY_QUEUE = "smsq.priority"
CAMPAIGN_QUEUE = "smsq.campaigns"
# Unacked tasks come back after this long: well above the longest batch (100 messages at
# the lowest sensible rate), so Redis rarely hands a running batch to a second worker (which
# would be harmless: claims are atomic). Tasks are never delayed with countdown or ETA
# (parked batches wait in Redis), so this only bounds how long the tasks a killed worker had
# prefetched stay invisible; the batches it was sending come back sooner (worker/supervisor.py).
VISIBILITY_TIMEOUT_S = 3600


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for side-effecting tasks (DESIGN.md decision 7)."""
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            # Poll queues in the order given, so the priority queue always drains first.
            "queue_order_strategy": "priority",
        },
        "task_queues": [_queue(PRIORITY_QUEUE), _queue(CAMPAIGN_QUEUE)],
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


def dispatch(app: Any, cid: str, batches: Iterable[int], *, priority: bool = False) -> int:
    """Publish one send task per batch; returns how many were published."""
    queue = PRIORITY_QUEUE if priority else CAMPAIGN_QUEUE
    count = 0
    with app.producer_or_acquire() as producer:
        for batch_no in batches:
            app.send_task(SEND_BATCH, args=[cid, batch_no], queue=queue, producer=producer)
            count += 1
    return count


async def dispatch_parked(app: Any, ledger: Ledger, *, due_only: bool = True) -> int:
    """Put parked batches (stopped by a halt, a backoff or spent retries) back on the queues;
    a single message goes back on the priority queue. A batch leaves the parked set only once
    published, so a failure between the two leaves it parked, never with no task at all."""
    published = 0
    priority: dict[str, bool] = {}
    for cid, batch_no in await ledger.unpark(due_only=due_only):
        if cid not in priority:
            c = await ledger.campaign(cid)
            priority[cid] = bool(c and c.priority)
        if not await ledger.take_parked(cid, batch_no, force=not due_only):
            continue  # another worker's supervisor took it
        published += dispatch(app, cid, [batch_no], priority=priority[cid])
        await ledger.done_parked(cid, batch_no)
    return published

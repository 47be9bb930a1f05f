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
# Unacked tasks come back after this long; well above the longest batch (100 messages at
# the lowest sensible rate) so Redis never hands a running batch to a second worker.
VISIBILITY_TIMEOUT_S = 6 * 3600


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


async def redispatch_parked(app: Any, ledger: Ledger) -> int:
    """Publish a task for every batch that still has queued messages, in active campaigns:
    after a halt is lifted, the batches that stopped for it have no task left."""
    published = 0
    for c in await ledger.active_campaigns():
        if c.state == "active":
            batches = await ledger.batches_with_queued(c)
            published += dispatch(app, c.id, batches, priority=c.priority)
    return published

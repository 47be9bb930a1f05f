"""The Celery tasks: send_batch takes a campaign id and a batch number, never recipients."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from redis.exceptions import RedisError

from ledger.dispatch import SEND_BATCH
from worker.app import app, settings
from worker.runtime import runtime
from worker.sender import RETRY_LATER

log = structlog.stdlib.get_logger("smsq.worker")

# Redis unreachable mid-batch: try the batch again this much later (claims make it safe).
REDIS_RETRY_S = 5


@app.task(name=SEND_BATCH, bind=True, max_retries=None)
def send_batch(self: Task, campaign_id: str, batch: int) -> dict[str, Any]:
    """Send the queued messages of one batch of a campaign."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=self.request.id, campaign_id=campaign_id)
    rt = runtime(settings)
    try:
        result = rt.run(rt.sender.send_batch(campaign_id, batch))
    except RedisError as exc:
        log.warning("redis_error", error=str(exc), retry_in_s=REDIS_RETRY_S)
        raise self.retry(countdown=REDIS_RETRY_S, exc=exc) from None
    if result.stopped == RETRY_LATER:
        raise self.retry(countdown=settings.retry_later_s)
    return result.as_dict()

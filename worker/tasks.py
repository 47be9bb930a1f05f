"""The Celery tasks: send_batch takes a campaign id and a batch number, never recipients."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from redis.exceptions import RedisError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from ledger.dispatch import SEND_BATCH
from worker.app import app, settings
from worker.runtime import runtime

log = structlog.stdlib.get_logger("smsq.worker")

# Redis unreachable mid-batch (a restart, a failover): the task keeps the batch and tries it
# again with backoff for this long, rather than asking Celery to retry through that same
# Redis. A claim makes each retry safe; claims cut short become unknown, never resent.
REDIS_PATIENCE_S = 600
REDIS_MAX_WAIT_S = 10


def _log_redis_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "redis_error", error=str(exc), attempt=state.attempt_number, retry_in_s=state.upcoming_sleep
    )


@app.task(name=SEND_BATCH, bind=True)
def send_batch(self: Task, campaign_id: str, batch: int) -> dict[str, Any]:
    """Send the queued messages of one batch of a campaign."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=self.request.id, campaign_id=campaign_id)
    rt = runtime(settings)
    for attempt in Retrying(
        retry=retry_if_exception_type(RedisError),
        wait=wait_random_exponential(multiplier=0.5, max=REDIS_MAX_WAIT_S),
        stop=stop_after_delay(REDIS_PATIENCE_S),
        before_sleep=_log_redis_retry,
        reraise=True,
    ):
        with attempt:
            result = rt.run(rt.sender.send_batch(campaign_id, batch))
    return result.as_dict()

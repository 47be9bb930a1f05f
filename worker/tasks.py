"""The Celery task: send_batch takes a campaign id and a batch number, never recipients, and
hands the batch to this process's sending engine (worker/engine.py)."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task, shared_task
from redis.exceptions import RedisError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from dispatch import SEND_BATCH
from worker.engine import TAKE_WAIT_S
from worker.runtime import runtime

log = structlog.stdlib.get_logger("smsq.worker")

# Redis unreachable (a restart, a failover): the task keeps trying to hand its batch over
# with backoff for this long, rather than asking Celery to retry through that same Redis.
REDIS_PATIENCE_S = 600
REDIS_MAX_WAIT_S = 10


def _log_redis_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "redis_error", error=str(exc), attempt=state.attempt_number, retry_in_s=state.upcoming_sleep
    )


@shared_task(name=SEND_BATCH, bind=True)
def send_batch(
    self: Task, campaign_id: str, batch: int, trunk: str = "", urgent: bool = False
) -> dict[str, Any]:
    """Hand one batch of a campaign to this process's engine; returns once it is held (the
    engine sends it from then on) or set aside. `trunk` is for Flower's eyes."""
    rt = runtime(self.app.smsq_settings)
    for attempt in Retrying(
        retry=retry_if_exception_type(RedisError),
        wait=wait_random_exponential(multiplier=0.5, max=REDIS_MAX_WAIT_S),
        stop=stop_after_delay(REDIS_PATIENCE_S),
        before_sleep=_log_redis_retry,
        reraise=True,
    ):
        with attempt:
            outcome = rt.run(rt.engine.take(campaign_id, batch, urgent=urgent), TAKE_WAIT_S + 60)
    log.info(
        "batch_taken",
        task_id=self.request.id,
        campaign_id=campaign_id,
        batch=batch,
        outcome=outcome,
    )
    return {"campaign_id": campaign_id, "batch": batch, "trunk": trunk, "outcome": outcome}

"""The naive baseline the benchmark compares smsq with: one Celery task per SMS, a synchronous
httpx POST per task, Celery's own `rate_limit`, one `apply_async` per message.

This is how a user first writes it, kept honest: one pooled httpx.Client per process (not a
connection per SMS), the auth and media type the API requires, and Celery's defaults otherwise
(prefork, prefetch multiplier 4, early acks, the `celery` queue). Run by the benchmark as
`celery -A ops.bench.baseline worker --concurrency N`, configured by the BASELINE_* variables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import httpx
from celery import Celery, Task, signals

TASK_NAME = "baseline.send_sms"
# The benchmark waits for this line in the worker's log (the worker logs at WARNING, Celery's
# default, so its own "ready." line is not printed).
READY_LINE = "baseline worker ready"

_client: httpx.Client | None = None


def _http() -> httpx.Client:
    """One client per worker process, made after the fork."""
    global _client
    if _client is None:
        _client = httpx.Client(
            base_url=os.environ["BASELINE_API_URL"],
            auth=(os.environ["BASELINE_USERNAME"], os.environ["BASELINE_PASSWORD"]),
            headers={"Content-Type": "application/vnd.api+json"},
        )
    return _client


def send_sms(source: str, destination: str, text: str) -> str:
    """POST one SMS; an error fails the task (no retry policy: the naive first version)."""
    body = {
        "data": {
            "type": "outbound_messages",
            "attributes": {"destination": destination, "source": source, "content": text},
        }
    }
    response = _http().post("/outbound_messages", content=json.dumps(body))
    response.raise_for_status()
    return str(response.json()["data"]["id"])


def make_app(broker_url: str | None, rate_limit: str | None = None) -> tuple[Celery, Task]:
    """The app and its task; the benchmark makes one per private Redis it enqueues into."""
    app = Celery("smsq-baseline", broker=broker_url)
    task = app.task(name=TASK_NAME, rate_limit=rate_limit)(send_sms)
    return app, task


def enqueue(task: Task, source: str, text: str, destinations: Iterable[str]) -> int:
    """One apply_async per message, as the naive app does."""
    count = 0
    for destination in destinations:
        task.apply_async(args=(source, destination, text))
        count += 1
    return count


def __getattr__(name: str) -> Any:
    """`celery -A ops.bench.baseline worker` asks for `app`: made then, from the BASELINE_*
    variables ("" rate limit: none), and kept."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    made, _ = make_app(
        os.environ.get("BASELINE_BROKER_URL"), os.environ.get("BASELINE_RATE_LIMIT") or None
    )
    globals()["app"] = made
    return made


@signals.worker_ready.connect
def _announce_ready(**_: Any) -> None:
    print(READY_LINE, flush=True)

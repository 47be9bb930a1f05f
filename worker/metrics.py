"""Prometheus figures born in workers: DIDWW API latency, retries by reason, time spent
waiting for the rate limiter, messages by outcome.

Celery's prefork pool runs tasks in several processes, so prometheus_client's multiprocess
mode is used: each process writes its figures to files in PROMETHEUS_MULTIPROC_DIR (set in
worker/__init__.py before prometheus_client is imported) and the worker's main process serves
them all, summed, on SMSQ_METRICS_PORT.
"""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.exposition import start_http_server

log = structlog.stdlib.get_logger("smsq.metrics")

# The `celery` command loads Flower's plugin, which imports prometheus_client before
# worker/__init__.py has set PROMETHEUS_MULTIPROC_DIR; prometheus_client chose its value
# store at that import, so choose again now that the directory is set. Metrics created below
# then write to files every process can sum.
values.ValueClass = values.get_value_class()

API_SECONDS = Histogram(
    "smsq_api_request_seconds",
    "DIDWW Outbound SMS API request time, by result",
    ["result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30),
)
RETRIES = Counter("smsq_api_retries", "Requests to DIDWW tried again, by reason", ["reason"])
LIMITER_WAIT_SECONDS = Histogram(
    "smsq_rate_limiter_wait_seconds",
    "Time a request waited for its slot under the trunk's rate limit",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
MESSAGES = Counter("smsq_worker_messages", "Messages handled by workers, by outcome", ["outcome"])


def serve(port: int) -> bool:
    """Serve every pool process's figures on port; False (logged) if the port is taken."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        log.warning("metrics_not_served", port=port, error=str(exc))
        return False
    log.info("metrics_served", port=port)
    return True

"""Prometheus figures born in workers, by trunk: DIDWW API latency, retries by reason,
messages by outcome, requests in flight, and how late claim calls run behind their slots.

Celery's prefork pool runs the sending engine in several processes, so prometheus_client's
multiprocess mode is used: each process writes its figures to files in
PROMETHEUS_MULTIPROC_DIR (set in worker/__init__.py before prometheus_client is imported)
and the worker's main process serves them all, summed, on SMSQ_METRICS_PORT.
"""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import start_http_server

log = structlog.stdlib.get_logger("smsq.metrics")

# The `celery` command loads Flower's plugin, which imports prometheus_client before
# worker/__init__.py has set PROMETHEUS_MULTIPROC_DIR; prometheus_client chose its value
# store at that import, so choose again now that the directory is set. Metrics created below
# then write to files every process can sum.
values.ValueClass = values.get_value_class()

API_SECONDS = Histogram(
    "smsq_api_request_seconds",
    "DIDWW Outbound SMS API request time, by trunk and result",
    ["trunk", "result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30),
)
RETRIES = Counter(
    "smsq_api_retries",
    "Requests to DIDWW to be tried again, by trunk and reason",
    ["trunk", "reason"],
)
MESSAGES = Counter(
    "smsq_worker_messages",
    "Messages handled by workers, by trunk and outcome",
    ["trunk", "outcome"],
)
IN_FLIGHT = Gauge(
    "smsq_in_flight_requests",
    "Requests to DIDWW awaiting their answer, by trunk",
    ["trunk"],
    multiprocess_mode="livesum",
)
CLAIMS_GIVEN_BACK = Counter(
    "smsq_claims_given_back",
    "Messages claimed by a call answered too late to be written in time, put back unwritten",
    ["trunk"],
)
CLAIMS_NOT_REPLICATED = Counter(
    "smsq_claims_not_replicated",
    "Messages claimed by a call too few replicas acknowledged in time (SMSQ_REDIS_MIN_REPLICAS),"
    " put back unwritten",
    ["trunk"],
)
CLAIM_LATENESS_SECONDS = Histogram(
    "smsq_claim_lateness_seconds",
    "How long after its reserved slot a claim call ran (CPU contention shows here)",
    ["trunk"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
CLAIM_SECONDS = Histogram(
    "smsq_claim_seconds",
    "How long a claim call took, from asking Redis to its answer (with SMSQ_REDIS_MIN_REPLICAS,"
    " the replicas' acknowledgement included)",
    ["trunk"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)


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

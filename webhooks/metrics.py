"""Prometheus figures of one delivery process (Prometheus sums or takes the max over the
processes): attempts and deliveries by outcome, and per subscription what is owed and how
late the oldest due delivery is."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import start_http_server

REGISTRY = CollectorRegistry()
ATTEMPTS = Counter(
    "smsq_webhook_attempts",
    "Requests made to subscriptions, by result: 2xx, 3xx, 4xx, 5xx, timeout, connect_error,"
    " error, address_refused",
    ["webhook", "result"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "smsq_webhook_deliveries",
    "Deliveries ended, by outcome: delivered (a 2xx), failed (given up after"
    " SMSQ_WEBHOOK_RETRY_S; listed by `smsq webhook failures`)",
    ["webhook", "outcome"],
    registry=REGISTRY,
)
LAG_SECONDS = Gauge(
    "smsq_webhook_lag_seconds",
    "Now minus the time of the oldest event still owed to a subscription (due, waiting to be"
    " retried, or being sent; 0: none)",
    ["webhook"],
    registry=REGISTRY,
)
PENDING = Gauge(
    "smsq_webhook_pending",
    "Deliveries owed to a subscription: due, waiting to be retried, or being sent",
    ["webhook"],
    registry=REGISTRY,
)


def forget(webhook: str) -> None:
    """Drop a deleted subscription's gauges, so it does not alert for ever."""
    for gauge in (LAG_SECONDS, PENDING):
        with contextlib.suppress(KeyError):
            gauge.remove(webhook)


def serve(port: int) -> None:
    """Serve /metrics on port (all interfaces, as the workers' metrics); 0: not at all."""
    if port:
        start_http_server(port, registry=REGISTRY)

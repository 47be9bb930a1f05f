"""smsq's workers: the Celery app, the send task, the DIDWW client and the rate limiter."""

import os
import tempfile

# Every pool process writes its Prometheus figures here (worker/metrics.py); it must be set
# before prometheus_client is first imported. A fresh directory per worker start, so no
# figures of an earlier run are summed in.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="smsq-metrics-")

from worker.app import app  # after the metrics directory is chosen

__all__ = ["app"]

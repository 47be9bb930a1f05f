"""smsq's workers: the Celery app, the send task, the DIDWW client and the rate limiter."""

from worker.app import app

__all__ = ["app"]

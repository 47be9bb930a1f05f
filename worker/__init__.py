"""smsq's workers: the Celery app, the send task and the sending engine (docs/architecture.md
§1 and §6). `celery -A worker worker` and `celery -A worker flower` ask this package for
`app`, which is built then, from the settings; importing the package builds nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    # PEP 562: Celery's app finder reads `worker.app` (or `worker.celery`) as an attribute.
    if name in ("app", "celery"):
        from worker.app import current_app

        return current_app()
    raise AttributeError(f"module 'worker' has no attribute {name!r}")

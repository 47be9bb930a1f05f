"""The Celery application: `celery -A worker worker` and `celery -A worker flower` load it.

Configured once here from the SMSQ_ settings; Celery's logging goes through structlog.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery, signals

from ledger.dispatch import celery_config
from ledger.errors import ConfigError
from ledger.logs import configure_logging
from ledger.settings import Settings, load_settings
from worker import runtime
from worker.supervisor import SupervisorStep


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"smsq: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _settings()
app = Celery("smsq", include=["worker.tasks"])
app.config_from_object(celery_config(settings))
app.smsq_settings = settings  # type: ignore[attr-defined]
app.steps["worker"].add(SupervisorStep)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(settings.log_level, settings.secrets())


# celeryd_init fires before Celery prints anything (its banner, the warning about running as
# root), so a worker without credentials stops with the one configuration line alone. Only
# the worker command sends it: Flower loads this app without needing DIDWW's credentials.
@signals.celeryd_init.connect
def _check_credentials(**_: Any) -> None:
    try:
        settings.require_trunks()
        settings.check_url_security()
    except ConfigError as exc:
        print(f"smsq: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@signals.worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    # Wait for the requests in flight (at most the read timeout), record their answers, and
    # park what is still queued so other workers go on with it.
    runtime.shutdown(settings.read_timeout_s + settings.connect_timeout_s)

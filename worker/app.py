"""The Celery application, configured from the SMSQ_ settings: built once per process, when
`celery -A worker ...` asks for `worker.app` (or a test calls create_app). Celery's logging
goes through structlog.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from typing import Any

from celery import Celery, signals

from dispatch import celery_config
from ledger.errors import ConfigError
from ledger.logs import configure_logging
from ledger.settings import Settings, load_settings

_app: Celery | None = None
_lock = threading.Lock()


def current_app() -> Celery:
    """This process's app, built from the environment's settings on first use; a bad setting
    stops the process with one line and exit code 2."""
    global _app
    with _lock:
        if _app is None:
            try:
                settings = load_settings()
            except ConfigError as exc:
                print(f"smsq: configuration error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            _app = create_app(settings)
        return _app


def create_app(settings: Settings) -> Celery:
    """A Celery app for these settings, with the send task, the supervisor and the signal
    handlers that configure logging, check the credentials and drain the engine."""
    # Every pool process writes its Prometheus figures here (worker/metrics.py); it must be
    # set before the metrics are created, which importing worker.supervisor does. A fresh
    # directory per worker start, so no figures of an earlier run are summed in.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="smsq-metrics-")
    from worker import runtime
    from worker.supervisor import SupervisorStep

    app = Celery("smsq", include=["worker.tasks"])
    app.config_from_object(celery_config(settings))
    app.smsq_settings = settings  # type: ignore[attr-defined]
    app.steps["worker"].add(SupervisorStep)

    def setup_logging(**_: Any) -> None:
        configure_logging(settings.log_level, settings.secrets())

    # celeryd_init fires before Celery prints anything (its banner, the warning about running
    # as root), so a worker without credentials stops with the one configuration line alone.
    # Only the worker command sends it: Flower loads this app without DIDWW's credentials.
    def check_credentials(**_: Any) -> None:
        try:
            settings.require_trunks()
            settings.check_url_security()
        except ConfigError as exc:
            print(f"smsq: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    def close_runtime(**_: Any) -> None:
        # Wait for the requests in flight (at most the read timeout), record their answers,
        # and park what is still queued so other workers go on with it.
        runtime.shutdown(settings.read_timeout_s + settings.connect_timeout_s)

    # Strong references: the handlers live as long as the app that holds them.
    app.smsq_handlers = (setup_logging, check_credentials, close_runtime)  # type: ignore[attr-defined]
    signals.setup_logging.connect(setup_logging, weak=False)
    signals.celeryd_init.connect(check_credentials, weak=False)
    signals.worker_process_shutdown.connect(close_runtime, weak=False)
    return app

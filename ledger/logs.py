"""Logging for every smsq process: structlog, JSON lines off a terminal, console on one.

Celery's and uvicorn's own loggers go through the same processors, and known secrets are
replaced by *** in every line whatever key they hide under.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "***"
# Keys whose values are never logged, whatever they hold.
SECRET_KEYS = frozenset({"password", "token", "authorization", "didww_password", "callback_token"})


class _Redactor:
    """A processor that hides secret values wherever they appear in an event."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def scrub(self, value: Any) -> Any:
        """Redact secrets in a value, looking inside dicts, lists and tuples."""
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() in SECRET_KEYS else self.scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        return value

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        # uvicorn adds an ANSI-coloured copy of its message; one copy is enough.
        event.pop("color_message", None)
        for key, value in list(event.items()):
            if key.lower() in SECRET_KEYS:
                event[key] = REDACTED
            else:
                event[key] = self.scrub(value)
        return event


def configure_logging(
    level: str = "INFO", secrets: Iterable[str] = (), json: bool | None = None
) -> None:
    """Configure structlog and the standard library's root logger once per process."""
    if json is None:
        json = not sys.stderr.isatty()
    redactor = _Redactor(secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redactor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "kombu"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # httpx logs every request URL at INFO; keep it at WARNING to stay quiet and cheap.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)

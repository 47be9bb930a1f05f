"""Tests for ledger.logs: structlog and standard-library lines (as Celery and uvicorn emit
them) come out as JSON with every known secret replaced by ***."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from ledger.logs import REDACTED, configure_logging

SECRET = "pw-SECRET"
TOKEN = "tok-SECRET"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    named = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "kombu")
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (saved, propagate) in named.items():
        logging.getLogger(name).handlers[:] = saved
        logging.getLogger(name).propagate = propagate
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_secrets_are_redacted_in_structlog_and_stdlib_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(secrets=[SECRET, TOKEN], json=True)
    structlog.stdlib.get_logger("smsq.test").warning(
        "auth_failed", detail=f"login u:{SECRET} refused", url=f"/callbacks?token={TOKEN}"
    )
    # Celery and uvicorn log through the standard library, with %-style arguments.
    logging.getLogger("celery.worker").error("connect to redis://:%s@host failed", SECRET)
    logging.getLogger("uvicorn.error").info(
        f"POST /callbacks?token={TOKEN}", extra={"color_message": f"\x1b[1m{TOKEN}\x1b[0m"}
    )
    err = capsys.readouterr().err
    assert SECRET not in err and TOKEN not in err
    structured, celery, uvicorn = lines(err)
    assert structured["event"] == "auth_failed"
    assert structured["detail"] == f"login u:{REDACTED} refused"
    assert structured["url"] == f"/callbacks?token={REDACTED}"
    assert structured["level"] == "warning"
    assert celery["event"] == f"connect to redis://:{REDACTED}@host failed"
    assert celery["logger"] == "celery.worker"
    assert celery["level"] == "error"
    assert uvicorn["event"] == f"POST /callbacks?token={REDACTED}"
    assert "color_message" not in uvicorn


def test_secret_keys_are_hidden_whatever_they_hold(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    structlog.stdlib.get_logger("smsq.test").info(
        "settings", password="anything", Authorization="Basic abc", callback_token="t", user="u"
    )
    [line] = lines(capsys.readouterr().err)
    assert line["password"] == REDACTED
    assert line["Authorization"] == REDACTED
    assert line["callback_token"] == REDACTED
    assert line["user"] == "u"


def test_tracebacks_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(secrets=[SECRET], json=True)
    try:
        raise ValueError(f"bad password {SECRET}")
    except ValueError:
        structlog.stdlib.get_logger("smsq.test").exception("crashed")
        logging.getLogger("celery.app.trace").exception("task failed")
    err = capsys.readouterr().err
    assert SECRET not in err
    structured, celery = lines(err)
    assert "ValueError: bad password ***" in structured["exception"]
    assert "ValueError: bad password ***" in celery["exception"]


def test_contextvars_are_merged(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json=True)
    structlog.contextvars.bind_contextvars(campaign_id="c1", message_id="c1-0")
    structlog.stdlib.get_logger("smsq.test").info("message_accepted")
    [line] = lines(capsys.readouterr().err)
    assert (line["campaign_id"], line["message_id"]) == ("c1", "c1-0")
    assert "timestamp" in line


def test_console_renderer_redacts_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(secrets=[SECRET], json=False)
    structlog.stdlib.get_logger("smsq.test").info("hello", detail=SECRET)
    logging.getLogger("kombu").warning("lost %s", SECRET)
    err = capsys.readouterr().err
    assert SECRET not in err
    assert err.count(REDACTED) == 2


def test_level_filters_and_httpx_is_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="WARNING", json=True)
    structlog.stdlib.get_logger("smsq.test").info("not_shown")
    logging.getLogger("httpx").info("HTTP Request: POST https://u:x@didww")
    structlog.stdlib.get_logger("smsq.test").warning("shown")
    assert [line["event"] for line in lines(capsys.readouterr().err)] == ["shown"]


def test_secrets_nested_in_dicts_and_lists_are_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(secrets=["pw-NESTED"], json=True)
    structlog.stdlib.get_logger("smsq.test").info(
        "request",
        headers={"Authorization": "Basic xyz", "X": "pw-NESTED!"},
        args=["a", ("pw-NESTED", 1)],
    )
    [line] = lines(capsys.readouterr().err)
    assert line["headers"] == {"Authorization": REDACTED, "X": f"{REDACTED}!"}
    assert line["args"] == ["a", [REDACTED, 1]]

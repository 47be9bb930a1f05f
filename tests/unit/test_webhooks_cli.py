"""`smsq webhook` on a private redis-server: add shows the secret once, list never does,
rotate, failures, delete; refused input is one line and exit 2."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from producer.cli import main


@pytest.fixture
def smsq(redis_server: Any, real_redis: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SMSQ_REDIS_URL", redis_server.url)
    monkeypatch.setenv("SMSQ_WEBHOOK_ALLOW_PRIVATE", "true")

    def call(*args: str) -> Any:
        return CliRunner().invoke(main, ["webhook", *args])

    return call


def test_add_list_rotate_delete(smsq: Any) -> None:
    added = smsq("add", "http://127.0.0.1:9/hook", "--events", "sent,failed", "--json")
    assert added.exit_code == 0, added.output
    shown = json.loads(added.output)
    assert shown["secret"].startswith("whsec_")
    assert shown["events"] == ["failed", "sent"] and shown["campaign"] is None

    listed = smsq("list", "--json")
    assert listed.exit_code == 0
    assert [json.loads(line)["id"] for line in listed.output.splitlines()] == [shown["id"]]
    assert shown["secret"] not in listed.output and "secret" not in listed.output

    rotated = smsq("rotate", shown["id"])
    assert rotated.exit_code == 0
    new = rotated.output.strip().removeprefix("secret: ")
    assert new.startswith("whsec_") and new != shown["secret"]

    assert smsq("failures").output.strip() == "no failed deliveries"
    assert smsq("delete", shown["id"]).exit_code == 0
    again = smsq("delete", shown["id"])
    assert again.exit_code == 2 and "no webhook" in again.output
    assert smsq("list").output.strip() == "no webhooks"


def test_add_prints_the_secret_once_in_text(smsq: Any) -> None:
    added = smsq("add", "http://127.0.0.1:9/hook", "--campaign", "0123456789abcdef")
    assert added.exit_code == 0, added.output
    assert "secret: whsec_" in added.output and "not shown again" in added.output
    assert "events: all" in added.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["add", "http://127.0.0.1:9/", "--events", "delivered"], "unknown event type"),
        (["add", "http://127.0.0.1:9/", "--campaign", "nope"], "not a campaign id"),
        (["add", "ftp://127.0.0.1/"], "https://host"),
        (["rotate", "wh_0000000000000000"], "no webhook"),
    ],
)
def test_refused_input(smsq: Any, args: list[str], says: str) -> None:
    result = smsq(*args)
    assert result.exit_code == 2
    assert says in result.output


def test_private_urls_refused_by_default(smsq: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSQ_WEBHOOK_ALLOW_PRIVATE", "false")
    result = smsq("add", "https://127.0.0.1/hook")
    assert result.exit_code == 2 and "private" in result.output


def test_with_json_a_refusal_is_the_problem_object(smsq: Any) -> None:
    refused = smsq("add", "http://127.0.0.1:9/", "--events", "delivered", "--json")
    assert refused.exit_code == 2
    problem = json.loads(refused.stdout)
    assert problem["code"] == "unknown_event_type" and problem["status"] == 422

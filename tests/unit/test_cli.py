"""Tests for the `smsq` command's habits: --version, help on every option, --wait on status and
resend, --recipients - and --column. Redis is fakeredis; nothing is published to Celery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import fakeredis
import fakeredis.aioredis
import pytest
from smsq_testing import SOURCE

from ledger.settings import Settings
from ledger.store import Ledger, Status
from producer import cli_common, cli_data, control
from producer.cli import main
from producer.enqueue import EnqueueResult

UK = "442079460958"
FR = "33612345678"


@pytest.fixture
def settle_after_first_look(
    monkeypatch: pytest.MonkeyPatch, async_redis: Callable[[], Any], settings: Settings
) -> Iterator[list[str]]:
    """Campaign ids put in the list are cancelled (so done) right after --wait first reads
    their status, and not before: a command that does not wait shows them not done."""
    to_settle: list[str] = []
    looked = cli_common.status_or_fail

    async def look_then_settle(ledger: Ledger, cid: str) -> Status:
        status = await looked(ledger, cid)
        if cid in to_settle:
            to_settle.remove(cid)
            assert await control.cancel(Ledger(async_redis(), settings), cid) is not None
        return status

    monkeypatch.setattr(cli_common, "status_or_fail", look_then_settle)
    yield to_settle


def test_version(smsq: Callable[..., click.testing.Result]) -> None:
    result = smsq("--version")
    assert result.exit_code == 0
    assert result.output == f"smsq, version {version('smsq')}\n"


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def test_every_command_and_option_has_help() -> None:
    context = click.Context(main)
    seen = set()
    missing = []
    for path, command in _commands(main, "smsq"):
        if not command.help:
            missing.append(path)
        for param in command.get_params(context):
            name = f"{path} {param.opts[0]}"
            seen.add(name)
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(name)
    assert missing == []


@pytest.mark.parametrize("command", ["send", "status", "resend"])
def test_wait_is_offered_with_its_exit_codes(
    smsq: Callable[..., click.testing.Result], command: str
) -> None:
    result = smsq(command, "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--wait Wait until every message is settled" in text
    assert "Exit 0 when the campaign is done" in text and "130 on Ctrl-C" in text


def test_status_wait_returns_when_the_campaign_is_done(
    smsq: Callable[..., click.testing.Result],
    make_campaign: Callable[..., str],
    settle_after_first_look: list[str],
) -> None:
    cid = make_campaign(2)
    settle_after_first_look.append(cid)
    result = smsq("status", cid, "--wait")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["cancelled", "2"] in lines and ["done", "yes"] in lines


def test_status_without_wait_does_not_wait(
    smsq: Callable[..., click.testing.Result],
    make_campaign: Callable[..., str],
    settle_after_first_look: list[str],
) -> None:
    cid = make_campaign(2)
    settle_after_first_look.append(cid)
    result = smsq("status", cid)
    assert result.exit_code == 0, result.output
    assert ["done", "no"] in [line.split() for line in result.output.splitlines()]


def test_status_wait_json(
    smsq: Callable[..., click.testing.Result],
    make_campaign: Callable[..., str],
    settle_after_first_look: list[str],
) -> None:
    cid = make_campaign(3)
    settle_after_first_look.append(cid)
    result = smsq("status", cid, "--wait", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["done"] is True and out["counts"]["cancelled"] == 3


def test_status_wait_for_no_campaign_exits_2(smsq: Callable[..., click.testing.Result]) -> None:
    result = smsq("status", "0123456789abcdef", "--wait")
    assert result.exit_code == 2
    assert result.output == "smsq: no campaign '0123456789abcdef'\n"


def test_ctrl_c_while_waiting_exits_130_and_the_campaign_goes_on(
    smsq: Callable[..., click.testing.Result],
    make_campaign: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cid = make_campaign(2)
    looked = cli_common.status_or_fail
    calls = 0

    async def interrupt_second_look(ledger: Ledger, cid: str) -> Status:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return await looked(ledger, cid)

    monkeypatch.setattr(cli_common, "status_or_fail", interrupt_second_look)
    result = smsq("status", cid, "--wait")
    assert result.exit_code == 130
    # After the progress bar's label, which goes to stderr too.
    assert result.output.endswith(
        f"\nsmsq: stopped waiting; campaign {cid} goes on (smsq status {cid})\n"
    )
    assert "Traceback" not in result.output


class FakeProducer:
    """Stands in for producer.enqueue.Producer in resend: the new campaign is written as the
    producer writes one, and nothing is published."""

    def __init__(self, make_campaign: Callable[..., str]) -> None:
        self.make_campaign = make_campaign
        self.enqueued: list[list[str]] = []

    def enqueue(self, source: str, text: str, numbers: Any, **options: Any) -> EnqueueResult:
        self.enqueued.append(list(numbers.numbers))
        cid = self.make_campaign(list(numbers.numbers))
        return EnqueueResult(cid, len(numbers.numbers), 0, 0, [], 1, "GSM-7")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("as_json", [False, True])
def test_resend_wait_waits_for_the_new_campaign(
    smsq: Callable[..., click.testing.Result],
    make_campaign: Callable[..., str],
    make_ledger: Callable[..., Ledger],
    settle_after_first_look: list[str],
    monkeypatch: pytest.MonkeyPatch,
    as_json: bool,
) -> None:
    parent = make_campaign([UK, FR])
    asyncio.run(control.cancel(make_ledger(), parent))
    fake = FakeProducer(lambda numbers: _settled_later(make_campaign(numbers)))
    monkeypatch.setattr(cli_data, "Producer", lambda settings: fake)

    def _settled_later(cid: str) -> str:
        settle_after_first_look.append(cid)
        return cid

    args = ["resend", parent, "--state", "cancelled", "--wait"]
    result = smsq(*args, *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    assert fake.enqueued == [[UK, FR]]
    if as_json:
        out = json.loads(result.output)
        assert out["parent"] == parent
        assert out["status"]["done"] is True and out["status"]["counts"]["cancelled"] == 2
    else:
        assert f"(resend of {parent}): 2 queued" in result.output
        lines = [line.split() for line in result.output.splitlines()]
        assert ["cancelled", "2"] in lines and ["done", "yes"] in lines


def _preview(result: click.testing.Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def test_recipients_from_standard_input(smsq: Callable[..., click.testing.Result]) -> None:
    stdin = f"phone number,name\n+44 20 7946 0958,Ann\n{FR},Bob\nbad,Cy\n"
    result = smsq(
        "send", "--source", SOURCE, "--recipients", "-", "--text", "Hi {name}",
        "--dry-run", "--json", input=stdin,
    )  # fmt: skip
    out = _preview(result)
    assert out["queued"] == 2 and out["rejected"] == 1
    assert out["longest_message"] in ("Hi Ann", "Hi Bob")


def test_numbers_from_standard_input(smsq: Callable[..., click.testing.Result]) -> None:
    result = smsq(
        "send", "--source", SOURCE, "--recipients", "-", "--text", "Hi", "--dry-run", "--json",
        input=f"{UK}\n{FR}\n{UK}\n",
    )  # fmt: skip
    out = _preview(result)
    assert (out["queued"], out["duplicates"]) == (2, 1)


def test_empty_standard_input_is_a_clear_error(smsq: Callable[..., click.testing.Result]) -> None:
    result = smsq("send", "--source", SOURCE, "--recipients", "-", "--text", "Hi", input="")
    assert result.exit_code == 2
    assert result.output == "smsq: recipients on standard input is empty\n"


def test_column_picks_the_number_column(
    smsq: Callable[..., click.testing.Result], tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_text(f"phone;Mobile Phone;name\n{FR};+44 20 7946 0958;Ann\n")
    result = smsq(
        "send", "--source", SOURCE, "--recipients", str(path), "--column", "mobile phone",
        "--text", "Hi {name}, your landline is {phone}", "--dry-run", "--json",
    )  # fmt: skip
    out = _preview(result)
    assert out["queued"] == 1
    assert out["longest_message"] == f"Hi Ann, your landline is {FR}"


def test_a_missing_column_lists_the_columns_found(
    smsq: Callable[..., click.testing.Result], tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_text(f"name,phone\nAnn,{UK}\n")
    result = smsq(
        "send", "--source", SOURCE, "--recipients", str(path), "--column", "mobile",
        "--text", "Hi",
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output == (
        f"smsq: recipients file '{path}' has no column named 'mobile'; the columns of its "
        "header (line 1) are 'name', 'phone'\n"
    )


def test_column_without_recipients_is_refused(smsq: Callable[..., click.testing.Result]) -> None:
    result = smsq("send", "--source", SOURCE, "--to", UK, "--column", "phone", "--text", "Hi")
    assert result.exit_code == 2
    assert "--column needs --recipients" in result.output


# --- errors: one line, or with --json the problem object the HTTP API answers ---------------


def test_json_errors_are_the_http_apis_problem_objects(
    smsq: Callable[..., click.testing.Result],
) -> None:
    result = smsq("status", "0123456789abcdef", "--json")
    assert result.exit_code == 2
    problem = json.loads(result.stdout)
    assert problem["code"] == "campaign_not_found" and problem["status"] == 404
    assert (
        problem["type"] == "/v1/docs#campaign_not_found" and "0123456789abcdef" in problem["detail"]
    )

    result = smsq("send", "--source", SOURCE, "--text", "hi", "--to", "12", "--to", "x", "--json")
    assert result.exit_code == 2
    problem = json.loads(result.stdout)
    assert problem["code"] == "no_valid_recipient"
    assert [(e["line"], e["index"], e["value"]) for e in problem["errors"]] == [
        (1, 0, "12"),
        (2, 1, "x"),
    ]


def test_without_json_an_error_is_one_line_on_stderr(
    smsq: Callable[..., click.testing.Result],
) -> None:
    result = smsq("status", "0123456789abcdef")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "smsq: no campaign '0123456789abcdef'\n"


@pytest.mark.parametrize("command", ["pause", "resume", "cancel"])
def test_control_of_an_ended_campaign_is_refused_and_changes_nothing(
    smsq: Callable[..., click.testing.Result],
    sync_redis: fakeredis.FakeRedis,
    command: str,
) -> None:
    sent = smsq("send", "--source", SOURCE, "--text", "hi", "--to", UK, "--json")
    cid = json.loads(sent.stdout)["campaign_id"]
    assert smsq("cancel", cid).exit_code == 0
    before = sync_redis.hgetall(f"smsq:campaign:{cid}")
    result = smsq(command, cid)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"smsq: campaign {cid} is cancelled")
    assert sync_redis.hgetall(f"smsq:campaign:{cid}") == before


def test_optout_add_takes_the_valid_numbers_and_lists_the_others(
    smsq: Callable[..., click.testing.Result],
) -> None:
    result = smsq("optout", "add", UK, "12")
    assert result.exit_code == 0
    assert result.stdout == "1 added (0 already on the list), 1 rejected\n"
    assert "argument 2: '12'" in result.stderr
    assert smsq("optout", "list").stdout.splitlines() == ["1 numbers on the opt-out list", UK]

    refused = smsq("optout", "add", "12")
    assert refused.exit_code == 2 and "no valid number (1 rejected)" in refused.stderr

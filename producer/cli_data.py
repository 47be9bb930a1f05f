"""The `smsq` commands about a campaign's data and the opt-out list: report, resend,
reschedule, purge, optout. producer/cli.py adds COMMANDS to the `smsq` group.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import redis

from ledger.campaigns import Campaign
from ledger.errors import InputError, SmsqError
from ledger.states import ALL_STATES, State
from ledger.store import Ledger
from producer import control
from producer import report as reports
from producer import resend as resends
from producer.cli_common import (
    EXIT_UNAVAILABLE,
    WAIT_HELP,
    errors_as_json,
    fail,
    fail_input,
    print_status,
    run,
    wait,
)
from producer.cli_common import settings as load
from producer.enqueue import (
    NotStored,
    Producer,
    StoredNotQueued,
    parse_send_at,
)
from producer.numbers import normalize_many
from producer.plan import check_schedule, rejection_items
from producer.recipients import RecipientsFileError, read_recipients

T = TypeVar("T")


@click.command()
@click.argument("campaign")
@click.option("--state", "states", default=None, help="Only these states, e.g. failed,unknown.")
@click.option("--code", "codes", default=None, help="Only these DIDWW code_ids, e.g. 2,8.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(reports.FORMATS),
    default="csv",
    show_default=True,
    help="csv: a header and a row per message; jsonl: a JSON object per line.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file (replaced if it exists) instead of standard output.",
)
def report(
    campaign: str, states: str | None, codes: str | None, fmt: str, output: Path | None
) -> None:
    """Write one row per message: its state, DIDWW id, status, code and times."""
    keep = _filter(states, codes, ALL_STATES)

    async def work(ledger: Ledger) -> None:
        c = await _campaign(ledger, campaign)
        with _open(output) as out:
            async for chunk in reports.render(ledger.redis, c, keep, fmt):
                out.write(chunk)

    run(load(), work)


def _filter(states: str | None, codes: str | None, allowed: Iterable[State]) -> reports.Filter:
    """Which messages a report or a resend takes; a bad state or code ends the command."""
    try:
        return reports.Filter(reports.parse_states(states, allowed), reports.parse_codes(codes))
    except InputError as exc:
        fail_input(exc)


async def _campaign(ledger: Ledger, cid: str) -> Campaign:
    c = await ledger.campaign(cid)
    if c is None:
        fail(f"no campaign {cid!r}", problem="campaign_not_found")
    return c


@contextlib.contextmanager
def _open(path: Path | None) -> Any:
    if path is None:
        yield sys.stdout
        return
    try:
        handle: IO[str] = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    with handle:
        yield handle


@click.command()
@click.argument("campaign")
@click.option("--state", "states", required=True, help="e.g. failed,unknown,expired,unconfirmed")
@click.option("--code", "codes", default=None, help="Only these DIDWW code_ids, e.g. 2,8.")
@click.option("--idempotency-key", default=None, help="The same key within 24 h: one resend.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wait", "wait_done", is_flag=True, help=WAIT_HELP)
def resend(
    campaign: str,
    states: str,
    codes: str | None,
    idempotency_key: str | None,
    as_json: bool,
    wait_done: bool,
) -> None:
    """Send again to the recipients whose messages ended in these states, as a new campaign
    (never to a number that was sent in this one)."""
    errors_as_json(as_json)
    settings = load()
    keep = _filter(states, codes, reports.RESENDABLE)

    async def work(ledger: Ledger) -> Any:
        parent = await _campaign(ledger, campaign)
        return parent, await resends.recipients(ledger.redis, parent, keep)

    producer = Producer(settings)
    # A key even when none was given, so a resend cut short can be completed by repeating it.
    key = idempotency_key or secrets.token_urlsafe(16)
    try:
        parent, numbers = run(settings, work)
        result = producer.enqueue(
            parent.source,
            parent.text,
            numbers,
            idempotency_key=key,
            **resends.options(parent),
        )
    except InputError as exc:
        fail_input(exc)
    except StoredNotQueued as exc:
        # Accepted: the workers finish it; exit 0 so a script does not resend it twice.
        result = exc.result
        click.echo(f"smsq: {exc}, or at once with --idempotency-key {key}", err=True)
    except (NotStored, SmsqError, redis.RedisError) as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    finally:
        producer.close()
    if as_json:
        out = {**result.as_dict(), "parent": campaign}
        if wait_done:
            out["status"] = wait(settings, result.campaign_id, show=False).as_dict()
        click.echo(json.dumps(out))
        return
    click.echo(
        f"campaign {result.campaign_id} (resend of {campaign}): {result.queued} queued, "
        f"{result.suppressed} suppressed (opted out)"
    )
    if wait_done:
        print_status(wait(settings, result.campaign_id, show=True))


@click.command()
@click.argument("campaign")
@click.option("--at", "send_at", required=True, help="The new time, ISO 8601 with a zone.")
def reschedule(campaign: str, send_at: str) -> None:
    """Move a scheduled campaign that has not started to another time."""
    try:
        at = check_schedule(parse_send_at(send_at), time.time())
    except InputError as exc:
        fail(str(exc))
    _control(campaign, lambda ledger: control.reschedule(ledger, campaign, at))
    click.echo(f"campaign {campaign} rescheduled to {send_at}")


@click.command()
@click.argument("campaign")
def purge(campaign: str) -> None:
    """Delete a done or cancelled campaign and everything it keeps, now."""
    _control(campaign, lambda ledger: control.purge(ledger, campaign))
    click.echo(f"campaign {campaign} purged")


def _control(campaign: str, work: Callable[[Ledger], Coroutine[Any, Any, T | None]]) -> T:
    """Run a control call; what it refuses (InputError), or no such campaign (None), ends the
    command with one line."""
    try:
        result = run(load(), work)
    except InputError as exc:
        fail_input(exc)
    if result is None:
        fail(f"no campaign {campaign!r}", problem="campaign_not_found")
    return result


@click.group()
def optout() -> None:
    """The opt-out list: numbers that are never sent."""


# What `optout add` and `optout remove` report: what was done, and what the others were.
_CHANGES = {"add": ("added", "already on the list"), "remove": ("removed", "were not on the list")}


def _change(action: str, numbers: tuple[str, ...]) -> None:
    """Add or remove the valid numbers and list the others, as POST and DELETE /v1/optouts
    do: only when none is valid is the command refused (exit 2)."""
    found = normalize_many(numbers)
    for r in found.rejections:
        click.echo(f"argument {r.line}: {r.value!r}: {r.reason}", err=True)
    if not found.numbers:
        fail(
            f"no valid number ({len(found.rejections)} rejected)",
            problem="invalid_number",
            errors=rejection_items(found.rejections),
        )
    changed = run(load(), lambda ledger: ledger.optout_change(action, found.numbers))
    done, others = _CHANGES[action]
    click.echo(
        f"{changed} {done} ({len(found.numbers) - changed} {others}), "
        f"{len(found.rejections)} rejected"
    )


@optout.command("add")
@click.argument("numbers", nargs=-1, required=True)
def optout_add(numbers: tuple[str, ...]) -> None:
    """Add numbers to the list."""
    _change("add", numbers)


@optout.command("remove")
@click.argument("numbers", nargs=-1, required=True)
def optout_remove(numbers: tuple[str, ...]) -> None:
    """Remove numbers from the list."""
    _change("remove", numbers)


@optout.command("import")
@click.argument("file", type=click.Path(path_type=Path))
def optout_import(file: Path) -> None:
    """Add every number of a file (the same formats as --recipients)."""
    try:
        found = read_recipients(file)
    except RecipientsFileError as exc:
        fail(str(exc))
    for r in found.rejections:
        click.echo(f"line {r.line}: {r.value!r}: {r.reason}", err=True)
    added = run(load(), lambda ledger: ledger.optout_change("add", found.numbers))
    click.echo(
        f"{added} added, {len(found.numbers) - added} already on the list, "
        f"{len(found.rejections)} rejected"
    )


@optout.command("list")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Print at most this many numbers after the count (0: the count only).",
)
def optout_list(limit: int) -> None:
    """Print how many numbers are on the list, and the first --limit of them."""

    async def work(ledger: Ledger) -> None:
        click.echo(f"{await ledger.optout_count()} numbers on the opt-out list")
        shown = 0
        async for number in ledger.optout_numbers():
            if shown >= limit:
                break
            click.echo(number)
            shown += 1

    run(load(), work)


@optout.command("export")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the numbers to this file instead of standard output.",
)
def optout_export(output: Path | None) -> None:
    """Write every number on the list as a CSV that `smsq optout import` reads back."""

    async def work(ledger: Ledger) -> None:
        with _open(output) as out:
            out.write("destination\n")
            async for number in ledger.optout_numbers():
                out.write(number + "\n")

    run(load(), work)


COMMANDS = [report, resend, reschedule, purge, optout]

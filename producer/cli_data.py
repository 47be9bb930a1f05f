"""The `smsq` commands about a campaign's data and the opt-out list: report, resend,
reschedule, purge, optout. Registered on the `smsq` group by producer/cli.py.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

import click

from ledger import control
from ledger.errors import InputError
from ledger.store import Ledger
from producer import report as reports
from producer import resend as resends
from producer.cli import _run, _settings, fail, main
from producer.enqueue import Producer, parse_send_at
from producer.numbers import InvalidNumber, normalize
from producer.plan import check_schedule
from producer.recipients import RecipientsFileError, read_recipients


@main.command()
@click.argument("campaign")
@click.option("--state", "states", default=None, help="Only these states, e.g. failed,unknown.")
@click.option("--code", "codes", default=None, help="Only these DIDWW code_ids, e.g. 2,8.")
@click.option("--format", "fmt", type=click.Choice(reports.FORMATS), default="csv")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def report(
    campaign: str, states: str | None, codes: str | None, fmt: str, output: Path | None
) -> None:
    """Write one row per message: its state, DIDWW id, status, code and times."""
    try:
        keep = reports.Filter(reports.parse_states(states), reports.parse_codes(codes))
    except InputError as exc:
        fail(str(exc))

    async def work(ledger: Ledger) -> None:
        c = await ledger.campaign(campaign)
        if c is None:
            fail(f"no campaign {campaign!r}")
        with _open(output) as out:
            async for chunk in reports.render(ledger.redis, c, keep, fmt):
                out.write(chunk)

    _run(_settings(), work)


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


@main.command()
@click.argument("campaign")
@click.option("--state", "states", required=True, help="e.g. failed,unknown,expired,unconfirmed")
@click.option("--code", "codes", default=None, help="Only these DIDWW code_ids, e.g. 2,8.")
@click.option("--idempotency-key", default=None, help="The same key within 24 h: one resend.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def resend(
    campaign: str, states: str, codes: str | None, idempotency_key: str | None, as_json: bool
) -> None:
    """Send again to the recipients whose messages ended in these states, as a new campaign
    (never to a number that was sent in this one)."""
    settings = _settings()
    try:
        keep = reports.Filter(
            reports.parse_states(states, reports.RESENDABLE), reports.parse_codes(codes)
        )
    except InputError as exc:
        fail(str(exc))

    async def work(ledger: Ledger) -> Any:
        parent = await ledger.campaign(campaign)
        if parent is None:
            fail(f"no campaign {campaign!r}")
        return parent, await resends.recipients(ledger.redis, parent, keep)

    producer = Producer(settings)
    try:
        parent, numbers = _run(settings, work)
        result = producer.enqueue(
            parent.source,
            parent.text,
            numbers,
            idempotency_key=idempotency_key,
            **resends.options(parent),
        )
    except InputError as exc:
        fail(str(exc))
    finally:
        producer.close()
    if as_json:
        click.echo(json.dumps({**result.as_dict(), "parent": campaign}))
    else:
        click.echo(
            f"campaign {result.campaign_id} (resend of {campaign}): {result.queued} queued, "
            f"{result.suppressed} suppressed (opted out)"
        )


@main.command()
@click.argument("campaign")
@click.option("--at", "send_at", required=True, help="The new time, ISO 8601 with a zone.")
def reschedule(campaign: str, send_at: str) -> None:
    """Move a scheduled campaign that has not started to another time."""
    try:
        at = check_schedule(parse_send_at(send_at), time.time())
        moved = _run(_settings(), lambda ledger: control.reschedule(ledger, campaign, at))
    except InputError as exc:
        fail(str(exc))
    if moved is None:
        fail(f"no campaign {campaign!r}")
    click.echo(f"campaign {campaign} rescheduled to {send_at}")


@main.command()
@click.argument("campaign")
def purge(campaign: str) -> None:
    """Delete a done or cancelled campaign and everything it keeps, now."""
    try:
        gone = _run(_settings(), lambda ledger: control.purge(ledger, campaign))
    except InputError as exc:
        fail(str(exc))
    if gone is None:
        fail(f"no campaign {campaign!r}")
    click.echo(f"campaign {campaign} purged")


@main.group()
def optout() -> None:
    """The opt-out list: numbers that are never sent."""


def _normalized(numbers: tuple[str, ...]) -> list[str]:
    found = []
    for raw in numbers:
        try:
            found.append(normalize(raw))
        except InvalidNumber as exc:
            fail(f"invalid number {raw!r}: {exc.reason}")
    return found


@optout.command("add")
@click.argument("numbers", nargs=-1, required=True)
def optout_add(numbers: tuple[str, ...]) -> None:
    """Add numbers to the list."""
    wanted = _normalized(numbers)
    added = _run(_settings(), lambda ledger: ledger.optout_change("add", wanted))
    click.echo(f"{added} added ({len(wanted) - added} already on the list)")


@optout.command("remove")
@click.argument("numbers", nargs=-1, required=True)
def optout_remove(numbers: tuple[str, ...]) -> None:
    """Remove numbers from the list."""
    wanted = _normalized(numbers)
    removed = _run(_settings(), lambda ledger: ledger.optout_change("remove", wanted))
    click.echo(f"{removed} removed ({len(wanted) - removed} were not on the list)")


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
    added = _run(_settings(), lambda ledger: ledger.optout_change("add", found.numbers))
    click.echo(
        f"{added} added, {len(found.numbers) - added} already on the list, "
        f"{len(found.rejections)} rejected"
    )


@optout.command("list")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True)
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

    _run(_settings(), work)


@optout.command("export")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def optout_export(output: Path | None) -> None:
    """Write every number on the list as a CSV that `smsq optout import` reads back."""

    async def work(ledger: Ledger) -> None:
        with _open(output) as out:
            out.write("destination\n")
            async for number in ledger.optout_numbers():
                out.write(number + "\n")

    _run(_settings(), work)

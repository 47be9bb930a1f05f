"""The `smsq` command: send campaigns, watch them, pause, resume or cancel them, read events.

Bad input prints one clear message on stderr and exits 2; nothing is half-enqueued.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import redis

from ledger import events
from ledger.errors import InputError, SmsqError
from ledger.logs import configure_logging
from ledger.states import CampaignState
from ledger.store import Ledger
from producer import cli_data, cli_lists, cli_webhooks, control
from producer.cli_common import (
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    WAIT_HELP,
    errors_as_json,
    fail,
    fail_input,
    print_status,
    run,
    status_or_fail,
    wait,
)
from producer.cli_common import settings as load
from producer.enqueue import (
    EnqueueResult,
    NotStored,
    Producer,
    StoredNotQueued,
    parse_send_at,
)
from producer.numbers import NumbersResult, Rejection, normalize_many
from producer.plan import Plan, rejection_items
from producer.recipients import RecipientsFileError, read_recipients

# Enqueues of more numbers than this show a progress bar (unless --json).
PROGRESS_THRESHOLD = 5000
# What --recipients takes to read standard input, as most commands that read files do.
STDIN = "-"


@click.group()
@click.version_option(package_name="smsq", prog_name="smsq")
def main() -> None:
    """Send SMS campaigns through DIDWW and watch them."""
    configure_logging("WARNING")
    # Errors are lines on stderr unless the command is given --json.
    errors_as_json(False)


@main.command()
@click.option("--source", required=True, help="Your DIDWW number the SMS comes from.")
@click.option("--to", "to", multiple=True, help="A destination number; repeat for more.")
@click.option(
    "--recipients",
    type=click.Path(dir_okay=True, allow_dash=True, path_type=Path),
    help="A CSV file (column destination, phone, phone number, number or msisdn, or the one "
    "--column names; its other columns are the fields of a templated --text) or one number "
    "per line; - reads standard input.",
)
@click.option(
    "--column",
    default=None,
    metavar="NAME",
    help="The CSV column of --recipients holding the numbers (case, spaces, _ and - do not count).",
)
@click.option("--text", required=True, help="The message text; {field} or {field|default}.")
@click.option("--name", default=None, help="A name for the campaign.")
@click.option(
    "--ttl",
    "ttl_s",
    type=click.IntRange(min=1),
    default=None,
    help="Seconds a message may wait to be sent before it expires.",
)
@click.option(
    "--priority",
    is_flag=True,
    help="Send ahead of every campaign's messages (one-message campaigns always are).",
)
@click.option("--trunk", default=None, help="The trunk to send through (SMSQ_TRUNKS).")
@click.option("--at", "send_at", default=None, help="Send at this time, ISO 8601 with a zone.")
@click.option("--window", default=None, help="Quiet hours: send only HH:MM-HH:MM local time.")
@click.option("--timezone", default=None, help="Zone for numbers whose zone is unknown.")
@click.option("--idempotency-key", default=None, help="The same key within 24 h: one campaign.")
@click.option("--dry-run", is_flag=True, help="Check everything and print the preview only.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wait", "wait_done", is_flag=True, help=WAIT_HELP)
def send(
    source: str,
    to: tuple[str, ...],
    recipients: Path | None,
    column: str | None,
    text: str,
    name: str | None,
    ttl_s: int | None,
    priority: bool,
    trunk: str | None,
    send_at: str | None,
    window: str | None,
    timezone: str | None,
    idempotency_key: str | None,
    dry_run: bool,
    as_json: bool,
    wait_done: bool,
) -> None:
    """Enqueue a campaign (or, with --dry-run, show what it would be)."""
    errors_as_json(as_json)
    if bool(to) == bool(recipients):
        fail("give destinations with either --to or --recipients (one of them)")
    if column is not None and not recipients:
        fail("--column needs --recipients: it names the CSV column holding the numbers")
    settings = load()
    try:
        numbers: NumbersResult = _read(recipients, column) if recipients else normalize_many(to)
        options: dict[str, Any] = {
            "name": name,
            "ttl_s": ttl_s,
            "priority": priority,
            "trunk": trunk,
            "send_at": parse_send_at(send_at),
            "window": window,
            "timezone": timezone,
        }
    except RecipientsFileError as exc:
        fail(str(exc))
    except InputError as exc:
        fail_input(exc)
    producer = Producer(settings)
    # A key even when none was given, so an interrupted enqueue can be completed (below).
    key = idempotency_key or secrets.token_urlsafe(16)
    try:
        plan = producer.plan(source, text, numbers, **options)
        if dry_run:
            _print_preview(plan.summary(), as_json)
            return
        result = _write(producer, plan, key, as_json)
    except InputError as exc:
        if not as_json:
            _report_rejections(numbers.rejections)
        fail_input(exc, rejection_items(numbers.rejections))
    except KeyboardInterrupt:
        _interrupted(producer.campaign_id, key, idempotency_key is None)
    except StoredNotQueued as exc:
        # Accepted: the workers finish it. Said on stderr, with the command that finishes it
        # now; the exit code is 0, so a script does not send it again as a second campaign.
        result = exc.result
        click.echo(
            f"smsq: {exc}, or at once with:\n  {_same_command(key, idempotency_key is None)}",
            err=True,
        )
    except NotStored as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at SMSQ_REDIS_URL: {exc}", EXIT_UNAVAILABLE)
    except SmsqError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    finally:
        producer.close()
    if as_json:
        out = result.as_dict()
        if wait_done:
            out["status"] = wait(settings, result.campaign_id, show=False).as_dict()
        click.echo(json.dumps(out))
        return
    _report_rejections(result.rejections)
    again = " (already enqueued with this idempotency key: nothing queued again)"
    click.echo(
        f"campaign {result.campaign_id}: {result.queued} queued, {result.rejected} "
        f"rejected, {result.duplicates} duplicates, {result.suppressed} suppressed (opted "
        f"out); {result.total_segments} segments ({result.encoding})"
        + (again if result.repeated else "")
    )
    if wait_done:
        print_status(wait(settings, result.campaign_id, show=True))


def _read(recipients: Path, column: str | None) -> NumbersResult:
    if str(recipients) == STDIN:
        # click's standard input: in binary, and left open when read.
        with click.open_file(STDIN, "rb") as stdin:
            return read_recipients(stdin, column)
    return read_recipients(recipients, column)


def _write(producer: Producer, plan: Plan, key: str, as_json: bool) -> EnqueueResult:
    total = plan.messages
    if as_json or total <= PROGRESS_THRESHOLD:
        return producer.write(plan, idempotency_key=key)
    with click.progressbar(length=total, label="enqueueing", file=sys.stderr) as bar:
        return producer.write(plan, idempotency_key=key, progress=bar.update)


def _interrupted(cid: str | None, key: str, generated: bool) -> NoReturn:
    """Ctrl-C mid-enqueue: say which campaign it was and how to complete it."""
    if cid is None:
        fail("interrupted before anything was written", EXIT_INTERRUPTED)
    fail(
        f"interrupted: campaign {cid} may be partly enqueued; run the same command with its "
        f"idempotency key to complete it (nothing is queued twice):\n  "
        f"{_same_command(key, generated)}",
        EXIT_INTERRUPTED,
    )


def _same_command(key: str, generated: bool) -> str:
    """This command as typed, with the idempotency key it used if it made one up."""
    command = [shlex.quote(a) for a in sys.argv]
    command[0] = "smsq"
    if generated:
        command += ["--idempotency-key", shlex.quote(key)]
    return " ".join(command)


def _print_preview(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
        return
    for r in summary["rejections"]:
        click.echo(f"line {r['line']}: {r['value']!r}: {r['reason']}", err=True)
    hours, rest = divmod(round(summary["duration_s"]), 3600)
    click.echo("dry run: nothing was written")
    for label in ("queued", "rejected", "duplicates", "suppressed"):
        click.echo(f"  {label:<22} {summary[label]:>9}")
    click.echo(f"  {'segments in all':<22} {summary['total_segments']:>9}")
    for n, count in summary["segments_per_message"].items():
        click.echo(f"  {f'  of {n} segment(s)':<22} {count:>9}")
    click.echo(f"  {'encoding':<22} {summary['encoding']:>9}")
    click.echo(f"  {'trunk':<22} {summary['trunk']:>9}")
    click.echo(f"  {'time at the rate':<22} {hours:>5}h {rest // 60:02d}m")
    if summary.get("window"):
        w = summary["window"]
        click.echo(f"  {'inside their window':<22} {w['inside_now']:>9}")
    click.echo(f"longest message ({summary['longest_segments']} segments):")
    click.echo(f"  {summary['longest_message']}")


def _report_rejections(rejections: list[Rejection]) -> None:
    for r in rejections:
        click.echo(f"line {r.line}: {r.value!r}: {r.reason}", err=True)


@main.command()
@click.argument("campaign")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wait", "wait_done", is_flag=True, help=WAIT_HELP)
def status(campaign: str, as_json: bool, wait_done: bool) -> None:
    """Show a campaign's counts per state, its send rate, and whether it is done."""
    errors_as_json(as_json)
    settings = load()
    if wait_done:
        result = wait(settings, campaign, show=not as_json)
    else:
        result = run(settings, lambda ledger: status_or_fail(ledger, campaign))
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        print_status(result)


@main.command()
@click.argument("campaign")
def pause(campaign: str) -> None:
    """Stop posting a campaign's messages until it is resumed."""
    try:
        paused = run(load(), lambda ledger: ledger.set_state(campaign, CampaignState.PAUSED))
    except InputError as exc:
        fail_input(exc)
    if not paused:
        fail(f"no campaign {campaign!r}", problem="campaign_not_found")
    click.echo(f"campaign {campaign} paused")


@main.command()
@click.argument("campaign")
def resume(campaign: str) -> None:
    """Resume a paused campaign; also lifts a halt after DIDWW refused the credentials."""
    settings = load()
    producer = Producer(settings)

    async def work(ledger: Ledger) -> control.Resumed | None:
        why = f"resumed by an operator (campaign {campaign})"
        return await control.resume(producer.celery, ledger, campaign, why)

    try:
        resumed = run(settings, work)
    except InputError as exc:
        fail_input(exc)
    finally:
        producer.close()
    if resumed is None:
        fail(f"no campaign {campaign!r}", problem="campaign_not_found")
    published = resumed.batches_queued
    click.echo(f"campaign {campaign} resumed ({published} batches queued)")


@main.command()
@click.argument("campaign")
def cancel(campaign: str) -> None:
    """Cancel every message of a campaign that is still queued."""
    try:
        moved = run(load(), lambda ledger: control.cancel(ledger, campaign))
    except InputError as exc:
        fail_input(exc)
    if moved is None:
        fail(f"no campaign {campaign!r}", problem="campaign_not_found")
    click.echo(f"campaign {campaign} cancelled ({moved} queued messages cancelled)")


@main.command("events")
@click.option("--group", default=None, help="Read as this consumer group (acks each event).")
@click.option("--consumer", default="smsq-cli", show_default=True, help="Consumer name.")
@click.option("--follow", is_flag=True, help="Keep waiting for new events.")
def events_cmd(group: str | None, consumer: str, follow: bool) -> None:
    """Print events as JSON lines."""
    settings = load()

    async def work(ledger: Ledger) -> None:
        stream = settings.events_stream
        if group:
            async for entry_id, event in events.read_group(
                ledger.redis, stream, group, consumer, follow=follow
            ):
                click.echo(json.dumps(event, ensure_ascii=False))
                await events.ack(ledger.redis, stream, group, entry_id)
        else:
            async for _, event in events.read(ledger.redis, stream, follow=follow):
                click.echo(json.dumps(event, ensure_ascii=False))

    with contextlib.suppress(KeyboardInterrupt):
        run(settings, work)


for _command in cli_data.COMMANDS:
    main.add_command(_command)
main.add_command(cli_webhooks.webhook)
main.add_command(cli_lists.list_campaigns)
main.add_command(cli_lists.list_trunks)

__all__ = ["main"]

if __name__ == "__main__":
    main()

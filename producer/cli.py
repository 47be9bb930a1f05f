"""The `smsq` command: send campaigns, watch them, pause, resume or cancel them, read events.

Bad input prints one clear message on stderr and exits 2; nothing is half-enqueued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import redis
from redis.asyncio import Redis

from ledger import control, events
from ledger.errors import ConfigError, InputError, SmsqError
from ledger.logs import configure_logging
from ledger.settings import Settings, load_settings
from ledger.states import ALL_STATES, PENDING, CampaignState
from ledger.store import Ledger, Status
from producer.enqueue import EnqueueResult, Producer
from producer.numbers import NumbersResult, normalize_many
from producer.recipients import RecipientsFileError, read_recipients

T = TypeVar("T")

EXIT_INPUT = 2
EXIT_UNAVAILABLE = 1
# Enqueues of more numbers than this show a progress bar (unless --json).
PROGRESS_THRESHOLD = 5000
# How often --wait polls the campaign's status.
WAIT_POLL_S = 0.5


def fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    click.echo(f"smsq: {message}", err=True)
    sys.exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(f"configuration error: {exc}")


def _run(settings: Settings, work: Callable[[Ledger], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        client = Redis.from_url(settings.redis_url)
        try:
            return await work(Ledger(client, settings))
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at SMSQ_REDIS_URL: {exc}", EXIT_UNAVAILABLE)


@click.group()
def main() -> None:
    """Send SMS campaigns through DIDWW and watch them."""
    configure_logging("WARNING")


@main.command()
@click.option("--source", required=True, help="Your DIDWW number the SMS comes from.")
@click.option("--to", "to", multiple=True, help="A destination number; repeat for more.")
@click.option(
    "--recipients",
    type=click.Path(dir_okay=True, path_type=Path),
    help="A CSV file (column destination, phone, number or msisdn) or one number per line.",
)
@click.option("--text", required=True, help="The message text.")
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--wait", is_flag=True, help="Wait until every message is settled.")
def send(
    source: str,
    to: tuple[str, ...],
    recipients: Path | None,
    text: str,
    name: str | None,
    ttl_s: int | None,
    priority: bool,
    as_json: bool,
    wait: bool,
) -> None:
    """Enqueue a campaign."""
    if bool(to) == bool(recipients):
        fail("give destinations with either --to or --recipients (one of them)")
    settings = _settings()
    try:
        numbers: NumbersResult = read_recipients(recipients) if recipients else normalize_many(to)
    except RecipientsFileError as exc:
        fail(str(exc))
    producer = Producer(settings)
    try:
        result = _enqueue(producer, source, text, numbers, name, ttl_s, priority, as_json)
    except InputError as exc:
        _report_rejections(numbers)
        fail(str(exc))
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at SMSQ_REDIS_URL: {exc}", EXIT_UNAVAILABLE)
    except SmsqError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    finally:
        producer.close()
    if as_json:
        out = result.as_dict()
        if wait:
            out["status"] = _wait(settings, result.campaign_id, show=False).as_dict()
        click.echo(json.dumps(out))
        return
    _report_rejections(numbers)
    click.echo(
        f"campaign {result.campaign_id}: {result.queued} queued, {result.rejected} "
        f"rejected, {result.duplicates} duplicates; {result.segments} segment(s) each "
        f"({result.encoding})"
    )
    if wait:
        _print_status(_wait(settings, result.campaign_id, show=True))


def _enqueue(
    producer: Producer,
    source: str,
    text: str,
    numbers: NumbersResult,
    name: str | None,
    ttl_s: int | None,
    priority: bool,
    as_json: bool,
) -> EnqueueResult:
    total = len(numbers.numbers)
    options: dict[str, Any] = {"name": name, "ttl_s": ttl_s, "priority": priority}
    if as_json or total <= PROGRESS_THRESHOLD:
        return producer.enqueue(source, text, numbers, **options)
    with click.progressbar(length=total, label="enqueueing", file=sys.stderr) as bar:
        return producer.enqueue(source, text, numbers, progress=bar.update, **options)


def _report_rejections(numbers: NumbersResult) -> None:
    for r in numbers.rejections:
        click.echo(f"line {r.line}: {r.value!r}: {r.reason}", err=True)


def _wait(settings: Settings, cid: str, show: bool) -> Status:
    async def work(ledger: Ledger) -> Status:
        status = await _status_or_fail(ledger, cid)
        total = status.campaign.total
        bar = click.progressbar(length=total, label="settling", file=sys.stderr)
        with bar if show else contextlib.nullcontext(bar):
            settled = 0
            while True:
                now_settled = total - sum(status.counts[s] for s in PENDING)
                if show:
                    bar.update(now_settled - settled)
                settled = now_settled
                if status.done:
                    return status
                await asyncio.sleep(WAIT_POLL_S)
                status = await _status_or_fail(ledger, cid)

    return _run(settings, work)


async def _status_or_fail(ledger: Ledger, cid: str) -> Status:
    status = await ledger.status(cid)
    if status is None:
        fail(f"no campaign {cid!r}")
    return status


def _print_status(status: Status) -> None:
    c = status.campaign
    title = f"campaign {c.id}" + (f" ({c.name})" if c.name else "")
    click.echo(f"{title}: {status.state}, trunk {c.trunk}")
    click.echo(f"  {'total':<11} {c.total:>9}")
    for state in ALL_STATES:
        click.echo(f"  {state:<11} {status.counts[state]:>9}")
    click.echo(f"  {'rate':<11} {status.rate_per_s:>9.1f}/s")
    click.echo(f"  {'done':<11} {'yes' if status.done else 'no':>9}")
    trunk = status.trunk
    if trunk.halted:
        click.echo(
            f"trunk {trunk.name}: HALTED ({trunk.as_dict()['halted_why']}); probing,"
            " `smsq resume` lifts it"
        )
    if trunk.backoff:
        click.echo(f"trunk {trunk.name}: backing off, DIDWW is unavailable (probing)")
    if trunk.parked_batches:
        click.echo(f"{trunk.parked_batches} batches parked until they can go on")
    stats = trunk.stats
    click.echo(
        f"callbacks for unknown DIDWW ids: {trunk.orphans_waiting} waiting"
        f" ({stats.get('orphans_kept', 0)} kept, {stats.get('orphans_joined', 0)} joined,"
        f" {stats.get('callbacks_matched', 0)} matched by number and time)"
    )
    for warning in status.warnings:
        click.echo(f"warning: {warning}", err=True)


@main.command()
@click.argument("campaign")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(campaign: str, as_json: bool) -> None:
    """Show a campaign's counts per state, its send rate, and whether it is done."""
    result = _run(_settings(), lambda ledger: _status_or_fail(ledger, campaign))
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        _print_status(result)


@main.command()
@click.argument("campaign")
def pause(campaign: str) -> None:
    """Stop posting a campaign's messages until it is resumed."""
    if not _run(_settings(), lambda ledger: ledger.set_state(campaign, CampaignState.PAUSED)):
        fail(f"no campaign {campaign!r}, or it is cancelled")
    click.echo(f"campaign {campaign} paused")


@main.command()
@click.argument("campaign")
def resume(campaign: str) -> None:
    """Resume a paused campaign; also lifts a halt after DIDWW refused the credentials."""
    settings = _settings()
    producer = Producer(settings)

    async def work(ledger: Ledger) -> control.Resumed | None:
        why = f"resumed by an operator (campaign {campaign})"
        return await control.resume(producer.celery, ledger, campaign, why)

    try:
        resumed = _run(settings, work)
    finally:
        producer.close()
    if resumed is None:
        fail(f"no campaign {campaign!r}, or it is cancelled")
    published = resumed.batches_queued
    click.echo(f"campaign {campaign} resumed ({published} batches queued)")


@main.command()
@click.argument("campaign")
def cancel(campaign: str) -> None:
    """Cancel every message of a campaign that is still queued."""
    moved = _run(_settings(), lambda ledger: control.cancel(ledger, campaign))
    if moved is None:
        fail(f"no campaign {campaign!r}")
    click.echo(f"campaign {campaign} cancelled ({moved} queued messages cancelled)")


@main.command("events")
@click.option("--group", default=None, help="Read as this consumer group (acks each event).")
@click.option("--consumer", default="smsq-cli", show_default=True, help="Consumer name.")
@click.option("--follow", is_flag=True, help="Keep waiting for new events.")
def events_cmd(group: str | None, consumer: str, follow: bool) -> None:
    """Print events as JSON lines."""
    settings = _settings()

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
        _run(settings, work)


if __name__ == "__main__":
    main()

"""`smsq webhook`: subscribe an application to events (add, list, delete, rotate its secret)
and list the deliveries given up (failures). docs/webhooks.md; the delivery service is
`python -m webhooks`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from ledger.errors import InputError
from ledger.store import Ledger
from ledger.webhooks import EVENT_TYPES, WebhookStore
from producer.cli_common import errors_as_json, fail, fail_input, run
from producer.cli_common import settings as load

T = TypeVar("T")


def _with_store(work: Callable[[WebhookStore], Awaitable[T]]) -> T:
    """Run work on the webhook store; refused input: one line, exit 2."""

    async def call(ledger: Ledger) -> T:
        return await work(WebhookStore(ledger.redis, ledger.settings))

    try:
        return run(load(), call)
    except InputError as exc:
        fail_input(exc)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


@click.group()
def webhook() -> None:
    """Webhooks: events posted to your application's URL, signed (docs/webhooks.md)."""


@webhook.command("add")
@click.argument("url")
@click.option(
    "--events",
    default="",
    help=f"Comma-separated event types (default: every type): {', '.join(sorted(EVENT_TYPES))}.",
)
@click.option("--campaign", default=None, help="Only this campaign's events.")
@click.option("--json", "as_json", is_flag=True, help="Print the subscription as JSON.")
def add(url: str, events: str, campaign: str | None, as_json: bool) -> None:
    """Subscribe URL (https) to events; prints its signing secret, shown this once."""
    errors_as_json(as_json)
    created = _with_store(lambda store: store.create(url, events.split(","), campaign))
    shown = {**created.subscription.public(), "secret": created.secret}
    if as_json:
        _echo_json(shown)
        return
    click.echo(f"webhook {shown['id']} -> {shown['url']}")
    click.echo(f"events: {', '.join(shown['events']) or 'all'}")
    if campaign:
        click.echo(f"campaign: {campaign}")
    click.echo(f"secret: {created.secret}")
    click.echo("Keep it now: it is not shown again (`smsq webhook rotate` makes a new one).")


@webhook.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_cmd(as_json: bool) -> None:
    """Every subscription (never its secret)."""
    errors_as_json(as_json)
    subs = _with_store(lambda store: store.subscriptions())
    for sub in subs:
        shown = sub.public()
        if as_json:
            _echo_json(shown)
        else:
            events = ",".join(shown["events"]) or "all"
            campaign = shown["campaign"] or "-"
            click.echo(f"{shown['id']}  {shown['url']}  events={events}  campaign={campaign}")
    if not subs and not as_json:
        click.echo("no webhooks")


@webhook.command("delete")
@click.argument("webhook_id")
def delete(webhook_id: str) -> None:
    """Delete a subscription and the deliveries still owed to it."""
    if not _with_store(lambda store: store.delete(webhook_id)):
        fail(f"no webhook {webhook_id!r}", problem="webhook_not_found")
    click.echo(f"deleted {webhook_id}")


@webhook.command("rotate")
@click.argument("webhook_id")
def rotate(webhook_id: str) -> None:
    """Give a subscription a new signing secret; prints it, shown this once. Deliveries are
    signed with it from the next second on, and with the old one too for 24 hours."""
    secret = _with_store(lambda store: store.rotate(webhook_id))
    if secret is None:
        fail(f"no webhook {webhook_id!r}", problem="webhook_not_found")
    click.echo(f"secret: {secret}")


@webhook.command("failures")
@click.option("--webhook", "webhook_id", default=None, help="Only this subscription's.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="The most to list.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with the event.")
def failures(webhook_id: str | None, limit: int, as_json: bool) -> None:
    """Deliveries given up after SMSQ_WEBHOOK_RETRY_S, newest first."""
    errors_as_json(as_json)
    found = _with_store(lambda store: store.failures(limit, webhook_id))
    for f in found:
        if as_json:
            _echo_json(f.public())
        else:
            click.echo(
                f"{f.failed_at}  {f.webhook}  {f.id}  attempts={f.attempts}  error={f.error}"
                f"  {f.url}"
            )
    if not found and not as_json:
        click.echo("no failed deliveries")

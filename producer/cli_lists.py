"""`smsq list`: campaigns newest first, filtered and a page at a time, as GET /v1/campaigns
lists them (docs/api.md "Lists and lookups"); `smsq trunks`: each trunk's figures, as GET
/v1/trunks gives them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from ledger.campaigns import TrunkStatus
from ledger.errors import InputError
from ledger.lookups import CAMPAIGN_STATES, MAX_LIMIT, CampaignFilter, Page
from ledger.store import Ledger
from producer.cli_common import errors_as_json, fail_input, run
from producer.cli_common import settings as load
from producer.http_lists import DEFAULT_LIMIT, parse_instant

_WHEN = "ISO 8601 with a zone (2026-12-01T00:00Z)"
# The table's count columns: what is waiting, what went, what did not.
COUNT_COLUMNS = ("queued", "sent", "failed")


def _instant(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_instant(option, text)
    except InputError as exc:
        fail_input(exc)


@click.command("list")
# --state and --limit are checked by the ledger, not by click, so that with --json a wrong
# one is a problem object like every other error.
@click.option(
    "--state", default=None, help=f"Only campaigns in this state: {', '.join(CAMPAIGN_STATES)}."
)
@click.option("--name", default=None, help="Only campaigns whose name contains TEXT (any case).")
@click.option("--trunk", default=None, help="Only campaigns sent through this trunk.")
@click.option(
    "--created-after", default=None, metavar="WHEN", help=f"Created then or later: {_WHEN}."
)
@click.option(
    "--created-before", default=None, metavar="WHEN", help=f"Created then or earlier: {_WHEN}."
)
@click.option(
    "--limit",
    type=int,
    default=DEFAULT_LIMIT,
    show_default=True,
    help=f"The most campaigns on the page, 1 to {MAX_LIMIT}.",
)
@click.option(
    "--cursor",
    default=None,
    help="Go on from the page that printed this cursor (the table's last line, or next_cursor).",
)
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"campaigns": [...], "next_cursor": ...}.'
)
def list_campaigns(
    state: str | None,
    name: str | None,
    trunk: str | None,
    created_after: str | None,
    created_before: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Campaigns, newest first. A page may hold fewer than --limit (each reads a bounded number
    of campaigns); only a page without a next cursor is the last."""
    errors_as_json(as_json)
    after = _instant("--created-after", created_after)
    before = _instant("--created-before", created_before)
    try:
        where = CampaignFilter(state, name, trunk, after, before)
    except InputError as exc:
        fail_input(exc)
    settings = load()

    async def work(ledger: Ledger) -> Page:
        return await ledger.list_campaigns(limit, cursor, where)

    try:
        page = run(settings, work)
    except InputError as exc:
        fail_input(exc)
    if as_json:
        shown = {"campaigns": page.items, "next_cursor": page.next_cursor}
        click.echo(json.dumps(shown, ensure_ascii=False))
        return
    _table(page.items)
    if page.next_cursor is not None:
        click.echo(f"more: smsq list --cursor {page.next_cursor} (with the same filters)")


@click.command("trunks")
@click.option("--json", "as_json", is_flag=True, help='Print {"trunks": [...]}.')
def list_trunks(as_json: bool) -> None:
    """Every configured trunk with its own figures: halted or backing off and why, units
    claimed in the last second, its campaigns' parked batches, the callbacks its token
    brought that wait for their message, and its callback counters."""
    errors_as_json(as_json)
    settings = load()

    async def work(ledger: Ledger) -> list[TrunkStatus]:
        return await ledger.trunk_statuses(list(settings.trunks()))

    trunks = run(settings, work)
    if as_json:
        click.echo(json.dumps({"trunks": [t.as_dict() for t in trunks]}, ensure_ascii=False))
        return
    click.echo(f"{'trunk':<16} {'sending':<12} {'claimed/s':>9} {'parked':>7} {'waiting':>8}")
    for t in trunks:
        sending = "HALTED" if t.halted else "backing off" if t.backoff else "ok"
        click.echo(
            f"{t.name:<16} {sending:<12} {t.claimed_per_s:>9.1f} {t.parked_batches:>7}"
            f" {t.orphans_waiting:>8}"
        )
        why = t.as_dict()["halted_why"] or t.as_dict()["backoff_why"]
        if why:
            click.echo(f"  {why}")


def _table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no campaigns on this page")
        return
    width = max(len("name"), *(len(r["name"]) for r in rows))
    counts = "".join(f" {c:>9}" for c in COUNT_COLUMNS)
    click.echo(f"{'id':<16}  {'name':<{width}}  {'state':<9}{counts}  created")
    for r in rows:
        counts = "".join(f" {r['counts'].get(c, 0):>9}" for c in COUNT_COLUMNS)
        click.echo(
            f"{r['campaign_id']:<16}  {r['name']:<{width}}  {r['state']:<9}{counts}  "
            f"{_when(r['created_at'])}"
        )


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


__all__ = ["list_campaigns"]

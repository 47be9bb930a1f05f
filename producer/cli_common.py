"""What every `smsq` command shares: failing with one line (or, with --json, the problem object
the HTTP API answers) and an exit code, loading the settings, running async work against the
ledger, and showing a campaign's status (--wait)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
import redis

from ledger import connection
from ledger.errors import ConfigError, InputError
from ledger.settings import Settings, load_settings
from ledger.states import ALL_STATES, PENDING
from ledger.store import Ledger, Status
from producer import problems

T = TypeVar("T")

EXIT_INPUT = 2
EXIT_UNAVAILABLE = 1
# Ctrl-C, as shells report it (128 + SIGINT).
EXIT_INTERRUPTED = 130
# How often --wait polls the campaign's status.
WAIT_POLL_S = 0.5
# What --wait's help says of its exit codes (send, status and resend alike).
WAIT_HELP = (
    "Wait until every message is settled (a progress bar on stderr unless --json), then show "
    "the status. Exit 0 when the campaign is done, whatever its messages' outcomes; 1 if "
    "Redis cannot be reached; 2 if there is no such campaign; 130 on Ctrl-C (the campaign "
    "goes on)."
)


# Set by a command given --json: its errors are problem objects on standard output.
_json_errors = False


def errors_as_json(enabled: bool) -> None:
    """With --json, fail() prints the error as the HTTP API answers it (RFC 9457 problem
    details, producer/problems.py) on standard output, one line, before the exit code."""
    global _json_errors
    _json_errors = enabled


def fail(
    message: str,
    code: int = EXIT_INPUT,
    *,
    problem: str | None = None,
    errors: Iterable[Mapping[str, Any]] = (),
) -> NoReturn:
    """Exit with `code` after one line on standard error, or, with --json (errors_as_json), the
    problem object of code `problem` (by default invalid_input for exit 2, redis_unavailable for
    exit 1). Ctrl-C's line is never JSON: it is not an error."""
    if _json_errors and code != EXIT_INTERRUPTED:
        default = "redis_unavailable" if code == EXIT_UNAVAILABLE else "invalid_input"
        click.echo(json.dumps(problems.problem(problem or default, message, errors).body()))
    else:
        click.echo(f"smsq: {message}", err=True)
    sys.exit(code)


def fail_input(exc: InputError, errors: Iterable[Mapping[str, Any]] = ()) -> NoReturn:
    """Exit 2 with an input error, its code the problem's."""
    fail(str(exc), problem=problems.code_of(exc), errors=errors)


def settings() -> Settings:
    """The settings, or exit 2 with the one line naming a bad one."""
    try:
        return load_settings()
    except ConfigError as exc:
        fail(f"configuration error: {exc}", problem="configuration_error")


def run(settings: Settings, work: Callable[[Ledger], Coroutine[Any, Any, T]]) -> T:
    """Run work(ledger) on a fresh event loop; Redis out of reach: exit 1 with one line."""

    async def main() -> T:
        client = connection.async_client(settings)
        try:
            return await work(Ledger(client, settings))
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at SMSQ_REDIS_URL: {exc}", EXIT_UNAVAILABLE)


def wait(settings: Settings, cid: str, show: bool) -> Status:
    """Poll the campaign until it is done (a progress bar on stderr if show); Ctrl-C ends
    the wait, not the campaign: exit 130 with one line."""

    async def work(ledger: Ledger) -> Status:
        status = await status_or_fail(ledger, cid)
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
                status = await status_or_fail(ledger, cid)

    try:
        return run(settings, work)
    except KeyboardInterrupt:
        fail(f"stopped waiting; campaign {cid} goes on (smsq status {cid})", EXIT_INTERRUPTED)


async def status_or_fail(ledger: Ledger, cid: str) -> Status:
    status = await ledger.status(cid)
    if status is None:
        fail(f"no campaign {cid!r}", problem="campaign_not_found")
    return status


def print_status(status: Status) -> None:
    """The status table `smsq status` prints; warnings on stderr."""
    c = status.campaign
    title = f"campaign {c.id}" + (f" ({c.name})" if c.name else "")
    click.echo(f"{title}: {status.state}, trunk {c.trunk}")
    click.echo(f"  {'total':<11} {c.total:>9}")
    for state in ALL_STATES:
        click.echo(f"  {state:<11} {status.counts[state]:>9}")
    click.echo(f"  {'rate':<11} {status.rate_per_s:>9.1f}/s")
    click.echo(f"  {'done':<11} {'yes' if status.done else 'no':>9}")
    if c.send_at:
        click.echo(f"  {'send at':<11} {_when(c.send_at)}")
    if c.parent:
        click.echo(f"  {'resend of':<11} {c.parent}")
    if window := status.extra.get("window"):
        opens = f", next opens {_when(window['next_open'])}" if window["next_open"] else ""
        click.echo(f"  {'window':<11} {window['window']}: {window['waiting']} waiting{opens}")
    trunk = status.trunk
    if trunk.halted:
        click.echo(
            f"trunk {trunk.name}: HALTED ({trunk.as_dict()['halted_why']}); probing,"
            " `smsq resume` lifts it"
        )
    if trunk.backoff:
        click.echo(f"trunk {trunk.name}: backing off, DIDWW is unavailable (probing)")
    if trunk.parked_batches:
        click.echo(
            f"trunk {trunk.name}: {trunk.parked_batches} batches parked until they can go on"
        )
    click.echo(f"trunk {trunk.name}: claiming {trunk.claimed_per_s:.1f}/s")
    stats = trunk.stats
    click.echo(
        f"trunk {trunk.name}: callbacks for unknown DIDWW ids: {trunk.orphans_waiting} waiting"
        f" ({stats.get('orphans_kept', 0)} kept, {stats.get('orphans_joined', 0)} joined,"
        f" {stats.get('orphans_dropped', 0)} dropped over SMSQ_ORPHANS_MAX,"
        f" {stats.get('callbacks_matched', 0)} matched by number and time)"
    )
    for warning in status.warnings:
        click.echo(f"warning: {warning}", err=True)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

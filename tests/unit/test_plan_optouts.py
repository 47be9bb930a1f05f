"""The plan checks the opt-out list while it renders the texts (producer/plan.py): the outcome is
the one a check after rendering gives. A number refused for its text is counted rejected, not
suppressed; the suppressed keep the recipients' order; an error stops the plan whole."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import fakeredis
import pytest

from ledger.errors import InputError
from ledger.store import Ledger
from producer.numbers import normalize_recipients
from producer.plan import Options, Planner

SOURCE = "37041123456"
TEMPLATE = "Hi {name}"


def number(n: int) -> str:
    return f"3706{n:07d}"


def recipients(count: int, missing: set[int] = frozenset()) -> list[dict[str, object]]:
    """`count` recipients with a name each, but those in `missing`, who give no name."""
    return [
        {"destination": number(n), "fields": {} if n in missing else {"name": f"N{n}"}}
        for n in range(count)
    ]


@pytest.fixture
def listed(make_ledger: Callable[[], Ledger]) -> Callable[[list[str]], None]:
    """Put numbers on the opt-out list (the optout script, as `smsq optout add` does)."""

    def add(numbers: list[str]) -> None:
        async def go() -> None:
            ledger = make_ledger()
            await ledger.optout_change("add", numbers)
            await ledger.redis.aclose()

        asyncio.run(go())

    return add


def test_suppressed_numbers_keep_the_recipients_order_and_rejected_ones_stay_rejected(
    settings, sync_redis: fakeredis.FakeRedis, listed
) -> None:
    # 2 gives no name (rejected) and is on the list too; 7, 3 and 5 are on the list.
    listed([number(7), number(2), number(3), number(5)])
    planner = Planner(settings, sync_redis)
    plan = planner.plan(SOURCE, TEMPLATE, normalize_recipients(recipients(9, {2})), Options())

    assert plan.suppressed == [3, 5, 7]
    assert plan.order == [0, 1, 4, 6, 8]
    assert [(r.value, r.reason) for r in plan.rejections] == [(number(2), "no value for {name}")]
    # The suppressed are not counted among the messages to send, by segments either.
    assert plan.messages == 5 and plan.distribution == {1: 5}


def test_an_empty_list_suppresses_nothing(settings, sync_redis: fakeredis.FakeRedis) -> None:
    planner = Planner(settings, sync_redis)
    plan = planner.plan(SOURCE, TEMPLATE, normalize_recipients(recipients(5)), Options())
    assert plan.suppressed == [] and plan.order == [0, 1, 2, 3, 4]


def test_a_text_that_cannot_be_sent_stops_the_plan_while_the_list_is_checked(
    settings, sync_redis: fakeredis.FakeRedis, listed
) -> None:
    listed([number(1)])
    planner = Planner(settings, sync_redis)
    with pytest.raises(InputError, match="but the recipients have no fields"):
        planner.plan(SOURCE, TEMPLATE, normalize_recipients([number(1), number(2)]), Options())


def test_every_recipient_on_the_list_is_a_plan_with_nothing_to_send(
    settings, sync_redis: fakeredis.FakeRedis, listed
) -> None:
    listed([number(0), number(1)])
    planner = Planner(settings, sync_redis)
    plan = planner.plan(SOURCE, TEMPLATE, normalize_recipients(recipients(2)), Options())
    assert plan.suppressed == [0, 1] and plan.order == [] and plan.messages == 0

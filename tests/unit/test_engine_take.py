"""Engine.take on a real Redis (no claim loop started): the order in which held batches are
offered to the claim script."""

from __future__ import annotations

from typing import Any

from test_scripts_helpers import run

from ledger.settings import Settings
from worker.engine import Engine, Lane


def _order(settings: Settings, takes: list[tuple[str, bool]]) -> Any:
    async def go(ledger):
        engine = Engine(settings, ledger, owner=7, owner_name="test")
        try:
            outcomes = [await engine.take(cid, 0, urgent=urgent) for cid, urgent in takes]
            lane = engine.lanes["default"]
            return outcomes, [held.campaign.id for held in lane.batches]
        finally:
            for lane in engine.lanes.values():
                await lane.client.aclose()

    return go


def test_an_urgent_or_priority_batch_is_offered_before_the_batches_held(
    real_ledger, real_campaign, settings, monkeypatch
) -> None:
    # Room for every batch: no claim loop runs here to make the pace that room is judged by.
    monkeypatch.setattr(Lane, "has_room", lambda self: True)
    first, second = real_campaign(5), real_campaign(5)
    urgent = real_campaign(1)
    priority = real_campaign(2, priority=True)
    last = real_campaign(5)
    takes = [(first, False), (second, False), (urgent, True), (priority, False), (last, False)]
    outcomes, order = run(real_ledger, _order(settings, takes))
    assert outcomes == ["held"] * 5
    # Offered in this order (Engine._offer): the latest urgent one first, ordinary ones last.
    assert order == [priority, urgent, first, second, last]

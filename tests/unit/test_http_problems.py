"""Tests for errors a program can read (producer.problems): one table of codes, the only
place codes are defined, docs/api.md's table the same, every code the code raises in it,
InputErrors mapped to their codes, and problem answers the HTTP API gives for them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from smsq_testing import write_campaign
from test_http_api import AUTH, campaign_body, create, problem, run
from test_http_campaigns import set_records

from ledger.errors import INVALID_INPUT, CampaignFinished, InputError
from ledger.states import State
from ledger.store import Ledger
from ledger.templates import Template
from producer import http, problems
from producer.enqueue import NotStored, Producer

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ledger", "dispatch", "web", "worker", "producer", "callbacks", "webhooks")
# Where a code is named in the source: code="...", ApiError("...", ...), code = "...".
NAMED = re.compile(r'\bcode\s*=\s*"(\w+)"|ApiError\(\s*"(\w+)"|problem\(\s*"(\w+)"')


def test_the_table_is_well_formed() -> None:
    assert len(problems.CODES) >= 30
    for code, spec in problems.CODES.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code), code
        assert 400 <= spec.status <= 599 and spec.title and spec.when
        # docs/api.md holds the table as Markdown.
        assert "|" not in spec.title + spec.when
    for status, code in problems.BY_STATUS.items():
        assert problems.CODES[code].status == status
    assert problems.CODES[INVALID_INPUT].status == 422


def test_a_code_not_in_the_table_is_refused() -> None:
    with pytest.raises(KeyError):
        problems.problem("no_such_code", "x")


def named_codes() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for match in NAMED.finditer(path.read_text()):
                code = next(g for g in match.groups() if g)
                found.setdefault(code, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_code_the_code_names_is_in_the_table() -> None:
    named = named_codes()
    # The walk finds them: the producer's raise sites and the handlers'.
    assert {"no_valid_recipient", "idempotency_conflict", "campaign_not_found"} <= set(named)
    assert {c: sorted(where) for c, where in named.items() if c not in problems.CODES} == {}
    used = {code for e in http.ROUTES for code in e.problems}
    assert used <= set(problems.CODES)


def _documented() -> list[tuple[str, int, str, str]]:
    """docs/api.md's table of codes, in its Errors section."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("### Errors", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[1].isdigit():
            rows.append((cells[0].strip("`"), int(cells[1]), cells[2], cells[3]))
    return rows


def test_docs_api_md_lists_the_table() -> None:
    expected = [(c, s.status, s.title, s.when) for c, s in problems.CODES.items()]
    assert _documented() == expected


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InputError("x"), "invalid_input"),
        (InputError("x", code="unknown_trunk"), "unknown_trunk"),
        (CampaignFinished("campaign c is done"), "campaign_finished"),
        # A code the table lacks is still answered with one it has.
        (InputError("x", code="no_such_code"), "invalid_input"),
    ],
)
def test_an_input_error_is_the_problem_of_its_code(error: InputError, code: str) -> None:
    found = problems.from_input_error(error)
    assert found.code == code and found.status == problems.CODES[code].status
    assert found.detail == str(error) and found.type == f"/v1/docs#{code}"


def test_a_template_error_names_no_code_and_is_invalid_template() -> None:
    with pytest.raises(InputError) as caught:
        Template.parse("Hi {name")
    assert caught.value.code == INVALID_INPUT
    assert problems.code_of(caught.value) == "invalid_template"


def test_items_keep_scalars_and_cut_long_text() -> None:
    found = problems.problem(
        "invalid_field",
        "x",
        [
            {"field": "a", "value": "x" * 100, "reason": "r"},
            {"field": "b", "value": [1, 2], "reason": "r"},
            {"index": 3, "value": 5, "reason": "r"},
        ],
    )
    assert found.body()["errors"] == [
        {"field": "a", "value": "x" * 40 + "...", "reason": "r"},
        {"field": "b", "reason": "r"},
        {"index": 3, "value": 5, "reason": "r"},
    ]
    assert found.body()["errors_count"] == 3


def test_errors_are_cut_but_counted() -> None:
    items = [{"index": i, "reason": "r"} for i in range(problems.MAX_ITEMS + 7)]
    found = problems.problem("invalid_number", "x", items).body()
    assert len(found["errors"]) == problems.MAX_ITEMS
    assert found["errors_count"] == problems.MAX_ITEMS + 7
    assert "campaign_id" not in found


def test_pause_resume_and_cancel_of_a_done_campaign_are_409(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 2)
    set_records(sync_redis, cid, [("37041000001", State.SENT, 1), ("37041000002", State.SENT, 1)])

    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        return [
            await client.post(f"/v1/campaigns/{cid}/{action}", headers=AUTH)
            for action in ("pause", "resume", "cancel")
        ]

    for response in run(server, steps):
        out = problem(response, "campaign_finished")
        assert out["detail"].startswith(f"campaign {cid} is done")


def test_redis_unsure_whether_it_stored_names_the_campaign(server, monkeypatch) -> None:
    def unsure(self: Producer, plan: Any, **_: Any) -> Any:
        raise NotStored("connection reset", "00000000000000aa", maybe_stored=True)

    monkeypatch.setattr(Producer, "write", unsure)
    response = create(server, campaign_body())
    out = problem(response, "redis_unavailable")
    assert out["campaign_id"] == "00000000000000aa" and "may have been stored" in out["detail"]
    assert response.headers["retry-after"] == str(http.RETRY_AFTER_S)


def test_text_utf8_cannot_encode_is_answered_not_a_crash(server) -> None:
    response = create(server, campaign_body(name="\udcff" * 300))
    out = problem(response, "invalid_field")
    assert out["errors"][0]["field"] == "name"
    assert response.content.isascii()

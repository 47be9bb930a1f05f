"""Tests for the HTTP API's description (producer.http_openapi): GET /v1/openapi.json is a
valid OpenAPI 3.1 document of every route, every problem code and the models the answers are
built through, served without a token; GET /v1/docs is a page made from it that loads
nothing from elsewhere."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from smsq_testing import write_campaign
from test_http_api import ABSENT, AUTH, campaign_body, post_json, problem, run
from test_http_problems import named_codes

from ledger.store import Ledger
from ops.stack import ROOT
from producer import http, problems

METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "trace"}


def fetch(server, *paths: str, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        return [await client.get(path, headers=headers or {}) for path in paths]

    return list(run(server, steps))


@pytest.fixture
def doc(server) -> dict[str, Any]:
    [response] = fetch(server, "/v1/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return dict(response.json())


def conforms(doc: dict[str, Any], schema_name: str, body: Any) -> None:
    """Validate `body` against one of the document's schemas (JSON Schema 2020-12, the
    dialect of OpenAPI 3.1), its references resolved in the document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    Draft202012Validator(schema).validate(body)


def test_the_document_is_valid_openapi_3_1_served_without_a_token(doc) -> None:
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_the_validator_refuses_a_broken_document(doc) -> None:
    """The check above can fail: a response without its description is refused."""
    broken = json.loads(json.dumps(doc))
    del broken["paths"]["/v1/campaigns"]["post"]["responses"]["201"]["description"]
    with pytest.raises(Exception, match="description"):
        validate(broken)


def test_every_route_is_in_the_document_with_its_method_and_nothing_else(doc) -> None:
    routes = {(e.path, e.method.lower()) for e in http.ROUTES}
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops if m in METHODS}
    assert documented == routes
    for e in http.ROUTES:
        op = doc["paths"][e.path][e.method.lower()]
        assert op["operationId"] == e.operation_id
        # A public route says it needs no token; the others take the document's bearer.
        assert ("security" in op) == e.public and op.get("security", []) == []
        named = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        assert named == [part[1:-1] for part in e.path.split("/") if part.startswith("{")]


def test_the_routes_served_are_the_routes_documented(server) -> None:
    """Each ROUTES entry answers (not 404 or 405): the table is what the app serves."""

    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        out = []
        for e in http.ROUTES:
            path = e.path.replace("{cid}", ABSENT).replace("{number}", "37041654321")
            out.append(await client.request(e.method, path, headers=AUTH))
        return out

    for e, response in zip(http.ROUTES, run(server, steps), strict=True):
        assert response.status_code not in (404, 405) or (
            problem(response)["code"]
            in ("campaign_not_found", "webhook_not_found", "message_not_found")
        ), (e.method, e.path, response.text)


def test_every_code_of_the_table_is_in_the_document(doc) -> None:
    text = json.dumps(doc)
    codes = [c["const"] for c in doc["components"]["schemas"]["ProblemCode"]["oneOf"]]
    assert codes == list(problems.CODES)
    for code, spec in problems.CODES.items():
        assert f'"{code}"' in text
        assert {
            "const": code,
            "title": spec.title,
            "description": f"{spec.status}: {spec.when}",
        } in (doc["components"]["schemas"]["ProblemCode"]["oneOf"])


def test_each_operation_lists_its_problems_under_their_status(doc) -> None:
    seen: set[str] = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                content = response.get("content", {})
                if problems.MEDIA_TYPE not in content:
                    continue
                schema = content[problems.MEDIA_TYPE]["schema"]
                codes = schema["allOf"][1]["properties"]["code"]["enum"]
                assert {problems.CODES[c].status for c in codes} == {int(status)}, (path, method)
                seen.update(codes)
            if "security" not in op:
                assert "unauthorized" in json.dumps(op["responses"]["401"])
    # Every code the handlers and the producer name is under an operation; Starlette's own
    # answers to a path or method no route has are under none.
    named = {
        code
        for code, where in named_codes().items()
        if any(w.startswith("producer/") or w == "ledger/errors.py" for w in where)
    }
    assert named - {"not_found", "method_not_allowed"} <= seen
    assert seen.isdisjoint({"not_found", "method_not_allowed"})


def test_request_bodies_refuse_unknown_fields_in_the_document_and_in_fact(server, doc) -> None:
    with_body = [e for e in http.ROUTES if e.body is not None]
    assert len(with_body) == 7
    for e in with_body:
        schema = doc["components"]["schemas"][e.body.__name__]
        assert schema["additionalProperties"] is False

    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        headers = {**AUTH, "content-type": "application/json"}
        return [
            await client.request(
                e.method,
                e.path.replace("{cid}", ABSENT).replace("{wid}", "wh_absent"),
                content=b'{"zz": 1}',
                headers=headers,
            )
            for e in with_body
        ]

    for response in run(server, steps):
        out = problem(response, "unknown_field")
        assert out["detail"].startswith("unknown field 'zz' (the fields are ")
        # Every offending field is listed, the missing ones too.
        assert {"field": "zz", "value": 1, "reason": "unknown field"} in out["errors"]


def test_answers_conform_to_their_documented_schemas(server, sync_redis, doc) -> None:
    cid = write_campaign(sync_redis, 3)

    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        created = await post_json(client, campaign_body(destinations=["37041654321", "12"]))
        preview = await post_json(client, campaign_body(dry_run=True, window="09:00-20:00"))
        status = await client.get(f"/v1/campaigns/{created.json()['campaign_id']}", headers=AUTH)
        paused = await client.post(f"/v1/campaigns/{cid}/pause", headers=AUTH)
        bad = await post_json(client, {"source": 1, "to": []})
        return [created, preview, status, paused, bad]

    created, preview, status, paused, bad = run(server, steps)
    conforms(doc, "CampaignCreated", created.json())
    conforms(doc, "CampaignPreview", preview.json())
    conforms(doc, "CampaignStatus", status.json())
    conforms(doc, "Paused", paused.json())
    conforms(doc, "Problem", problem(bad, "unknown_field"))
    # The check can fail: an answer with a member the schema does not have is refused.
    with pytest.raises(Exception, match="Additional properties"):
        conforms(doc, "Paused", {**paused.json(), "extra": 1})


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "data"):
                self.refs.append((tag, name, value or ""))
            if name == "id" and value:
                self.ids.add(value)


def test_the_docs_page_loads_nothing_from_elsewhere(server) -> None:
    [page] = fetch(server, "/v1/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    links = _Links()
    links.feed(page.text)
    assert links.tags.isdisjoint({"script", "link", "img", "iframe", "object", "embed"})
    assert links.refs, "the page links its anchors and the document"
    for tag, name, value in links.refs:
        assert name == "href" and tag == "a", (tag, name, value)
        # Only this page's anchors and the document, on the same host.
        assert value.startswith("#") or value == "/v1/openapi.json", value
    assert "src=" not in page.text and "url(" not in page.text and "@import" not in page.text


def test_the_docs_page_has_every_route_and_an_anchor_per_code(server) -> None:
    [page] = fetch(server, "/v1/docs")
    links = _Links()
    links.feed(page.text)
    for e in http.ROUTES:
        assert f'<span class="path">{e.path}</span>' in page.text
    for code in problems.CODES:
        assert code in links.ids, code
        # Where a problem's type points.
        assert problems.problem(code, "x").type == f"/v1/docs#{code}"
    # Every in-page link leads somewhere on the page.
    for _, _, value in links.refs:
        if value.startswith("#"):
            assert value[1:] in links.ids, value


def test_the_document_and_the_page_need_no_token_but_the_api_does(server) -> None:
    document, page, status = fetch(
        server, "/v1/openapi.json", "/v1/docs", f"/v1/campaigns/{ABSENT}"
    )
    assert document.status_code == 200 and page.status_code == 200
    problem(status, "unauthorized")


def test_docs_api_md_has_a_row_for_every_route() -> None:
    """docs/api.md's table of endpoints names every route of the document: its path (a
    campaign's id written {id}) and its method in the same row; `…/resume` stands for the
    path before it with another last part."""
    text = (ROOT / "docs" / "api.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [`")]
    missing = []
    for e in http.ROUTES:
        if e.path == "/healthz":
            continue
        path = e.path.replace("{cid}", "{id}")
        short = "\u2026/" + path.rsplit("/", 1)[1]
        if not any((path in row or short in row) and f"`{e.method}" in row for row in rows):
            missing.append(f"{e.method} {path}")
    assert missing == []

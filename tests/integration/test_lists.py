"""Lists and lookups for real: `python -m producer.http` on a private redis-server, campaigns
created over HTTP (no worker: their messages stay queued, or cancelled), then listed in pages
and filtered, a message looked up, a campaign's messages paged; `smsq list` sees the same."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.integration.conftest import SOURCE
from tests.integration.test_http_api import start_api


def create(api: httpx.Client, name: str, count: int) -> str:
    numbers = [f"+4930{i:08d}" for i in range(count)]
    body = {"source": SOURCE, "text": "Sale today", "destinations": numbers, "name": name}
    response = api.post("/v1/campaigns", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["campaign_id"])


def every_page(api: httpx.Client, path: str, key: str) -> list[list[dict[str, Any]]]:
    pages = []
    link: str | None = path
    while link is not None:
        response = api.get(link)
        assert response.status_code == 200, response.text
        pages.append(response.json()[key])
        link = response.json()["next"]
    return pages


def test_campaigns_listed_filtered_and_a_message_looked_up(make_stack, request) -> None:
    stack = make_stack()
    _, api, _ = start_api(stack, request)
    first = create(api, "promo one", 3)
    other = create(api, "newsletter", 2)
    last = create(api, "promo two", 5)
    assert api.post(f"/v1/campaigns/{other}/cancel").status_code == 200

    pages = every_page(api, "/v1/campaigns?limit=2", "campaigns")
    assert [[c["campaign_id"] for c in page] for page in pages] == [[last, other], [first]]
    promos = every_page(api, "/v1/campaigns?name=PROMO&state=active&limit=1", "campaigns")
    assert [[c["campaign_id"] for c in page] for page in promos] == [[last], [first]]
    [cancelled] = every_page(api, "/v1/campaigns?state=cancelled", "campaigns")
    assert [c["campaign_id"] for c in cancelled] == [other]
    assert cancelled[0]["counts"]["cancelled"] == 2

    found = api.get(f"/v1/messages/{last}-3")
    assert found.status_code == 200, found.text
    assert found.json()["campaign_id"] == last and found.json()[
        "destination"
    ] == "4930" + "3".zfill(8)
    assert found.json()["state"] == "queued"
    missing = api.get(f"/v1/messages/{last}-5")
    assert missing.status_code == 404 and missing.json()["code"] == "message_not_found"

    messages = every_page(api, f"/v1/campaigns/{last}/messages?limit=2&state=queued", "messages")
    assert [[m["index"] for m in page] for page in messages] == [[0, 1], [2, 3], [4]]
    none = every_page(api, f"/v1/campaigns/{other}/messages?limit=2&state=queued", "messages")
    assert none == [[]]

    listed = stack.smsq("list", "--json", "--name", "promo", "--limit", "1")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert [c["campaign_id"] for c in page["campaigns"]] == [last]
    rest = stack.smsq("list", "--json", "--name", "promo", "--cursor", page["next_cursor"])
    assert [c["campaign_id"] for c in json.loads(rest.stdout)["campaigns"]] == [first]

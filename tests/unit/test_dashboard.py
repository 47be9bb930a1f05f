"""Tests for the dashboard (producer.dashboard, producer.dashboard_data) through
httpx.ASGITransport on fakeredis: sign-in and its cookies, a wrong token, CSRF on every
change, logout, the session kept apart from the bearer token, the JSON it polls, the report
download and the assets (all from the package)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from smsq_testing import stored, write_campaign
from test_http_api import API_TOKEN, AUTH, FakeCelery, run, stored_campaigns
from test_http_campaigns import set_records

from ledger import keys
from ledger.states import CampaignState, State
from ledger.store import Ledger
from ledger.trunks import RATES_SLOT
from producer import dashboard, dashboard_data

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@pytest.fixture(autouse=True)
def _no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard, "LOGIN_FAILURE_DELAY_S", 0.0)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Each Set-Cookie header of the response by cookie name, lower-cased."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        found[header.split("=", 1)[0]] = header.lower()
    return found


async def login(client: httpx.AsyncClient, token: str = API_TOKEN) -> httpx.Response:
    form = await client.get("/")
    match = CSRF_FIELD.search(form.text)
    assert match, form.text
    return await client.post("/login", data={"token": token, "csrf": match.group(1)})


async def signed_in(client: httpx.AsyncClient) -> str:
    """Sign in; the page's CSRF token."""
    response = await login(client)
    assert response.status_code == 303, response.text
    page = await client.get("/")
    match = CSRF_META.search(page.text)
    assert match, page.text
    return match.group(1)


# --- signing in -------------------------------------------------------------------------


def test_without_a_session_the_root_is_the_signin_form(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.get("/")

    response = run(server, steps)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<form class="card" method="post" action="/login">' in response.text
    assert '<label for="token">API token</label>' in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    nonce = set_cookies(response)["smsq_login"]
    assert "httponly" in nonce and "samesite=strict" in nonce and "path=/login" in nonce


def test_the_right_token_sets_an_httponly_strict_session_cookie(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> tuple[httpx.Response, str]:
        response = await login(client)
        return response, (await client.get("/")).text

    response, page = run(server, steps)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookies = set_cookies(response)
    session = cookies["smsq_session"]
    assert "httponly" in session and "samesite=strict" in session and "path=/;" in session
    assert f"max-age={dashboard.SESSION_TTL_S}" in session
    assert "secure" not in session  # plain http: a Secure cookie would never come back
    assert API_TOKEN.lower() not in session
    assert "max-age=0" in cookies["smsq_login"]  # the sign-in nonce is spent
    assert CSRF_META.search(page) and 'action="/logout"' in page
    assert API_TOKEN not in page


def test_over_https_the_session_cookie_is_secure(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        form = await client.get("https://api.test/")
        csrf = CSRF_FIELD.search(form.text)
        assert csrf
        data = {"token": API_TOKEN, "csrf": csrf.group(1)}
        return await client.post("https://api.test/login", data=data)

    response = run(server, steps)
    assert response.status_code == 303
    assert "; secure" in set_cookies(response)["smsq_session"]


@pytest.mark.parametrize(
    "token",
    ["wrong", API_TOKEN[:-1], API_TOKEN + "x", API_TOKEN.upper(), "", "ünïcode"],
    ids=["other", "prefix", "longer", "case", "empty", "unicode"],
)
def test_a_wrong_token_is_refused_without_saying_what_was_wrong(server, token: str) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> tuple[httpx.Response, int]:
        response = await login(client, token)
        return response, (await client.get("/dashboard/api/campaigns")).status_code

    response, after = run(server, steps)
    assert response.status_code == 401
    assert dashboard.REFUSED in response.text
    # The same sentence whatever the token was: nothing about its length or which part.
    assert response.text.count("Sign-in failed") == 1
    assert "smsq_session" not in set_cookies(response)
    assert after == 401


def test_a_signin_without_the_forms_token_is_refused(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        # Straight to /login, as another site's form would: no nonce cookie, no field.
        bare = await client.post("/login", data={"token": API_TOKEN})
        await client.get("/")
        forged = await client.post("/login", data={"token": API_TOKEN, "csrf": "0" * 64})
        return [bare, forged]

    for response in run(server, steps):
        assert response.status_code == 403
        assert dashboard.EXPIRED in response.text
        assert "smsq_session" not in set_cookies(response)


# --- the session, the bearer token and CSRF ---------------------------------------------


def test_the_dashboard_json_takes_the_session_and_never_the_bearer_token(
    server, sync_redis
) -> None:
    cid = write_campaign(sync_redis, 3)

    async def steps(client: httpx.AsyncClient, _: Ledger) -> dict[str, int]:
        found = {"bearer": (await client.get("/dashboard/api/campaigns", headers=AUTH)).status_code}
        found["anonymous"] = (await client.get(f"/dashboard/api/campaigns/{cid}")).status_code
        await signed_in(client)
        found["session"] = (await client.get("/dashboard/api/campaigns")).status_code
        # ...and the /v1/ API does not take the session.
        found["v1 with session"] = (await client.get(f"/v1/campaigns/{cid}")).status_code
        return found

    assert run(server, steps) == {
        "bearer": 401,
        "anonymous": 401,
        "session": 200,
        "v1 with session": 401,
    }


def test_a_forged_or_expired_session_is_refused() -> None:
    now = [1_000_000.0]
    sessions = dashboard.Sessions(API_TOKEN.encode(), ttl_s=60, clock=lambda: now[0])
    value = sessions.new()
    sid = sessions.session_id(value)
    assert sid is not None and sid in value and API_TOKEN not in value
    head, _, mac = value.rpartition(".")
    assert sessions.session_id(f"{head}.{'0' * len(mac)}") is None
    sid_part, expires, _ = value.split(".")
    assert sessions.session_id(f"{sid_part}.{int(expires) + 3600}.{mac}") is None
    assert sessions.session_id("garbage") is None and sessions.session_id(None) is None
    # Another token (SMSQ_API_TOKEN changed): every session ends.
    assert dashboard.Sessions(b"another-token").session_id(value) is None
    now[0] += 61
    assert sessions.session_id(value) is None
    assert sessions.csrf(sid) != dashboard.Sessions(b"another-token").csrf(sid)


@pytest.mark.parametrize("action", ["pause", "resume", "cancel"])
def test_buttons_are_refused_without_the_csrf_token(server, sync_redis, action: str) -> None:
    other = {c: "1" if c == "0" else "0" for c in "0123456789abcdef"}
    cid = write_campaign(sync_redis, 3, state=CampaignState.PAUSED)
    path = f"/dashboard/api/campaigns/{cid}/{action}"

    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        csrf = await signed_in(client)
        return [
            await client.post(path),
            await client.post(path, headers={"x-csrf-token": csrf[:-1] + other[csrf[-1]]}),
            await client.post(path, headers={**AUTH, "x-csrf-token": "x"}),
        ]

    for response in run(server, steps):
        assert response.status_code == 403
        assert response.json() == {"error": "missing or wrong CSRF token; reload the page"}
    assert stored(sync_redis, cid).state == "paused"


def test_pause_resume_and_cancel_with_the_csrf_token(server, sync_redis, counts) -> None:
    cid = write_campaign(sync_redis, 250, batch_size=100)
    celery = FakeCelery()
    seen = []

    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        headers = {"x-csrf-token": await signed_in(client)}
        answers = []
        for action in ("pause", "resume", "cancel"):
            answers.append(
                await client.post(f"/dashboard/api/campaigns/{cid}/{action}", headers=headers)
            )
            seen.append(stored(sync_redis, cid).state)
        answers.append(await client.post(f"/dashboard/api/campaigns/{cid}/resume", headers=headers))
        return answers

    paused, resumed, cancelled, again = run(server, steps, celery=celery)
    assert paused.json() == {"campaign_id": cid, "state": "paused"}
    assert resumed.json()["state"] == "active" and resumed.json()["batches_queued"] == 3
    assert cancelled.json() == {"campaign_id": cid, "state": "cancelled", "cancelled": 250}
    assert seen == ["paused", "active", "cancelled"]
    assert len(celery.sent) == 3
    assert again.status_code == 409 and "cancelled" in again.json()["error"]
    assert counts(cid) == {"cancelled": 250}


def test_logout_needs_the_csrf_token_then_ends_the_session(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[Any]:
        csrf = await signed_in(client)
        refused = await client.post("/logout", data={"csrf": "nope"})
        still = (await client.get("/dashboard/api/campaigns")).status_code
        out = await client.post("/logout", data={"csrf": csrf})
        after = (await client.get("/dashboard/api/campaigns")).status_code
        page = await client.get("/")
        return [refused, still, out, after, page]

    refused, still, out, after, page = run(server, steps)
    assert refused.status_code == 403 and still == 200
    assert out.status_code == 303 and out.headers["location"] == "/"
    cleared = set_cookies(out)["smsq_session"]
    assert cleared.startswith('smsq_session="";') and "max-age=0" in cleared
    assert "httponly" in cleared and "path=/;" in cleared
    assert after == 401
    assert "Sign in to the dashboard" in page.text


# --- what the dashboard shows -------------------------------------------------------------


def get(server, path: str) -> httpx.Response:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        await signed_in(client)
        return await client.get(path)

    return run(server, steps)


def test_campaigns_newest_first_with_state_counts_and_progress(server, sync_redis) -> None:
    done = write_campaign(sync_redis, ["37041000001", "37041000002"], name="first")
    set_records(
        sync_redis, done, [("37041000001", State.SENT, None), ("37041000002", State.FAILED, 2)]
    )
    paused = write_campaign(sync_redis, 4, name="second", state=CampaignState.PAUSED)
    newest = write_campaign(sync_redis, 4, name="<b>third</b>")
    for score, cid in enumerate((done, paused, newest)):
        sync_redis.zadd(keys.campaigns(), {cid: score})

    response = get(server, "/dashboard/api/campaigns")
    assert response.status_code == 200
    rows = response.json()["campaigns"]
    assert [r["campaign_id"] for r in rows] == [newest, paused, done]
    assert [r["state"] for r in rows] == ["active", "paused", "done"]
    assert [r["progress"] for r in rows] == [0.0, 0.0, 1.0]
    assert rows[0]["name"] == "<b>third</b>"  # data, escaped by the page (textContent)
    assert rows[2]["counts"]["sent"] == 1 and rows[2]["counts"]["failed"] == 1
    assert rows[2]["counts"]["queued"] == 0 and rows[0]["rate_per_s"] == 0.0


def test_the_campaigns_list_is_capped(make_ledger, sync_redis) -> None:
    for score in range(5):
        sync_redis.zadd(keys.campaigns(), {write_campaign(sync_redis, 1): score})

    async def go() -> dict[str, Any]:
        return await dashboard_data.campaigns(make_ledger(), limit=3)

    assert len(asyncio.run(go())["campaigns"]) == 3


def test_a_campaign_with_failures_grouped_by_code_and_their_meaning(server, sync_redis) -> None:
    rows = [
        ("37041000001", State.SENT, None),
        ("37041000002", State.FAILED, 2),
        ("37041000003", State.FAILED, 8),
        ("37041000004", State.FAILED, 2),
        ("37041000005", State.FAILED, 777),
        ("37041000006", State.QUEUED, None),
    ]
    cid = write_campaign(sync_redis, [d for d, _, _ in rows], name="promo")
    set_records(sync_redis, cid, rows)

    response = get(server, f"/dashboard/api/campaigns/{cid}")
    assert response.status_code == 200
    doc = response.json()
    assert doc["failures"] == [
        {"code_id": 2, "reason": "No rate found", "count": 2},
        {"code_id": 8, "reason": "SMS source address is not allowed", "count": 1},
        {"code_id": 777, "reason": None, "count": 1},
    ]
    assert doc["status"]["counts"]["failed"] == 4 and doc["status"]["name"] == "promo"
    assert doc["progress"] == round(5 / 6, 4)
    assert doc["callbacks_settled"] == 5
    assert doc["time_left_s"] is None  # nothing posted in the last seconds: no rate
    assert doc["trunk"] == {
        "name": "default",
        "halted": None,
        "backing_off": None,
        "claimed_per_s": 0.0,
        "parked_batches": 0,
        "callbacks_waiting": 0,
        "callbacks_settled": 0,
    }
    assert get(server, "/dashboard/api/campaigns/0123456789abcdef").status_code == 404
    assert get(server, "/dashboard/api/campaigns/nope").status_code == 404


def test_time_left_is_what_remains_at_the_current_rate(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 100)
    now = int(sync_redis.time()[0])
    # Ten posts in each of the last ten seconds: 10 per second, 100 queued: 10 s left.
    for second in range(now - 10, now):
        slot = second % keys.POSTED_RING_S
        sync_redis.hset(keys.posted(cid), mapping={f"s{slot}": second, f"n{slot}": 10})

    doc = get(server, f"/dashboard/api/campaigns/{cid}").json()
    assert doc["status"]["rate_per_s"] == 10.0
    assert doc["time_left_s"] == 10.0


def test_failures_are_rescanned_only_when_they_change(make_ledger, sync_redis) -> None:
    cid = write_campaign(sync_redis, ["37041000001", "37041000002"])
    set_records(
        sync_redis, cid, [("37041000001", State.FAILED, 1), ("37041000002", State.QUEUED, None)]
    )
    clock = [0.0]
    scans = []

    async def go() -> list[Any]:
        ledger = make_ledger()
        counter = dashboard_data.FailureCounts(always_rescan=1, clock=lambda: clock[0])
        small = dashboard_data.FailureCounts(max_messages=1)

        async def groups(counts: dashboard_data.FailureCounts) -> Any:
            status = await ledger.status(cid)
            assert status is not None
            found = await counts.get(ledger, status)
            scans.append(found)
            return found

        await groups(counter)
        set_records(
            sync_redis, cid, [("37041000001", State.FAILED, 1), ("37041000002", State.FAILED, 9)]
        )
        await groups(counter)  # changed, but scanned under RESCAN_S ago: the old counts
        clock[0] += dashboard_data.RESCAN_S
        await groups(counter)
        return [await groups(small)]

    [too_big] = asyncio.run(go())
    assert scans[0] == scans[1] == [{"code_id": 1, "reason": "No routes found", "count": 1}]
    assert [g["code_id"] for g in scans[2]] == [1, 9]
    assert too_big is None


def test_trunks_with_the_alert_that_stopped_them(server, sync_redis, monkeypatch) -> None:
    detail = {"detail": "DIDWW answered 401 Unauthorized", "at": 1796211713.5}
    sync_redis.set(keys.halt("default"), json.dumps(detail))
    cid = write_campaign(sync_redis, 250, batch_size=100)
    # Two of its batches parked; a member whose campaign is gone is not counted.
    sync_redis.zadd(keys.parked(), {f"{cid}|0": 1.0, f"{cid}|2": 2.0, "0123456789abcdef|0": 1.0})
    sync_redis.hset(keys.kept_info(), mapping={"count": 4, "count:default": 3, "count:other": 1})
    sync_redis.hset(
        keys.stats(),
        mapping={
            "callbacks_applied": 9,
            "callbacks_applied:default": 7,
            "callbacks_late:default": 2,
            "callbacks_applied:other": 2,
        },
    )

    doc = get(server, "/dashboard/api/trunks").json()
    assert doc["trunks"] == [
        {
            "name": "default",
            "halted": detail,
            "backing_off": None,
            "claimed_per_s": 0.0,
            "parked_batches": 2,
            "callbacks_waiting": 3,
            "callbacks_settled": 9,
        },
    ]


def test_the_report_downloads_as_csv(server, sync_redis) -> None:
    rows = [("37041000001", State.SENT, None), ("37041000002", State.FAILED, 2)]
    cid = write_campaign(sync_redis, [d for d, _, _ in rows])
    set_records(sync_redis, cid, rows)

    response = get(server, f"/dashboard/api/campaigns/{cid}/report.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == f'attachment; filename="smsq-{cid}.csv"'
    lines = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["destination"], r["state"], r["code_id"]) for r in lines] == [
        ("37041000001", "sent", ""),
        ("37041000002", "failed", "2"),
    ]
    assert get(server, "/dashboard/api/campaigns/0123456789abcdef/report.csv").status_code == 404


# --- the page and its assets --------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "action") and v]


# What each page template is rendered with (producer/dashboard.py): a campaign's page, every
# link of which is in it, and the sign-in form.
PAGE_VALUES: dict[str, dict[str, Any]] = {
    "dashboard.html": {
        "csrf": "c",
        "view": "campaign",
        "title": "t",
        "at": 1.0,
        "campaigns": [],
        "trunks": [],
        "campaign": {
            "status": {
                "campaign_id": "0123456789abcdef",
                "name": "n",
                "state": "active",
                "trunk": "default",
                "created_at": 1.0,
                "total": 2,
                "rate_per_s": 0.0,
                "counts": {"queued": 2},
            },
            "progress": 0.0,
        },
        "states": dashboard.STATES,
    },
    "login.html": {"csrf": "c", "message": "", "hidden": "hidden"},
}


@pytest.mark.parametrize("page", ["dashboard.html", "login.html"])
def test_pages_load_nothing_from_elsewhere(page: str) -> None:
    parser = _Links()
    parser.feed(dashboard._render(page, **PAGE_VALUES[page]))
    assert parser.urls
    for url in parser.urls:
        assert url.startswith(("/", "#")) and not url.startswith("//"), url
        if url.startswith("/dashboard/static/"):
            assert url.removeprefix("/dashboard/static/") in dashboard.ASSETS
    for asset in dashboard.ASSETS:
        text = dashboard._static(asset)
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text


def test_assets_are_served_and_nothing_else(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> dict[str, httpx.Response]:
        names = ("dashboard.js", "dashboard.css", "favicon.svg", "login.html", "..%2Fhttp.py")
        return {name: await client.get(f"/dashboard/static/{name}") for name in names}

    found = run(server, steps)
    assert found["dashboard.js"].status_code == 200
    assert found["dashboard.js"].headers["content-type"].startswith("text/javascript")
    assert found["dashboard.css"].headers["content-type"].startswith("text/css")
    assert found["favicon.svg"].headers["content-type"] == "image/svg+xml"
    assert found["login.html"].status_code == 404
    assert found["..%2Fhttp.py"].status_code == 404


def test_a_trunks_rates_are_its_last_hour_from_the_server(server, sync_redis) -> None:
    seconds, _ = sync_redis.time()
    ring = bytearray(keys.RATES_RING_S * RATES_SLOT.size)
    off = ((seconds - 30) % keys.RATES_RING_S) * RATES_SLOT.size
    ring[off : off + RATES_SLOT.size] = RATES_SLOT.pack(seconds - 30, 12, 5)
    sync_redis.set(keys.rates("default"), bytes(ring))

    doc = get(server, "/dashboard/api/trunks/default/rates").json()
    assert doc["trunk"] == "default" and doc["end"] - doc["start"] == keys.RATES_RING_S - 1
    assert len(doc["claimed"]) == len(doc["callbacks"]) == keys.RATES_RING_S - 1
    assert (sum(doc["claimed"]), sum(doc["callbacks"])) == (12, 5)
    assert doc["claimed"][seconds - 30 - doc["start"]] == 12
    later = get(server, f"/dashboard/api/trunks/default/rates?since={seconds - 30}").json()
    assert later["start"] == seconds - 29 and sum(later["claimed"]) == 0
    assert get(server, "/dashboard/api/trunks/nope/rates").status_code == 404
    assert get(server, "/dashboard/api/trunks/default/rates?since=-1").status_code == 400


def test_the_overview_is_in_the_page_as_sent(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 3, name="Spring <sale>")
    sync_redis.hset(keys.counts(cid), mapping={"queued": 1, "sent": 2})
    page = get(server, "/")
    assert page.status_code == 200
    row = re.search(rf'<tr data-cid="{cid}">(.*?)</tr>', page.text)
    assert row is not None, page.text
    cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row[1])
    # Escaped, linked to the campaign's own page, its counts in their columns.
    assert f'href="/campaigns/{cid}"' in cells[0] and "Spring &lt;sale&gt;" in cells[0]
    assert [cells[5], cells[8]] == ["2", "1"]
    assert '<tr data-trunk="default">' in page.text


def test_a_campaigns_page_has_its_counts_as_sent(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 1500, name="promo")
    sync_redis.hset(keys.counts(cid), mapping={"queued": 1000, "sent": 498, "failed": 2})
    page = get(server, f"/campaigns/{cid}")
    assert page.status_code == 200
    counts = dict(
        re.findall(
            r'<tr data-state="(\w+)"[^>]*><th scope="row">\w+</th><td class="num">([\d,]+)</td>',
            page.text,
        )
    )
    assert counts["queued"] == "1,000" and counts["sent"] == "498" and counts["failed"] == "2"
    assert set(counts) == set(dashboard.STATES)
    assert '<h1 id="campaign-title" tabindex="-1">promo</h1>' in page.text
    assert f'href="/dashboard/api/campaigns/{cid}/report.csv"' in page.text
    assert get(server, "/campaigns/0123456789abcdef").status_code == 404
    assert get(server, "/campaigns/nope").status_code == 404


def test_a_campaigns_page_signed_out_goes_to_the_sign_in(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 1)

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.get(f"/campaigns/{cid}")

    response = run(server, steps)
    assert response.status_code == 303 and response.headers["location"] == "/"


# --- a new campaign: upload, preview, confirm -----------------------------------------------

CSV = "phone,name,reference\n+37041654321,Ana,o-1\n+37041654322,Bo,o-2\n12,Cy,o-3\n"


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, page
    return found[1]


def new_campaign(
    server, csv_text: str = CSV, csrf: str | None = None, confirm: int = 2, **fields: str
):
    """Sign in, open the form, upload; then, if the preview came, confirm it twice (a second
    click). Returns the preview's answer and the two confirmations' answers."""

    async def steps(client: httpx.AsyncClient, _: Ledger):
        await signed_in(client)
        form = await client.get("/campaigns/new")
        token = csrf if csrf is not None else csrf_of(form.text)
        data = {"csrf": token, "source": "37041123456", "text": "Hi {name}", "name": "web"}
        data.update(fields)
        files = {"recipients": ("guests.csv", csv_text.encode(), "text/csv")}
        preview = await client.post("/campaigns/new", data=data, files=files)
        draft = re.search(r'name="draft" value="([0-9a-f]+)"', preview.text)
        if draft is None:
            return preview, []
        send = {"csrf": token, "draft": draft[1]}
        return preview, [
            await client.post("/campaigns/new/send", data=send) for _ in range(confirm)
        ]

    return run(server, steps)


def test_a_new_campaign_is_previewed_then_sent_once(server, sync_redis) -> None:
    preview, _ = new_campaign(server, confirm=0)
    assert preview.status_code == 200, preview.text
    assert stored_campaigns(sync_redis) == []  # a preview writes no campaign
    preview, sent = new_campaign(server)
    text = preview.text
    assert re.search(r'id="p-queued">2<', text) and re.search(r'id="p-rejected">1<', text)
    assert '<td class="num">4</td><td>12</td>' in text  # line 4, its value and reason
    assert re.search(r'id="p-encoding">GSM-7<', text) and 'id="p-duration"' in text
    first, again = sent
    assert first.status_code == again.status_code == 303
    assert first.headers["location"] == again.headers["location"]
    cid = first.headers["location"].removeprefix("/campaigns/")
    assert stored_campaigns(sync_redis) == [cid.encode()]
    c = stored(sync_redis, cid)
    assert (c.name, c.fields, c.references) == ("web", ("name",), True)


def test_a_new_campaign_without_the_csrf_token_is_refused(server, sync_redis) -> None:
    preview, sent = new_campaign(server, csrf="0" * 64)
    assert preview.status_code == 403 and "CSRF" in preview.text and sent == []
    assert sync_redis.keys("smsq:draft:*") == []


def test_a_bad_upload_or_text_is_shown_on_the_form(server, sync_redis) -> None:
    preview, _ = new_campaign(server, csv_text="\0\0binary")
    assert preview.status_code == 422 and "not a UTF-8 text file" in preview.text
    preview, _ = new_campaign(server, text="Hi {nope}")
    assert preview.status_code == 422 and "nope" in preview.text
    assert 'value="37041123456"' in preview.text  # what was typed stays in the form
    assert stored_campaigns(sync_redis) == []


def test_a_confirmation_without_its_draft_is_gone(server, sync_redis) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger):
        await signed_in(client)
        token = csrf_of((await client.get("/campaigns/new")).text)
        return await client.post("/campaigns/new/send", data={"csrf": token, "draft": "a" * 32})

    response = run(server, steps)
    assert response.status_code == 410 and "upload the file again" in response.text

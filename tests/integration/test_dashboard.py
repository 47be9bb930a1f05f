"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against
`python -m producer.http` beside Redis, the simulator, the ingester and a Celery worker.
It signs in, watches a campaign reach done, downloads its report, pauses, resumes and
cancels another with the buttons (checking the page and Redis), and saves screenshots
under the test's tmp_path; SMSQ_UPDATE_SCREENSHOT=1 also refreshes docs/dashboard.png.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger import keys
from ledger.campaigns import Campaign
from ops.stack import ROOT
from tests.integration.conftest import SOURCE
from tests.integration.test_http_api import API_TOKEN, start_api, wait_status

# Debian's package; SMSQ_CHROMIUM points elsewhere. Playwright's own browser download is
# never used (it cannot be fetched here).
CHROMIUM = os.environ.get("SMSQ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Page expectations wait this long (ms): a few polls of the page, on a busy CI machine.
EXPECT_MS = 20_000
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
WIDE = {"width": 1920, "height": 1080}
README_SCREENSHOT = ROOT / "docs" / "dashboard.png"
# docs/dashboard.md's pictures of the pages without JavaScript, refreshed like the README's.
DOCS_SCREENSHOTS = {
    "no-js-preview.png": ROOT / "docs" / "dashboard-new-campaign.png",
    "campaign-no-js.png": ROOT / "docs" / "dashboard-no-js.png",
}


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium under Playwright; skips, with one line saying why, where it cannot run."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"chromium not found at {CHROMIUM} (Debian: apt-get install chromium; .ci/run "
            "installs it when run as root)"
        )
    with sync_api.sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        except sync_api.Error as exc:
            pytest.skip(f"chromium at {CHROMIUM} does not start: {str(exc).splitlines()[0]}")
        try:
            yield launched
        finally:
            launched.close()


def _redis_state(stack: Any, cid: str) -> str:
    client = stack.redis()
    try:
        found = Campaign.stored(cid, client.hgetall(keys.campaign(cid)))
        return found.state if found else ""
    finally:
        client.close()


def _create(api: Any, name: str, count: int, first: int) -> str:
    numbers = [f"4930{first + i:08d}" for i in range(count)]
    response = api.post(
        "/v1/campaigns",
        json={"source": SOURCE, "text": "Sale today", "destinations": numbers, "name": name},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["campaign_id"])


def _new_campaign(page: Any, url: str, tmp_path: Path, shots: str) -> str:
    """The "New campaign" page, as a user fills it: a CSV with a bad line, the preview (its
    figures and the rejected line with its reason), then Send; the campaign's page follows.
    Returns the campaign id; screenshots the form and the preview as `shots`-form.png, ..."""
    from playwright.sync_api import expect

    guests = tmp_path / f"{shots}-guests.csv"
    guests.write_text(
        "phone number,name,reference\n+37041700001,Ana,o-1\n+37041700002,Bo,o-2\n"
        "12,Cy,o-3\n"
    )
    page.get_by_role("link", name="New campaign").click()
    expect(page).to_have_url(f"{url}/campaigns/new")
    page.get_by_label("Source number").fill(SOURCE)
    page.get_by_label("Text").fill("Hi {name}, your table is ready")
    page.get_by_label("Name (optional)").fill(f"walk-in {shots}")
    page.get_by_label("Recipients (CSV)").set_input_files(guests)
    page.screenshot(path=tmp_path / f"{shots}-form.png", full_page=True)
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#p-queued")).to_have_text("2")
    expect(page.locator("#p-rejected")).to_have_text("1")
    expect(page.locator("#p-encoding")).to_have_text("GSM-7")
    expect(page.locator("#rejection-rows")).to_contain_text("too short")
    page.screenshot(path=tmp_path / f"{shots}-preview.png", full_page=True)
    page.get_by_role("button", name="Send 2 messages").click()
    expect(page.get_by_role("heading", name=f"walk-in {shots}")).to_be_visible()
    return str(page.url.rsplit("/", 1)[-1])


# About 30 s alone; room for a machine busy with the other integration tests.
@pytest.mark.timeout(240)
def test_the_dashboard_in_chromium(make_stack, request, browser, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_MS)
    # AOF on, as in production: the page shows no Redis warning in the screenshots.
    stack = make_stack(rate_per_s=20, appendonly=True)
    stack.start_callbacks()
    # A quarter of the callbacks fail (code_id 101 or 1), so failures have codes to group.
    stack.start_simulator(
        "--callback-delay-ms", "50", "--callback-failure-ratio", "0.25", "--seed", "7"
    )
    stack.start_worker("one")
    proc, api, url = start_api(stack, request)
    watched = _create(api, "spring-sale", 60, 0)
    controlled = _create(api, "newsletter", 1500, 1000)

    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    request.addfinalizer(context.close)
    page = context.new_page()
    # Script errors and console errors (a Content-Security-Policy refusal is one), except
    # the answer to the wrong token, which the browser reports as a failed load.
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda m: m.type == "error" and "401" not in m.text and errors.append(m.text),
    )

    # Sign in: a wrong token is refused with one generic sentence, the right one is let in.
    page.goto(url)
    expect(page.get_by_role("heading", name="Sign in to the dashboard")).to_be_visible()
    page.get_by_label("API token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Sign-in failed: that token is not accepted.")
    page.get_by_label("API token").fill(API_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Campaigns", exact=True)).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "smsq_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert all(API_TOKEN not in c["value"] for c in context.cookies())
    assert API_TOKEN not in page.content()

    # The list shows both campaigns, live; the trunk is sending.
    rows = page.locator("#campaign-rows tr")
    expect(rows).to_have_count(2)
    expect(rows.first.get_by_role("link")).to_have_text("newsletter")
    expect(page.locator("#trunk-rows")).to_contain_text("default")
    expect(page.locator("#trunk-rows")).to_contain_text("ok")

    # Watch the first campaign reach done, then check the page against the ledger.
    page.get_by_role("link", name="spring-sale").click()
    expect(page.get_by_role("heading", name="spring-sale")).to_be_visible()
    expect(page.locator("#c-state")).to_have_text("done", timeout=60_000)
    status = wait_status(api, watched, lambda s: bool(s["done"]))
    counts = status["counts"]
    assert counts["sent"] + counts["failed"] == 60 and counts["failed"] > 0
    sent_row = page.locator("#count-rows tr", has=page.get_by_role("rowheader", name="sent"))
    expect(sent_row).to_contain_text(str(counts["sent"]))
    failures = page.locator("#failure-rows")
    expect(failures.locator("tr")).not_to_have_count(0)
    expect(failures).to_contain_text("All termination attempts failed during TTL")
    expect(page.get_by_role("button", name="Pause")).to_be_disabled()
    page.screenshot(path=tmp_path / "campaign-done.png", full_page=True)

    # The report downloads as CSV, one row per message.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download report (CSV)").click()
    report = tmp_path / "report.csv"
    download.value.save_as(report)
    with report.open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 60
    assert sum(1 for line in lines if line["state"] == "failed") == counts["failed"]

    # Pause and resume the second with the buttons: the page and Redis both change.
    page.get_by_role("link", name="← All campaigns").click()
    page.get_by_role("link", name="newsletter").click()
    state = page.locator("#c-state")
    expect(state).to_have_text("active")
    wait_status(api, controlled, lambda s: s["counts"]["sent"] >= 20)
    page.get_by_role("button", name="Pause").click()
    expect(state).to_have_text("paused")
    expect(page.get_by_role("status").filter(has_text="Campaign paused.")).to_be_visible()
    assert _redis_state(stack, controlled) == "paused"
    expect(page.locator("#c-left")).to_have_text("paused")
    page.get_by_role("button", name="Resume").click()
    expect(state).to_have_text("active")
    assert _redis_state(stack, controlled) == "active"
    expect(page.locator("#c-rate")).not_to_have_text("0.0/s")
    # The chart is the trunk's last hour from the server, full on first view: a page opened
    # now shows the minutes already sent (10 s buckets: 359 of them), claims and callbacks.
    fresh = context.new_page()
    fresh.on("pageerror", lambda exc: errors.append(str(exc)))
    fresh.goto(f"{url}/campaigns/{controlled}")
    expect(fresh.locator("#chart polyline")).to_have_count(2)
    expect(fresh.locator("#chart-caption")).to_contain_text("Trunk default")
    drawn = fresh.evaluate(
        """() => [...document.querySelectorAll('#chart polyline')].map((line) => {
             const ys = [...line.points].map((p) => p.y);
             return { points: ys.length, lowest: Math.min(...ys), baseline: Math.max(...ys) };
           })"""
    )
    assert all(line["points"] >= 300 for line in drawn), drawn
    # Both lines rise above their baseline somewhere: the minutes sent are in it.
    assert all(line["lowest"] < line["baseline"] for line in drawn), drawn
    fresh.close()
    expect(page.locator("#chart polyline")).to_have_count(2)
    page.screenshot(path=tmp_path / "campaign-active.png", full_page=True)
    for size, name in ((PHONE, "campaign-phone.png"), (WIDE, "campaign-wide.png")):
        page.set_viewport_size(size)
        page.screenshot(path=tmp_path / name, full_page=True)
    page.set_viewport_size(DESKTOP)

    # The overview, on a large screen and on a phone.
    page.get_by_role("link", name="Campaigns", exact=True).click()
    expect(rows).to_have_count(2)
    page.screenshot(path=tmp_path / "overview.png", full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=tmp_path / "overview-phone.png", full_page=True)
    page.set_viewport_size(DESKTOP)

    # Cancel, from the keyboard this time: the confirmation dialog, then the page and Redis.
    page.get_by_role("link", name="newsletter").click()
    expect(state).to_have_text("active")
    page.get_by_role("button", name="Cancel campaign").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Cancel this campaign?")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Keep it")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(state).to_have_text("cancelled")
    assert _redis_state(stack, controlled) == "cancelled"

    # A new campaign from a CSV upload, previewed then sent.
    made = _new_campaign(page, url, tmp_path, "js")
    wait_status(api, made, lambda s: s["counts"]["queued"] == 0 and s["total"] == 2)

    # Log out: the session cookie is gone and the JSON refuses this browser.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Sign in to the dashboard")).to_be_visible()
    assert not [c for c in context.cookies() if c["name"] == "smsq_session"]
    assert page.request.get(f"{url}/dashboard/api/campaigns").status == 401
    assert errors == [], errors

    proc.stop()
    assert API_TOKEN not in proc.log()
    assert "dashboard_login" in proc.log() and "campaign_paused" in proc.log()
    if os.environ.get("SMSQ_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "campaign-active.png", README_SCREENSHOT)


@pytest.mark.timeout(180)
def test_the_dashboard_without_javascript(make_stack, request, browser, tmp_path: Path) -> None:
    """With JavaScript off the pages are what the server sent: the campaigns list, a
    campaign's figures and counts, the trunks; every link is a page of its own."""
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_MS)
    stack = make_stack(rate_per_s=50, appendonly=True)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20")
    stack.start_worker("one")
    proc, api, url = start_api(stack, request)
    cid = _create(api, "quiet-launch", 40, 0)
    status = wait_status(api, cid, lambda s: bool(s["done"]))

    context = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    request.addfinalizer(context.close)
    page = context.new_page()
    page.goto(url)
    page.get_by_label("API token").fill(API_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    rows = page.locator("#campaign-rows tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("quiet-launch")
    expect(rows.first).to_contain_text("done")
    expect(page.locator("#trunk-rows")).to_contain_text("default")
    expect(page.locator("#connection")).to_contain_text("reload the page")
    page.screenshot(path=tmp_path / "overview-no-js.png", full_page=True)

    page.get_by_role("link", name="quiet-launch").click()
    expect(page).to_have_url(f"{url}/campaigns/{cid}")
    expect(page.get_by_role("heading", name="quiet-launch")).to_be_visible()
    expect(page.locator("#c-state")).to_have_text("done")
    counts = status["counts"]
    for state in ("sent", "failed", "queued"):
        row = page.locator("#count-rows tr", has=page.get_by_role("rowheader", name=state))
        expect(row).to_contain_text(str(counts[state]))
    page.screenshot(path=tmp_path / "campaign-no-js.png", full_page=True)
    page.get_by_role("link", name="← All campaigns").click()
    expect(rows).to_have_count(1)

    # A new campaign from a CSV upload works without JavaScript too.
    made = _new_campaign(page, url, tmp_path, "no-js")
    expect(page).to_have_url(f"{url}/campaigns/{made}")
    wait_status(api, made, lambda s: bool(s["done"]))
    page.reload()
    expect(page.locator("#c-state")).to_have_text("done")
    proc.stop()
    if os.environ.get("SMSQ_UPDATE_SCREENSHOT") == "1":
        for name, target in DOCS_SCREENSHOTS.items():
            shutil.copyfile(tmp_path / name, target)

"""The HTTP API for real: `python -m producer.http` as a process beside the simulator, the
ingester and a Celery worker; campaigns are created, watched and controlled over HTTP."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ops.stack import START_TIMEOUT_S, Proc, Stack, free_port, wait_for
from producer.consumer import EventConsumer
from tests.integration.conftest import SOURCE

API_TOKEN = "it-api-token-SECRET-7f3a"


def start_api(
    stack: Stack, request: pytest.FixtureRequest, timeout_s: float = 30.0
) -> tuple[Proc, httpx.Client, str]:
    """The API process on a free port, stopped when the test ends, and a client for it whose
    requests give up after timeout_s."""
    port = free_port()
    argv = [sys.executable, "-m", "producer.http", "--host", "127.0.0.1", "--port", str(port)]
    env = stack.env(SMSQ_API_TOKEN=API_TOKEN)
    proc = Proc("api", argv, env, stack.workdir / "api.log").start()
    request.addfinalizer(proc.stop)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        proc.check_alive()
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200

    wait_for(healthy, START_TIMEOUT_S, "the HTTP API")
    client = httpx.Client(
        base_url=url, headers={"authorization": f"Bearer {API_TOKEN}"}, timeout=timeout_s
    )
    request.addfinalizer(client.close)
    return proc, client, url


def wait_status(
    api: httpx.Client, cid: str, check: Callable[[dict[str, Any]], bool], timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = api.get(f"/v1/campaigns/{cid}")
        assert response.status_code == 200, response.text
        status = dict(response.json())
        if check(status):
            return status
        assert time.monotonic() < deadline, f"timed out; last status {status}"
        time.sleep(0.3)


def test_a_campaign_created_over_http_is_sent_and_watched(make_stack, request) -> None:
    stack = make_stack(rate_per_s=100)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "50")
    stack.start_worker("one")
    proc, api, url = start_api(stack, request)
    numbers = [f"4930{i:08d}" for i in range(20)]

    response = api.post(
        "/v1/campaigns",
        json={
            "source": SOURCE,
            "text": "Sale today",
            "destinations": [f"+{n}" for n in numbers] + ["12345", f"00{numbers[0]}"],
            "name": "over-http",
        },
    )
    assert response.status_code == 201, response.text
    created = response.json()
    cid = created["campaign_id"]
    assert created["queued"] == 20 and created["duplicates"] == 1
    assert [r["index"] for r in created["rejections"]] == [20]

    wrong = httpx.Client(base_url=url, headers={"authorization": "Bearer nope"})
    with wrong:
        refused = wrong.post("/v1/campaigns", json={"source": SOURCE, "text": "x"})
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "unauthorized"
        assert wrong.get(f"/v1/campaigns/{cid}").status_code == 401
    assert httpx.get(f"{url}/v1/campaigns/{cid}").status_code == 401
    # The description is served without a token.
    assert httpx.get(f"{url}/v1/openapi.json").json()["openapi"] == "3.1.0"

    status = wait_status(api, cid, lambda s: bool(s["done"]))
    assert status["counts"]["sent"] == 20 and status["name"] == "over-http"
    cli = stack.status(cid)
    assert cli["counts"] == status["counts"] and cli["state"] == status["state"]
    assert sorted(m["destination"] for m in stack.sim("messages")) == numbers
    assert api.get("/v1/campaigns/ffffffffffffffff").status_code == 404

    # A consumer group sees every message accepted and then sent.
    with EventConsumer(stack.redis_url, "billing", "it") as consumer:
        seen = [e for e in _drain(consumer) if e.get("campaign_id") == cid]
    assert sorted(e["type"] for e in seen) == ["accepted"] * 20 + ["sent"] * 20

    proc.stop()
    log = proc.log()
    assert "campaign_created" in log and "api_unauthorized" in log
    assert API_TOKEN not in log


def _drain(consumer: EventConsumer) -> list[dict[str, Any]]:
    handled: list[dict[str, Any]] = []
    consumer.run(handled.append, follow=False)
    return handled


def test_pause_resume_and_cancel_over_http_control_a_real_worker(make_stack, request) -> None:
    stack = make_stack(rate_per_s=40)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "50")
    stack.start_worker("one")
    _, api, _ = start_api(stack, request)
    numbers = [f"4930{i:08d}" for i in range(300)]
    response = api.post(
        "/v1/campaigns", json={"source": SOURCE, "text": "hi", "destinations": numbers}
    )
    assert response.status_code == 201, response.text
    cid = response.json()["campaign_id"]
    wait_status(api, cid, lambda s: s["counts"]["sent"] >= 20)

    paused = api.post(f"/v1/campaigns/{cid}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    # Every request written before the pause has been answered.
    wait_status(api, cid, lambda s: s["counts"]["sending"] == 0)
    posted = int(stack.sim("stats")["accepted"])
    # The worker offered each of the campaign's batches to the claim script, which handed
    # them back as paused: it had every chance to post more.
    stack.wait_for(lambda: stack.let_go(cid), "every batch of the paused campaign let go")
    assert int(stack.sim("stats")["accepted"]) == posted, "a worker kept posting while paused"

    resumed = api.post(f"/v1/campaigns/{cid}/resume")
    assert resumed.status_code == 200 and resumed.json()["batches_queued"] >= 1
    wait_status(api, cid, lambda s: s["counts"]["sent"] >= posted + 20)

    cancelled = api.post(f"/v1/campaigns/{cid}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["cancelled"] > 0
    status = wait_status(api, cid, lambda s: bool(s["done"]), timeout_s=30)
    counts = status["counts"]
    assert status["state"] == "cancelled"
    assert counts["cancelled"] + counts["sent"] == 300
    assert int(stack.sim("stats")["accepted"]) == counts["sent"]
    # An ended campaign: pause, resume and cancel are refused and change nothing.
    for action in ("pause", "resume", "cancel"):
        refused = api.post(f"/v1/campaigns/{cid}/{action}")
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "campaign_finished"
        assert refused.headers["content-type"] == "application/problem+json"
    after = api.get(f"/v1/campaigns/{cid}").json()
    assert (after["state"], after["counts"]) == ("cancelled", counts)

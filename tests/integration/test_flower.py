"""Flower for real: `celery -A worker flower` with its login in FLOWER_BASIC_AUTH (as
docker-compose.yml gives it) shows the worker and each smsq.send_batch task with the campaign
id and batch number, and neither the DIDWW password nor a recipient."""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ops.stack import START_TIMEOUT_S, Proc, free_port, wait_for
from tests.integration.conftest import TestStack, write_numbers

LOGIN = ("operator", "flower-test-pw")
# Two batches at the default SMSQ_BATCH_SIZE of 100.
RECIPIENTS = 150


def start_flower(stack: TestStack) -> tuple[Proc, str]:
    port = free_port()
    argv = [
        sys.executable, "-m", "celery", "-A", "worker", "flower",
        "--address=127.0.0.1", f"--port={port}", "--max_tasks=10000",
    ]  # fmt: skip
    env = stack.env(FLOWER_BASIC_AUTH=":".join(LOGIN))
    proc = Proc("flower", argv, env, stack.workdir / "flower.log").start()
    stack.workers.append(proc)  # stopped with the stack, and its log shown on a timeout
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        proc.check_alive()
        return httpx.get(f"{url}/healthcheck", timeout=1.0).text == "OK"

    wait_for(healthy, START_TIMEOUT_S, "Flower")
    return proc, url


def poll(what: str, fetch: Any, check: Any, timeout_s: float = 30.0) -> Any:
    """fetch() until check(answer) holds; the last answer goes into the failure message."""
    deadline = time.monotonic() + timeout_s
    answer = fetch()
    while not check(answer):
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last: {answer}"
        time.sleep(0.3)
        answer = fetch()
    return answer


def test_flower_shows_workers_and_batches_without_secrets(make_stack, tmp_path: Path):
    stack = make_stack(rate_per_s=200)
    stack.start_callbacks()
    stack.start_simulator("--callback-delay-ms", "20")
    stack.start_worker("flowertest")
    _, url = start_flower(stack)
    api = httpx.Client(base_url=url, auth=LOGIN, timeout=10.0)

    # Task events are broadcast, not queued: wait until Flower's event receiver has seen the
    # worker's heartbeat before sending, or it could miss the first task's events.
    poll(
        "Flower to hear the worker",
        lambda: httpx.get(f"{url}/metrics", timeout=5.0).text,
        lambda text: 'flower_worker_online{worker="flowertest@' in text,
    )
    poll(
        "the worker in /api/workers",
        lambda: api.get("/api/workers", params={"refresh": "1"}).json(),
        lambda answer: any(name.startswith("flowertest@") for name in answer),
    )

    numbers = write_numbers(tmp_path / "n.csv", RECIPIENTS)
    cid = stack.send("--recipients", str(tmp_path / "n.csv"), "--text", "hi")["campaign_id"]
    assert stack.wait_done(cid, timeout_s=60)["counts"]["sent"] == RECIPIENTS

    def batches(answer: dict[str, Any]) -> dict[int, dict[str, Any]]:
        found = {}
        for task in answer.values():
            args = ast.literal_eval(task["args"] or "()")
            # The name Flower shows carries the trunk (Celery's shadow name).
            if task["name"] == "smsq.send_batch[default]" and args and args[0] == cid:
                found[args[1]] = task
        return found

    def both_succeeded(answer: dict[str, Any]) -> bool:
        found = batches(answer)
        return set(found) == {0, 1} and all(t["state"] == "SUCCESS" for t in found.values())

    tasks = poll("both batches in /api/tasks", lambda: api.get("/api/tasks").json(), both_succeeded)
    for batch_no, task in batches(tasks).items():
        assert ast.literal_eval(task["args"]) == [cid, batch_no]
        assert ast.literal_eval(task["kwargs"]) == {"trunk": "default", "urgent": False}
        assert task["worker"].startswith("flowertest@")
        assert ast.literal_eval(task["result"])["outcome"] == "held"

    # Neither answer, nor the metrics Prometheus reads, carries a secret or a recipient.
    answers = {
        "/api/tasks": api.get("/api/tasks").text,
        "/api/workers": api.get("/api/workers", params={"refresh": "1"}).text,
        "/metrics": httpx.get(f"{url}/metrics").text,
    }
    secrets = [
        stack.settings_env["SMSQ_DIDWW_PASSWORD"],
        stack.settings_env["SMSQ_CALLBACK_TOKEN"],
    ]
    assert cid in answers["/api/tasks"]
    for path, text in answers.items():
        for secret in secrets:
            assert secret not in text, f"{path} shows a secret"
        leaked = [n for n in numbers if n in text]
        assert not leaked, f"{path} shows recipients, e.g. {leaked[:3]}"

    # The UI and the API need the login; /metrics and /healthcheck stay open for Prometheus
    # and health checks (ops/prometheus/prometheus.yml keeps no Flower password for that reason).
    for path in ("/api/tasks", "/api/workers", "/"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
        wrong = httpx.get(f"{url}{path}", auth=(LOGIN[0], "wrong"))
        assert wrong.status_code == 401, path
    assert httpx.get(f"{url}/metrics").status_code == 200
    api.close()

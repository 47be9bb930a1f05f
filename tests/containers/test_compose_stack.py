"""docker-compose.yml and ops/Dockerfile for real, on podman: the image built from the
repository, the stack up with two workers and the simulator, campaigns sent through the API's
published port, a worker stopped mid-campaign, and nothing left behind."""

from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.containers.images import (
    REPOSITORY,
    DebianImageError,
    build_smsq,
    make_bases,
    missing_tools,
    podman,
    remove_smsq,
    run_probe,
    tail,
)
from tests.containers.stack import (
    PROJECT_PREFIX,
    ComposeStack,
    PodmanService,
    remove_stale_projects,
)

# The first run on a host also makes the base images (about 5 minutes in all); later runs
# take under 2. Room for a slow host: every wait below has its own, shorter timeout.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

SOURCE = "37041123456"
# The whole trunk's rate and the batch size for this stack: fast enough to finish in
# seconds, small batches so that both workers take some.
RATE_PER_S = 40
BATCH_SIZE = 10
FIRST_CAMPAIGN = 160
# 20 s at RATE_PER_S: long enough that both stops fall within it on a slow host.
SECOND_CAMPAIGN = 800
READY_TIMEOUT_S = 90.0
DONE_TIMEOUT_S = 120.0
POLL_S = 0.5
# A command that exits makes its container restart: checked this often while waiting.
RESTART_CHECK_S = 2.0
INSTALL_HINT = "as root: apt-get install podman runc debootstrap docker-compose; .ci/run does it"
# The image's user (ops/Dockerfile): never root.
SMSQ_UID = "10001"


def _why_containers_cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "containers: needs root (debootstrap and podman's networks)"
    if missing := missing_tools():
        return f"containers: {', '.join(missing)} not installed ({INSTALL_HINT})"
    if error := run_probe():
        return f"containers: podman cannot run a container here: {error}"
    return None


def _timed(timings: dict[str, float], name: str, action: Callable[[], Any]) -> Any:
    started = time.monotonic()
    try:
        return action()
    finally:
        timings[name] = time.monotonic() - started


@pytest.fixture
def stack() -> Iterator[ComposeStack]:
    if reason := _why_containers_cannot_run():
        pytest.skip(reason)
    timings: dict[str, float] = {}
    try:
        bases = _timed(timings, "base images (all)", lambda: make_bases(timings))
    except DebianImageError as exc:
        pytest.skip(f"containers: cannot make a Debian base image here: {tail(str(exc), 1)}")

    remove_stale_projects()
    project = f"{PROJECT_PREFIX}{secrets.token_hex(4)}"
    image = f"{REPOSITORY}/smsq:{project}"
    # A short path: the podman socket lives in it, and socket paths are limited to 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="smsqct-"))
    service = PodmanService(directory)
    compose_stack: ComposeStack | None = None
    try:
        _timed(timings, "build smsq image", lambda: build_smsq(image, bases))
        service.start()
        compose_stack = ComposeStack(
            directory / "project", project, image, bases, service, timings,
            SMSQ_RATE_LIMIT=str(RATE_PER_S), SMSQ_BATCH_SIZE=str(BATCH_SIZE),
        )  # fmt: skip
        yield compose_stack
    finally:
        if compose_stack is not None and compose_stack.leftovers():
            compose_stack.remove_everything()
        service.stop()
        remove_smsq(image)
        shutil.rmtree(directory, ignore_errors=True)
        print("containers timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def _numbers(first: int, count: int) -> list[str]:
    return [str(first + i) for i in range(count)]


def _wait(what: str, check: Callable[[], Any], timeout_s: float, stack: ComposeStack) -> Any:
    """Poll check() until it returns something true; fail at once if a container restarts."""
    deadline = time.monotonic() + timeout_s
    next_restart_check = time.monotonic()
    last: Any = None
    while time.monotonic() < deadline:
        if time.monotonic() >= next_restart_check:
            if restarted := stack.restarted():
                raise AssertionError(
                    f"waiting for {what}: restarted {restarted}\n{stack.diagnostics()}"
                )
            next_restart_check = time.monotonic() + RESTART_CHECK_S
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(POLL_S)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s: {what}; last: {last}\n{stack.diagnostics()}"
    )


class Api:
    def __init__(self, stack: ComposeStack) -> None:
        self.stack = stack
        # trust_env=False: a proxy set in the environment must not see requests to loopback.
        self.client = httpx.Client(
            base_url=stack.url("API_PORT"), timeout=10, trust_env=False,
            headers={"Authorization": f"Bearer {stack.secrets['SMSQ_API_TOKEN']}"},
        )  # fmt: skip

    def send(self, destinations: list[str], name: str) -> str:
        response = self.client.post(
            "/v1/campaigns",
            json={
                "source": SOURCE,
                "text": "compose test",
                "destinations": destinations,
                "name": name,
            },
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["queued"] == len(destinations), body
        return str(body["campaign_id"])

    def status(self, cid: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/campaigns/{cid}")
        response.raise_for_status()
        return dict(response.json())

    def wait(self, cid: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def met() -> dict[str, Any] | None:
            status = self.status(cid)
            return status if check(status) else None

        return dict(_wait(f"campaign {cid} {what}", met, DONE_TIMEOUT_S, self.stack))


def _assert_all_sent(status: dict[str, Any], total: int) -> None:
    others = {state: n for state, n in status["counts"].items() if state != "sent" and n}
    assert status["done"] and status["counts"]["sent"] == total and not others, status


def _assert_each_once_at_simulator(stack: ComposeStack, numbers: list[str]) -> None:
    with httpx.Client(base_url=stack.url("SIMULATOR_PORT"), timeout=10, trust_env=False) as sim:
        messages = sim.get("/_sim/messages").json()
    wanted = set(numbers)
    seen = collections.Counter(m["destination"] for m in messages if m["destination"] in wanted)
    missing = wanted - set(seen)
    twice = {number: n for number, n in seen.items() if n > 1}
    assert not missing and not twice, f"missing {sorted(missing)[:10]}, sent twice {twice}"


def _batch_lines(log: str, cid: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines about a batch of this campaign."""
    found = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "batch" in str(entry.get("event")) and cid in entry.values():
            found.append(entry)
    return found


def _flower_workers(stack: ComposeStack) -> set[str]:
    login = ("admin", stack.secrets["FLOWER_PASSWORD"])
    with httpx.Client(base_url=stack.url("FLOWER_PORT"), timeout=15, trust_env=False) as flower:
        response = flower.get("/api/workers", params={"refresh": "1"}, auth=login)
    response.raise_for_status()
    return set(response.json())


@pytest.fixture
def api(stack: ComposeStack) -> Iterator[Api]:
    client = Api(stack)
    yield client
    client.client.close()


def test_the_stack_sends_on_two_workers_and_loses_nothing_when_one_stops(
    stack: ComposeStack, api: Api
) -> None:
    timings = stack.timings

    def up() -> None:
        with stack.health_checks_running():
            stack.compose("up", "--detach", "--no-build", "--scale", "worker=2")

    _timed(timings, "compose up", up)
    workers = [stack.container("worker", n) for n in (1, 2)]
    assert set(workers) <= set(stack.containers(all_states=False)), stack.diagnostics()

    def ready() -> None:
        for service in ("redis", "callbacks", "api", "flower", "webhooks"):
            stack.wait_healthy(stack.container(service), READY_TIMEOUT_S)
        nodes = {f"celery@{stack.hostname(name)}" for name in workers}
        _wait(f"Flower lists both workers {sorted(nodes)}",
              lambda: nodes <= _flower_workers(stack), READY_TIMEOUT_S, stack)  # fmt: skip

    _timed(timings, "healthy and both workers ready", ready)
    for service in ("worker", "api"):
        user = podman("exec", stack.container(service), "id", "-u").stdout.strip()
        assert user == SMSQ_UID, f"{service} runs as uid {user}"
    # Both workers take batches of one campaign, and every number reaches DIDWW once.
    first = _numbers(37060000000, FIRST_CAMPAIGN)
    cid = api.send(first, "compose-first")
    status = _timed(timings, "first campaign", lambda: api.wait(cid, lambda s: s["done"], "done"))
    _assert_all_sent(status, len(first))
    _assert_each_once_at_simulator(stack, first)
    for name in workers:
        assert _batch_lines(stack.logs(name), cid), f"{name} took no batch of {cid}:\n" + tail(
            stack.logs(name)
        )
    with httpx.Client(
        base_url=stack.url("CALLBACKS_PORT"), timeout=10, trust_env=False
    ) as ingester:
        assert ingester.get("/healthz").json() == {"ok": True}
        metrics = ingester.get("/metrics")
        assert metrics.status_code == 200 and "# TYPE" in metrics.text, metrics.text[:500]

    # A worker stopped by compose mid-campaign (SIGTERM, its stop_grace_period) finishes the
    # batch in hand and gives back what it had prefetched; the other sends the rest. Then the
    # last one stops too: nothing is in flight, nothing moves, and on start all is sent once.
    second = _numbers(37061000000, SECOND_CAMPAIGN)
    cid = api.send(second, "compose-second")
    _wait(
        f"{workers[1]} finishes a batch of {cid}",
        lambda: _batch_lines(stack.logs(workers[1]), cid),
        DONE_TIMEOUT_S,
        stack,
    )

    def scale_down() -> None:
        stack.compose("up", "--detach", "--no-build", "--no-deps", "--no-recreate",
                      "--scale", "worker=1", "worker")  # fmt: skip

    _timed(timings, "compose stops one worker", scale_down)
    assert workers[1] not in stack.containers(), stack.diagnostics()
    _timed(timings, "compose stop worker", lambda: stack.compose("stop", "worker"))
    stopped = api.status(cid)
    assert stopped["counts"]["queued"] > 0, f"done before the workers stopped: {stopped}"
    assert stopped["counts"]["sending"] == 0, stopped
    time.sleep(2)
    assert api.status(cid)["counts"]["queued"] == stopped["counts"]["queued"]
    stack.compose("start", "worker")
    status = _timed(timings, "second campaign after start",
                    lambda: api.wait(cid, lambda s: s["done"], "done"))  # fmt: skip
    _assert_all_sent(status, len(second))
    _assert_each_once_at_simulator(stack, second)

    # Down leaves nothing: no container, network or volume of the project.
    _timed(timings, "compose down", lambda: stack.compose("down", "--volumes", "--remove-orphans"))
    assert stack.leftovers() == {}

"""Tests for ops.simulator: the DIDWW stand-in over real sockets on 127.0.0.1.

Each test starts its own simulator on a free port and talks to it with httpx, as the worker does.
"""

from __future__ import annotations

import functools
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.simulator import (
    JSONAPI_MEDIA_TYPE,
    MessageRecord,
    SimulatorConfig,
    SimulatorThread,
    _fragments,
    run_in_thread,
)

ROOT = Path(__file__).resolve().parents[2]
USERNAME, PASSWORD = "smsq", "secret"
EMOJI = "\U0001f600"
# The seed's 401 body, word for word.
SEED_401 = {
    "errors": [
        {"title": "Unauthorized", "detail": "Authorization failed", "code": "401", "status": "401"}
    ]
}
# Long enough for any callback or subprocess here; short enough that a hang fails fast.
WAIT_S = 10.0
# Any of these means the client got no answer: the connection was closed or reset.
NO_ANSWER = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)
# The seed's callback attributes besides the end time, whose name varies.
CALLBACK_ATTRIBUTES = {"time_start", "destination", "source", "status", "code_id", "fragments_sent"}


def document(
    destination: str = "37041654321", source: str = "37041123456", content: str = "Hello World!"
) -> dict[str, Any]:
    attributes = {"destination": destination, "source": source, "content": content}
    return {"data": {"type": "outbound_messages", "attributes": attributes}}


def post(client: httpx.Client, body: Any, content_type: str = JSONAPI_MEDIA_TYPE) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/outbound_messages", content=raw, headers={"content-type": content_type})


def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def start() -> Iterator[Callable[..., SimulatorThread]]:
    handles: list[SimulatorThread] = []

    def start_simulator(**settings: Any) -> SimulatorThread:
        handle = run_in_thread(SimulatorConfig(**settings))
        handles.append(handle)
        return handle

    yield start_simulator
    for handle in handles:
        handle.stop()


@pytest.fixture
def client_for() -> Iterator[Callable[..., httpx.Client]]:
    clients: list[httpx.Client] = []

    def make(handle: SimulatorThread, auth: tuple[str, str] = (USERNAME, PASSWORD)) -> httpx.Client:
        client = httpx.Client(base_url=handle.url, auth=auth, trust_env=False, timeout=WAIT_S)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class Receiver:
    """A tiny callback endpoint; answers 503 to its first `failures` POSTs, then 204.

    `close_connections` answers with Connection: close; `idle_timeout_s` drops idle connections.
    """

    def __init__(
        self,
        failures: int = 0,
        close_connections: bool = False,
        idle_timeout_s: float | None = None,
    ) -> None:
        self.callbacks: list[tuple[str, dict[str, Any]]] = []
        self.failures_left = failures
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout_s

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    failed = receiver.failures_left > 0
                    if failed:
                        receiver.failures_left -= 1
                    else:
                        receiver.callbacks.append((self.headers["Content-Type"], json.loads(body)))
                self.send_response(503 if failed else 204)
                self.send_header("Content-Length", "0")
                if close_connections:
                    self.send_header("Connection", "close")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A short poll keeps shutdown() from waiting half a second per test.
        serve = functools.partial(self.server.serve_forever, poll_interval=0.02)
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/didww/callbacks"

    def documents(self) -> list[dict[str, Any]]:
        with self.lock:
            return [doc for _, doc in self.callbacks]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver_for() -> Iterator[Callable[..., Receiver]]:
    receivers: list[Receiver] = []

    def make(**settings: Any) -> Receiver:
        receivers.append(Receiver(**settings))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()


def test_accepts_a_message_with_a_uuid4_id(start, client_for) -> None:
    sim = start()
    before = time.time()
    response = post(client_for(sim), document())
    assert response.status_code == 201
    assert response.headers["content-type"] == JSONAPI_MEDIA_TYPE
    data = response.json()["data"]
    assert data["type"] == "outbound_messages"
    assert uuid.UUID(data["id"]).version == 4
    [record] = sim.messages
    assert record.id == data["id"]
    assert (record.destination, record.source, record.content) == (
        "37041654321",
        "37041123456",
        "Hello World!",
    )
    assert before <= record.arrived_at <= time.time()
    assert record.dropped_after is False
    assert sim.stats["by_outcome"] == {"201": 1}
    assert sim.stats["accepted"] == 1


@pytest.mark.parametrize("auth", [("smsq", "wrong"), ("other", "secret"), None])
def test_bad_or_missing_credentials_get_the_seed_401(start, client_for, auth) -> None:
    sim = start()
    client = client_for(sim, auth=auth) if auth else httpx.Client(base_url=sim.url, trust_env=False)
    with client:
        response = post(client, document())
    assert response.status_code == 401
    assert response.json() == SEED_401
    assert sim.messages == []


@pytest.mark.parametrize(
    "content_type", ["application/vnd.api+json; charset=utf-8", "application/json", "text/plain"]
)
def test_other_content_types_get_415(start, client_for, content_type) -> None:
    sim = start()
    response = post(client_for(sim), document(), content_type=content_type)
    assert response.status_code == 415
    [error] = response.json()["errors"]
    assert error["title"] == "Unsupported Media Type"
    assert error["status"] == "415"
    assert sim.messages == []


@pytest.mark.parametrize(
    ("body", "detail_mentions"),
    [
        (document(destination="+37041654321"), "destination"),
        (document(source="+37041123456"), "source"),
        (document(destination="3704 165"), "destination"),
        (
            {"data": {"type": "outbound_messages", "attributes": {"source": "1", "content": "x"}}},
            "destination",
        ),
        (document(content=""), "content"),
        ({"data": {"type": "messages", "attributes": document()["data"]["attributes"]}}, "type"),
        ([1, 2], "object"),
        (b"{not json", "JSON"),
    ],
)
def test_bad_documents_get_400_with_a_detail(start, client_for, body, detail_mentions) -> None:
    sim = start()
    response = post(client_for(sim), body)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert set(error) == {"title", "detail", "code", "status"}
    assert (error["title"], error["code"], error["status"]) == ("Bad Request", "400", "400")
    assert detail_mentions in error["detail"]
    assert sim.messages == []


def test_checks_run_auth_then_media_type_then_document(start, client_for) -> None:
    sim = start()
    wrong = client_for(sim, auth=("smsq", "wrong"))
    assert post(wrong, b"{", content_type="application/json").status_code == 401
    assert post(client_for(sim), b"{", content_type="application/json").status_code == 415


def test_503_fault_records_no_message(start, client_for) -> None:
    sim = start(fail_5xx=1.0)
    response = post(client_for(sim), document())
    assert response.status_code == 503
    assert response.json()["errors"][0]["status"] == "503"
    assert sim.messages == []


def test_429_carries_retry_after(start, client_for) -> None:
    sim = start(fail_429=1.0, retry_after_s=7)
    response = post(client_for(sim), document())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert sim.messages == []
    assert sim.stats["by_outcome"] == {"429": 1}


def test_drop_before_closes_without_answer_or_record(start, client_for) -> None:
    sim = start(drop_before=1.0)
    with pytest.raises(NO_ANSWER):
        post(client_for(sim), document())
    assert sim.messages == []
    [(_, outcome)] = sim.simulator.requests
    assert outcome == "drop_before"


def test_drop_after_records_the_message_but_sends_no_answer(start, client_for) -> None:
    sim = start(drop_after=1.0)
    with pytest.raises(NO_ANSWER):
        post(client_for(sim), document(destination="37060000001"))
    [record] = sim.messages
    assert record.destination == "37060000001"
    assert record.dropped_after is True
    assert sim.stats["by_outcome"] == {"drop_after": 1}


def test_latency_is_applied_before_answering(start, client_for) -> None:
    sim = start(latency_ms=150)
    client = client_for(sim)
    began = time.monotonic()
    assert post(client, document()).status_code == 201
    assert time.monotonic() - began >= 0.15


def test_same_seed_gives_the_same_fault_sequence(start, client_for) -> None:
    def outcomes() -> list[int | str]:
        sim = start(seed=42, fail_5xx=0.3, fail_429=0.3)
        client = client_for(sim)
        for _ in range(30):
            post(client, document())
        return [outcome for _, outcome in sim.simulator.requests]

    first = outcomes()
    assert first == outcomes()
    assert {201, 429, 503} <= set(first)


def test_keep_alive_serves_many_requests_on_one_connection(start, client_for) -> None:
    sim = start()
    client = client_for(sim)
    for n in range(5):
        assert post(client, document(destination=f"3706000000{n}")).status_code == 201
    assert sim.stats["connections_total"] == 1


def test_pipelined_and_chunked_requests_are_read_correctly(start) -> None:
    sim = start()
    body = json.dumps(document()).encode()
    head = (
        "POST /outbound_messages HTTP/1.1\r\nHost: sim\r\nAuthorization: Basic c21zcTpzZWNyZXQ=\r\n"
        f"Content-Type: {JSONAPI_MEDIA_TYPE}\r\n"
    ).encode()
    fixed = head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    port = int(sim.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as conn:
        conn.sendall(fixed + chunked + b"GET /nowhere HTTP/1.1\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 201 Created\r\n") == 2
    assert b"HTTP/1.1 404 Not Found\r\n" in received
    assert len(sim.messages) == 2


def test_malformed_request_gets_400_and_a_closed_connection(start) -> None:
    sim = start()
    port = int(sim.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as conn:
        conn.sendall(b"NONSENSE\r\n\r\n")
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_runtime_config_change_applies_to_the_next_request(start, client_for) -> None:
    sim = start()
    client = client_for(sim)
    assert post(client, document()).status_code == 201
    changed = client.post("/_sim/config", json={"password": "new", "fail_429": 0.0})
    assert changed.status_code == 200
    assert changed.json()["password"] == "new"
    assert post(client, document()).status_code == 401
    assert post(client_for(sim, auth=("smsq", "new")), document()).status_code == 201
    assert client.post("/_sim/config", json={"fail_5xx": 1.0}).status_code == 200
    assert post(client_for(sim, auth=("smsq", "new")), document()).status_code == 503


@pytest.mark.parametrize(
    "change",
    [{"no_such_setting": 1}, {"fail_5xx": 1.5}, {"latency_ms": "slow"}, {"port": 1}, [1]],
)
def test_runtime_config_refuses_unknown_or_invalid_settings(start, client_for, change) -> None:
    sim = start()
    client = client_for(sim)
    response = client.post("/_sim/config", json=change)
    assert response.status_code == 400
    assert "error" in response.json()
    assert sim.simulator.config == SimulatorConfig(port=0)


def test_admin_endpoints_report_and_reset(start, client_for) -> None:
    sim = start()
    client = client_for(sim)
    started = time.time()
    post(client, document(destination="37060000001"))
    post(client, document(destination="+37060000002"))
    sim.simulator.configure(drop_after=1.0)
    with pytest.raises(NO_ANSWER):
        post(client, document(destination="37060000003"))

    messages = client.get("/_sim/messages").json()
    assert [(m["destination"], m["dropped_after"]) for m in messages] == [
        ("37060000001", False),
        ("37060000003", True),
    ]
    assert set(messages[0]) == set(MessageRecord._fields)
    requests = client.get("/_sim/requests").json()
    assert [outcome for _, outcome in requests] == [201, 400, "drop_after"]
    assert all(started <= arrived_at <= time.time() for arrived_at, _ in requests)
    assert sum(sim.simulator.requests_per_second().values()) == 3
    stats = client.get("/_sim/stats").json()
    assert stats["by_outcome"] == {"201": 1, "400": 1, "drop_after": 1}
    assert stats["accepted"] == 2
    assert {"callbacks_delivered", "callbacks_failed"} <= set(stats)

    assert client.post("/_sim/reset").status_code == 200
    assert client.get("/_sim/messages").json() == []
    assert client.get("/_sim/requests").json() == []
    assert client.get("/_sim/stats").json()["requests"] == 0


@pytest.mark.parametrize("close_connections", [False, True])
def test_callbacks_carry_the_seed_document(
    start, client_for, receiver_for, close_connections
) -> None:
    receiver = receiver_for(close_connections=close_connections)
    sim = start(callback_url=receiver.url, callback_delay_ms=20, end_time_key="random", seed=7)
    client = client_for(sim)
    contents = {
        "37060000001": ("a" * 161, 2),
        "37060000002": ("x" * 69 + EMOJI, 2),
        "37060000003": ("Hello " + EMOJI, 1),
        "37060000004": ("Hello World!", 1),
    }
    for n in range(5, 17):
        contents[f"370600000{n:02d}"] = (f"message {n}", 1)
    for destination, (content, _) in contents.items():
        assert post(client, document(destination=destination, content=content)).status_code == 201
    wait_for(lambda: len(receiver.callbacks) == len(contents))

    ids = {record.destination: record.id for record in sim.messages}
    end_keys = set()
    for content_type, doc in receiver.callbacks:
        assert content_type == JSONAPI_MEDIA_TYPE
        data = doc["data"]
        assert set(data) == {"type", "id", "attributes"}
        assert data["type"] == "outbound_message_callbacks"
        attributes = data["attributes"]
        [end_key] = set(attributes) & {"end_time", "time_end"}
        end_keys.add(end_key)
        assert set(attributes) == {end_key, *CALLBACK_ATTRIBUTES}
        destination = attributes["destination"]
        assert data["id"] == ids[destination]
        assert attributes["source"] == "37041123456"
        assert (attributes["status"], attributes["code_id"]) == ("Success", None)
        assert attributes["fragments_sent"] == contents[destination][1]
        started = datetime.fromisoformat(attributes["time_start"])
        ended = datetime.fromisoformat(attributes[end_key])
        assert attributes["time_start"].endswith("Z")
        assert started <= ended
    assert end_keys == {"end_time", "time_end"}
    wait_for(lambda: sim.stats["callbacks_pending"] == 0)
    assert sim.stats["callbacks_delivered"] == len(contents)


def test_failed_and_duplicate_callbacks(start, client_for, receiver_for) -> None:
    receiver = receiver_for()
    sim = start(
        callback_url=receiver.url,
        callback_delay_ms=10,
        callback_failure_ratio=1.0,
        callback_duplicate_ratio=1.0,
        seed=3,
    )
    client = client_for(sim)
    for n in range(10):
        assert post(client, document(destination=f"3706000000{n}")).status_code == 201
    wait_for(lambda: len(receiver.callbacks) == 20)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for doc in receiver.documents():
        by_id.setdefault(doc["data"]["id"], []).append(doc)
    assert set(by_id) == {record.id for record in sim.messages}
    for first, second in by_id.values():
        assert first == second
    outcomes = {
        (doc["data"]["attributes"]["status"], doc["data"]["attributes"]["code_id"])
        for doc in receiver.documents()
    }
    assert outcomes == {("Failed", 101), ("Routing Error", 1)}


def test_callbacks_are_retried_after_5xx_and_counted(start, client_for, receiver_for) -> None:
    receiver = receiver_for(failures=2)
    sim = start(callback_url=receiver.url, callback_delay_ms=0)
    assert post(client_for(sim), document()).status_code == 201
    wait_for(lambda: sim.stats["callbacks_delivered"] == 1)
    assert len(receiver.callbacks) == 1
    assert sim.stats["callbacks_retried"] == 2
    assert sim.stats["callbacks_failed"] == 0


def test_callbacks_survive_the_receiver_closing_idle_connections(
    start, client_for, receiver_for
) -> None:
    receiver = receiver_for(idle_timeout_s=0.05)
    sim = start(callback_url=receiver.url, callback_delay_ms=0, callback_concurrency=1)
    client = client_for(sim)
    for n in range(1, 4):
        assert post(client, document()).status_code == 201
        wait_for(lambda n=n: sim.stats["callbacks_delivered"] == n)
        time.sleep(0.2)
    assert len(receiver.callbacks) == 3
    assert sim.stats["callbacks_retried"] == 0


def test_callbacks_to_an_unreachable_receiver_are_counted_as_failed(start, client_for) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]
    sim = start(callback_url=f"http://127.0.0.1:{closed_port}/", callback_delay_ms=0)
    assert post(client_for(sim), document()).status_code == 201
    wait_for(lambda: sim.stats["callbacks_failed"] == 1)
    assert sim.stats["callbacks_delivered"] == 0


@pytest.mark.parametrize(
    ("content", "parts"),
    [
        ("a", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("\u20ac" * 80, 1),
        ("{" * 81, 2),
        ("a" * 152 + "\u20ac" + "a" * 152, 3),
        ("\u044f" * 70, 1),
        ("\u044f" * 71, 2),
        ("\u044f" * 134, 2),
        (EMOJI * 35, 1),
        ("x" * 69 + EMOJI, 2),
        ("a" * 66 + EMOJI + "a" * 66, 3),
        ("\x1b", 1),
    ],
)
def test_fragments_follow_gsm7_and_ucs2_rules(content: str, parts: int) -> None:
    assert _fragments(content) == parts


@given(st.text(min_size=1, max_size=400))
def test_fragments_is_one_exactly_when_the_text_fits_one_sms(content: str) -> None:
    utf16_units = len(content.encode("utf-16-le")) // 2
    single = _fragments(content) == 1
    if utf16_units <= 70:
        assert single
    if len(content) > 160:
        assert not single


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ops.simulator", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(WAIT_S):
            raise AssertionError("the simulator printed nothing")
    return proc.stdout.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_its_url_and_stops_on_signal(signum: signal.Signals) -> None:
    with start_cli("--port", "0", "--username", "u", "--password", "p", "--fail-429", "1") as proc:
        line = read_line(proc)
        assert line.startswith("simulator listening on http://127.0.0.1:")
        url = line.split()[-1]
        with httpx.Client(base_url=url, auth=("u", "p"), trust_env=False) as client:
            assert post(client, document()).status_code == 429
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0
    assert stdout == ""
    assert "simulator_started" in stderr


@pytest.mark.parametrize(
    "bad",
    [
        ["--fail-5xx", "1.5"],
        ["--latency-ms", "-1"],
        ["--end-time-key", "stop_time"],
        ["--port", "70000"],
        ["--callback-url", "ftp://x"],
    ],
)
def test_cli_rejects_bad_values_with_one_line_and_exit_2(bad: list[str]) -> None:
    with start_cli(*bad) as proc:
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 2
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1
    assert "error" in stderr

"""Slow clients are cut off: both HTTP services close a connection whose request has not all
arrived within SMSQ_HTTP_READ_TIMEOUT_S, however steadily it trickles in, while other requests
keep being answered; a client gone mid-body is one INFO line, never a traceback."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

from ops.stack import Proc
from tests.integration.conftest import TestStack
from tests.integration.test_http_api import API_TOKEN, start_api

READ_TIMEOUT_S = 3.0
# A byte every this many seconds: slower than any timeout per read would allow to matter,
# steady enough that only a deadline for the whole request cuts it off.
TRICKLE_S = 2.0
# How late the cut may come after the deadline (a loaded machine).
LATE_S = 1.5


def _trickle(port: int, data: bytes, closed_at: dict[str, float], name: str) -> None:
    """Send data a byte every TRICKLE_S; note when the server closed the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.settimeout(0.2)
        for byte in data:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            deadline = time.monotonic() + TRICKLE_S
            gone = False
            while time.monotonic() < deadline:
                try:
                    if conn.recv(1024) == b"":
                        gone = True
                        break
                except TimeoutError:
                    continue
                except OSError:
                    gone = True
                    break
            if gone:
                break
        closed_at[name] = time.monotonic() - started


def _silent(port: int, closed_at: dict[str, float]) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.settimeout(READ_TIMEOUT_S + LATE_S + 5)
        with contextlib.suppress(OSError):
            conn.recv(1024)
        closed_at["silent"] = time.monotonic() - started


def _head(path: str, length: int, auth: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {length}\r\n\r\n"
    ).encode()


def _slow_clients_are_cut_off(port: int, healthy: httpx.Client, path: str, auth: str) -> None:
    """Three clients at once: one trickling its headers, one its body (headers sent whole),
    one sending nothing."""
    body = json.dumps({"data": {}}).encode()
    head = _head(path, len(body), auth)
    closed_at: dict[str, float] = {}
    threads = [
        threading.Thread(target=_trickle, args=(port, head + body, closed_at, "headers")),
        threading.Thread(target=_slow_body, args=(port, head, body, closed_at)),
        threading.Thread(target=_silent, args=(port, closed_at)),
    ]
    for thread in threads:
        thread.start()
    # Meanwhile normal requests keep answering, at once.
    answered = 0
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        assert healthy.get("/healthz").status_code == 200
        assert time.monotonic() - started < 1.0
        answered += 1
        time.sleep(0.2)
    for thread in threads:
        thread.join(READ_TIMEOUT_S + LATE_S + 10)
    assert answered >= 5
    assert set(closed_at) == {"headers", "body", "silent"}, closed_at
    for name, seconds in closed_at.items():
        # Cut off at the deadline: after it (the trickle never stopped), not much later.
        assert READ_TIMEOUT_S - 0.5 <= seconds <= READ_TIMEOUT_S + LATE_S, (name, closed_at)


def _slow_body(port: int, head: bytes, body: bytes, closed_at: dict[str, float]) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(head)
        conn.settimeout(0.2)
        for byte in body:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            deadline = time.monotonic() + TRICKLE_S
            gone = False
            while time.monotonic() < deadline and not gone:
                try:
                    gone = conn.recv(1024) == b""
                except TimeoutError:
                    continue
                except OSError:
                    gone = True
            if gone:
                break
        closed_at["body"] = time.monotonic() - started


def _gone_mid_body(port: int, path: str, auth: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(_head(path, 1000, auth) + b'{"data":')


def _one_info_line(proc: Proc, since: int) -> None:
    log = proc.log()[since:]
    assert "Traceback" not in log and '"level": "error"' not in log, log
    gone = [line for line in log.splitlines() if '"client_gone"' in line]
    assert len(gone) == 1, log
    assert '"level": "info"' in gone[0], gone[0]


def test_the_ingester_cuts_off_slow_clients(make_stack) -> None:
    stack: TestStack = make_stack(SMSQ_HTTP_READ_TIMEOUT_S=str(READ_TIMEOUT_S))
    proc = stack.start_callbacks()
    port = int(stack.callbacks_url.rsplit(":", 1)[1])
    token = stack.settings_env["SMSQ_CALLBACK_TOKEN"]
    with httpx.Client(base_url=stack.callbacks_url, timeout=5) as healthy:
        _slow_clients_are_cut_off(port, healthy, f"/callbacks?token={token}", "")
        since = len(proc.log())
        _gone_mid_body(port, f"/callbacks?token={token}", "")
        stack.wait_for(lambda: '"client_gone"' in proc.log()[since:], "the client_gone line")
        _one_info_line(proc, since)


def test_the_api_cuts_off_slow_clients(make_stack, request: pytest.FixtureRequest) -> None:
    stack: TestStack = make_stack(SMSQ_HTTP_READ_TIMEOUT_S=str(READ_TIMEOUT_S))
    proc, api, url = start_api(stack, request)
    port = int(url.rsplit(":", 1)[1])
    auth = f"Authorization: Bearer {API_TOKEN}\r\n"
    _slow_clients_are_cut_off(port, api, "/v1/campaigns", auth)
    since = len(proc.log())
    _gone_mid_body(port, "/v1/campaigns", auth)
    stack.wait_for(lambda: '"client_gone"' in proc.log()[since:], "the client_gone line")
    _one_info_line(proc, since)

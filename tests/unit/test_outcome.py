"""Every row of the table in docs/architecture.md §7 ("Answers and errors"): DIDWW's answer,
mapped to an error by worker/didww.py as the worker maps it, then worker/outcome.decide."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from smsq_testing import make_settings

from worker.didww import map_transport_error, raise_for_response
from worker.errors import DidwwError, Retryable
from worker.outcome import EXPIRY_GRACE_S, Kind, Outcome, decide
from worker.retry import BACKOFF_JITTER, RETRY_AFTER_JITTER_S, RetryPolicy

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
NOW = 1_800_000_000.0
# Far enough that no retry below reaches it.
LATER = NOW + 86_400
SETTINGS = make_settings(retry_attempts=5, retry_max_wait_s=30, retry_later_s=30)
POLICY = RetryPolicy(SETTINGS)
RESEND = RetryPolicy(make_settings(ambiguous="resend"))


def _answer(status: int, body: object = None, **headers: str) -> str | DidwwError:
    response = httpx.Response(status, json=body if body is not None else {}, headers=headers)
    try:
        return raise_for_response(response)
    except DidwwError as exc:
        return exc


def _transport(error: type[httpx.TransportError]) -> DidwwError:
    return map_transport_error(error("boom"))


def _created() -> str | DidwwError:
    return _answer(201, {"data": {"id": "7c1a1b7e-8cd9-4a3c-a8d1-0f9d2c6d5a11"}})


# (the table's row as the docs name it, how the answer is made, attempts, policy, expires_at,
# the expected kind, a check of the timing)
Check = Callable[[Outcome], bool]


def _retry_within(low: float, high: float) -> Check:
    return lambda o: o.retry_in_s is not None and low <= o.retry_in_s <= high


ANY: Check = lambda o: True  # noqa: E731
ROWS: list[tuple[str, Callable[[], str | DidwwError], int, RetryPolicy, float, Kind, Check]] = [
    ("201 with a readable id", _created, 1, POLICY, LATER, Kind.ACCEPTED, ANY),
    ("400", lambda: _answer(400, {"errors": [{"detail": "bad"}]}), 1, POLICY, LATER,
     Kind.REJECTED, ANY),
    ("415", lambda: _answer(415), 1, POLICY, LATER, Kind.REJECTED, ANY),
    ("422", lambda: _answer(422), 1, POLICY, LATER, Kind.REJECTED, ANY),
    ("other 4xx", lambda: _answer(418), 1, POLICY, LATER, Kind.REJECTED, ANY),
    ("401", lambda: _answer(401), 1, POLICY, LATER, Kind.HALT, ANY),
    ("3xx", lambda: _answer(302, Location="https://elsewhere.test/"), 1, POLICY, LATER,
     Kind.HALT, ANY),
    ("403", lambda: _answer(403), 1, POLICY, LATER, Kind.HALT, ANY),
    ("404", lambda: _answer(404), 1, POLICY, LATER, Kind.HALT, ANY),
    ("405", lambda: _answer(405), 1, POLICY, LATER, Kind.HALT, ANY),
    ("407", lambda: _answer(407), 1, POLICY, LATER, Kind.HALT, ANY),
    ("429", lambda: _answer(429, **{"Retry-After": "7"}), 1, POLICY, LATER, Kind.RETRY,
     _retry_within(7, 7 + RETRY_AFTER_JITTER_S)),
    ("429 asking for more than SMSQ_RETRY_LATER_S", lambda: _answer(429, **{"Retry-After": "900"}),
     1, POLICY, LATER, Kind.RETRY, _retry_within(30, 30 + RETRY_AFTER_JITTER_S)),
    ("408", lambda: _answer(408), 1, POLICY, LATER, Kind.RETRY, _retry_within(0, 30)),
    ("500", lambda: _answer(500), 2, POLICY, LATER, Kind.RETRY, _retry_within(0, 30)),
    ("503", lambda: _answer(503), 3, POLICY, LATER, Kind.RETRY, _retry_within(0, 30)),
    ("connect error", lambda: _transport(httpx.ConnectError), 1, POLICY, LATER, Kind.RETRY,
     _retry_within(0, 30)),
    ("connect timeout", lambda: _transport(httpx.ConnectTimeout), 1, POLICY, LATER, Kind.RETRY,
     _retry_within(0, 30)),
    ("pool timeout", lambda: _transport(httpx.PoolTimeout), 1, POLICY, LATER, Kind.RETRY,
     _retry_within(0, 30)),
    ("proxy error", lambda: _transport(httpx.ProxyError), 1, POLICY, LATER, Kind.RETRY,
     _retry_within(0, 30)),
    ("not fully written", lambda: _transport(httpx.WriteError), 1, POLICY, LATER, Kind.RETRY,
     _retry_within(0, 30)),
    ("a retryable error on the last attempt", lambda: _answer(503), 5, POLICY, LATER,
     Kind.BACK_OFF,
     lambda o: 30 * (1 - BACKOFF_JITTER) <= o.backoff_s <= 30 * (1 + BACKOFF_JITTER)),
    ("the next round after a backoff starts again", lambda: _answer(503), 6, POLICY, LATER,
     Kind.RETRY, _retry_within(0, 30)),
    ("read timeout", lambda: _transport(httpx.ReadTimeout), 1, POLICY, LATER, Kind.UNKNOWN, ANY),
    ("connection dropped after writing", lambda: _transport(httpx.RemoteProtocolError), 1,
     POLICY, LATER, Kind.UNKNOWN, ANY),
    ("502", lambda: _answer(502), 1, POLICY, LATER, Kind.UNKNOWN, ANY),
    ("504", lambda: _answer(504), 1, POLICY, LATER, Kind.UNKNOWN, ANY),
    ("other 5xx", lambda: _answer(599), 1, POLICY, LATER, Kind.UNKNOWN, ANY),
    ("a 2xx other than a readable 201", lambda: _answer(200), 1, POLICY, LATER, Kind.UNKNOWN,
     ANY),
    ("201 without a readable id", lambda: _answer(201, {"data": {}}), 1, POLICY, LATER,
     Kind.UNKNOWN, ANY),
    ("SMSQ_AMBIGUOUS=resend: read timeout", lambda: _transport(httpx.ReadTimeout), 1, RESEND,
     LATER, Kind.RETRY, _retry_within(0, 30)),
    ("SMSQ_AMBIGUOUS=resend: 502", lambda: _answer(502), 1, RESEND, LATER, Kind.RETRY,
     _retry_within(0, 30)),
    ("a retry whose time comes after the campaign expires",
     lambda: _answer(429, **{"Retry-After": "20"}), 1, POLICY, NOW + 5, Kind.EXPIRED,
     _retry_within(5 + EXPIRY_GRACE_S, 5 + EXPIRY_GRACE_S)),
    ("an expired campaign's retry", lambda: _answer(500), 1, POLICY, NOW - 10, Kind.EXPIRED,
     _retry_within(EXPIRY_GRACE_S, EXPIRY_GRACE_S)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("row", "make", "attempts", "policy", "expires_at", "kind", "check"),
    ROWS,
    ids=[row[0] for row in ROWS],
)
def test_each_answer_has_the_outcome_the_table_gives(
    row: str,
    make: Callable[[], str | DidwwError],
    attempts: int,
    policy: RetryPolicy,
    expires_at: float,
    kind: Kind,
    check: Check,
) -> None:
    for _ in range(20):  # the waits are random: each draw must fall in the table's bounds
        outcome = decide(make(), attempts, policy, now=NOW, expires_at=expires_at)
        assert outcome.kind is kind, row
        assert check(outcome), f"{row}: {outcome}"


def test_an_error_no_class_claims_is_never_sent_again() -> None:
    assert decide(DidwwError("odd"), 1, POLICY, now=NOW, expires_at=LATER).kind is Kind.UNKNOWN
    # While a plain Retryable is retried.
    retried = decide(Retryable("odd"), 1, POLICY, now=NOW, expires_at=LATER)
    assert retried.kind is Kind.RETRY


def test_the_table_in_the_docs_has_a_row_for_every_outcome_and_no_other() -> None:
    section = DOC.read_text().split("## 7.", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\|[^|]*\|[^|]*\|\s*`([a-z_]+)`\s*\|", section, re.M))
    assert named == {str(k) for k in Kind}

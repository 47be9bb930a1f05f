"""Webhooks without Redis: Standard Webhooks signatures (the specification's published vector
and an independent check), the URL rules, the event types, the backoff schedule, and which
events a subscription matches."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from ledger.errors import InputError
from ledger.webhooks import (
    EVENT_TYPES,
    Subscription,
    check_events,
    check_url,
    new_secret,
)
from webhooks import signing
from webhooks.backoff import next_attempt_ms

# The Standard Webhooks reference libraries' test vector (libraries/python/tests of
# github.com/standard-webhooks/standard-webhooks: test_sign_function).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_specification_vector() -> None:
    got = signing.signature(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert got == VECTOR_SIGNATURE


def test_headers_sign_what_a_receiver_checks_independently() -> None:
    secret = new_secret()
    body = b'{"type":"sent","campaign_id":"0123456789abcdef"}'
    sent = signing.headers(secret, "msg_1-0", body, timestamp=1_700_000_000)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, b"msg_1-0.1700000000." + body, hashlib.sha256).digest()
    assert sent == {
        "webhook-id": "msg_1-0",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def test_verify_accepts_the_signed_and_refuses_the_altered() -> None:
    secret = new_secret()
    sent = signing.headers(secret, "msg_1-0", b"{}", timestamp=1_700_000_000)
    assert signing.verify(secret, sent, b"{}", now=1_700_000_010)
    assert not signing.verify(secret, sent, b"{ }", now=1_700_000_010)
    assert not signing.verify(new_secret(), sent, b"{}", now=1_700_000_010)
    assert not signing.verify(secret, sent, b"{}", now=1_700_000_000 + 301)
    assert not signing.verify(secret, {**sent, "webhook-id": "msg_2-0"}, b"{}", 1_700_000_010)


def test_during_a_rotation_each_secret_verifies() -> None:
    new, old = new_secret(), new_secret()
    sent = signing.headers([new, old], "msg_1-0", b"{}", timestamp=1_700_000_000)
    assert len(sent["webhook-signature"].split()) == 2
    for secret in (new, old):
        assert signing.verify(secret, sent, b"{}", now=1_700_000_000)
    assert not signing.verify(new_secret(), sent, b"{}", now=1_700_000_000)


def test_secrets_are_24_random_bytes_after_whsec() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    assert a.startswith("whsec_")
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 24


def _public(host: str, port: int) -> list[str]:
    return ["93.184.215.14"]


def _private(host: str, port: int) -> list[str]:
    return ["93.184.215.14", "10.1.2.3"]


def test_an_https_url_with_a_public_host_is_accepted() -> None:
    url = "https://hooks.example.com/smsq?x=1"
    assert check_url(url, allow_private=False, resolve=_public) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/",
        "ftp://hooks.example.com/",
        "https:///path",
        "https://user:pw@hooks.example.com/",
        "https://127.0.0.1/",
        "https://localhost:8443/",
        "https://10.0.0.8/",
        "https://192.168.1.1/",
        "https://172.16.0.1/",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/",
        "https://[fe80::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://0.0.0.0/",
        "https://100.64.0.1/",
        "https://hooks.example.com:99999/",
        "https://" + "a" * 2000 + ".com/",
    ],
)
def test_refused_urls(url: str) -> None:
    with pytest.raises(InputError):
        check_url(url, allow_private=False, resolve=_public)


def test_a_name_with_any_private_address_is_refused() -> None:
    with pytest.raises(InputError, match="private"):
        check_url("https://hooks.example.com/", allow_private=False, resolve=_private)


def test_a_name_that_does_not_resolve_is_refused() -> None:
    def nowhere(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(InputError, match="does not resolve"):
        check_url("https://nowhere.example/", allow_private=False, resolve=nowhere)


def test_allow_private_allows_http_and_loopback() -> None:
    for url in ("http://127.0.0.1:8080/hook", "https://10.0.0.8/", "http://localhost/"):
        assert check_url(url, allow_private=True, resolve=_private) == url


def test_event_types_are_checked() -> None:
    assert check_events(["sent", " failed ", ""]) == {"sent", "failed"}
    assert check_events([]) == frozenset()
    assert {"accepted", "unconfirmed", "auth_failed", "api_restored"} <= EVENT_TYPES
    with pytest.raises(InputError, match="delivered"):
        check_events(["sent", "delivered"])


def test_backoff_grows_with_full_jitter_until_the_window_ends() -> None:
    start = 1_000_000
    # rand() = 1: the ceiling itself: 1 s, 2 s, 4 s ... capped at the maximum.
    ceilings = [
        next_attempt_ms(n, start, start, 3600, 60, rand=lambda: 1.0) - start for n in range(1, 9)
    ]
    assert ceilings == [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
    # rand() = 0: at once (full jitter reaches down to no wait).
    assert next_attempt_ms(5, start, start, 3600, 60, rand=lambda: 0.0) == start
    assert next_attempt_ms(3, start, start, 3600, 60, rand=lambda: 0.5) == start + 2000


def test_backoff_last_try_at_the_window_end_then_gives_up() -> None:
    start = 1_000_000
    near_end = start + 9_500
    assert next_attempt_ms(10, start, near_end, 10, 3600, rand=lambda: 1.0) == start + 10_000
    assert next_attempt_ms(11, start, start + 10_000, 10, 3600, rand=lambda: 1.0) is None
    # Many attempts do not overflow.
    assert next_attempt_ms(5000, start, start, 10**9, 30, rand=lambda: 1.0) == start + 30_000


def test_subscription_matches_type_campaign_and_creation_time() -> None:
    cid = "0123456789abcdef"
    sub = Subscription("wh_1", "https://x.example/", frozenset({"sent"}), cid, 5000)
    sent = {"type": "sent", "campaign_id": cid}
    assert sub.matches(sent, 5000)
    assert not sub.matches(sent, 4999)
    assert not sub.matches({"type": "failed", "campaign_id": cid}, 6000)
    assert not sub.matches({"type": "sent", "campaign_id": "fedcba9876543210"}, 6000)
    everything = Subscription("wh_2", "https://x.example/", frozenset(), None, 0)
    assert everything.matches({"type": "auth_failed", "campaign_id": None}, 1)
    assert everything.matches({"type": "some_future_type"}, 1)


def test_subscription_json_round_trip_has_no_secret() -> None:
    sub = Subscription("wh_1", "https://x.example/", frozenset({"sent", "failed"}), None, 0)
    stored = sub.to_json()
    assert "secret" not in stored
    back = Subscription.from_json("wh_1", stored.replace("}", ', "created_at": 1700000000123}'))
    assert back == Subscription("wh_1", sub.url, sub.events, None, 1700000000123)
    assert back.public()["created_at"] == "2023-11-14T22:13:20.123Z"

"""python -m webhooks: each subscription's transport is LeanTransport (http:// and https://),
httpx's own where the environment names a proxy for the URL."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from smsq_testing import make_settings

from ledger.webhooks import Subscription
from web.transport import LeanTransport
from webhooks.__main__ import transports


def _transport(url: str) -> httpx.AsyncBaseTransport:
    sub = Subscription("wh_0123456789abcdef", url, frozenset(), None, 0)
    return transports(make_settings(webhook_connections=3))(sub)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://app.example.com/smsq/events?k=1", ("app.example.com", 443, True)),
        ("http://127.0.0.1:8123/hook", ("127.0.0.1", 8123, False)),
    ],
)
def test_each_subscription_gets_a_lean_transport_to_its_origin(
    url: str, origin: tuple[str, int, bool]
) -> None:
    transport = _transport(url)
    assert isinstance(transport, LeanTransport)
    host, port, https = origin
    assert (transport._host, transport._port, transport._ssl is not None) == (host, port, https)
    assert transport._free_permits == 3
    asyncio.run(transport.aclose())


def test_a_proxy_for_the_url_selects_httpx_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "inside.test")
    assert isinstance(_transport("https://app.example.com/hook"), httpx.AsyncHTTPTransport)
    assert isinstance(_transport("https://inside.test/hook"), LeanTransport)

"""The webhook benchmark's yardstick: `python -m webhooks` as it runs, but posting through
httpx's own connection pool instead of web.transport.LeanTransport (the Service's default
when it is given no transports). Stops on SIGTERM like the real one.

Run: python -m ops.bench.httpx_webhooks (settings from the environment, as python -m webhooks)
"""

from __future__ import annotations

from webhooks.__main__ import main

if __name__ == "__main__":
    main(make_transports=lambda settings: None)

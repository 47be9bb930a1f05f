"""`python -m callbacks --host H --port P`: serve the callback ingester with uvicorn."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from callbacks.app import create_app
from ledger.errors import ConfigError
from ledger.logs import configure_logging
from ledger.settings import load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m callbacks", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        settings.require("callback_token")
    except ConfigError as exc:
        print(f"smsq: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.secrets())
    # uvicorn's access log would print the query string, and with it the token: ours
    # (callback_handled) logs what matters without it.
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        access_log=False,
        log_config=None,
        server_header=False,
    )


if __name__ == "__main__":
    main()

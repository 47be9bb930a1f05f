"""`python -m callbacks --host H --port P`: serve the callback ingester with uvicorn, and with
SMSQ_CALLBACKS_METRICS_PORT set, its /metrics on that port of the same host instead."""

from __future__ import annotations

import argparse
import socket
import sys

import structlog
from starlette.applications import Starlette

from callbacks.app import create_app
from ledger.errors import ConfigError
from ledger.settings import Settings
from web import serve

log = structlog.stdlib.get_logger("smsq.callbacks")


def _some_token(settings: Settings) -> None:
    if not any(t.callback_token.get_secret_value() for t in settings.trunks().values()):
        raise ConfigError(
            "SMSQ_CALLBACK_TOKEN is not set (nor any SMSQ_TRUNK_<NAME>_CALLBACK_TOKEN)"
        )


def _host(argv: list[str] | None) -> str:
    """The --host that serve() will listen on, for the metrics port to listen beside it."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    return str(parser.parse_known_args(argv)[0].host)


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port; a port that cannot be had stops the ingester."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        log.error("metrics_port_unavailable", host=host, port=port, error=str(exc))
        sys.exit(1)


def _app(host: str, settings: Settings) -> Starlette:
    port = settings.callbacks_metrics_port
    return create_app(settings, metrics_listener=_listen(host, port) if port else None)


def main(argv: list[str] | None = None) -> None:
    host = _host(argv)
    serve(
        "python -m callbacks",
        __doc__ or "",
        lambda settings: _app(host, settings),
        required=(),
        check=_some_token,
        default_port=8080,
        argv=argv,
    )


if __name__ == "__main__":
    main()

"""`python -m callbacks --host H --port P`: serve the callback ingester with uvicorn."""

from __future__ import annotations

from callbacks.app import create_app
from ledger.errors import ConfigError
from ledger.settings import Settings
from ledger.web import serve


def _some_token(settings: Settings) -> None:
    if not any(t.callback_token.get_secret_value() for t in settings.trunks().values()):
        raise ConfigError(
            "SMSQ_CALLBACK_TOKEN is not set (nor any SMSQ_TRUNK_<NAME>_CALLBACK_TOKEN)"
        )


def main(argv: list[str] | None = None) -> None:
    serve(
        "python -m callbacks",
        __doc__ or "",
        create_app,
        required=(),
        check=_some_token,
        default_port=8080,
        argv=argv,
    )


if __name__ == "__main__":
    main()

"""`python -m callbacks --host H --port P`: serve the callback ingester with uvicorn."""

from __future__ import annotations

from callbacks.app import create_app
from ledger.web import serve


def main(argv: list[str] | None = None) -> None:
    serve(
        "python -m callbacks",
        __doc__ or "",
        create_app,
        required=("callback_token",),
        default_port=8080,
        argv=argv,
    )


if __name__ == "__main__":
    main()

"""The callback ingester: DIDWW status callbacks in, ledger updates and events out."""

from callbacks.app import create_app

__all__ = ["create_app"]

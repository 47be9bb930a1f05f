"""Load the ledger's Lua scripts (lua/*.lua, each with _common.lua prepended) onto a client.

Scripts are registered once per client and run with EVALSHA, falling back to EVAL after a
Redis restart has emptied the script cache.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

NAMES = (
    "claim",
    "record",
    "callback",
    "settle",
    "recover",
    "cancel",
    "park",
    "lease",
    "unlease",
    "halt",
    "hold",
    "beat",
    "unconfirm",
    "unindex",
    "optout",
    "webhook_put",
    "webhook_delete",
    "webhook_schedule",
    "webhook_claim",
    "webhook_settle",
)


@cache
def source(name: str) -> str:
    folder = resources.files("ledger") / "lua"
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    return common + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")


def register(client: Any) -> dict[str, Any]:
    """Register every script on a redis or redis.asyncio client; returns name -> Script."""
    return {name: client.register_script(source(name)) for name in NAMES}

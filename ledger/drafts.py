"""A new campaign between its preview and its confirmation (the dashboard's "New campaign"
page): what was uploaded, kept in Redis for DRAFT_TTL_S under a random token, so the
confirmation sends exactly what was previewed, from any API process behind a load balancer.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from ledger import keys

# Time to read a preview and confirm it.
DRAFT_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class Draft:
    source: str
    text: str
    name: str
    file_name: str
    data: bytes


async def put_draft(redis: Redis, draft: Draft) -> str:
    """Keep a draft for DRAFT_TTL_S; its token (unguessable: it names the draft only to the
    session that made it, which must also pass the CSRF check to send it)."""
    token = secrets.token_hex(16)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.draft(token),
            mapping={
                "source": draft.source,
                "text": draft.text,
                "name": draft.name,
                "file_name": draft.file_name,
                "data": draft.data,
            },
        )
        pipe.expire(keys.draft(token), DRAFT_TTL_S)
        await pipe.execute()
    return token


async def get_draft(redis: Redis, token: str) -> Draft | None:
    """The draft, or None if the token is not one or its hour has passed."""
    if not token.isalnum() or len(token) != 32:
        return None
    found = await redis.hgetall(keys.draft(token))
    if not found:
        return None
    text = {k.decode(): v for k, v in found.items()}
    return Draft(
        text["source"].decode(),
        text["text"].decode(),
        text["name"].decode(),
        text["file_name"].decode(),
        text["data"],
    )

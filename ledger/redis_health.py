"""What makes a Redis unsafe for the ledger (docs/architecture.md D11): AOF off, so a restart
loses queued and sent state; an eviction policy, or keys already evicted; memory near its
limit. Every component warns once at start, and `smsq status` shows it.
"""

from __future__ import annotations

from typing import Any

# Past this share of maxmemory, Redis will soon refuse writes (noeviction).
MEMORY_WARN_SHARE = 0.9


def unsafe(
    persistence: dict[str, Any], memory: dict[str, Any], stats: dict[str, Any]
) -> tuple[str, ...]:
    """Warnings from INFO persistence, memory and stats; () when all is well."""
    found = []
    if not int(persistence.get("aof_enabled", 0)):
        found.append("Redis has AOF off: a restart loses queued and sent state (appendonly yes)")
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        found.append(f"Redis evicts keys under memory pressure (maxmemory-policy {policy})")
    evicted = int(stats.get("evicted_keys", 0))
    if evicted:
        found.append(f"Redis has evicted {evicted} keys")
    if int(persistence.get("aof_enabled", 0)) and (
        str(persistence.get("aof_last_write_status", "ok")) != "ok"
    ):
        found.append("Redis cannot write its append-only file (aof_last_write_status: err)")
    maxmemory = int(memory.get("maxmemory", 0))
    if not maxmemory:
        found.append(
            "Redis has no maxmemory: a full host would kill it, not refuse writes (maxmemory)"
        )
    elif int(memory.get("used_memory", 0)) > MEMORY_WARN_SHARE * maxmemory:
        found.append("Redis memory is over 90% of maxmemory: writes will soon be refused")
    return tuple(found)

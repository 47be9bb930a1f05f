"""What a finished campaign costs in Redis while it is kept (SMSQ_RETENTION_S,
a week by default). A campaign is sent through the simulator with its callbacks delivered to
the real ingester until every message is settled; then Redis MEMORY USAGE of the campaign's
keys per message (at most 40 bytes), of the DIDWW-id index buckets (``smsq:ids:*``) per
entry (at most 60 bytes), of the events stream per event while it is kept (at most 100
bytes: issue #20), and all of them together per finished message.
"""

from __future__ import annotations

from typing import Any

from ops.bench.harness import Context
from ops.bench.report import Row, ScenarioResult
from ops.bench.scenarios.sending import PROCESSES, SETUP, describe

NAME = "retention"
TARGET_MESSAGE_BYTES = 40.0
TARGET_INDEX_BYTES = 60.0
TARGET_EVENT_BYTES = 100.0
# Bytes per entry of an index bucket: id key (16) | campaign id (8) | index (4).
INDEX_ENTRY_BYTES = 28
INDEX_PATTERN = "smsq:ids:*"
# Per-second counters of requests posted (TTL 2 min): not kept with the campaign.
TRANSIENT = ":posted:"


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    count = sizes.retention_messages
    with ctx.stack(NAME, **SETUP) as bench:
        bench.stack.start_callbacks()
        # Started after the ingester, so it delivers each message's callback there.
        bench.start_simulator(0.0)
        bench.smsq_worker("w", PROCESSES)
        used_before = bench.used_memory()
        cid = bench.enqueue(count).campaign_id
        done = bench.wait_done(cid, sizes.retention_max_s)
        counts = bench.counts(cid)
        r = bench.redis
        campaign = _usage(r, f"smsq:campaign:{cid}*")
        batches = {k: v for k, v in campaign.items() if ":batch:" in k}
        index = _usage(r, INDEX_PATTERN)
        entries = sum(int(r.strlen(k)) for k in index) // INDEX_ENTRY_BYTES
        stream = int(r.memory_usage(bench.settings().events_stream, samples=0) or 0)
        events = int(r.xlen(bench.settings().events_stream))
        used_after = bench.used_memory()
    kept_bytes = sum(campaign.values())
    batch_bytes = sum(batches.values())
    index_bytes = sum(index.values())
    growth = used_after - used_before
    per_message = kept_bytes / count
    per_entry = index_bytes / entries if entries else float("inf")
    settled = ", ".join(f"{state} {n:,}" for state, n in sorted(counts.items()))
    result = ScenarioResult(NAME)
    result.rows = [
        Row(NAME, "Redis bytes per retained message (campaign keys / messages)", "bytes",
            per_message, None, TARGET_MESSAGE_BYTES, better="lower",
            baseline_text="not measured",
            why=f"batch strings {batch_bytes / count:.1f} bytes per message, the campaign's "
                f"other keys {(kept_bytes - batch_bytes) / count:.1f}"),
        Row(NAME, "Redis bytes per DIDWW-id index entry (smsq:ids:* / entries)", "bytes",
            per_entry, None, TARGET_INDEX_BYTES, better="lower",
            baseline_text="not measured",
            why=f"{len(index):,} buckets, {entries / max(1, len(index)):.1f} entries each; "
                f"{INDEX_ENTRY_BYTES} bytes of data per entry"),
        Row(NAME, "used_memory growth per message, events stream left out", "bytes",
            (growth - stream) / count, None, baseline_text="not measured"),
        Row(NAME, "Redis bytes per event while kept (events stream / entries)", "bytes",
            stream / events if events else float("inf"), None, TARGET_EVENT_BYTES,
            better="lower", baseline_text="not measured",
            why=f"{events:,} events for {count:,} messages ({events / count:.1f} each), "
                f"{stream:,} bytes"),
        Row(NAME, "all-in Redis bytes per finished message (campaign keys, index, events)",
            "bytes", (kept_bytes + index_bytes + stream) / count, None,
            baseline_text="not measured",
            why=f"campaign keys {per_message:.1f}, index {index_bytes / count:.1f}, events "
                f"{stream / count:.1f}"),
    ]  # fmt: skip
    result.notes = [
        f"smsq: {describe()}; simulator at 0 ms delivering every callback to `python -m "
        f"callbacks`; a {count:,}-message campaign"
        + ("" if done else f" (NOT done within {sizes.retention_max_s:.0f} s)")
        + f": {settled}",
        f"campaign keys (MEMORY USAGE, the transient per-second `posted` counters left out): "
        f"{len(campaign):,} keys, {kept_bytes:,} bytes; its {len(batches):,} batch strings "
        f"{batch_bytes:,} bytes ({batch_bytes / count:.1f} per message)",
        f"DIDWW-id index: {len(index):,} buckets, {entries:,} entries, {index_bytes:,} bytes",
        f"Redis used_memory grew {growth:,} bytes ({growth / count:.1f} per message); the "
        f"events stream holds {stream:,} of them (its events are read by consumers and capped "
        "by SMSQ_EVENTS_MAXLEN, not kept with the campaign)",
    ]
    result.data = {
        "messages": count,
        "counts": counts,
        "campaign_bytes": kept_bytes,
        "batch_bytes": batch_bytes,
        "index_buckets": len(index),
        "index_entries": entries,
        "index_bytes": index_bytes,
        "used_memory_growth": growth,
        "stream_bytes": stream,
        "events": events,
    }
    return result


def _usage(redis: Any, pattern: str) -> dict[str, int]:
    """MEMORY USAGE of every key matching the pattern, transient counters left out."""
    found: dict[str, int] = {}
    for raw in redis.scan_iter(match=pattern, count=1000):
        key = raw.decode()
        if TRANSIENT not in key:
            found[key] = int(redis.memory_usage(key, samples=0) or 0)
    return found

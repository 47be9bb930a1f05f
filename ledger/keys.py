"""Every Redis key smsq uses, built by small functions so no call site concatenates strings.

Key shapes (``{cid}`` a campaign id: 16 hex digits; ``{b}`` a batch number; ``{t}`` a trunk
name; ``{src}``/``{dst}`` numbers). Each key has an owner that deletes it:

Campaigns (deleted by the purge, SMSQ_RETENTION_S after the campaign is done):
- ``smsq:campaign:{cid}``            hash: source, text, name, trunk, total, batch_size, batches,
                                      created_at, expires_at, send_at, state, encoding,
                                      segments, priority, fields, references, window, parent,
                                      done_at, ...
- ``smsq:campaign:{cid}:counts``     hash: message state -> number of messages in it
- ``smsq:campaign:{cid}:batch:{b}``  string: the batch's message records, fixed size, in index
                                      order (ledger/records.py)
- ``smsq:campaign:{cid}:fields:{b}`` hash: message index -> its template values (templated
                                      campaigns only)
- ``smsq:campaign:{cid}:refs:{b}``   hash: message index -> its recipient's reference
                                      (campaigns whose recipients carried one only)
- ``smsq:campaign:{cid}:windows``    hash: batch -> UTC intervals its recipients may be sent in
                                      (campaigns with quiet hours only)
- ``smsq:campaign:{cid}:rawids``     hash: message index -> DIDWW id, for the rare id that is
                                      not a UUID (the record keeps a hash of it)
- ``smsq:campaign:{cid}:posted``     hash: a ring of the last RING_S seconds' posts (for its send
                                      rate): ``s{slot}`` the second, ``n{slot}`` its requests
- ``smsq:campaigns``                 sorted set: campaign id scored by creation time
- ``smsq:retention``                 sorted set: finished campaign id scored by when to purge it
- ``smsq:idem:{hash}``               string (24 h): the campaign an idempotency key (its SHA-256)
                                      created, and whether its enqueue finished
- ``smsq:enqueuing``                 sorted set: ``cid|batches`` of enqueues in progress, scored
                                      by their producer's last move; the workers finish one that
                                      stalled, or delete its batches after 24 h if it never
                                      stored its campaign (producer/enqueue.py)

Callbacks:
- ``smsq:ids:{hhh}``                 string: DIDWW-id index bucket (3 hex digits of the id's
                                      key): 28-byte entries id key (16) | cid (8) | index (4);
                                      a campaign's entries go when it is purged
- ``smsq:kept``                     stream: kept callbacks (ids not yet indexed) in the order
                                      kept, ``k`` = id key; trimmed to SMSQ_ORPHANS_MAX and
                                      SMSQ_ORPHAN_TTL_S at every ingest and settle pass
- ``smsq:kept:{hhh}``                hash: id key -> a kept callback's values (MessagePack,
                                      ledger/lua/_common.lua: kept_pack), bucket as ``ids``
- ``smsq:kept:info``                 hash: ``count`` kept now, ``count:{t}`` of them per trunk
                                      (the trunk whose token brought them), ``cursor`` of the
                                      settle pass
- ``smsq:unknown:{src}:{dst}``       sorted set (TTL): ``cid|batch|index`` of unknown messages by
                                      when they were posted, for matching their callbacks
- ``smsq:sending:{src}:{dst}``       counter (TTL): messages to that pair now `sending`; a kept
                                      callback is not matched by number while one is
- ``smsq:accepting``                 sorted set: ``cid|batch`` with accepted messages, by the
                                      oldest acceptance (for SMSQ_CALLBACK_TIMEOUT_S)
- ``smsq:stats``                     hash: global counters (orphans kept/joined, duplicates)

Trunks (one set per configured trunk; the single-trunk settings are the trunk ``default``):
- ``smsq:trunk:{t}:halt``            string: set while DIDWW answers 401 (or 3xx/403/404/...)
- ``smsq:trunk:{t}:backoff``         string (TTL): DIDWW is unavailable, nothing is posted
- ``smsq:trunk:{t}:probe``           string (TTL): one credentials probe per interval
- ``smsq:trunk:{t}:rate``            hash: ``tat`` the next free send slot (us), ``sum`` units in
                                      the window list
- ``smsq:trunk:{t}:window``          list: ``time_us units`` of the claims in the last window
- ``smsq:trunk:{t}:rates``           string: the last hour second by second, RATES_RING_S slots of
                                      8 bytes: the second, messages claimed, callbacks settled
                                      (ledger/trunks.py); 28,800 bytes
- ``smsq:trunk:{t}:urgent``          list: ``cid|batch|index`` of priority messages, taken ahead
                                      of campaign messages by every worker that claims

Work in progress:
- ``smsq:parked``                    sorted set: ``cid|batch`` waiting (a halt, a backoff, spent
                                      retries, a schedule, quiet hours, a lost worker), scored
                                      by when it may run again
- ``smsq:parked:lease:{cid}|{b}``    string (TTL): the token of the supervisor publishing it
- ``smsq:inflight``                  hash: ``cid|batch|owner`` -> last heartbeat (Redis time, s)
                                      of the worker process holding that batch
- ``smsq:owners``                    counter: numbers worker processes (owners) by start order

Opt-outs:
- ``smsq:optout:{n}``                set of numbers (as integers) whose value mod 65536 is n:
                                      Redis keeps each as a compact sorted array (intset)
- ``smsq:optout:count``              counter: numbers on the list

Webhooks (ledger/webhooks.py; ``{wid}`` a subscription id, ``wh_`` and 16 hex digits):
- ``smsq:webhooks``                  hash: subscription id -> JSON: url, events, campaign,
                                      created_at (ms); never the secret
- ``smsq:webhooks:secrets``          hash: subscription id -> its signing secret (``whsec_...``),
                                      after a rotation ``new previous until_ms``
- ``smsq:webhook:{wid}:due``         sorted set: delivery id (``msg_`` + the event's stream
                                      entry id) -> when it is due (ms), or when the lease of
                                      the process sending it ends; deleted with the subscription
- ``smsq:webhook:{wid}:deliveries``  hash: delivery id -> the event's JSON, as on the stream
- ``smsq:webhook:{wid}:attempts``    hash: delivery id -> ``attempts first_attempt_ms`` once
                                      tried
- ``smsq:webhook:{wid}:owed``        sorted set: delivery id -> its event's time (ms), for the
                                      delivery lag
- ``smsq:webhook:failures``          stream: deliveries given up after SMSQ_WEBHOOK_RETRY_S,
                                      trimmed to SMSQ_WEBHOOK_FAILURES_MAX

Dashboard (producer/dashboard.py):
- ``smsq:draft:{token}``             hash (TTL 1 h): a new campaign's upload between its preview
                                      and its confirmation: source, text, name, file name, the
                                      file's bytes (ledger/drafts.py)

- the events stream: its name is a setting (``SMSQ_EVENTS_STREAM``, default ``smsq:events``)
"""

from __future__ import annotations

import re

PREFIX = "smsq"
# Campaign ids are 16 hex digits: the DIDWW-id index stores them in 8 bytes.
CAMPAIGN_ID = re.compile(r"[0-9a-f]{16}")
# Opt-out buckets: 65,536 sets keep each under Redis's 512-member intset limit up to ~30
# million numbers.
OPTOUT_BUCKETS = 65536


def campaign(cid: str) -> str:
    return f"{PREFIX}:campaign:{cid}"


def counts(cid: str) -> str:
    return f"{PREFIX}:campaign:{cid}:counts"


def batch(cid: str, batch_no: int) -> str:
    return f"{PREFIX}:campaign:{cid}:batch:{batch_no}"


def fields(cid: str, batch_no: int) -> str:
    return f"{PREFIX}:campaign:{cid}:fields:{batch_no}"


def refs(cid: str, batch_no: int) -> str:
    return f"{PREFIX}:campaign:{cid}:refs:{batch_no}"


def windows(cid: str) -> str:
    return f"{PREFIX}:campaign:{cid}:windows"


def raw_ids(cid: str) -> str:
    return f"{PREFIX}:campaign:{cid}:rawids"


# Seconds the posted ring keeps (status averages over 10 of them).
POSTED_RING_S = 16


def posted(cid: str) -> str:
    return f"{PREFIX}:campaign:{cid}:posted"


def campaigns() -> str:
    return f"{PREFIX}:campaigns"


def retention() -> str:
    return f"{PREFIX}:retention"


def idempotency(key_hash: str) -> str:
    return f"{PREFIX}:idem:{key_hash}"


def enqueuing() -> str:
    return f"{PREFIX}:enqueuing"


def id_bucket(id_key: bytes) -> str:
    """The DIDWW-id index bucket of a 16-byte id key (ledger/records.py: id_key)."""
    return f"{PREFIX}:ids:{id_key[:2].hex()[:3]}"


def kept() -> str:
    """The stream of kept callbacks (orphans), oldest first."""
    return f"{PREFIX}:kept"


def kept_bucket(id_key: bytes) -> str:
    """The hash bucket holding a kept callback, by its 16-byte id key (as id_bucket)."""
    return f"{PREFIX}:kept:{id_key[:2].hex()[:3]}"


def kept_info() -> str:
    return f"{PREFIX}:kept:info"


def unknown_by_pair(source: str, destination: str) -> str:
    return f"{PREFIX}:unknown:{source}:{destination}"


def sending_by_pair(source: str, destination: str) -> str:
    return f"{PREFIX}:sending:{source}:{destination}"


def accepting() -> str:
    return f"{PREFIX}:accepting"


def stats() -> str:
    return f"{PREFIX}:stats"


def trunk(name: str, what: str) -> str:
    """A trunk's key: what is halt, backoff, probe, rate, window or urgent."""
    return f"{PREFIX}:trunk:{name}:{what}"


def halt(trunk_name: str) -> str:
    return trunk(trunk_name, "halt")


def backoff(trunk_name: str) -> str:
    return trunk(trunk_name, "backoff")


def probe_lock(trunk_name: str) -> str:
    return trunk(trunk_name, "probe")


def rate(trunk_name: str) -> str:
    return trunk(trunk_name, "rate")


def rate_window(trunk_name: str) -> str:
    return trunk(trunk_name, "window")


# Seconds a trunk's rates ring keeps (the dashboard's last hour).
RATES_RING_S = 3600


def rates(trunk_name: str) -> str:
    return trunk(trunk_name, "rates")


def urgent(trunk_name: str) -> str:
    return trunk(trunk_name, "urgent")


def parked() -> str:
    return f"{PREFIX}:parked"


def parked_lease(member: str) -> str:
    return f"{PREFIX}:parked:lease:{member}"


def inflight() -> str:
    return f"{PREFIX}:inflight"


def owners() -> str:
    return f"{PREFIX}:owners"


def optout(number: int) -> str:
    return f"{PREFIX}:optout:{number % OPTOUT_BUCKETS}"


def optout_count() -> str:
    return f"{PREFIX}:optout:count"


def optout_pattern() -> str:
    return f"{PREFIX}:optout:[0-9]*"


def batch_member(cid: str, batch_no: int) -> str:
    """How sorted sets and lists name a batch: ``cid|batch``."""
    return f"{cid}|{batch_no}"


def parse_batch_member(member: str | bytes) -> tuple[str, int]:
    text = member.decode() if isinstance(member, bytes) else member
    cid, _, batch_no = text.rpartition("|")
    return cid, int(batch_no)


def message_id(cid: str, index: int) -> str:
    """The public id of a message: its campaign and its index in the campaign."""
    return f"{cid}-{index}"


def urgent_member(cid: str, batch_no: int, index: int) -> str:
    """How a trunk's urgent lane names a message: ``cid|batch|index``."""
    return f"{cid}|{batch_no}|{index}"


def inflight_field(cid: str, batch_no: int, owner: int) -> str:
    """How the in-flight hash names a batch held by a worker process: ``cid|batch|owner``."""
    return f"{cid}|{batch_no}|{owner}"


def enqueue_member(cid: str, batches: int) -> str:
    """How ``smsq:enqueuing`` names an enqueue in progress: ``cid|batches`` (its batch count)."""
    return f"{cid}|{batches}"


def parse_enqueue_member(member: str | bytes) -> tuple[str, int]:
    return parse_batch_member(member)


def draft(token: str) -> str:
    return f"{PREFIX}:draft:{token}"


def webhooks() -> str:
    return f"{PREFIX}:webhooks"


def webhook_secrets() -> str:
    return f"{PREFIX}:webhooks:secrets"


def webhook(wid: str, what: str) -> str:
    """A subscription's key: what is due, deliveries, attempts or owed."""
    return f"{PREFIX}:webhook:{wid}:{what}"


def webhook_due(wid: str) -> str:
    return webhook(wid, "due")


def webhook_deliveries(wid: str) -> str:
    return webhook(wid, "deliveries")


def webhook_attempts(wid: str) -> str:
    return webhook(wid, "attempts")


def webhook_owed(wid: str) -> str:
    return webhook(wid, "owed")


def webhook_failures() -> str:
    return f"{PREFIX}:webhook:failures"

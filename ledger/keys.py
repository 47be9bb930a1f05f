"""Every Redis key smsq uses, built by small functions so no call site concatenates strings.

Key shapes (``{cid}`` is a campaign id, ``{b}`` a batch number, ``{sec}`` a Unix second):

- ``smsq:campaign:{cid}``            hash: source, text, name, total, batch_size, batches,
                                      created_at, expires_at, state (active|paused|cancelled),
                                      encoding, segments
- ``smsq:campaign:{cid}:counts``     hash: message state -> number of messages in it
- ``smsq:campaign:{cid}:batch:{b}``  hash: message index -> ``state|destination|extra``
                                      (extra: DIDWW id once accepted, claim time while sending)
- ``smsq:campaign:{cid}:posted:{sec}`` counter of requests posted in that second (rate)
- ``smsq:campaigns``                 sorted set: campaign id scored by creation time
- ``smsq:didww:{id}``                string: where the message with that DIDWW id lives
- ``smsq:orphan:{id}``               string: a callback that arrived before its DIDWW id was stored
- ``smsq:orphans``                   sorted set: DIDWW ids of kept callbacks scored by when kept
- ``smsq:orphans:{src}:{dst}``       sorted set: kept callbacks' DIDWW ids by source and
                                      destination, scored by DIDWW's time_start (s)
- ``smsq:unknown:{src}:{dst}``       sorted set: ``cid|batch|index`` of unknown messages scored by
                                      when they were posted, for matching their callbacks
- ``smsq:stats``                     hash: global counters (orphans kept/joined, duplicates)
- ``smsq:halt``                      string: set while DIDWW answers 401; every worker stops posting
- ``smsq:probe``                     string: lock so at most one credentials probe runs per interval
- ``smsq:ratelimit``                 string: the trunk's next free send slot (GCRA, microseconds)
- ``smsq:backoff``                   string with a TTL: DIDWW is unavailable, no worker posts
- ``smsq:parked``                    sorted set: ``cid|batch`` stopped by a halt, a backoff or spent
                                      retries, scored by when it may run again
- ``smsq:parked:lease:{cid}|{b}``    string with a TTL: a supervisor is publishing that batch
- ``smsq:inflight``                  hash: ``cid|batch|owner`` -> last heartbeat (Redis time, s)
                                      of the worker process sending that batch
- the events stream: its name is a setting (``SMSQ_EVENTS_STREAM``, default ``smsq:events``)
"""

from __future__ import annotations

PREFIX = "smsq"


def campaign(cid: str) -> str:
    return f"{PREFIX}:campaign:{cid}"


def counts(cid: str) -> str:
    return f"{PREFIX}:campaign:{cid}:counts"


def batch(cid: str, batch_no: int) -> str:
    return f"{PREFIX}:campaign:{cid}:batch:{batch_no}"


def posted(cid: str, second: int) -> str:
    return f"{PREFIX}:campaign:{cid}:posted:{second}"


def campaigns() -> str:
    return f"{PREFIX}:campaigns"


def didww(didww_id: str) -> str:
    return f"{PREFIX}:didww:{didww_id}"


def orphan(didww_id: str) -> str:
    return f"{PREFIX}:orphan:{didww_id}"


def stats() -> str:
    return f"{PREFIX}:stats"


def halt() -> str:
    return f"{PREFIX}:halt"


def probe_lock() -> str:
    return f"{PREFIX}:probe"


def rate_limiter() -> str:
    return f"{PREFIX}:ratelimit"


def orphans() -> str:
    return f"{PREFIX}:orphans"


def orphans_by_pair(source: str, destination: str) -> str:
    return f"{PREFIX}:orphans:{source}:{destination}"


def unknown_by_pair(source: str, destination: str) -> str:
    return f"{PREFIX}:unknown:{source}:{destination}"


def backoff() -> str:
    return f"{PREFIX}:backoff"


def parked() -> str:
    return f"{PREFIX}:parked"


def inflight() -> str:
    return f"{PREFIX}:inflight"


def message_id(cid: str, index: int) -> str:
    """The public id of a message: its campaign and its index in the campaign."""
    return f"{cid}-{index}"


def parse_message_id(mid: str) -> tuple[str, int]:
    cid, _, index = mid.rpartition("-")
    return cid, int(index)

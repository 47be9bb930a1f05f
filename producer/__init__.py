"""The producer: enqueue_campaign() for Python applications and the `smsq` command."""

from ledger.errors import InputError
from producer.enqueue import EnqueueResult, Producer, enqueue_campaign

__all__ = ["EnqueueResult", "InputError", "Producer", "enqueue_campaign"]

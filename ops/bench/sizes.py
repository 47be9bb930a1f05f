"""How big each scenario is: the issue's sizes for a real run, tiny ones for --smoke.

A smoke run goes through every scenario's code in seconds and judges nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Sizes:
    enqueue_messages: int = 1_000_000
    # The baseline enqueues at about 2,000/s: a sample gives its rate and bytes per message.
    baseline_enqueue_messages: int = 20_000
    # Sending scenarios measure a steady window after a warm-up, on a campaign big enough
    # to outlast it.
    send_warmup_s: float = 3.0
    send_window_s: float = 20.0
    send_campaign: int = 60_000
    baseline_send_window_s: float = 15.0
    rate_messages: int = 3_000
    # The baseline's rate run is cut here: its mean is far below the limit.
    baseline_rate_max_s: float = 40.0
    priority_campaign: int = 100_000
    priority_rate_per_s: int = 100
    # Campaign sending before the first try, so the workers are in the middle of batches.
    priority_drain_s: float = 2.0
    # After the last try, how long the last urgent messages get to arrive.
    priority_timeout_s: float = 30.0
    priority_tries: int = 20
    priority_spacing_s: float = 1.3
    baseline_priority_backlog: int = 5_000
    baseline_priority_timeout_s: float = 15.0
    callback_warmup_s: float = 1.0
    callback_duration_s: float = 10.0
    callback_connections: int = 32
    memory_messages: int = 1_000_000
    # The memory run stops here if the campaign is not done, and projects to its size.
    memory_max_s: float = 240.0
    limiter_duration_s: float = 10.0


FULL = Sizes()
SMOKE = replace(
    FULL,
    enqueue_messages=2_000,
    baseline_enqueue_messages=200,
    send_warmup_s=0.2,
    send_window_s=0.5,
    send_campaign=2_000,
    baseline_send_window_s=0.5,
    rate_messages=60,
    baseline_rate_max_s=1.0,
    priority_campaign=2_000,
    # Batches of 100 at 100/s take 2 s each: a smoke run cannot wait for several.
    priority_rate_per_s=1_000,
    priority_drain_s=0.2,
    priority_timeout_s=5.0,
    priority_tries=2,
    priority_spacing_s=0.3,
    baseline_priority_backlog=100,
    baseline_priority_timeout_s=1.0,
    callback_warmup_s=0.2,
    callback_duration_s=0.5,
    callback_connections=8,
    memory_messages=2_000,
    memory_max_s=1.0,
    limiter_duration_s=0.5,
)

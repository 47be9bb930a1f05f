"""How big each scenario is: the targets' sizes for a real run, tiny ones for --smoke.

A smoke run goes through every scenario's code in seconds and judges nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Layout:
    """How a scenario's worker processes are spread: `workers` Celery workers (as on that many
    hosts) of `processes` pool processes each."""

    workers: int
    processes: int

    @property
    def total(self) -> int:
        return self.workers * self.processes

    def describe(self) -> str:
        plural = "s" if self.workers > 1 else ""
        return f"{self.workers} worker{plural} x {self.processes}"


@dataclass(frozen=True)
class Sizes:
    enqueue_messages: int = 1_000_000
    # The baseline enqueues at about 2,000/s: a sample gives its rate and bytes per message.
    baseline_enqueue_messages: int = 20_000
    # Sending scenarios measure a steady window after a warm-up, on a campaign big enough
    # to outlast it and the profile after it.
    send_warmup_s: float = 3.0
    send_window_s: float = 15.0
    send_campaign: int = 200_000
    baseline_send_window_s: float = 15.0
    # Rate accuracy: every limit x layout x latency, each run sending about this long.
    rate_limits: tuple[int, ...] = (100, 300)
    # 1, 4 and 8 processes; 4 and 8 both in one worker and as workers of two processes.
    rate_layouts: tuple[Layout, ...] = (
        Layout(1, 1), Layout(1, 4), Layout(2, 2), Layout(1, 8), Layout(4, 2),
    )  # fmt: skip
    rate_latencies_ms: tuple[float, ...] = (0.0, 200.0)
    rate_send_s: float = 10.0
    # The baseline's rate run is cut here: its limit is per worker, so it only shows the burst.
    baseline_rate_max_s: float = 10.0
    priority_campaign: int = 100_000
    priority_rate_per_s: int = 100
    # Campaign sending before the first try, so every process is in the middle of its batches.
    priority_drain_s: float = 3.0
    # Tries of each kind: a one-message campaign, and a priority=True campaign.
    priority_tries: int = 50
    # Recipients of each priority=True campaign; it reaches the API when its last one does.
    priority_group: int = 5
    # Mean pause between two tries (jittered by half of it either way).
    priority_spacing_s: float = 0.4
    # After the last try, how long the last urgent messages get to arrive.
    priority_timeout_s: float = 10.0
    baseline_priority_backlog: int = 5_000
    baseline_priority_timeout_s: float = 15.0
    callback_warmup_s: float = 1.0
    callback_duration_s: float = 10.0
    callback_connections: int = 32
    memory_messages: int = 1_000_000
    # The memory run stops here if the campaign is not done, and projects to its size.
    memory_max_s: float = 240.0
    # Enough messages that each of the 4,096 DIDWW-id index buckets holds about 24 entries.
    retention_messages: int = 100_000
    retention_max_s: float = 400.0
    # Templated enqueue, opt-out checks and the report, each at a million.
    campaign_data_messages: int = 1_000_000
    # Webhook delivery: a backlog that outlasts the fan-out, the warm-up and the window at
    # several times the target (about 0.8 KB of Redis each), split over the subscriptions.
    webhook_deliveries: int = 200_000
    webhook_subscriptions: tuple[int, ...] = (1, 4)
    webhook_warmup_s: float = 3.0
    webhook_window_s: float = 15.0
    # Idle (issue 20): 8 processes pacing 300/s, measured over a window after a warm-up, in
    # one worker and as workers of two; then the same workers with no work, per process.
    idle_layouts: tuple[Layout, ...] = (Layout(1, 8), Layout(4, 2))
    idle_warmup_s: float = 5.0
    idle_window_s: float = 20.0
    # After the campaign's last answer is recorded, before the idle window.
    idle_settle_s: float = 5.0
    idle_quiet_s: float = 30.0


FULL = Sizes()
SMOKE = replace(
    FULL,
    enqueue_messages=2_000,
    baseline_enqueue_messages=200,
    send_warmup_s=0.2,
    send_window_s=0.5,
    send_campaign=2_000,
    baseline_send_window_s=0.5,
    rate_limits=(300,),
    rate_layouts=(Layout(1, 2), Layout(2, 1)),
    rate_send_s=0.3,
    baseline_rate_max_s=1.0,
    priority_campaign=2_000,
    priority_drain_s=0.2,
    priority_tries=2,
    priority_group=2,
    priority_spacing_s=0.2,
    priority_timeout_s=5.0,
    baseline_priority_backlog=100,
    baseline_priority_timeout_s=1.0,
    callback_warmup_s=0.2,
    callback_duration_s=0.5,
    callback_connections=8,
    memory_messages=2_000,
    memory_max_s=1.0,
    retention_messages=1_000,
    retention_max_s=60.0,
    campaign_data_messages=2_000,
    webhook_deliveries=400,
    webhook_warmup_s=0.0,
    webhook_window_s=0.5,
    idle_layouts=(Layout(1, 2),),
    idle_warmup_s=0.2,
    idle_window_s=0.5,
    idle_settle_s=0.2,
    idle_quiet_s=0.5,
)

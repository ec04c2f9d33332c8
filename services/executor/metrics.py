"""What the executor measures, served on /metrics with every other flowyard metric.

Labels stay bounded: agent names come from the registry, outcomes from ``TaskFailed.reason``,
images from the agents' specs.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ATTEMPTS = Counter(
    "flowyard_agent_attempts_total",
    "Agent attempts this executor finished, by agent and outcome (succeeded, or the failure's reason;"
    " refused: the image's circuit breaker was open)",
    ["agent", "outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "flowyard_agent_attempt_seconds",
    "Time from taking a dispatch to reporting its result, by agent",
    ["agent"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
RUNNING = Gauge("flowyard_executor_attempts_running", "Agent attempts running on this executor now")
BREAKER_TRIPS = Counter(
    "flowyard_executor_breaker_trips_total",
    "Times this executor stopped taking an image's work after failures in a row to start it",
    ["image"],
)

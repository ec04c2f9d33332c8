"""Every metric flowyard exports, in one place: the names are a contract.

Dashboards (deploy/grafana), alert rules (deploy/prometheus) and users' own queries rely on these
names and labels; docs/observability.md lists them, and a test checks that every dashboard and
rule uses only names defined here. Prometheus naming: base units, ``_total`` counters.

Label values are bounded: workflow, agent, sink, consumer, stream and service names, outcomes and
statuses from closed sets — never run ids, so cardinality stays flat as runs grow.

Gauges read from JetStream (consumers, streams, active runs, pending approvals) are the same
cluster-wide value on every replica that reports them: aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# `_created` series double every counter for no use in a dashboard.
disable_created_metrics()

try:
    VERSION = version("flowyard")
except PackageNotFoundError:  # running from a checkout that was never installed
    VERSION = "0+unknown"

_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

# --- every service ---------------------------------------------------------------------------
BUILD_INFO = Gauge("flowyard_build_info", "Always 1; the flowyard version this process runs", ["version"])
BUILD_INFO.labels(VERSION).set(1)
SERVICE_UP = Gauge("flowyard_service_up", "1 while the service is running and connected to NATS", ["service"])
PUBLISHED = Counter("flowyard_published_total", "Messages published, by stream", ["stream"])
MESSAGES = Counter("flowyard_messages_total", "Messages handled by a consumer, by outcome", ["consumer", "outcome"])
HANDLE_SECONDS = Histogram(
    "flowyard_handle_seconds",
    "Time spent handling one message",
    ["consumer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 120),
)
DEAD_LETTERS = Counter(
    "flowyard_dead_letters_total",
    "Messages a service gave up on and copied to its dead-letter subject (fy.dlq.<service>)",
    ["service"],
)
CONSUMER_PENDING = Gauge(
    "flowyard_consumer_pending", "Messages in the stream not yet delivered to this consumer", ["consumer"]
)
CONSUMER_ACK_PENDING = Gauge(
    "flowyard_consumer_ack_pending", "Messages delivered to this consumer and not yet acknowledged", ["consumer"]
)
CONSUMER_REDELIVERED = Gauge(
    "flowyard_consumer_redelivered",
    "Messages delivered to this consumer more than once, still unacknowledged",
    ["consumer"],
)
CONSUMER_WAITING = Gauge(
    "flowyard_consumer_waiting", "Pull requests waiting on this consumer: 0 means nobody is pulling", ["consumer"]
)
STREAM_MESSAGES = Gauge("flowyard_stream_messages", "Messages stored in a JetStream stream", ["stream"])
STREAM_BYTES = Gauge("flowyard_stream_bytes", "Bytes stored in a JetStream stream", ["stream"])
SPANS_EXPORTED = Counter("flowyard_spans_exported_total", "Spans sent to the OTLP collector")
SPANS_DROPPED = Counter(
    "flowyard_spans_dropped_total",
    "Spans never sent: the queue was full (queue_full) or the collector refused or did not answer (export_failed)",
    ["reason"],
)
for _reason in ("queue_full", "export_failed"):
    SPANS_DROPPED.labels(_reason)

# --- runs (scheduler) ------------------------------------------------------------------------
RUNS_STARTED = Counter(
    "flowyard_runs_started_total",
    "Runs started, by workflow and what started them (cli, api, retry, schedule, event, alert)",
    ["workflow", "trigger"],
)
RUNS_FINISHED = Counter(
    "flowyard_runs_finished_total",
    "Runs ended, by workflow and status (succeeded, failed, cancelled, rejected)",
    ["workflow", "status"],
)
RUN_SECONDS = Histogram(
    "flowyard_run_duration_seconds",
    "Time from a run's request to its end, by workflow and status",
    ["workflow", "status"],
    buckets=_DURATION_BUCKETS,
)
RUNS_ACTIVE = Gauge("flowyard_runs_active", "Runs started and not yet ended (queued ones included)", ["workflow"])
RUNS_OLDEST_START = Gauge(
    "flowyard_runs_active_oldest_start_timestamp_seconds",
    "When the oldest active run of the workflow started (Unix time); absent when none is active",
    ["workflow"],
)
STATE_BYTES = Counter(
    "flowyard_scheduler_state_bytes_total",
    "Bytes the scheduler wrote to keep run state: run records, ended foreach items, large values",
    ["kind"],
)
NODES_FINISHED = Counter(
    "flowyard_nodes_finished_total",
    "Nodes that reached an end, by workflow, agent and status (succeeded, failed, skipped, cancelled)",
    ["workflow", "agent", "status"],
)

# --- agents (executor) -----------------------------------------------------------------------
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
BATCH_ITEMS = Histogram(
    "flowyard_executor_batch_items",
    "Foreach items per dispatch message this executor took (batched fan-out)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1000),
)
RESULTS_PER_MESSAGE = Histogram(
    "flowyard_executor_results_per_message",
    "Attempt events (started, results) per message this executor published",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
EXECUTOR_SLOTS = Gauge(
    "flowyard_executor_slots", "This executor's attempt slots (executor.concurrency), busy or free", ["state"]
)
BREAKER_TRIPS = Counter(
    "flowyard_executor_breaker_trips_total",
    "Times this executor stopped taking an image's work after failures in a row to start it",
    ["image"],
)
BREAKERS_OPEN = Gauge(
    "flowyard_executor_breakers_open", "Images whose circuit breaker is open on this executor now (work refused)"
)

# --- model-calling agents and routing (executor) ---------------------------------------------
AGENT_TOKENS = Counter(
    "flowyard_agent_tokens_total",
    "Tokens the agents' model calls used, by agent, model and kind (input or output)",
    ["agent", "model", "kind"],
)
AGENT_COST = Counter(
    "flowyard_agent_cost_usd_total",
    "What the agents' model calls cost in US dollars (llm.providers.<name>.prices; unpriced models add 0)",
    ["agent", "model"],
)
AGENT_FALLBACKS = Counter(
    "flowyard_agent_fallbacks_total",
    "Times a capability's attempt went on to the next agent, by the agent it left and why",
    ["capability", "from_agent", "reason"],
)
AGENT_RATE_LIMITED = Counter(
    "flowyard_agent_rate_limited_total",
    "Attempts held back or passed over by agents.limits, or rate-limited by the provider",
    ["agent"],
)
EGRESS_DENIED = Counter(
    "flowyard_egress_denied_total",
    "Connections the egress proxy refused an agent with `network: {allow: [...]}` (the host was not on its list)",
    ["agent"],
)
WARM_WORKERS = Gauge(
    "flowyard_warm_workers",
    "Started workers of agents with spec.warm on this executor, by agent and state (idle or busy)",
    ["agent", "state"],
)
WARM_REQUESTS = Counter(
    "flowyard_warm_requests_total",
    "Attempts given to warm workers, by agent and outcome (answered, failed, cold: no worker was free)",
    ["agent", "outcome"],
)
CAPABILITY_UNROUTABLE = Counter(
    "flowyard_capability_unroutable_total",
    "Attempts of a capability node for which no agent could be used or every one failed for a routable reason",
    ["capability"],
)

# --- approvals (approver) --------------------------------------------------------------------
APPROVALS_PENDING = Gauge("flowyard_approvals_pending", "Approvals waiting for a decision", ["workflow"])
APPROVAL_NEXT_EXPIRY = Gauge(
    "flowyard_approval_next_expiry_timestamp_seconds",
    "When the first pending approval of the workflow expires (Unix time); absent when none is pending",
    ["workflow"],
)
APPROVAL_WAIT_SECONDS = Histogram(
    "flowyard_approval_wait_seconds",
    "Time from an approval's request to its decision, by workflow and outcome (granted, rejected, expired)",
    ["workflow", "outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
)

# --- plans (planner) -------------------------------------------------------------------------
PLANS = Counter(
    "flowyard_plans_total",
    "Plans by outcome: proposed (by a model), fallback (a template proposed), failed, approved, rejected, expired",
    ["outcome"],
)
PLAN_ROUNDS = Histogram(
    "flowyard_plan_rounds",
    "Model answers a plan took before it was valid or given up (the validator's messages go back each round)",
    buckets=(1, 2, 3, 4, 5, 7, 10),
)
PLAN_SECONDS = Histogram(
    "flowyard_plan_seconds",
    "Time to draft a plan, from its request to proposed or failed, by outcome",
    ["outcome"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)

# --- notifications (notifier) ----------------------------------------------------------------
NOTIFICATIONS = Counter(
    "flowyard_notifications_total",
    "Notifications, by sink and outcome (sent; failed: given up after its retries)",
    ["sink", "outcome"],
)

# --- the gateway -----------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "flowyard_http_requests_total",
    "Gateway requests, by operation (the OpenAPI operationId; unmatched: no such route) and status code",
    ["operation", "status"],
)
HTTP_SECONDS = Histogram(
    "flowyard_http_request_duration_seconds",
    "Time to answer a gateway request (to the first byte of a stream), by operation",
    ["operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# --- triggers (planner) ----------------------------------------------------------------------
TRIGGER_OUTCOMES = ("fired", "deduplicated", "suppressed", "refused", "skipped")
TRIGGERS = {
    outcome: Counter(
        f"flowyard_triggers_{outcome}_total",
        f"Trigger events by workflow and kind (schedule, event, alert): {outcome}",
        ["workflow", "kind"],
    )
    for outcome in TRIGGER_OUTCOMES
}


class InProgress:
    """Gauges of what is in progress per workflow, from the FY_ACTIVE index: how many, and the
    earliest of the times the index subjects carry (``fy.active.<kind>.<workflow>.<time>.<id>``).

    A workflow with nothing in progress any more reads 0, and its earliest time goes (absent,
    not a stale time an alert could fire on).
    """

    def __init__(self, count: Gauge, earliest: Gauge) -> None:
        self.count = count
        self.earliest = earliest
        self._seen: set[str] = set()

    def update(self, index_subjects: list[str]) -> None:
        counts: dict[str, int] = {}
        first: dict[str, int] = {}
        for subject in index_subjects:
            parts = subject.split(".")
            workflow, at = parts[3], int(parts[4])
            counts[workflow] = counts.get(workflow, 0) + 1
            first[workflow] = min(first.get(workflow, at), at)
        for workflow in self._seen - counts.keys():
            self.count.labels(workflow).set(0)
            with contextlib.suppress(KeyError):
                self.earliest.remove(workflow)
        for workflow, count in counts.items():
            self.count.labels(workflow).set(count)
            self.earliest.labels(workflow).set(first[workflow])
        self._seen |= counts.keys()


def names() -> set[str]:
    """Every series name flowyard exports (with the _total/_bucket/... suffixes Prometheus adds)."""
    out: set[str] = set()
    for metric in (
        BUILD_INFO, SERVICE_UP, PUBLISHED, MESSAGES, HANDLE_SECONDS, DEAD_LETTERS, CONSUMER_PENDING,
        CONSUMER_ACK_PENDING, CONSUMER_REDELIVERED, CONSUMER_WAITING, STREAM_MESSAGES, STREAM_BYTES,
        SPANS_EXPORTED, SPANS_DROPPED, RUNS_STARTED, RUNS_FINISHED, RUN_SECONDS, RUNS_ACTIVE, RUNS_OLDEST_START,
        NODES_FINISHED, ATTEMPTS, ATTEMPT_SECONDS, EXECUTOR_SLOTS, BREAKER_TRIPS, BREAKERS_OPEN,
        AGENT_TOKENS, AGENT_COST, AGENT_FALLBACKS, AGENT_RATE_LIMITED, EGRESS_DENIED, WARM_WORKERS, WARM_REQUESTS,
        CAPABILITY_UNROUTABLE, APPROVALS_PENDING, APPROVAL_NEXT_EXPIRY, APPROVAL_WAIT_SECONDS, NOTIFICATIONS,
        HTTP_REQUESTS, HTTP_SECONDS, PLANS, PLAN_ROUNDS, PLAN_SECONDS,
        *TRIGGERS.values(),
    ):  # fmt: skip
        for family in metric.describe():
            for sample_suffix in _suffixes(family.type):
                out.add(family.name + sample_suffix)
    return out


def _suffixes(kind: str) -> tuple[str, ...]:
    return {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }.get(kind, ("",))

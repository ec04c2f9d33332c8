"""flowyard's Grafana dashboards, generated from code with Grafana's Foundation SDK.

``python -m shared.codegen.dashboards`` writes ``deploy/grafana/dashboards/*.json``; a test fails when
they are stale, and another evaluates every query against a real Prometheus. Never edit the JSON.

Every panel has a title, a description and a unit, and its queries use only metric names from
:mod:`shared.telemetry.metrics`. Queries use the raw metrics (not the recording rules), so the dashboards
work in a Prometheus that has not loaded flowyard's rules. Gauges read from JetStream are the
same on every replica: they are aggregated with ``max``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh, VariableSort

OUT = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"


@dataclass
class Query:
    expr: str
    legend: str = ""


@dataclass
class PanelSpec:
    title: str
    description: str
    unit: str
    queries: list[Query]
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8


@dataclass
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: list[tuple[str, list[PanelSpec]]]
    variables: list[str] = field(default_factory=list)  # label variables: workflow, agent


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


def ts(title: str, description: str, unit: str, *queries: Query, width: int = 12) -> PanelSpec:
    return PanelSpec(title, description, unit, list(queries), width=width)


def st(title: str, description: str, unit: str, query: Query, width: int = 6) -> PanelSpec:
    return PanelSpec(title, description, unit, [query], kind="stat", width=width, height=4)


def _quantile(p: float, metric: str, by: str, selector: str = "") -> str:
    return f"histogram_quantile({p}, sum by ({by}, le) (rate({metric}_bucket{selector}[{RATE}])))"


WF = '{workflow=~"$workflow"}'
AGENT = '{agent=~"$agent"}'


def overview() -> DashboardSpec:
    return DashboardSpec(
        uid="flowyard-overview",
        title="flowyard / Overview",
        description="Is flowyard healthy, and are runs succeeding? Runs, failures, durations, approvals, queues.",
        rows=[
            (
                "Now",
                [
                    st(
                        "Active runs",
                        "Runs started and not yet ended, all workflows (queued ones included).",
                        "short",
                        q("sum(max by (workflow) (flowyard_runs_active))"),
                    ),
                    st(
                        "Approvals waiting",
                        "Steps waiting for a human decision, all workflows.",
                        "short",
                        q("sum(max by (workflow) (flowyard_approvals_pending))"),
                    ),
                    st(
                        "Failure ratio (1h)",
                        "Share of the runs that ended in the last hour that failed or were rejected.",
                        "percentunit",
                        q(
                            'sum(increase(flowyard_runs_finished_total{status=~"failed|rejected"}[1h]))'
                            " / sum(increase(flowyard_runs_finished_total[1h]))"
                        ),
                    ),
                    st(
                        "Services up",
                        "flowyard service processes running and connected to NATS.",
                        "short",
                        q("sum(flowyard_service_up)"),
                    ),
                ],
            ),
            (
                "Runs",
                [
                    ts(
                        "Runs ending per second, by status",
                        "How many runs end each second: succeeded, failed, cancelled, rejected (before running).",
                        "ops",
                        q(f"sum by (status) (rate(flowyard_runs_finished_total[{RATE}]))", "{{status}}"),
                    ),
                    ts(
                        "Runs starting per second, by trigger",
                        "What starts runs: cli, api, retry, schedule, event or alert.",
                        "ops",
                        q(f"sum by (trigger) (rate(flowyard_runs_started_total[{RATE}]))", "{{trigger}}"),
                    ),
                    ts(
                        "Failure ratio by workflow",
                        "Share of each workflow's ended runs that failed or were rejected.",
                        "percentunit",
                        q(
                            "sum by (workflow) (rate(flowyard_runs_finished_total"
                            f'{{status=~"failed|rejected"}}[{RATE}]))'
                            f" / sum by (workflow) (rate(flowyard_runs_finished_total[{RATE}]))",
                            "{{workflow}}",
                        ),
                    ),
                    ts(
                        "Run duration p50 / p95 by workflow",
                        "From a run's request to its end, for the runs that ended in each interval.",
                        "s",
                        q(_quantile(0.5, "flowyard_run_duration_seconds", "workflow"), "{{workflow}} p50"),
                        q(_quantile(0.95, "flowyard_run_duration_seconds", "workflow"), "{{workflow}} p95"),
                    ),
                    ts(
                        "Active runs by workflow",
                        "Runs started and not yet ended (queued ones included).",
                        "short",
                        q("max by (workflow) (flowyard_runs_active)", "{{workflow}}"),
                    ),
                    ts(
                        "Approvals waiting by workflow",
                        "Steps waiting for a decision; see the approvals inbox or `flowyard approvals list`.",
                        "short",
                        q("max by (workflow) (flowyard_approvals_pending)", "{{workflow}}"),
                    ),
                ],
            ),
            (
                "Plumbing",
                [
                    ts(
                        "Consumer lag",
                        "Messages in JetStream not yet delivered to each consumer: growing means a service is"
                        " too slow or down.",
                        "short",
                        q("max by (consumer) (flowyard_consumer_pending)", "{{consumer}}"),
                    ),
                    ts(
                        "Dead letters",
                        "Messages a service gave up on (copied to fy.dlq.<service>); the runs they belonged to"
                        " were failed with the reason.",
                        "short",
                        q(f"sum by (service) (increase(flowyard_dead_letters_total[{RATE}]))", "{{service}}"),
                    ),
                    ts(
                        "Agent attempts per second, by outcome",
                        "Attempts the executors finished: succeeded, or why they failed (exit, timeout, runtime…).",
                        "ops",
                        q(f"sum by (outcome) (rate(flowyard_agent_attempts_total[{RATE}]))", "{{outcome}}"),
                    ),
                    ts(
                        "Notifications per second, by sink and outcome",
                        "Notices sent to each sink, and those given up after their retries.",
                        "ops",
                        q(
                            f"sum by (sink, outcome) (rate(flowyard_notifications_total[{RATE}]))",
                            "{{sink}} {{outcome}}",
                        ),
                    ),
                ],
            ),
        ],
    )


def workflow() -> DashboardSpec:
    return DashboardSpec(
        uid="flowyard-workflow",
        title="flowyard / Workflow",
        description="One workflow (pick it above): its runs, nodes, approvals and triggers.",
        variables=["workflow"],
        rows=[
            (
                "Runs",
                [
                    ts(
                        "Runs ending per second, by status",
                        "Runs of $workflow that ended, by status.",
                        "ops",
                        q(f"sum by (status) (rate(flowyard_runs_finished_total{WF}[{RATE}]))", "{{status}}"),
                    ),
                    ts(
                        "Runs starting per second, by trigger",
                        "What started the runs of $workflow.",
                        "ops",
                        q(f"sum by (trigger) (rate(flowyard_runs_started_total{WF}[{RATE}]))", "{{trigger}}"),
                    ),
                    ts(
                        "Run duration p50 / p95 / p99",
                        "From request to end, for the runs of $workflow that ended in each interval.",
                        "s",
                        q(_quantile(0.5, "flowyard_run_duration_seconds", "workflow", WF), "p50"),
                        q(_quantile(0.95, "flowyard_run_duration_seconds", "workflow", WF), "p95"),
                        q(_quantile(0.99, "flowyard_run_duration_seconds", "workflow", WF), "p99"),
                    ),
                    ts(
                        "Active runs and the oldest one's age",
                        "Runs of $workflow not yet ended, and how long ago the oldest of them started.",
                        "short",
                        q(f"max by (workflow) (flowyard_runs_active{WF})", "active"),
                        q(
                            f"time() - max by (workflow) (flowyard_runs_active_oldest_start_timestamp_seconds{WF})",
                            "oldest (s)",
                        ),
                    ),
                ],
            ),
            (
                "Nodes",
                [
                    ts(
                        "Nodes ending per second, by agent and status",
                        "Nodes of $workflow that reached an end: succeeded, failed, skipped, cancelled.",
                        "ops",
                        q(
                            f"sum by (agent, status) (rate(flowyard_nodes_finished_total{WF}[{RATE}]))",
                            "{{agent}} {{status}}",
                        ),
                        width=24,
                    ),
                ],
            ),
            (
                "Approvals and triggers",
                [
                    ts(
                        "Approvals waiting",
                        "Steps of $workflow waiting for a decision.",
                        "short",
                        q(f"max by (workflow) (flowyard_approvals_pending{WF})", "waiting"),
                    ),
                    ts(
                        "Approval wait p50 / p95, by outcome",
                        "From an approval's request to its decision: granted, rejected or expired.",
                        "s",
                        q(_quantile(0.5, "flowyard_approval_wait_seconds", "outcome", WF), "{{outcome}} p50"),
                        q(_quantile(0.95, "flowyard_approval_wait_seconds", "outcome", WF), "{{outcome}} p95"),
                    ),
                    ts(
                        "Trigger events per second, by what they did",
                        "Schedule, event and alert triggers of $workflow: fired (a run), deduplicated,"
                        " suppressed (storm), refused (invalid) or skipped.",
                        "ops",
                        *[
                            q(
                                f"sum by (kind) (rate(flowyard_triggers_{o}_total{WF}[{RATE}]))",
                                f"{{{{kind}}}} {o}",
                            )
                            for o in ("fired", "deduplicated", "suppressed", "refused", "skipped")
                        ],
                        width=24,
                    ),
                ],
            ),
        ],
    )


def agents() -> DashboardSpec:
    return DashboardSpec(
        uid="flowyard-agents",
        title="flowyard / Agents and executors",
        description="Agent attempts (by agent, pick them above) and the executors that run them.",
        variables=["agent"],
        rows=[
            (
                "Attempts",
                [
                    ts(
                        "Attempts per second, by agent and outcome",
                        "Attempts finished: succeeded, or the failure's reason (exit, timeout, bad_output,"
                        " runtime, refused while a circuit breaker is open…).",
                        "ops",
                        q(
                            f"sum by (agent, outcome) (rate(flowyard_agent_attempts_total{AGENT}[{RATE}]))",
                            "{{agent}} {{outcome}}",
                        ),
                    ),
                    ts(
                        "Attempt duration p50 / p95, by agent",
                        "From taking a dispatch to reporting its result (image start and agent run).",
                        "s",
                        q(_quantile(0.5, "flowyard_agent_attempt_seconds", "agent", AGENT), "{{agent}} p50"),
                        q(_quantile(0.95, "flowyard_agent_attempt_seconds", "agent", AGENT), "{{agent}} p95"),
                    ),
                    ts(
                        "Failed attempts share, by agent",
                        "Share of each agent's attempts that did not succeed (retries included).",
                        "percentunit",
                        q(
                            "sum by (agent) (rate(flowyard_agent_attempts_total"
                            f'{{agent=~"$agent",outcome!="succeeded"}}[{RATE}]))'
                            f" / sum by (agent) (rate(flowyard_agent_attempts_total{AGENT}[{RATE}]))",
                            "{{agent}}",
                        ),
                        width=24,
                    ),
                ],
            ),
            (
                "Models and routing",
                [
                    ts(
                        "Tokens per second, by agent, model and kind",
                        "Input and output tokens of the agents' model calls (llm, the coding CLIs).",
                        "short",
                        q(
                            f"sum by (agent, model, kind) (rate(flowyard_agent_tokens_total{AGENT}[{RATE}]))",
                            "{{agent}} {{model}} {{kind}}",
                        ),
                    ),
                    ts(
                        "Cost per hour, by agent and model",
                        "US dollars an hour at the current rate, from llm.providers.<name>.prices"
                        " (models without a price count 0).",
                        "currencyUSD",
                        q(
                            f"sum by (agent, model) (rate(flowyard_agent_cost_usd_total{AGENT}[{RATE}])) * 3600",
                            "{{agent}} {{model}}",
                        ),
                    ),
                    ts(
                        "Fallbacks, by capability, agent left and reason",
                        "A capability's attempt went on to its next agent: rate-limited, provider down,"
                        " key refused, image missing, breaker open…",
                        "short",
                        q(
                            "sum by (capability, from_agent, reason) "
                            f"(increase(flowyard_agent_fallbacks_total[{RATE}]))",
                            "{{capability}} {{from_agent}} {{reason}}",
                        ),
                    ),
                    ts(
                        "Rate limited and unroutable",
                        "Attempts held back by agents.limits or rate-limited by the provider, by agent; and"
                        " capability attempts no agent could take.",
                        "short",
                        q(
                            f"sum by (agent) (increase(flowyard_agent_rate_limited_total{AGENT}[{RATE}]))",
                            "{{agent}} rate limited",
                        ),
                        q(
                            f"sum by (capability) (increase(flowyard_capability_unroutable_total[{RATE}]))",
                            "{{capability}} unroutable",
                        ),
                    ),
                    ts(
                        "Egress refused",
                        "Connections the egress proxy refused an agent with network.allow, by agent: a host"
                        " not on its list (the executor's log names the host).",
                        "short",
                        q(
                            f"sum by (agent) (increase(flowyard_egress_denied_total{AGENT}[{RATE}]))",
                            "{{agent}}",
                        ),
                    ),
                    ts(
                        "Warm workers",
                        "Started workers of agents with spec.warm (idle, busy) and their attempts by outcome:"
                        " answered, failed, cold (every worker was busy: raise spec.warm.max when it stays above 0).",
                        "short",
                        q(f"sum by (agent, state) (flowyard_warm_workers{AGENT})", "{{agent}} {{state}}"),
                        q(
                            f"sum by (agent, outcome) (increase(flowyard_warm_requests_total{AGENT}[{RATE}]))",
                            "{{agent}} {{outcome}}",
                        ),
                    ),
                    ts(
                        "Plans, by outcome",
                        "Plans drafted from goals: proposed by the model, fallback (a template proposed),"
                        " failed, then approved, rejected or expired (docs/planning.md).",
                        "short",
                        q(f"sum by (outcome) (increase(flowyard_plans_total[{RATE}]))", "{{outcome}}"),
                    ),
                    ts(
                        "Plan rounds and drafting time, p95",
                        "Model answers a plan took (the validator's messages go back each round), and the time"
                        " from a plan's request to proposed or failed.",
                        "short",
                        q(
                            f"histogram_quantile(0.95, sum by (le) (rate(flowyard_plan_rounds_bucket[{RATE}])))",
                            "rounds p95",
                        ),
                        q(_quantile(0.95, "flowyard_plan_seconds", "outcome"), "seconds p95 {{outcome}}"),
                    ),
                ],
            ),
            (
                "Executors",
                [
                    ts(
                        "Slots busy / free, by executor",
                        "Attempt slots of each executor (executor.concurrency): no free slot while dispatches"
                        " wait means the executors are saturated.",
                        "short",
                        q("sum by (instance, state) (flowyard_executor_slots)", "{{instance}} {{state}}"),
                    ),
                    ts(
                        "Dispatches waiting",
                        "Dispatches not yet taken by an executor, per pool consumer.",
                        "short",
                        q('max by (consumer) (flowyard_consumer_pending{consumer=~"executor-.*"})', "{{consumer}}"),
                    ),
                    ts(
                        "Circuit breakers open",
                        "Images whose work an executor refuses after failures in a row to start them.",
                        "short",
                        q("sum by (instance) (flowyard_executor_breakers_open)", "{{instance}}"),
                    ),
                    ts(
                        "Circuit breaker trips, by image",
                        "Times an executor stopped taking an image's work.",
                        "short",
                        q(
                            f"sum by (image) (increase(flowyard_executor_breaker_trips_total[{RATE}]))",
                            "{{image}}",
                        ),
                    ),
                ],
            ),
        ],
    )


def bus() -> DashboardSpec:
    return DashboardSpec(
        uid="flowyard-bus",
        title="flowyard / Bus",
        description="JetStream as flowyard uses it: streams, consumers, messages handled, dead letters, the"
        " gateway's requests and span export.",
        rows=[
            (
                "Streams",
                [
                    ts(
                        "Messages stored, by stream",
                        "Messages each flowyard stream holds (work queues drain; FY_RUNS keeps bus.retention).",
                        "short",
                        q("max by (stream) (flowyard_stream_messages)", "{{stream}}"),
                    ),
                    ts(
                        "Bytes stored, by stream",
                        "Bytes each flowyard stream holds on the NATS servers.",
                        "bytes",
                        q("max by (stream) (flowyard_stream_bytes)", "{{stream}}"),
                    ),
                    ts(
                        "Messages published per second, by stream",
                        "Publishes acknowledged by JetStream, from every service.",
                        "ops",
                        q(f"sum by (stream) (rate(flowyard_published_total[{RATE}]))", "{{stream}}"),
                        width=24,
                    ),
                ],
            ),
            (
                "Consumers",
                [
                    ts(
                        "Pending, by consumer",
                        "Messages not yet delivered.",
                        "short",
                        q("max by (consumer) (flowyard_consumer_pending)", "{{consumer}}"),
                        width=8,
                    ),
                    ts(
                        "In hand (ack pending), by consumer",
                        "Delivered and not yet acknowledged: being handled now.",
                        "short",
                        q("max by (consumer) (flowyard_consumer_ack_pending)", "{{consumer}}"),
                        width=8,
                    ),
                    ts(
                        "Redelivered, by consumer",
                        "Unacknowledged messages delivered more than once (a handler retrying or a process that died).",
                        "short",
                        q("max by (consumer) (flowyard_consumer_redelivered)", "{{consumer}}"),
                        width=8,
                    ),
                    ts(
                        "Messages handled per second, by outcome",
                        "ok, retried (nak with delay), not_due (timers), terminated (dead-lettered), poison.",
                        "ops",
                        q(
                            f"sum by (consumer, outcome) (rate(flowyard_messages_total[{RATE}]))",
                            "{{consumer}} {{outcome}}",
                        ),
                    ),
                    ts(
                        "Handling time p95, by consumer",
                        "Time a handler takes for one message.",
                        "s",
                        q(_quantile(0.95, "flowyard_handle_seconds", "consumer"), "{{consumer}}"),
                    ),
                    ts(
                        "Pull requests waiting, by consumer",
                        "Open pull requests: 0 with messages pending means nobody is pulling.",
                        "short",
                        q("max by (consumer) (flowyard_consumer_waiting)", "{{consumer}}"),
                    ),
                    ts(
                        "Dead letters, by service",
                        "Messages given up on and copied to fy.dlq.<service>.",
                        "short",
                        q(f"sum by (service) (increase(flowyard_dead_letters_total[{RATE}]))", "{{service}}"),
                    ),
                ],
            ),
            (
                "Gateway and telemetry",
                [
                    ts(
                        "Gateway requests per second, by operation and status",
                        "HTTP requests to the gateway, by OpenAPI operation and status code.",
                        "reqps",
                        q(
                            f"sum by (operation, status) (rate(flowyard_http_requests_total[{RATE}]))",
                            "{{operation}} {{status}}",
                        ),
                    ),
                    ts(
                        "Gateway latency p95, by operation",
                        "Time to answer a request (to the first byte of a stream).",
                        "s",
                        q(_quantile(0.95, "flowyard_http_request_duration_seconds", "operation"), "{{operation}}"),
                    ),
                    ts(
                        "Spans exported / dropped per second",
                        "Trace spans sent to the OTLP collector, and those dropped (queue full, collector failing).",
                        "ops",
                        q(f"sum(rate(flowyard_spans_exported_total[{RATE}]))", "exported"),
                        q(f"sum by (reason) (rate(flowyard_spans_dropped_total[{RATE}]))", "dropped {{reason}}"),
                    ),
                    ts(
                        "flowyard versions running",
                        "Processes per flowyard version (more than one during an upgrade).",
                        "short",
                        q("count by (version) (flowyard_build_info)", "{{version}}"),
                    ),
                ],
            ),
        ],
    )


DASHBOARDS = (overview, workflow, agents, bus)


def _panel(spec: PanelSpec) -> object:
    builder = (timeseries.Panel() if spec.kind == "timeseries" else stat.Panel()).title(spec.title)
    builder = builder.description(spec.description).unit(spec.unit).datasource(DS).span(spec.width).height(spec.height)
    for i, query in enumerate(spec.queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + i)).datasource(DS)
        if query.legend:
            target = target.legend_format(query.legend)
        if spec.kind == "stat":
            target = target.instant()
        builder = builder.with_target(target)
    return builder


def _variable(name: str) -> object:
    source = {"workflow": "flowyard_runs_started_total", "agent": "flowyard_agent_attempts_total"}[name]
    return (
        gd.QueryVariable(name)
        .label(name)
        .datasource(DS)
        .query(f"label_values({source}, {name})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def build(spec: DashboardSpec) -> dict[str, object]:
    board = (
        gd.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["flowyard"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(
            gd.DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
            .current(VariableOption(selected=True, text="Prometheus", value="prometheus"))
        )
    )
    for name in spec.variables:
        board = board.with_variable(_variable(name))
    for title, panels in spec.rows:
        board = board.with_row(gd.Row(title))
        for panel in panels:
            board = board.with_panel(_panel(panel))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> dict[str, str]:
    """File name -> JSON text, for every dashboard."""
    return {f"{fn().uid}.json": json.dumps(build(fn()), indent=2, sort_keys=True) + "\n" for fn in DASHBOARDS}


def stale() -> list[str]:
    return [name for name, text in render().items() if not (OUT / name).is_file() or (OUT / name).read_text() != text]


def queries() -> dict[str, list[tuple[str, str]]]:
    """Dashboard uid -> (panel title, expression) for every query: what the tests evaluate."""
    return {
        fn().uid: [(p.title, query.expr) for _, panels in fn().rows for p in panels for query in p.queries]
        for fn in DASHBOARDS
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
    print(f"wrote {len(DASHBOARDS)} dashboards to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()

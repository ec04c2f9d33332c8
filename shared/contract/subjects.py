"""Every subject, stream, consumer and bucket name in one place.

Subjects are built here and nowhere else, so ``proto/asyncapi.yaml`` (generated from this module)
is the whole catalogue. Run ids and node ids are validated to be single subject tokens before they
reach these builders.
"""

from __future__ import annotations

import re

RUNS_STREAM = "FY_RUNS"
TASKS_STREAM = "FY_TASKS"
DLQ_STREAM = "FY_DLQ"
TIMERS_STREAM = "FY_TIMERS"
LOGS_STREAM = "FY_LOGS"
AUDIT_STREAM = "FY_AUDIT"
# Trigger events captured for the planner: the workflows' NATS subjects (kept in step with the
# registry) and alerts forwarded by the gateway.
TRIGGERS_STREAM = "FY_TRIGGERS"
TRIGGER_EVENTS_STREAM = "FY_TRIGGER_EVENTS"  # what each trigger did: fired, deduplicated, suppressed …
# What is in progress, one empty message per subject, purged when it ends: runs active and
# approvals pending are counted from the subjects (one API request) for the gauges.
ACTIVE_STREAM = "FY_ACTIVE"

RUNS_BUCKET = "fy_runs"
AGENTS_BUCKET = "fy_agents"
CONCURRENCY_BUCKET = "fy_concurrency"
APPROVALS_BUCKET = "fy_approvals"
NOTIFY_BUCKET = "fy_notify"
WORKSPACES_BUCKET = "fy_workspaces"  # an object store: run workspaces, one object per version
ITEMS_BUCKET = "fy_items"  # RUN.NODE.INDEX -> an ended foreach item's record (ADR 11)
VALUES_BUCKET = "fy_values"  # an object store: values too large for a message, RUN/SHA256 (ADR 11)
# The workflow registry: key NAME holds the head (latest version), NAME.N each version.
WORKFLOWS_BUCKET = "fy_workflows"
TRIGGER_RUNS_BUCKET = "fy_trigger_runs"  # de-duplication key of a trigger event -> the run it started
TRIGGER_STATE_BUCKET = "fy_trigger_state"  # schedules' last times, storm windows, planners' counts
IDEMPOTENCY_BUCKET = "fy_idempotency"
# Live executors: key POOL.INSTANCE -> {pool, runtime}, refreshed while they run (expires after 30 s),
# so the planner can refuse a run whose agents the stack's executors cannot run.
EXECUTORS_BUCKET = "fy_executors"
# Redelivered messages being handled, by consumer and stream sequence: how often a handler died
# with the message in hand (the poison ceiling, bus.poison_deliveries).
# Agents' limits and rate-limit cool-downs, shared by every executor replica (AGENT.WINDOW.START
# -> a count; AGENT.cool -> until when routing passes the agent over). Entries expire after 2 h.
LIMITS_BUCKET = "fy_limits"
SESSIONS_BUCKET = "fy_sessions"  # web UI sessions: SHA-256 of the id -> user, CSRF token, expiry
PLANS_BUCKET = "fy_plans"  # plan id -> a drafted plan's record (docs/planning.md)
INFLIGHT_BUCKET = "fy_inflight"  # Idempotency-Key of POST /v1/runs -> the run it started (24 h)

RUNS_SUBJECTS = "fy.run.>"
TASKS_SUBJECTS = "fy.task.>"
DLQ_SUBJECTS = "fy.dlq.>"
TIMERS_SUBJECTS = "fy.timer.>"
LOGS_SUBJECTS = "fy.log.>"
AUDIT_SUBJECTS = "fy.audit.>"
ALERT_SUBJECTS = "fy.alert.>"
ALERTMANAGER = "fy.alert.alertmanager"  # one Alertmanager notification (webhook payload v4), as received
TRIGGER_EVENT_SUBJECTS = "fy.trigger.>"
ACTIVE_SUBJECTS = "fy.active.>"
ACTIVE_RUNS = "fy.active.run.>"
ACTIVE_APPROVALS = "fy.active.approval.>"
# Ended runs by status, in FY_ACTIVE beside the active ones: what `status=` lists read (ADR 11).
ENDED_SUBJECTS = "fy.ended.>"
ENDED_RUNS = "fy.ended.run.>"
ENDED_INDEXED = "fy.ended.indexed"  # present once the ended runs of older stacks were indexed
RUN_ENDS = ("succeeded", "failed", "cancelled")

TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def check_token(value: str, what: str) -> str:
    if not TOKEN.match(value):
        raise ValueError(
            f"{what} {value!r} cannot be used in a subject: use letters, digits, '-' and '_' only "
            "(at most 128, starting with a letter or digit)"
        )
    return value


def _index_token(name: str) -> str:
    return name if TOKEN.match(name) else "_"


def active_run(workflow: str, started_at: float, run_id: str) -> str:
    """``fy.active.run.<workflow>.<started-at>.<run>``: present while the run is active."""
    return f"fy.active.run.{_index_token(workflow)}.{int(started_at)}.{run_id}"


def ended_run(status: str, workflow: str, run_id: str) -> str:
    """``fy.ended.run.<status>.<workflow>.<run>``: present once the run ended with ``status``."""
    return f"fy.ended.run.{status}.{_index_token(workflow)}.{run_id}"


def index_workflow(workflow: str) -> str:
    """The token a workflow's runs are indexed under (``_`` when its name cannot be one)."""
    return _index_token(workflow)


def active_approval(workflow: str, expires_at: float, approval_id: str) -> str:
    """``fy.active.approval.<workflow>.<expires-at>.<approval>``: present while it is pending."""
    return f"fy.active.approval.{_index_token(workflow)}.{int(expires_at)}.{approval_id}"


def run_requested(run_id: str) -> str:
    return f"fy.run.{run_id}.requested"


def run_planned(run_id: str) -> str:
    return f"fy.run.{run_id}.planned"


def run_rejected(run_id: str) -> str:
    return f"fy.run.{run_id}.rejected"


def run_abandoned(run_id: str) -> str:
    return f"fy.run.{run_id}.abandoned"


def run_started(run_id: str) -> str:
    return f"fy.run.{run_id}.started"


def run_finished(run_id: str, status: str) -> str:
    """``status`` is ``succeeded``, ``failed`` or ``cancelled``."""
    return f"fy.run.{run_id}.{status}"


def task_event(run_id: str, unit: str, kind: str) -> str:
    """``unit`` is a node id, or ``node#index`` for a foreach item; ``kind`` is started, succeeded or failed."""
    return f"fy.run.{run_id}.task.{unit}.{kind}"


def task_results(run_id: str) -> str:
    """Events of a run's attempts that were ready together (``TaskResults``, one message)."""
    return f"fy.run.{run_id}.task.results"


def run_cancel(run_id: str) -> str:
    return f"fy.run.{run_id}.cancel"


def timer(run_id: str) -> str:
    return f"fy.timer.run.{run_id}"


def approval_timer(approval_id: str) -> str:
    return f"fy.timer.approval.{approval_id}"


def approval_requested(run_id: str, node_id: str) -> str:
    return f"fy.run.{run_id}.approval.{node_id}.requested"


def approval_decided(run_id: str, node_id: str, outcome: str) -> str:
    """``outcome`` is granted, rejected or expired."""
    return f"fy.run.{run_id}.approval.{node_id}.{outcome}"


def node_failed(run_id: str, node_id: str) -> str:
    return f"fy.run.{run_id}.node.{node_id}.failed"


def notification_failed(run_id: str) -> str:
    return f"fy.run.{run_id}.notification.failed"


# Decisions are NATS requests with a reply (core NATS, outside every stream, so that no stream
# answers them): the CLI, the gateway and chat bots all decide through it.
DECIDE = "fy.decide.approval"


def plan_requested(plan_id: str) -> str:
    """A goal to draft a workflow for (the plan's id stands where a run's would)."""
    return f"fy.run.{plan_id}.plan.requested"


def plan_updated(plan_id: str, status: str) -> str:
    """``status`` is proposed, approved, rejected, failed or expired."""
    return f"fy.run.{plan_id}.plan.{status}"


PLAN_ENDS = ("proposed", "approved", "rejected", "failed", "expired")


def run_events(run_id: str) -> str:
    return f"fy.run.{run_id}.>"


def task_log(run_id: str, unit: str) -> str:
    """An agent's stderr lines while it runs (FY_LOGS, outside the run's audit stream)."""
    return f"fy.log.{run_id}.{unit}"


def run_logs(run_id: str) -> str:
    return f"fy.log.{run_id}.*"


def audit(action: str) -> str:
    """Who did what (apply, delete, start, cancel, retry, approve, reject), from the gateway or the CLI."""
    return f"fy.audit.{action}"


def trigger_event(workflow: str, outcome: str) -> str:
    """``outcome`` is fired, deduplicated, suppressed, refused or skipped."""
    return f"fy.trigger.{workflow}.{outcome}"


def dispatch(pool: str) -> str:
    return f"fy.task.dispatch.{pool}"


def dead_letter(service: str) -> str:
    return f"fy.dlq.{service}"


# What each durable consumer reads; the AsyncAPI document is generated from these too.
PLANNER_FILTERS = ["fy.run.*.requested"]
SCHEDULER_FILTERS = [
    "fy.run.*.planned",
    "fy.run.*.abandoned",
    "fy.run.*.rejected",
    "fy.run.*.cancel",
    "fy.run.*.task.*.succeeded",
    "fy.run.*.task.*.failed",
    "fy.run.*.task.results",
    "fy.run.*.approval.*.granted",
    "fy.run.*.approval.*.rejected",
    "fy.run.*.approval.*.expired",
]
TIMER_FILTERS = ["fy.timer.run.>"]
# The planner's drafting consumer: goals to draft, and the decisions on the plans it proposed
# (a plan's approval is node `plan` of the plan's id; a run's own node `plan` is told apart by kind).
PLAN_FILTERS = [
    "fy.run.*.plan.requested",
    "fy.run.*.approval.plan.granted",
    "fy.run.*.approval.plan.rejected",
    "fy.run.*.approval.plan.expired",
]
APPROVER_FILTERS = ["fy.run.*.approval.*.requested", "fy.run.*.failed", "fy.run.*.cancelled"]
APPROVER_TIMER_FILTERS = ["fy.timer.approval.>"]
NOTIFIER_FILTERS = [
    "fy.run.*.succeeded",
    "fy.run.*.failed",
    "fy.run.*.cancelled",
    "fy.run.*.node.*.failed",
    "fy.run.*.approval.*.*",
    "fy.run.*.plan.*",
]
# People hear about storms and refused trigger events (FY_TRIGGER_EVENTS).
NOTIFIER_TRIGGER_FILTERS = ["fy.trigger.*.suppressed", "fy.trigger.*.refused"]
# Executors listen (core NATS, not durable) for runs that end while their attempts still run.
RUN_ENDED = ["fy.run.*.failed", "fy.run.*.cancelled"]


def executor_filters(pool: str) -> list[str]:
    return [dispatch(pool)]

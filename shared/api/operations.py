"""The gateway's HTTP contract: every operation, who may call it, what it takes and answers.

The gateway wires a handler to each operation by its ``operation_id`` and refuses to start when
one is missing; :mod:`shared.api.openapi` makes the OpenAPI 3.1 document from this table, so the
document served at ``/openapi.json`` (and committed as ``proto/openapi.json``) is the API as it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.api.plans import PlanAccepted, PlanView, StartPlan
from shared.api.views import (
    AgentView,
    ApprovalView,
    ApproveBody,
    DecisionResult,
    Health,
    LogLine,
    RejectBody,
    RunView,
    SessionEnded,
    SessionStart,
    SessionView,
    StartRun,
)
from shared.contract.alerts import AlertsAccepted, Notification
from shared.state.audit import AuditEntry
from shared.state.registry import WorkflowSummary, WorkflowVersion
from shared.state.triggering import TriggerView


class ApplyResult(msgspec.Struct, kw_only=True):
    """``POST /v1/workflows``: the (first) workflow applied, and each one the body held."""

    name: str
    version: int
    changed: bool  # false: identical to the latest version, which was kept
    applied: list[Any] = []  # [{name, version, changed}] for every workflow in the body


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path | query | header
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str  # OpenAPI form: /v1/runs/{run_id}
    summary: str
    role: str | None  # viewer | operator | approver | None (public)
    ok: int = 200
    response: Any = None  # a type for JSON, or a content map
    body: Any = None  # a type (JSON) or "yaml"
    body_required: bool = True
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    mutating: bool = False


RUN_ID = Param("run_id", "path", "The run's id", required=True)
PLAN_ID = Param("plan_id", "path", "The plan's id", required=True)
APPROVAL_ID = Param("approval_id", "path", "The approval request's id", required=True)
NAME = Param("name", "path", "The workflow's name", required=True)
IDEMPOTENCY = Param(
    "Idempotency-Key",
    "header",
    "Repeat a request safely: the same user and key within 24 h return the same run instead of starting another.",
    {"type": "string", "maxLength": 255},
)
LAST_EVENT_ID = Param(
    "Last-Event-ID", "header", "Resume after this event id (the `id:` of the last event received).", {"type": "string"}
)
SSE = {"text/event-stream": {"schema": {"type": "string"}}}
AUTH_ERRORS = (401, 429, 503)  # every authenticated operation may answer these

OPERATIONS: tuple[Operation, ...] = (
    Operation("health", "GET", "/healthz", "The gateway process is alive", None, response=Health),
    Operation("ready", "GET", "/readyz", "The gateway can reach NATS", None, response=Health, errors=(503,)),
    Operation("openapi", "GET", "/openapi.json", "This document", None, response={"application/json": {}}),
    Operation(
        "list_workflows", "GET", "/v1/workflows", "Registered workflows", "viewer", response=list[WorkflowSummary]
    ),
    Operation(
        "apply_workflow",
        "POST",
        "/v1/workflows",
        "Apply a YAML file of workflows (and the agents beside them) as their next versions",
        "operator",
        ok=201,
        response=ApplyResult,
        body="yaml",
        errors=(400, 413, 415, 422),
        mutating=True,
    ),
    Operation(
        "get_workflow",
        "GET",
        "/v1/workflows/{name}",
        "One workflow: its latest version, or ?version=N",
        "viewer",
        response=WorkflowVersion,
        params=(NAME, Param("version", "query", "A version number (default: the latest)", {"type": "integer"})),
        errors=(400, 404),
    ),
    Operation(
        "delete_workflow",
        "DELETE",
        "/v1/workflows/{name}",
        "Remove a workflow and its versions",
        "operator",
        response=WorkflowSummary,
        params=(NAME,),
        errors=(404,),
        mutating=True,
    ),
    Operation(
        "start_run",
        "POST",
        "/v1/runs",
        "Start a run of a registered workflow",
        "operator",
        ok=202,
        response=RunView,
        body=StartRun,
        params=(IDEMPOTENCY,),
        errors=(400, 404, 413, 415, 422),
        mutating=True,
    ),
    Operation(
        "list_runs",
        "GET",
        "/v1/runs",
        "Runs, newest first",
        "viewer",
        response=list[RunView],
        params=(
            Param("workflow", "query", "Only this workflow's runs"),
            Param(
                "status",
                "query",
                "Only runs in this status",
                {"type": "string", "enum": ["pending", "running", "waiting", "succeeded", "failed", "cancelled"]},
            ),
            Param("limit", "query", "At most this many (default 50, at most 1000)", {"type": "integer"}),
        ),
        errors=(400,),
    ),
    Operation(
        "get_run", "GET", "/v1/runs/{run_id}", "One run", "viewer", response=RunView, params=(RUN_ID,), errors=(404,)
    ),
    Operation(
        "cancel_run",
        "POST",
        "/v1/runs/{run_id}/cancel",
        "Stop a run: running nodes are stopped, pending ones cancelled",
        "operator",
        ok=202,
        response=RunView,
        params=(RUN_ID,),
        errors=(404, 409),
        mutating=True,
    ),
    Operation(
        "retry_run",
        "POST",
        "/v1/runs/{run_id}/retry",
        "Run a failed or cancelled run again, keeping the outputs of the nodes that succeeded",
        "operator",
        ok=202,
        response=RunView,
        params=(RUN_ID,),
        errors=(404, 409),
        mutating=True,
    ),
    Operation(
        "run_logs",
        "GET",
        "/v1/runs/{run_id}/logs",
        "What the run's agents wrote to stderr; with follow=true, a text/event-stream until the run ends",
        "viewer",
        response={"application/json": {"schema": list[LogLine]}, **SSE},
        params=(
            RUN_ID,
            Param("node", "query", "Only this node's agent"),
            Param("follow", "query", "Stream new lines until the run ends", {"type": "boolean"}),
            LAST_EVENT_ID,
        ),
        errors=(400, 404),
    ),
    Operation(
        "events",
        "GET",
        "/v1/events",
        "Run, node and approval events as they happen (Server-Sent Events, resumable with Last-Event-ID)",
        "viewer",
        response=SSE,
        params=(
            Param("run_id", "query", "Only this run's events (replayed from its start)"),
            Param("workflow", "query", "Only this workflow's runs"),
            LAST_EVENT_ID,
        ),
        errors=(400,),
    ),
    Operation(
        "list_approvals",
        "GET",
        "/v1/approvals",
        "Approval requests, newest first",
        "viewer",
        response=list[ApprovalView],
        params=(
            Param(
                "status",
                "query",
                "Only requests in this status",
                {"type": "string", "enum": ["pending", "granted", "rejected", "expired", "closed"]},
            ),
        ),
        errors=(400,),
    ),
    Operation(
        "get_approval",
        "GET",
        "/v1/approvals/{approval_id}",
        "One approval request",
        "viewer",
        response=ApprovalView,
        params=(APPROVAL_ID,),
        errors=(404,),
    ),
    Operation(
        "approve",
        "POST",
        "/v1/approvals/{approval_id}/approve",
        "Approve a step as the token's user",
        "approver",
        response=DecisionResult,
        body=ApproveBody,
        body_required=False,
        params=(APPROVAL_ID,),
        errors=(400, 403, 404, 409, 413, 415, 422),
        mutating=True,
    ),
    Operation(
        "reject",
        "POST",
        "/v1/approvals/{approval_id}/reject",
        "Reject a step as the token's user (a reason is required)",
        "approver",
        response=DecisionResult,
        body=RejectBody,
        params=(APPROVAL_ID,),
        errors=(400, 403, 404, 409, 413, 415, 422),
        mutating=True,
    ),
    Operation(
        "start_plan",
        "POST",
        "/v1/plans",
        "Ask the planner to draft a workflow for a goal; it runs only once approved",
        "operator",
        ok=202,
        response=PlanAccepted,
        body=StartPlan,
        errors=(400, 413, 415, 422),
        mutating=True,
    ),
    Operation(
        "list_plans",
        "GET",
        "/v1/plans",
        "Plans, newest first",
        "viewer",
        response=list[PlanView],
        params=(
            Param(
                "status",
                "query",
                "Only plans in this status",
                {"type": "string", "enum": ["drafting", "proposed", "approved", "rejected", "failed", "expired"]},
            ),
            Param("limit", "query", "At most this many (default 50, at most 1000)", {"type": "integer"}),
        ),
        errors=(400,),
    ),
    Operation(
        "get_plan",
        "GET",
        "/v1/plans/{plan_id}",
        "One plan",
        "viewer",
        response=PlanView,
        params=(PLAN_ID,),
        errors=(404,),
    ),
    Operation(
        "approve_plan",
        "POST",
        "/v1/plans/{plan_id}/approve",
        "Approve a proposed plan as the token's user: its workflow is registered (and run, if asked)",
        "approver",
        response=DecisionResult,
        body=ApproveBody,
        body_required=False,
        params=(PLAN_ID,),
        errors=(400, 403, 404, 409, 413, 415, 422),
        mutating=True,
    ),
    Operation(
        "reject_plan",
        "POST",
        "/v1/plans/{plan_id}/reject",
        "Reject a proposed plan as the token's user (a reason is required); nothing is registered",
        "approver",
        response=DecisionResult,
        body=RejectBody,
        params=(PLAN_ID,),
        errors=(400, 403, 404, 409, 413, 415, 422),
        mutating=True,
    ),
    Operation(
        "alertmanager_webhook",
        "POST",
        "/v1/alerts/alertmanager",
        "Alertmanager's webhook (payload version 4): answered 200 once the notification is durably on the bus",
        "alerts",
        response=AlertsAccepted,
        body=Notification,
        errors=(400, 413, 415, 422),
    ),
    Operation(
        "list_triggers",
        "GET",
        "/v1/triggers",
        "Active triggers of the registered workflows, with what they did",
        "viewer",
        response=list[TriggerView],
    ),
    Operation(
        "create_session",
        "POST",
        "/v1/session",
        "Sign in (the web UI): exchange an API token for a session cookie and a CSRF token",
        None,
        ok=201,
        response=SessionView,
        body=SessionStart,
        errors=(400, 401, 413, 415, 422, 429, 503),
    ),
    Operation(
        "get_session",
        "GET",
        "/v1/session",
        "Who is signed in, and the session's CSRF token",
        "viewer",
        response=SessionView,
    ),
    Operation(
        "delete_session",
        "DELETE",
        "/v1/session",
        "Sign out: end the session on the server and clear its cookie",
        "viewer",
        response=SessionEnded,
        mutating=True,
    ),
    Operation("list_agents", "GET", "/v1/agents", "Built-in and registered agents", "viewer", response=list[AgentView]),
    Operation(
        "audit",
        "GET",
        "/v1/audit",
        "Who did what through the gateway and the CLI, newest first",
        "viewer",
        response=list[AuditEntry],
        params=(Param("limit", "query", "At most this many (default 100, at most 1000)", {"type": "integer"}),),
        errors=(400,),
    ),
)

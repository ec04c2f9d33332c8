"""The objects people and programs see: the run, approval, workflow and agent JSON.

One definition for ``flowyard ... --json`` and the gateway's ``/v1`` API, so the two can never
differ; ``proto/openapi.json`` is generated from these types. Views are built from the records
the services keep (:mod:`shared.contract.messages`), never by hand in a command or a handler.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from shared.contract.messages import (
    ApprovalRecord,
    Decision,
    NodeRecord,
    PlannedNode,
    RouteStep,
    RunFinished,
    RunRecord,
    RunRequested,
    Usage,
)
from shared.formats.masking import mask_secrets
from shared.telemetry.tracing import run_trace_id, trace_link

# While a run goes on: pending (asked for, not started or queued under `concurrency`), running,
# waiting (nothing runs and a step waits for a person's approval).
ViewStatus = Literal["pending", "running", "waiting", "succeeded", "failed", "cancelled"]


class View(msgspec.Struct, kw_only=True):
    pass


class NodeView(View, kw_only=True):
    status: str = "pending"
    # The graph, from the run's plan: the agent the node runs, the nodes it waits for, and
    # whether it fans out (then ``items`` holds one view per item once the list is known).
    agent: str | None = None
    needs: list[str] = []
    foreach: bool = False
    attempts: int = 0
    input: Any = None  # what the step's agent was given, values under secret-looking keys masked
    output: Any = None
    error: str | None = None
    errors: list[str] = []  # one line per failed attempt, oldest first
    started_at: str | None = None
    finished_at: str | None = None
    approval_id: str | None = None
    approval: str | None = None  # pending, granted, rejected, expired, closed
    items: list[NodeView] | None = None  # foreach: one per item, in order
    reused_from: str | None = None  # `runs retry`: the run whose output this node kept
    # A `capability:` node: the capability, its candidates in the order they are tried, and the
    # last attempt's routing (each candidate chosen, skipped or failed, and why); ``agent`` is the
    # one that ran (before it runs: the first candidate).
    capability: str | None = None
    candidates: list[str] = []
    routing: list[RouteStep] = []
    usage: Usage | None = None  # model calls' tokens and cost, over the node's attempts


class WorkspaceView(View, kw_only=True):
    version: int
    object: str


class RunView(View, kw_only=True):
    run_id: str
    workflow: str
    workflow_version: int | None = None  # the registry version that ran; null when run from a file
    plan_id: str | None = None  # the approved plan it was started from (docs/planning.md)
    status: ViewStatus
    outputs: dict[str, Any] = {}
    error: str | None = None
    errors: list[str] = []  # why the run was rejected before it ran (invalid workflow or inputs)
    nodes: dict[str, NodeView] = {}
    requested_by: str = ""
    trigger: dict[str, Any] = {}  # what started the run: {"type": "manual" | "api" | ...}
    created_at: str = ""
    finished_at: str | None = None
    retry_of: str | None = None
    workspace: WorkspaceView | None = None
    usage: Usage = Usage()  # model calls' tokens and cost, summed over every step
    trace_id: str = ""  # the run's trace in the tracing backend (one run, one trace)
    trace_url: str | None = None  # a link to it, when telemetry.trace_url is set

    def __post_init__(self) -> None:
        if not self.trace_id and self.run_id:
            self.trace_id = run_trace_id(self.run_id)
        if self.trace_url is None:
            self.trace_url = trace_link(self.trace_id)


def run_status(record: RunRecord) -> ViewStatus:
    if record.status != "running":
        return record.status
    if record.queued:
        return "pending"
    nodes = record.nodes.values()
    if any(n.approval == "pending" for n in nodes) and not any(n.status == "running" for n in nodes):
        return "waiting"
    return "running"


def _node_view(n: NodeRecord, planned: PlannedNode | None = None) -> NodeView:
    return NodeView(
        status=n.status,
        agent=n.agent or (planned.agent.name if planned else None),
        needs=list(planned.needs) if planned else [],
        foreach=planned is not None and planned.foreach is not None,
        attempts=n.attempts,
        input=mask_secrets(n.input),
        output=n.output,
        error=n.error,
        errors=n.errors,
        started_at=n.started_at,
        finished_at=n.finished_at,
        approval_id=n.approval_id,
        approval=n.approval,
        items=[_node_view(i) for i in n.items] if n.items is not None else None,
        reused_from=n.reused_from,
        capability=planned.capability if planned else None,
        candidates=[c.name for c in planned.candidates] if planned else [],
        routing=list(n.routing),
        usage=n.usage,
    )


def run_view(record: RunRecord, request: RunRequested | None = None) -> RunView:
    """The run as its record says; ``request`` fills in what the record does not keep."""
    planned = {p.id: p for p in record.plan.nodes} if record.plan else {}
    return RunView(
        run_id=record.run_id,
        workflow=record.workflow,
        workflow_version=record.workflow_version if record.workflow_version is not None else _version(request),
        plan_id=record.plan_id or (request.plan_id if request else None),
        status=run_status(record),
        outputs=record.outputs,
        error=record.error,
        errors=record.rejected,
        nodes={nid: _node_view(n, planned.get(nid)) for nid, n in record.nodes.items()},
        requested_by=record.requested_by or (request.requested_by if request else ""),
        trigger=record.trigger or (request.trigger if request else {}),
        created_at=(
            request.requested_at if request and request.requested_at else record.requested_at or record.created_at
        ),
        finished_at=record.finished_at,
        retry_of=record.retry_of,
        workspace=WorkspaceView(version=record.workspace_version, object=record.workspace)
        if record.workspace
        else None,
        usage=record.usage,
    )


def _version(request: RunRequested | None) -> int | None:
    return request.workflow_version if request else None


def pending_view(request: RunRequested) -> RunView:
    """A run asked for whose record does not exist yet (the planner has not planned it)."""
    spec = request.definition.get("spec") if isinstance(request.definition, dict) else None
    nodes = spec.get("nodes") if isinstance(spec, dict) else None
    declared = [n for n in nodes or [] if isinstance(n, dict) and isinstance(n.get("id"), str)]
    return RunView(
        run_id=request.run_id,
        workflow=request.workflow,
        workflow_version=request.workflow_version,
        plan_id=request.plan_id,
        status="pending",
        nodes={
            n["id"]: NodeView(
                agent=n.get("agent") if isinstance(n.get("agent"), str) else None,
                needs=[x for x in n.get("needs") or [] if isinstance(x, str)]
                if isinstance(n.get("needs"), list)
                else [],
                foreach=n.get("foreach") is not None,
            )
            for n in declared
        },
        requested_by=request.requested_by,
        trigger=request.trigger,
        created_at=request.requested_at,
        retry_of=request.retry_of,
    )


def finished_view(event: RunFinished) -> RunView:
    """From the final event alone, when the record cannot be read."""
    return RunView(
        run_id=event.run_id,
        workflow=event.workflow,
        status=event.status,
        outputs=event.outputs,
        error=event.error,
        nodes={
            nid: NodeView(status=n.status, attempts=n.attempts, output=n.output, error=n.error)
            for nid, n in event.nodes.items()
        },
    )


# --- approvals ----------------------------------------------------------------------------------


class ApprovalView(View, kw_only=True):
    id: str
    run_id: str
    node: str
    workflow: str
    agent: str
    status: str  # pending, granted, rejected, expired, closed
    reason: str = ""
    requested_by: str = ""
    requested_at: str = ""
    approvers: list[str] = []  # user names or group:NAME; empty: anyone but the requester
    min_approvals: int = 1
    approvals: list[Decision] = []
    rejection: Decision | None = None
    expires_at: str = ""
    on_expiry: str = "reject"
    allow_self_approval: bool = False
    inputs: Any = None  # the step's resolved input, secrets masked
    inputs_hash: str = ""
    summary: str = ""
    kind: str = "step"  # plan: a drafted plan waits (run_id is the plan's id; GET /v1/plans/{run_id})


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def approval_view(record: ApprovalRecord) -> ApprovalView:
    req = record.request
    return ApprovalView(
        id=req.approval_id,
        run_id=req.run_id,
        node=req.node_id,
        workflow=req.workflow,
        agent=req.agent,
        status=record.status,
        reason=req.reason,
        requested_by=req.requested_by,
        requested_at=req.requested_at,
        approvers=req.policy.approvers,
        min_approvals=req.policy.min_approvals,
        approvals=record.approvals,
        rejection=record.rejection,
        expires_at=rfc3339(req.expires_at),
        on_expiry=req.policy.on_expiry,
        allow_self_approval=req.policy.allow_self_approval,
        inputs=req.inputs,
        inputs_hash=req.inputs_hash,
        summary=record.summary,
        kind=req.kind,
    )


def to_json(view: Any) -> Any:
    """Plain JSON values (dicts and lists) of a view or a list of views."""
    return msgspec.to_builtins(view)


# --- request bodies (forbid unknown fields: a typo is an error, not silently ignored) -----------


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class StartRun(Body, kw_only=True):
    workflow: str  # a registered workflow's name
    inputs: dict[str, Any] = {}
    version: int | None = None  # default: the latest version


class ApproveBody(Body, kw_only=True):
    comment: str = ""


class RejectBody(Body, kw_only=True):
    reason: str  # required: shown in the run's error


class SessionStart(Body, kw_only=True):
    token: str  # an API token; exchanged once for a session cookie, never kept by the page


class SessionView(View, kw_only=True):
    user: str
    roles: list[str]
    # Send it back as X-CSRF-Token on every POST and DELETE made with the session cookie.
    # Empty when the request came with a bearer token (no cookie, nothing to forge).
    csrf_token: str
    expires_at: str  # RFC 3339; empty for a bearer token


class SessionEnded(View, kw_only=True):
    ended: bool  # false: the request had no session (a bearer token)


# --- other responses ------------------------------------------------------------------------------


class DecisionResult(View, kw_only=True):
    ok: bool
    status: str  # the approval's status after the decision
    message: str
    approval: ApprovalView | None = None


class AgentView(View, kw_only=True):
    name: str
    source: Literal["builtin", "registered"]
    description: str = ""
    image: str | None = None
    command: list[str] | None = None
    risk: str = "auto"
    inputs: dict[str, Any] = {}  # JSON Schema
    outputs: dict[str, Any] = {}  # JSON Schema
    timeout: str = "5m"
    resources: dict[str, Any] = {}
    network: str = "none"  # none | egress | allow (then network_allow lists the hosts)
    network_allow: list[str] = []
    secrets: list[str] = []  # names only; values never leave the secret source
    workspace: str = "none"
    capabilities: list[str] = []
    autonomous: bool = False
    llm: bool = False  # it calls a model (llm.providers)


class LogLine(View, kw_only=True):
    node: str
    item: int | None = None
    attempt: int
    line: str


class LogChunk(View, kw_only=True):
    """One ``log`` event of a followed log stream: lines of one attempt, in order."""

    node: str
    item: int | None = None
    attempt: int
    lines: list[str]
    truncated: bool = False


class Problem(View, kw_only=True):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: list[str] = []  # one plain-words message per finding (validation)
    request_id: str = ""


class Health(View, kw_only=True):
    status: str
    services: Any = None

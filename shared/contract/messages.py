"""The wire contract: every event flowyard publishes, and the run record the scheduler keeps in KV.

Wire types are frozen, keyword-only and tagged with ``type``; they accept unknown fields so that a
newer producer never breaks an older consumer (new fields always get defaults, field types never
change). ``proto/`` is generated from this module by ``python -m shared.codegen.protogen``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .drafts import PlanRequested, PlanUpdated
from .event import Event
from .plans import (  # noqa: F401  (re-exported: the plan is part of the wire contract)
    AgentResources,
    AgentSnapshot,
    ApprovalPolicy,
    Budget,
    LlmUse,
    Plan,
    PlannedNode,
    RetryPolicy,
    RouteStep,
    Usage,
    WarmUse,
    Wire,
)
from .tasks import (  # noqa: F401  (re-exported: an attempt's messages are part of the wire contract)
    BatchItem,
    FailureReason,
    TaskBatch,
    TaskDispatched,
    TaskFailed,
    TaskLog,
    TaskResults,
    TaskStarted,
    TaskSucceeded,
    unit_token,
    unpacked,
)

RunStatus = Literal["running", "succeeded", "failed", "cancelled"]
FinalRunStatus = Literal["succeeded", "failed", "cancelled"]
NodeStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled", "rejected"]
ApprovalStatus = Literal["pending", "granted", "rejected", "expired", "closed"]  # closed: the run ended first


# --- run events -------------------------------------------------------------------------------


class RunRequested(Event, tag="run.requested", kw_only=True):
    workflow: str
    definition: dict[str, Any]
    inputs: dict[str, Any] = {}
    trigger: dict[str, Any] = {}
    source: str | None = None
    requested_by: str = "cli"
    requested_at: str = ""
    retry_of: str | None = None  # `flowyard runs retry`: the failed run this one continues
    reuse: dict[str, Any] = {}  # node id -> output kept from retry_of (the nodes that succeeded)
    workspace: str | None = None  # object name in FY_WORKSPACES: the files the run starts with
    workflow_version: int | None = None  # the registry version that ran; None: sent as a file
    plan_id: str | None = None  # the approved plan this run was started from


class RunPlanned(Event, tag="run.planned", kw_only=True):
    workflow: str
    plan: Plan
    inputs: dict[str, Any] = {}
    trigger: dict[str, Any] = {}
    retry_of: str | None = None
    reuse: dict[str, Any] = {}
    requested_by: str = ""
    labels: dict[str, str] = {}  # the workflow's metadata.labels, for notification rules
    workspace: str | None = None
    workflow_version: int | None = None
    requested_at: str = ""  # when the run was asked for (the root span and run duration start here)
    plan_id: str | None = None


class RunCancelRequested(Event, tag="run.cancel_requested", kw_only=True):
    requested_by: str = ""
    reason: str = ""


class TimerDue(Event, tag="timer", kw_only=True):
    """A durable timer: kept in FY_TIMERS and handed back by JetStream until it is due."""

    kind: Literal["retry", "deadline", "admit", "expiry"]
    due_at: float  # epoch seconds
    node_id: str = ""
    item: int | None = None
    attempt: int = 0
    approval_id: str = ""


class ApprovalRequested(Event, tag="approval.requested", kw_only=True):
    """Everything a person needs to decide whether a risky node may run."""

    approval_id: str
    workflow: str
    node_id: str
    agent: str
    risk: str = "auto"
    reason: str = ""
    inputs: Any = None  # the resolved input (for foreach, the list of item inputs), secrets masked
    inputs_hash: str = ""
    policy: ApprovalPolicy = ApprovalPolicy()
    expires_at: float = 0.0  # epoch seconds
    requested_by: str = ""  # who started the run
    requested_at: str = ""
    labels: dict[str, str] = {}
    kind: Literal["step", "plan"] = "step"  # plan: a drafted plan waits (run_id is the plan's id)


class Decision(Wire, kw_only=True):
    user: str
    at: str
    comment: str = ""


class ApprovalDecided(Event, tag="approval.decided", kw_only=True):
    approval_id: str
    workflow: str
    node_id: str
    outcome: Literal["granted", "rejected", "expired"]
    approvals: list[Decision] = []
    rejection: Decision | None = None
    inputs_hash: str = ""
    summary: str = ""  # e.g. "rejected by ann: wrong cluster"
    labels: dict[str, str] = {}
    kind: Literal["step", "plan"] = "step"


class NodeFailed(Event, tag="node.failed", kw_only=True):
    """A node ended failed (after its retries): for people and their notification rules."""

    workflow: str
    node_id: str
    error: str
    attempts: int = 0
    labels: dict[str, str] = {}


class NotificationFailed(Event, tag="notification.failed", kw_only=True):
    sink: str
    event_type: str
    error: str
    attempts: int = 0


class RunRejected(Event, tag="run.rejected", kw_only=True):
    workflow: str
    errors: list[str]


class RunAbandoned(Event, tag="run.abandoned", kw_only=True):
    """A service gave up on a message of this run (dead-lettered it): the run must end, saying why."""

    service: str
    subject: str
    reason: str
    workflow: str = ""


class RunStarted(Event, tag="run.started", kw_only=True):
    workflow: str
    nodes: list[str] = []


class NodeResult(Wire, kw_only=True):
    status: NodeStatus = "pending"
    attempts: int = 0
    output: Any = None
    error: str | None = None


class RunFinished(Event, tag="run.finished", kw_only=True):
    workflow: str
    status: FinalRunStatus
    outputs: dict[str, Any] = {}
    error: str | None = None
    nodes: dict[str, NodeResult] = {}
    labels: dict[str, str] = {}


AnyEvent = (
    RunRequested
    | RunPlanned
    | RunCancelRequested
    | TimerDue
    | ApprovalRequested
    | ApprovalDecided
    | NodeFailed
    | NotificationFailed
    | RunRejected
    | RunAbandoned
    | RunStarted
    | RunFinished
    | TaskDispatched
    | TaskBatch
    | TaskStarted
    | TaskSucceeded
    | TaskFailed
    | TaskResults
    | TaskLog
    | PlanRequested
    | PlanUpdated
)
EVENT_TYPES: tuple[type[Event], ...] = (
    RunRequested,
    RunPlanned,
    RunCancelRequested,
    TimerDue,
    ApprovalRequested,
    ApprovalDecided,
    NodeFailed,
    NotificationFailed,
    RunRejected,
    RunAbandoned,
    RunStarted,
    RunFinished,
    TaskDispatched,
    TaskBatch,
    TaskStarted,
    TaskSucceeded,
    TaskFailed,
    TaskResults,
    TaskLog,
    PlanRequested,
    PlanUpdated,
)


# --- the run record (KV ``fy_runs``, key = run id) ---------------------------------------------


class Outgoing(Wire, kw_only=True):
    """A message the scheduler has decided to send; kept in the record until it is sent."""

    subject: str
    msg_id: str
    event: AnyEvent


class ItemRun(Wire, kw_only=True):
    """Stored form of a foreach node's items (ADR 11): ``count`` consecutive items. With a
    ``slot``, they are open and share that state (their inputs are the node's ``input`` list);
    without, they have ended and each one's record is in KV ``fy_items`` as ``RUN.NODE.INDEX``."""

    count: int
    slot: NodeRecord | None = None


class ItemDispatches(Wire, kw_only=True):
    """Stored form of a fan-out's first dispatches: items ``start`` to ``stop - 1`` of a node,
    attempt 1, rebuilt from the record when the outbox has to be published again."""

    node_id: str
    start: int
    stop: int
    dispatched_at: float
    subject: str
    workspace: str | None = None


class NodeRecord(Wire, kw_only=True):
    status: NodeStatus = "pending"
    attempts: int = 0
    output: Any = None
    error: str | None = None
    errors: list[str] = []  # one line per failed attempt, oldest first
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    retry_at: float | None = None  # set while waiting out a retry back-off (epoch seconds)
    input: Any = None  # the resolved input of the attempts (kept so a retry sends the same)
    items: list[NodeRecord] | None = None  # foreach: one record per item, in order
    reused_from: str | None = None  # `runs retry`: the run whose output this node kept
    approval_id: str | None = None  # set once an approval was requested for the node
    approval: ApprovalStatus | None = None
    agent: str | None = None  # the agent that ran last (a `capability:` node's choice)
    routing: list[RouteStep] = []  # the last attempt's candidates (a `capability:` node)
    usage: Usage | None = None  # summed over the node's attempts (and items)
    # Stored form only (the scheduler keeps ``items`` outside the record, ADR 11); None in memory.
    item_runs: list[ItemRun] | None = None


class RunRecord(Wire, kw_only=True):
    run_id: str
    workflow: str
    status: RunStatus = "running"
    inputs: dict[str, Any] = {}
    trigger: dict[str, Any] = {}
    plan: Plan | None = None
    nodes: dict[str, NodeRecord] = {}
    outputs: dict[str, Any] = {}
    error: str | None = None
    created_at: str = ""
    updated_at: str = ""
    finished_at: str | None = None
    rejected: list[str] = []  # the planner's reasons, when the run was rejected before it ran
    queued: bool = False  # waiting for a place under the workflow's `concurrency`
    retry_of: str | None = None
    requested_by: str = ""
    labels: dict[str, str] = {}
    workspace: str | None = None  # the latest workspace version (object name), if the run has one
    workspace_version: int = 0  # how many times `rw` agents changed it
    workflow_version: int | None = None  # the registry version that ran; None: sent as a file
    requested_at: str = ""  # when the run was asked for; created_at is when the scheduler took it
    plan_id: str | None = None  # the approved plan the run was started from
    usage: Usage = Usage()  # summed over every attempt of every step
    outbox: list[Outgoing] = []
    outbox_items: list[ItemDispatches] = []  # stored form: the outbox's fan-out dispatches, as ranges


class ApprovalRecord(Wire, kw_only=True):
    """The approver's record of one request (KV ``fy_approvals``, key = approval id)."""

    request: ApprovalRequested
    status: ApprovalStatus = "pending"
    approvals: list[Decision] = []
    rejection: Decision | None = None
    decided_at: str | None = None
    summary: str = ""
    published: bool = False  # the decision event went out


def node_results(record: RunRecord) -> dict[str, NodeResult]:
    return {
        nid: NodeResult(status=n.status, attempts=n.attempts, output=n.output, error=n.error)
        for nid, n in record.nodes.items()
    }


# One encoder and one decoder per type, built once.
_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(AnyEvent)
_record_decoder = msgspec.json.Decoder(RunRecord)
_approval_decoder = msgspec.json.Decoder(ApprovalRecord)


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decode_event(data: bytes) -> AnyEvent:
    """Raises ``msgspec.ValidationError``/``DecodeError`` on poison; callers terminate those."""
    return _event_decoder.decode(data)


def decode_record(data: bytes) -> RunRecord:
    return _record_decoder.decode(data)


def decode_approval(data: bytes) -> ApprovalRecord:
    return _approval_decoder.decode(data)


def event_type(event: Event) -> str:
    """The CloudEvents ``type`` of an event, e.g. ``io.flowyard.run.requested.v1``."""
    return f"io.flowyard.{event.__struct_config__.tag}.v1"

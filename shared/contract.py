"""The wire contract: every event flowyard publishes, and the run record the scheduler keeps in KV.

Wire types are frozen, keyword-only and tagged with ``type``; they accept unknown fields so that a
newer producer never breaks an older consumer (new fields always get defaults, field types never
change). ``proto/`` is generated from this module by ``python -m shared.protogen``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

RunStatus = Literal["running", "succeeded", "failed", "cancelled"]
FinalRunStatus = Literal["succeeded", "failed", "cancelled"]
NodeStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled"]
FailureReason = Literal[
    "exit",  # the agent exited non-zero
    "timeout",  # the attempt ran past its timeout and was killed
    "bad_output",  # stdout was not exactly one JSON object
    "output_schema",  # the output did not match the agent's output schema
    "input_schema",  # the resolved input did not match the agent's input schema
    "template",  # a template could not be resolved from inputs or upstream outputs
    "runtime",  # the runtime could not start the agent (missing command, secret, image)
    "lost",  # the executor gave up on the attempt (shutdown past its grace period)
]


class Wire(msgspec.Struct, frozen=True, kw_only=True):
    """Base of wire structs that are not events."""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    run_id: str


class AgentResources(Wire):
    memory: str | None = None
    cpus: float | None = None
    pids: int | None = None


class AgentSnapshot(Wire):
    """An agent as registered when the run was planned: later re-registrations do not change a run."""

    name: str
    image: str | None = None
    command: list[str] | None = None
    risk: Literal["auto", "approval_required"] = "auto"
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    timeout_s: float = 300.0
    resources: AgentResources = AgentResources()
    network: Literal["none", "egress"] = "none"
    secrets: list[str] = []
    env: dict[str, str] = {}


class PlannedNode(Wire):
    id: str
    agent: AgentSnapshot
    needs: list[str] = []
    with_: dict[str, Any] = msgspec.field(default_factory=dict, name="with")
    timeout_s: float | None = None


class Plan(Wire):
    nodes: list[PlannedNode]
    outputs: dict[str, Any] = {}


# --- run events -------------------------------------------------------------------------------


class RunRequested(Event, tag="run.requested"):
    workflow: str
    definition: dict[str, Any]
    inputs: dict[str, Any] = {}
    trigger: dict[str, Any] = {}
    source: str | None = None
    requested_by: str = "cli"
    requested_at: str = ""


class RunPlanned(Event, tag="run.planned"):
    workflow: str
    plan: Plan
    inputs: dict[str, Any] = {}
    trigger: dict[str, Any] = {}


class RunRejected(Event, tag="run.rejected"):
    workflow: str
    errors: list[str]


class RunStarted(Event, tag="run.started"):
    workflow: str
    nodes: list[str] = []


class NodeResult(Wire):
    status: NodeStatus = "pending"
    attempts: int = 0
    output: Any = None
    error: str | None = None


class RunFinished(Event, tag="run.finished"):
    workflow: str
    status: FinalRunStatus
    outputs: dict[str, Any] = {}
    error: str | None = None
    nodes: dict[str, NodeResult] = {}


# --- task events ------------------------------------------------------------------------------


class TaskDispatched(Event, tag="task.dispatched"):
    workflow: str
    node_id: str
    attempt: int
    agent: AgentSnapshot
    input: Any = None
    timeout_s: float = 300.0
    # When the scheduler decided the dispatch; a re-sent copy keeps it, so an executor can tell a
    # dispatch older than the de-dup window and check the run record before running it.
    dispatched_at: float = 0.0

    @property
    def key(self) -> str:
        """The effectively-once key: de-dup id, container name and process tag all use it."""
        return f"{self.run_id}:{self.node_id}:{self.attempt}"


class TaskStarted(Event, tag="task.started"):
    node_id: str
    attempt: int
    executor: str = ""


class TaskSucceeded(Event, tag="task.succeeded"):
    node_id: str
    attempt: int
    output: Any = None
    duration_s: float = 0.0
    log: str = ""
    executor: str = ""


class TaskFailed(Event, tag="task.failed"):
    node_id: str
    attempt: int
    error: str
    reason: FailureReason = "exit"
    retryable: bool = True
    exit_code: int | None = None
    duration_s: float = 0.0
    log: str = ""
    executor: str = ""


AnyEvent = (
    RunRequested
    | RunPlanned
    | RunRejected
    | RunStarted
    | RunFinished
    | TaskDispatched
    | TaskStarted
    | TaskSucceeded
    | TaskFailed
)
EVENT_TYPES: tuple[type[Event], ...] = (
    RunRequested,
    RunPlanned,
    RunRejected,
    RunStarted,
    RunFinished,
    TaskDispatched,
    TaskStarted,
    TaskSucceeded,
    TaskFailed,
)


# --- the run record (KV ``fy_runs``, key = run id) ---------------------------------------------


class Outgoing(Wire):
    """A message the scheduler has decided to send; kept in the record until it is sent."""

    subject: str
    msg_id: str
    event: AnyEvent


class NodeRecord(Wire):
    status: NodeStatus = "pending"
    attempts: int = 0
    output: Any = None
    error: str | None = None
    errors: list[str] = []  # one line per failed attempt, oldest first
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None


class RunRecord(Wire):
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
    outbox: list[Outgoing] = []


def node_results(record: RunRecord) -> dict[str, NodeResult]:
    return {
        nid: NodeResult(status=n.status, attempts=n.attempts, output=n.output, error=n.error)
        for nid, n in record.nodes.items()
    }


# One encoder and one decoder per type, built once.
_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(AnyEvent)
_record_decoder = msgspec.json.Decoder(RunRecord)


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decode_event(data: bytes) -> AnyEvent:
    """Raises ``msgspec.ValidationError``/``DecodeError`` on poison; callers terminate those."""
    return _event_decoder.decode(data)


def decode_record(data: bytes) -> RunRecord:
    return _record_decoder.decode(data)


def event_type(event: Event) -> str:
    """The CloudEvents ``type`` of an event, e.g. ``io.flowyard.run.requested.v1``."""
    return f"io.flowyard.{event.__struct_config__.tag}.v1"

"""An attempt's messages: its dispatch, what the executor reports, and their batched forms.

A foreach node's first attempts travel as :class:`TaskBatch` messages of many items, and the
events of a run's attempts that are ready together travel as one :class:`TaskResults`
(docs/performance.md, "Batched fan-out"). Each item keeps its own attempt, key, timeout and
retries: a batch is only how they travel.
"""

from __future__ import annotations

from typing import Any, Literal

from .event import Event
from .plans import AgentSnapshot, RouteStep, Usage, Wire

FailureReason = Literal[
    "exit",  # the agent exited non-zero
    "timeout",  # the attempt ran past its timeout and was killed
    "bad_output",  # stdout was not exactly one JSON object
    "output_schema",  # the output did not match the agent's output schema
    "input_schema",  # the resolved input did not match the agent's input schema
    "template",  # a template could not be resolved from inputs or upstream outputs
    "runtime",  # the runtime could not start the agent (missing command, secret, image)
    "lost",  # the executor gave up on the attempt (shutdown past its grace period)
    "cancelled",  # the run was cancelled or ran past its deadline while the attempt ran
    "condition",  # a `when` condition or a `foreach` list could not be evaluated
]


def unit_token(node_id: str, item: int | None) -> str:
    return node_id if item is None else f"{node_id}#{item}"


class TaskDispatched(Event, tag="task.dispatched", kw_only=True):
    workflow: str
    node_id: str
    attempt: int
    item: int | None = None  # foreach: the item's index
    agent: AgentSnapshot
    input: Any = None
    timeout_s: float = 300.0
    # When the scheduler decided the dispatch; a re-sent copy keeps it, so an executor can tell a
    # dispatch older than the de-dup window and check the run record before running it.
    dispatched_at: float = 0.0
    workspace: str | None = None  # the workspace version to copy in (agents with `workspace`)
    # A `capability:` node: every agent that may run it, in order (``agent`` is the first); the
    # executor tries the next when one is unusable or fails for a routable reason.
    capability: str | None = None
    candidates: list[AgentSnapshot] = []
    # Executor-internal: which candidate this copy of the dispatch runs (0: the first). Part of
    # the key, so that each candidate of one attempt has its own container, pod and spool.
    route: int = 0

    @property
    def unit(self) -> str:
        """The node, or ``node#index`` for a foreach item: the token used in task subjects."""
        return unit_token(self.node_id, self.item)

    @property
    def key(self) -> str:
        """The effectively-once key: de-dup id, container name and process tag all use it."""
        key = f"{self.run_id}:{self.unit}:{self.attempt}"
        return f"{key}~{self.route}" if self.route else key


class TaskStarted(Event, tag="task.started", kw_only=True):
    node_id: str
    attempt: int
    item: int | None = None
    executor: str = ""


class TaskSucceeded(Event, tag="task.succeeded", kw_only=True):
    node_id: str
    attempt: int
    item: int | None = None
    output: Any = None
    duration_s: float = 0.0
    log: str = ""
    executor: str = ""
    workspace: str | None = None  # an `rw` agent changed the workspace: the new version
    agent: str | None = None  # the agent that ran (a `capability:` node's chosen candidate)
    routing: list[RouteStep] = []  # a `capability:` node: every candidate tried, in order
    usage: Usage | None = None  # tokens and cost, for agents that call a model


class TaskFailed(Event, tag="task.failed", kw_only=True):
    node_id: str
    attempt: int
    item: int | None = None
    error: str
    reason: FailureReason = "exit"
    retryable: bool = True
    exit_code: int | None = None
    duration_s: float = 0.0
    log: str = ""
    executor: str = ""
    agent: str | None = None
    routing: list[RouteStep] = []
    usage: Usage | None = None  # what the failed attempt spent all the same
    cause: str | None = None  # the agent's own failure reason (docs/workflows.md), e.g. rate_limited


class TaskLog(Event, tag="task.log", kw_only=True):
    """Lines an agent wrote to stderr while it ran, in order (``seq``), secrets redacted."""

    node_id: str
    attempt: int
    item: int | None = None
    seq: int = 0
    lines: list[str] = []
    truncated: bool = False  # the attempt reached executor.log_max_bytes: later lines were dropped


# --- batched forms (issue 23: a fan-out's messages per group of items, not per item) --------------


class BatchItem(Wire, kw_only=True):
    item: int  # the foreach item's index
    input: Any = None


class TaskBatch(Event, tag="task.batch", kw_only=True):
    """The first attempts of a group of a foreach node's items, in one dispatch message.

    The executor runs each item as the :class:`TaskDispatched` that :meth:`tasks` gives: its own
    key, spool, timeout, span and result. Retries go as single dispatches. The group is a fixed
    slice of a stored range of dispatches (``ItemDispatches``), so a re-sent outbox makes the same
    batches with the same de-dup ids.
    """

    workflow: str
    node_id: str
    agent: AgentSnapshot
    items: list[BatchItem]
    timeout_s: float = 300.0
    dispatched_at: float = 0.0
    workspace: str | None = None
    capability: str | None = None
    candidates: list[AgentSnapshot] = []

    @property
    def key(self) -> str:
        """The batch's de-dup id: its run, node and first and last item, attempt 1."""
        first, last = (self.items[0].item, self.items[-1].item) if self.items else (0, -1)
        return f"{self.run_id}:{self.node_id}#{first}-{last}:1"

    def tasks(self) -> list[TaskDispatched]:
        return [
            TaskDispatched(
                run_id=self.run_id,
                workflow=self.workflow,
                node_id=self.node_id,
                item=it.item,
                attempt=1,
                agent=self.agent,
                input=it.input,
                timeout_s=self.timeout_s,
                dispatched_at=self.dispatched_at,
                workspace=self.workspace,
                capability=self.capability,
                candidates=self.candidates,
            )
            for it in self.items
        ]


AttemptEvent = TaskStarted | TaskSucceeded | TaskFailed


class TaskResults(Event, tag="task.results", kw_only=True):
    """Events of one run's attempts that were ready together, in the order they happened.

    The executor sends an attempt's event alone, as before, when nothing else is waiting; while a
    publish is in flight, the events that become ready meanwhile go out together in one of these.
    The scheduler applies each one as if it had come alone: a result for an attempt already
    decided is ignored, so the first stored result of an attempt stands, as the single events'
    de-dup ids made it.
    """

    events: list[AttemptEvent]


def unpacked(event: Event) -> list[Event]:
    """The events a message stands for: a ``TaskResults``'s, in order, or the event itself."""
    return list(event.events) if isinstance(event, TaskResults) else [event]

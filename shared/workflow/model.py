"""The documents people write: ``kind: Agent`` and ``kind: Workflow``, ``apiVersion: flowyard/v1``.

These are configuration types: unknown keys are errors (with a did-you-mean), so a typo never
silently changes what runs. The keys later releases implement are already reserved here and are
refused with a clear message until then.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

API_VERSION = "flowyard/v1"
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
NODE_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?)[bB]?$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses a smaller limit


def memory_bytes(text: str) -> int:
    """``256Mi``, ``512m``, ``1g``, ``1.5GiB`` or plain bytes; units are powers of 1024."""
    m = _MEMORY.match(text.strip())
    if not m:
        raise ValueError(f"{text!r}: write it like 256Mi, 512m or 1g")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


InputType = Literal["string", "number", "integer", "boolean", "object", "array"]


class _Doc(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Metadata(_Doc, kw_only=True):
    name: str
    description: str = ""
    labels: dict[str, str] = {}


class Resources(_Doc, kw_only=True):
    memory: str | None = None  # e.g. 256Mi, 1g
    cpus: float | None = None
    pids: int | None = None


class NetworkAllow(_Doc, kw_only=True):
    # host:port pairs (host may start with "*." for its subdomains): the only places the agent
    # reaches, through the egress proxy (docs/agents.md, "Egress").
    allow: list[str] = []
    # Also the host of the model provider the attempt is given (spec.llm): the built-in model and
    # coding-CLI agents reach their provider and nothing else.
    provider: bool = False


class WarmSpec(_Doc, kw_only=True):
    # Workers kept started that take one JSON request per line (docs/agents.md, "Warm agents").
    min: int = 0  # spares kept started after the agent's first attempt on an executor
    max: int = 4  # started workers at most (per agent and executor); beyond, attempts start cold
    idle: str = "5m"  # a worker idle this long is stopped, spares beyond `min` included
    reuse: Literal["run", "agent"] = "run"  # run: a worker never takes two runs' inputs


class LlmSpec(_Doc, kw_only=True):
    provider: str | None = None  # a name under llm.providers; default: llm.default_provider
    kinds: list[str] = []  # the provider kinds it speaks; empty: any


class AgentSpec(_Doc, kw_only=True):
    description: str = ""
    image: str | None = None
    command: list[str] | None = None
    risk: Literal["auto", "approval_required"] = "auto"
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    timeout: str = "5m"
    resources: Resources = msgspec.field(default_factory=Resources)
    network: Literal["none", "egress"] | NetworkAllow = "none"
    secrets: list[str] = []
    env: dict[str, str] = {}
    # The run's workspace copied in at /workspace: ro (changes are discarded) or rw (changes
    # become the run's next workspace version).
    workspace: Literal["none", "ro", "rw"] = "none"
    # json: the agent prints one JSON object. text: whatever it prints is the output's `stdout`
    # (with `exit_code`), for commands that are not flowyard agents (the shell agent).
    stdout: Literal["json", "text"] = "json"
    command_input: str | None = None  # an input field holding the command to run instead of `command`
    image_input: str | None = None  # an input field naming the image to run instead of `image`
    capabilities: list[str] = []  # what `capability:` nodes it may serve (code_fixes, triage, ...)
    # Acts without asking (a coding CLI's skip-permissions mode): never on the process runtime.
    autonomous: bool = False
    llm: LlmSpec | None = None  # it calls a model: a provider is given to it, budgets count it
    warm: WarmSpec | None = None  # a pool of started workers instead of a start per attempt


class AgentDoc(_Doc, kw_only=True):
    apiVersion: str
    kind: Literal["Agent"]
    metadata: Metadata
    spec: AgentSpec


class InputDef(_Doc, kw_only=True):
    type: InputType = "string"
    default: Any = msgspec.UNSET
    description: str = ""
    required: bool | None = None  # default: required when there is no default

    @property
    def is_required(self) -> bool:
        if self.required is not None:
            return self.required
        return self.default is msgspec.UNSET


class RetrySpec(_Doc, kw_only=True):
    attempts: int = 1  # total tries, the first included
    backoff: str = "1s"  # wait before the second try
    factor: float = 2.0  # each further wait is this many times the previous one
    max_backoff: str = "5m"
    jitter: bool = True  # wait a random 50-100% of the computed back-off


class Defaults(_Doc, kw_only=True):
    retry: RetrySpec | None = None
    timeout: str | None = None  # per node attempt, unless the node says otherwise


class ApprovalSpec(_Doc, kw_only=True):
    approvers: list[str] = []  # user names or group:NAME (groups in the approver's config)
    min_approvals: int = 1
    expires_in: str = "1h"
    on_expiry: Literal["reject", "approve"] = "reject"
    allow_self_approval: bool = False
    reason: str = ""  # shown to the approvers


# Keys reserved for later releases; present so they are not "unknown", refused until implemented.
RESERVED_NODE_KEYS: tuple[str, ...] = ()
RESERVED_SPEC_KEYS: tuple[str, ...] = ()


class NatsTrigger(_Doc, kw_only=True):
    subject: str  # a NATS subject outside flowyard's own; wildcards * and > allowed
    when: str | None = None  # a condition over `trigger` (subject, id, data, headers)


class AlertmanagerTrigger(_Doc, kw_only=True):
    matchers: list[str]  # Alertmanager syntax: name="v", name!="v", name=~"re", name!~"re" (anchored)
    on_resolved: Literal["ignore", "cancel", "run"] = "ignore"


class CronTrigger(_Doc, kw_only=True):
    schedule: str | None = None  # five-field cron expression
    every: str | None = None  # or a fixed interval, e.g. 30s, 5m
    timezone: str = "UTC"  # an IANA name; daylight-saving changes follow cron's rules
    overlap: Literal["skip", "allow", "cancel_other"] = "skip"
    catchup_window: str = "0s"  # after downtime, run the latest missed time if within this
    jitter: str = "0s"  # fire up to this much later (the same delay on every replica)


class MaxRuns(_Doc, kw_only=True):
    count: int
    per: str


class PlanTrigger(_Doc, kw_only=True):
    # Instead of a run, a plan drafted for this goal (a template over `trigger`), proposed for
    # approval; the trigger's own workflow is its fallback (docs/planning.md).
    goal: str
    run: bool = True  # start the plan's workflow once a person approves it


class TriggerDef(_Doc, kw_only=True):
    nats: NatsTrigger | None = None
    alertmanager: AlertmanagerTrigger | None = None
    cron: CronTrigger | None = None
    inputs: dict[str, Any] = {}  # workflow inputs, templated over `trigger`
    max_runs: MaxRuns | None = None  # storm control: at most count runs per window
    plan: PlanTrigger | None = None  # draft a plan for each new event instead of running

    @property
    def kind(self) -> str:
        kinds = [k for k in ("nats", "alertmanager", "cron") if getattr(self, k) is not None]
        return kinds[0] if len(kinds) == 1 else ""


class NodeDef(_Doc, kw_only=True):
    id: str
    agent: str | None = None
    capability: str | None = None  # instead of agent: the first usable agent offering it
    description: str = ""
    needs: list[str] = []
    with_: dict[str, Any] = msgspec.field(default_factory=dict, name="with")
    timeout: str | None = None
    when: str | None = None  # a condition over inputs, trigger and upstream nodes
    foreach: str | list[Any] | None = None  # a template yielding a list, or a list
    parallelism: int | None = None  # at most this many foreach items at once
    batch: int | None = None  # foreach items per dispatch message (None: chosen by the item count)
    retry: RetrySpec | None = None
    continue_on_failure: bool = False
    approval: ApprovalSpec | None = None


class BudgetSpec(_Doc, kw_only=True):
    tokens: int | None = None  # input and output tokens of every LLM and CLI step together
    usd: float | None = None  # their cost, from llm.providers.<name>.prices


class WorkflowSpec(_Doc, kw_only=True):
    description: str = ""
    inputs: dict[str, InputDef] = {}
    nodes: list[NodeDef]
    outputs: dict[str, Any] = {}
    defaults: Defaults | None = None
    concurrency: int | None = None  # runs of this workflow at once; more wait their turn
    timeout: str | None = None  # the whole run
    triggers: list[TriggerDef] = []  # what starts runs on its own: NATS events, alerts, schedules
    budget: BudgetSpec | None = None  # the run's LLM and CLI steps stop starting once it is spent


class WorkflowDoc(_Doc, kw_only=True):
    apiVersion: str
    kind: Literal["Workflow"]
    metadata: Metadata
    spec: WorkflowSpec


# Every key a document may hold, for did-you-mean hints on unknown ones.
KNOWN_KEYS: dict[str, list[str]] = {
    t.__name__: [f.encode_name for f in msgspec.structs.fields(t)]
    for t in (
        Metadata,
        Resources,
        NetworkAllow,
        LlmSpec,
        BudgetSpec,
        AgentSpec,
        AgentDoc,
        InputDef,
        NodeDef,
        WorkflowSpec,
        WorkflowDoc,
        RetrySpec,
        Defaults,
        NatsTrigger,
        AlertmanagerTrigger,
        CronTrigger,
        MaxRuns,
        PlanTrigger,
        TriggerDef,
    )
}

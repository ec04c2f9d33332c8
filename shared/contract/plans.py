"""A run's frozen plan: the agents as they were when it was planned, and each node's policies.

Part of the wire contract (re-exported by :mod:`shared.contract.messages`): a RunPlanned event and
every TaskDispatched carry these, and the run record keeps the plan.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Wire(msgspec.Struct, frozen=True, kw_only=True):
    """Base of wire structs that are not events."""


class LlmUse(Wire, kw_only=True):
    """An agent that calls a model: which provider by default, and which kinds it can speak."""

    provider: str | None = None  # a name under llm.providers; None: llm.default_provider
    kinds: list[str] = []  # provider kinds it speaks (anthropic, openai, openai-compatible); []: any


class Usage(Wire, kw_only=True):
    """What model calls cost: one attempt's, a node's or a whole run's."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None  # None: no price is known for a model that was used

    def __add__(self, other: Usage) -> Usage:
        cost = (
            None if self.cost_usd is None and other.cost_usd is None else (self.cost_usd or 0) + (other.cost_usd or 0)
        )
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=round(cost, 6) if cost is not None else None,
        )

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class RouteStep(Wire, kw_only=True):
    """One candidate of a `capability:` node in one attempt: run (chosen), passed over, or failed."""

    agent: str
    outcome: Literal["chosen", "skipped", "failed"]
    reason: str = ""  # a failure reason word (rate_limited, breaker_open, ...) and, after ": ", words


class Budget(Wire, kw_only=True):
    tokens: int | None = None
    usd: float | None = None


class AgentResources(Wire, kw_only=True):
    memory: str | None = None
    cpus: float | None = None
    pids: int | None = None


class WarmUse(Wire, kw_only=True):
    """A warm pool (spec.warm): started workers that take one request after another."""

    min: int = 0  # spares kept started once the agent has run here
    max: int = 4  # workers at most per agent and environment; beyond, attempts start cold
    idle_s: float = 300.0  # a worker idle this long is stopped (spares beyond `min`)
    reuse: Literal["run", "agent"] = "run"  # run: a worker never sees two runs' inputs


class AgentSnapshot(Wire, kw_only=True):
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
    workspace: Literal["none", "ro", "rw"] = "none"
    stdout: Literal["json", "text"] = "json"
    command_input: str | None = None
    image_input: str | None = None
    capabilities: list[str] = []
    autonomous: bool = False  # acts without asking: only ever run in a sandbox (container or pod)
    llm: LlmUse | None = None  # calls a model: counts against budgets, gets a provider
    # network: {allow: [...]}: `network` stays "none" so that an executor that predates the
    # allowlist runs the agent with no network at all rather than with all of it.
    egress_allow: list[str] = []
    egress_provider: bool = False  # ... and the host of the provider the attempt is given
    warm: WarmUse | None = None  # kept started between attempts (docs/agents.md, "Warm agents")


class RetryPolicy(Wire, kw_only=True):
    attempts: int = 1
    backoff_s: float = 1.0
    factor: float = 2.0
    max_backoff_s: float = 300.0
    jitter: bool = True


class ApprovalPolicy(Wire, kw_only=True):
    """Who must approve a node before it runs (agent risk `approval_required`, or `approval:`)."""

    approvers: list[str] = []  # user names or group:NAME; empty: anyone but the run's requester
    min_approvals: int = 1
    expires_in_s: float = 3600.0
    on_expiry: Literal["reject", "approve"] = "reject"
    allow_self_approval: bool = False
    reason: str = ""


class PlannedNode(Wire, kw_only=True):
    id: str
    agent: AgentSnapshot
    needs: list[str] = []
    with_: dict[str, Any] = msgspec.field(default_factory=dict, name="with")
    timeout_s: float | None = None
    when: str | None = None
    foreach: Any = None  # a template string or a literal list; None: not a fan-out
    parallelism: int | None = None
    batch: int | None = None  # foreach items per dispatch message; None: chosen by the item count
    retry: RetryPolicy = RetryPolicy()
    continue_on_failure: bool = False
    approval: ApprovalPolicy | None = None
    # `capability:` nodes: the agents that may run it, in the order they are tried (``agent`` is
    # the first of them). Empty for a node that names its agent.
    capability: str | None = None
    candidates: list[AgentSnapshot] = []

    @property
    def uses_llm(self) -> bool:
        return any(a.llm is not None for a in (self.candidates or [self.agent]))


class Plan(Wire, kw_only=True):
    nodes: list[PlannedNode]
    outputs: dict[str, Any] = {}
    timeout_s: float | None = None  # the whole run
    concurrency: int | None = None  # runs of this workflow at once
    budget: Budget | None = None  # what the run's LLM and CLI steps may spend together

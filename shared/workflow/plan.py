"""A valid workflow frozen into the plan a run carries: agent snapshots, policies, candidates."""

from __future__ import annotations

from collections.abc import Mapping

from shared.contract.messages import (
    AgentResources,
    AgentSnapshot,
    ApprovalPolicy,
    Budget,
    LlmUse,
    Plan,
    PlannedNode,
    RetryPolicy,
    WarmUse,
)
from shared.formats.durations import parse_duration
from shared.workflow import routing
from shared.workflow.model import AgentDoc, ApprovalSpec, NodeDef, RetrySpec, WarmSpec, WorkflowDoc


def snapshot(agent: AgentDoc) -> AgentSnapshot:
    spec = agent.spec
    return AgentSnapshot(
        name=agent.metadata.name,
        image=spec.image,
        command=spec.command,
        risk=spec.risk,
        inputs=spec.inputs,
        outputs=spec.outputs,
        timeout_s=parse_duration(spec.timeout),
        resources=AgentResources(memory=spec.resources.memory, cpus=spec.resources.cpus, pids=spec.resources.pids),
        network=spec.network if isinstance(spec.network, str) else "none",
        egress_allow=[] if isinstance(spec.network, str) else list(spec.network.allow),
        egress_provider=not isinstance(spec.network, str) and spec.network.provider,
        secrets=spec.secrets,
        env=spec.env,
        workspace=spec.workspace,
        stdout=spec.stdout,
        command_input=spec.command_input,
        image_input=spec.image_input,
        capabilities=list(spec.capabilities),
        autonomous=spec.autonomous,
        llm=LlmUse(provider=spec.llm.provider, kinds=list(spec.llm.kinds)) if spec.llm is not None else None,
        warm=_warm(spec.warm),
    )


def _warm(spec: WarmSpec | None) -> WarmUse | None:
    if spec is None:
        return None
    return WarmUse(min=spec.min, max=spec.max, idle_s=parse_duration(spec.idle), reuse=spec.reuse)


def node_agents(
    node: NodeDef, agents: Mapping[str, AgentDoc], priorities: Mapping[str, list[str]] | None = None
) -> list[str]:
    """The agents that may run ``node``, in the order they are tried (known ones only)."""
    if node.capability is not None:
        return routing.candidates(node.capability, agents, priorities)
    return [node.agent] if node.agent in agents else []


def retry_policy(spec: RetrySpec | None) -> RetryPolicy:
    if spec is None:
        return RetryPolicy()
    return RetryPolicy(
        attempts=spec.attempts,
        backoff_s=parse_duration(spec.backoff),
        factor=spec.factor,
        max_backoff_s=parse_duration(spec.max_backoff),
        jitter=spec.jitter,
    )


def approval_policy(spec: ApprovalSpec | None, agents: AgentDoc | list[AgentDoc]) -> ApprovalPolicy | None:
    """A node needs approval when it says so, or when its agent's risk requires it; a
    `capability:` node when any of its candidates' does (whichever runs, it was approved)."""
    runners = [agents] if isinstance(agents, AgentDoc) else agents
    risky = [a.metadata.name for a in runners if a.spec.risk == "approval_required"]
    marked = (
        f"agent {risky[0]!r} is marked risk: approval_required"
        if len(risky) == 1
        else f"agents {', '.join(repr(n) for n in risky)} are marked risk: approval_required"
    )
    if spec is None:
        if not risky:
            return None
        return ApprovalPolicy(reason=marked)
    reason = spec.reason or (marked if risky else "the workflow asks for approval of this step")
    return ApprovalPolicy(
        approvers=list(spec.approvers),
        min_approvals=spec.min_approvals,
        expires_in_s=parse_duration(spec.expires_in),
        on_expiry=spec.on_expiry,
        allow_self_approval=spec.allow_self_approval,
        reason=reason,
    )


def plan_workflow(
    wf: WorkflowDoc, agents: Mapping[str, AgentDoc], priorities: Mapping[str, list[str]] | None = None
) -> Plan:
    defaults = wf.spec.defaults
    default_retry = defaults.retry if defaults else None
    default_timeout = defaults.timeout if defaults else None
    nodes = []
    for n in wf.spec.nodes:
        timeout = n.timeout or default_timeout
        runners = [agents[name] for name in node_agents(n, agents, priorities)]
        nodes.append(
            PlannedNode(
                id=n.id,
                agent=snapshot(runners[0]),
                capability=n.capability,
                candidates=[snapshot(a) for a in runners] if n.capability is not None else [],
                needs=list(n.needs),
                with_=dict(n.with_),
                timeout_s=parse_duration(timeout) if timeout else None,
                when=n.when,
                foreach=n.foreach,
                parallelism=n.parallelism,
                batch=n.batch,
                retry=retry_policy(n.retry or default_retry),
                continue_on_failure=n.continue_on_failure,
                approval=approval_policy(n.approval, runners),
            )
        )
    return Plan(
        nodes=nodes,
        outputs=dict(wf.spec.outputs),
        timeout_s=parse_duration(wf.spec.timeout) if wf.spec.timeout else None,
        concurrency=wf.spec.concurrency,
        budget=Budget(tokens=wf.spec.budget.tokens, usd=wf.spec.budget.usd) if wf.spec.budget else None,
    )

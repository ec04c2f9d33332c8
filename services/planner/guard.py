"""What a drafted plan may not do, beyond what ``flowyard validate`` checks of any workflow.

A model's answer is data from outside, however the goal was worded: these rules hold whatever
it says (docs/security.md, "Plans drafted by a model"). The validator already refuses unknown
agents and capabilities, bad inputs and templates; here a plan is also kept to one workflow that
uses the catalogue as registered — no agent, image, command or trigger of its own, no weaker
approval, no other workflow's name unless the requester chose it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.workflow.model import AgentDoc, WorkflowDoc
from shared.workflow.plan import node_agents

from .catalogue import plannable

_DEFINE = "Define it with `kind: Agent` in this file or register it first"


def for_a_plan(problems: list[str]) -> list[str]:
    """The validator's messages, with the advice a plan can follow (it cannot define an agent)."""
    instead = "A plan cannot define agents: use one of the agents of the catalogue"
    return [p.replace(_DEFINE, instead) for p in problems]


def refusals(doc: Any, *, where: str) -> list[str]:
    """Before the document is parsed: what it is and what it holds."""
    if not isinstance(doc, dict):
        return [f"{where}: the workflow must be a JSON object (a Workflow document)"]
    problems = []
    kind = doc.get("kind")
    if kind != "Workflow":
        problems.append(
            f"{where}: kind: must be Workflow, got {kind!r}; a plan is one workflow and cannot declare agents "
            "or anything else — use the agents of the catalogue"
        )
    spec = doc.get("spec")
    if isinstance(spec, dict) and spec.get("triggers"):
        problems.append(
            f"{where}: spec.triggers: a plan cannot add triggers (they would start runs nobody approved); remove them"
        )
    return problems


def plan_problems(
    wf: WorkflowDoc,
    agents: Mapping[str, AgentDoc],
    *,
    where: str,
    priorities: Mapping[str, list[str]] | None = None,
    taken: bool = False,
) -> list[str]:
    """After the validator passed it: the nodes' agents and approvals. ``taken``: the workflow's
    name is a registered workflow the requester did not name (approving would replace it)."""
    problems = []
    if taken:
        problems.append(
            f"{where}: metadata.name: {wf.metadata.name!r} is a registered workflow; give the plan's workflow a "
            "new name (approving it must not replace another workflow)"
        )
    for node in wf.spec.nodes:
        at = f"{where}: node {node.id!r}"
        for name in node_agents(node, agents, priorities):
            if not plannable(agents[name]):
                problems.append(
                    f"{at}: agent {name!r} runs a command or image given in its input; a plan cannot choose what "
                    "runs — use another agent, or leave this step to a workflow a person writes"
                )
        approval = node.approval
        if approval is not None and approval.on_expiry == "approve":
            problems.append(f"{at}: approval.on_expiry: approve is not allowed in a plan; remove it (reject is kept)")
        if approval is not None and approval.allow_self_approval:
            problems.append(f"{at}: approval.allow_self_approval is not allowed in a plan; remove it")
    return problems

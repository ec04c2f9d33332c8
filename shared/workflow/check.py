"""Checking a loaded bundle as ``flowyard validate`` does: every agent, then every workflow."""

from __future__ import annotations

from collections.abc import Mapping

from shared.contract.errors import ValidationFailed
from shared.workflow.builtin import builtin_agents
from shared.workflow.loader import Bundle
from shared.workflow.model import AgentDoc
from shared.workflow.validate import validate_agent, validate_workflow


def check_bundle(
    bundle: Bundle,
    registered: Mapping[str, AgentDoc] | None = None,
    priorities: Mapping[str, list[str]] | None = None,
) -> Bundle:
    """The bundle if valid; agents in it win over registered ones, which win over the shipped ones.
    ``priorities`` is the config's agents.priorities (the order `capability:` nodes try agents in)."""
    problems: list[str] = []
    for agent in bundle.agents.values():
        problems.extend(validate_agent(agent, bundle.file))
    agents = {**builtin_agents(), **(registered or {}), **bundle.agents}
    for wf in bundle.workflows:
        problems.extend(
            validate_workflow(wf, agents, raw=bundle.raw.get(wf.metadata.name), file=bundle.file, priorities=priorities)
        )
    if problems:
        raise ValidationFailed(problems)
    return bundle


def agent_names(bundle: Bundle) -> set[str] | None:
    """The agents the bundle's nodes name; None when a `capability:` node needs every agent known."""
    nodes = [n for wf in bundle.workflows for n in wf.spec.nodes]
    if any(n.capability is not None for n in nodes):
        return None
    return {n.agent for n in nodes if n.agent is not None}

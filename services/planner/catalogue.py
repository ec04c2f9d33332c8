"""What the model is told: the agents it may use, the workflow format, the rules, the goal.

Pure functions of the agents known and the request; the drafting loop sends what they build.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.workflow.model import AgentDoc

SYSTEM = """You plan workflows for flowyard, which runs steps (agents) for platform and SRE teams.
Given a goal, answer with one JSON object:
  {"workflow": <a flowyard Workflow document>, "explanation": "<why these steps>"}.

The workflow document is what a YAML file of kind Workflow holds, as JSON:
  {"apiVersion": "flowyard/v1", "kind": "Workflow",
   "metadata": {"name": "<lower-case-with-dashes>", "description": "..."},
   "spec": {"inputs": {...}, "outputs": {...},
            "nodes": [{"id": "...", "agent": "<an agent below>", "needs": ["<earlier ids>"], "with": {...}}]}}
Rules:
- Use only the agents in the catalogue (by "agent": name) or their capabilities
  (by "capability": name, instead of an agent).
  You cannot define an agent, an image, a command or a secret, and you cannot add triggers.
- Each node's "with" must be valid against its agent's input schema.
- Values may be templates: "{{ inputs.NAME }}", "{{ nodes.ID.output.FIELD }}",
  and "{{ item }}" inside a node with "foreach".
  A node may read only the outputs of nodes it lists (directly or not) in "needs".
- Agents marked approval_required wait for a person before they run; that cannot be turned off.
- Keep it small: the fewest steps that reach the goal.
If you are told the validator's errors about an earlier answer, answer again with the whole corrected object."""


def plannable(agent: AgentDoc) -> bool:
    """An agent a plan may use: not one that takes the command or image to run from its input."""
    return agent.spec.command_input is None and agent.spec.image_input is None


def catalogue(agents: Mapping[str, AgentDoc]) -> list[dict[str, Any]]:
    """Every agent a plan may use, as the model reads it (name order: the prompt is the same each time)."""
    out = []
    for name in sorted(agents):
        agent = agents[name]
        if not plannable(agent):
            continue
        spec = agent.spec
        entry: dict[str, Any] = {
            "name": name,
            "description": spec.description or agent.metadata.description,
            "risk": spec.risk,
            "input_schema": spec.inputs or {"type": "object"},
            "output_schema": spec.outputs or {"type": "object"},
        }
        if spec.capabilities:
            entry["capabilities"] = list(spec.capabilities)
        if spec.workspace != "none":
            entry["workspace"] = spec.workspace
        out.append(entry)
    return out


def goal_text(goal: str, inputs: Mapping[str, Any], context: Any, agents: list[dict[str, Any]]) -> str:
    parts = [f"Goal: {goal}"]
    if inputs:
        parts.append(
            "Inputs the run will be given (declare them under spec.inputs and read them as {{ inputs.NAME }}):\n"
            + json.dumps(dict(inputs), sort_keys=True, default=str)
        )
    if context is not None:
        parts.append("Context:\n" + json.dumps(context, sort_keys=True, default=str))
    parts.append("Agent catalogue:\n" + json.dumps(agents, sort_keys=True))
    return "\n\n".join(parts)


def repair_text(errors: list[str]) -> str:
    listed = "\n".join(f"- {e}" for e in errors)
    return (
        "The validator refused that workflow:\n"
        f"{listed}\n"
        'Fix every one of these and answer again with the whole {"workflow": ..., "explanation": ...} object.'
    )

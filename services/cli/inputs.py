"""Reading what the user typed: workflow files and ``-i KEY=VALUE`` inputs, checked before a run."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shared.builtin_agents import builtin_agents
from shared.errors import ValidationFailed
from shared.workflow.loader import Bundle, load_file
from shared.workflow.model import AgentDoc, WorkflowDoc
from shared.workflow.validate import validate_agent, validate_workflow


def parse_inputs(pairs: Iterable[str], workflow: WorkflowDoc | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses as JSON, otherwise a string.

    A declared ``type: string`` input keeps the text as typed (``-i version=1.10`` stays "1.10").
    """
    declared = workflow.spec.inputs if workflow else {}
    out: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"-i {pair!r}: write inputs as KEY=VALUE, e.g. -i service=checkout")
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if key in declared and declared[key].type == "string" and not isinstance(value, str):
            value = raw
        out[key] = value
    if problems:
        raise ValidationFailed(problems)
    return out


def load_and_check(path: Path, registered: Mapping[str, AgentDoc] | None = None) -> Bundle:
    """Load FILE and validate its agents and workflows; agents in the file win over registered ones."""
    bundle = load_file(path)
    problems: list[str] = []
    for agent in bundle.agents.values():
        problems.extend(validate_agent(agent, str(path)))
    agents = {**builtin_agents(), **(registered or {}), **bundle.agents}
    for wf in bundle.workflows:
        problems.extend(validate_workflow(wf, agents, raw=bundle.raw.get(wf.metadata.name), file=str(path)))
    if problems:
        raise ValidationFailed(problems)
    return bundle

"""Reading what the user typed: workflow files and ``-i KEY=VALUE`` inputs, checked before a run."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shared.contract.errors import ValidationFailed
from shared.workflow.check import check_bundle
from shared.workflow.loader import Bundle, load_file
from shared.workflow.model import AgentDoc, WorkflowDoc


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


def load_and_check(
    path: Path,
    registered: Mapping[str, AgentDoc] | None = None,
    priorities: Mapping[str, list[str]] | None = None,
) -> Bundle:
    """Load FILE and validate its agents and workflows; agents in the file win over registered ones.
    ``priorities``: the config's agents.priorities, the order `capability:` nodes try agents in."""
    return check_bundle(load_file(path), registered, priorities)

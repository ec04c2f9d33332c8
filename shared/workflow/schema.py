"""The workflow format as a JSON Schema, generated from the model code.

``proto/schemas/Workflow.json`` is written from :func:`workflow_schema` (a staleness test keeps it
in step), and the planner gives the model the same schema, so what a model is told a workflow is
and what the validator accepts cannot drift apart.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from .model import WorkflowDoc


@functools.cache
def workflow_schema() -> dict[str, Any]:
    """``kind: Workflow`` as JSON Schema (draft 2020-12), its definitions under ``$defs``."""
    return msgspec.json.schema(WorkflowDoc)


def answer_schema() -> dict[str, Any]:
    """What the planner asks a model for: ``{"workflow": <a Workflow document>, "explanation": "..."}``."""
    doc = workflow_schema()
    defs = doc.get("$defs", {})
    return {
        "type": "object",
        "properties": {
            "workflow": {k: v for k, v in doc.items() if k != "$defs"},
            "explanation": {"type": "string", "description": "Why these steps, in a few sentences"},
        },
        "required": ["workflow"],
        "$defs": defs,
    }

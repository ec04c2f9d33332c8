"""Workflow and agent documents: the YAML model, loading with line numbers, templates, validation."""

from shared.workflow.loader import Bundle, load_bundle, load_file
from shared.workflow.model import AgentDoc, AgentSpec, NodeDef, WorkflowDoc
from shared.workflow.validate import check_inputs, plan_workflow, validate_workflow

__all__ = [
    "AgentDoc",
    "AgentSpec",
    "Bundle",
    "NodeDef",
    "WorkflowDoc",
    "check_inputs",
    "load_bundle",
    "load_file",
    "plan_workflow",
    "validate_workflow",
]

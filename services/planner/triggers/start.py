"""From a trigger object to a run request: inputs rendered from the trigger, checked like any run's."""

from __future__ import annotations

import hashlib
from typing import Any

from shared.contract.errors import ValidationFailed
from shared.contract.messages import RunRequested
from shared.workflow.templates import TemplateError, render
from shared.workflow.validate import check_inputs

from .active import Active


def run_id_for(at_ms: int, key: str) -> str:
    """Sortable by time like every run id; the suffix derived from the key, so replicas agree."""
    return f"r{at_ms:011x}{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def request_for(active: Active, trigger: dict[str, Any], run_id: str, now: str) -> RunRequested:
    """Raises ValidationFailed (a refusal) when the inputs cannot be made or are invalid."""
    where = f"workflow {active.workflow!r} version {active.version} trigger #{active.index + 1}"
    try:
        given = render(active.trigger.inputs, {"trigger": trigger})
    except (TemplateError, KeyError, TypeError, ValueError) as exc:
        raise ValidationFailed([f"{where}: inputs: {exc}"]) from None
    inputs = check_inputs(active.doc, given, file=where)
    return RunRequested(
        run_id=run_id,
        workflow=active.workflow,
        definition=active.definition,
        inputs=inputs,
        trigger=trigger,
        source=where,
        requested_by=f"trigger:{active.kind}",
        requested_at=now,
        workflow_version=active.version,
    )

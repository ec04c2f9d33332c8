"""From a trigger object to a run request: inputs rendered from the trigger, checked like any run's."""

from __future__ import annotations

import hashlib
from typing import Any

from shared.contract.errors import ValidationFailed
from shared.contract.messages import PlanRequested, RunRequested
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


def plan_id_for(at_ms: int, key: str) -> str:
    """A plan's id like a run's (``p`` first), the same on every replica for one event."""
    return f"p{at_ms:011x}{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def plan_for(active: Active, trigger: dict[str, Any], plan_id: str, now: str) -> PlanRequested:
    """The plan a trigger with ``plan:`` asks for; raises ValidationFailed (a refusal) like a run's."""
    spec = active.trigger.plan
    assert spec is not None
    where = f"workflow {active.workflow!r} version {active.version} trigger #{active.index + 1}"
    try:
        goal = render(spec.goal, {"trigger": trigger})
        given = render(active.trigger.inputs, {"trigger": trigger})
    except (TemplateError, KeyError, TypeError, ValueError) as exc:
        raise ValidationFailed([f"{where}: plan: {exc}"]) from None
    goal = str(goal).strip()
    if not goal:
        raise ValidationFailed([f"{where}: plan.goal: rendered empty from this event"])
    return PlanRequested(
        run_id=plan_id,
        goal=goal[:4000],
        inputs=check_inputs(active.doc, given, file=where),
        context={"trigger": trigger},
        run=spec.run,
        requested_by=f"trigger:{active.kind}",
        requested_at=now,
        trigger=trigger,
        source=where,
        template=active.workflow,
    )

"""Plans as people and programs see them (``GET /v1/plans``, ``flowyard plans --json``), and the
request both clients send to draft one: one definition, so the two never differ."""

from __future__ import annotations

from typing import Any

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.drafts import PlanRecord, PlanRequested, PlanRound
from shared.contract.envelope import now_rfc3339
from shared.contract.errors import ValidationFailed
from shared.contract.messages import Usage
from shared.state import plans
from shared.workflow.model import NAME_RE

from .runs import last_event
from .views import Body, View

MAX_GOAL = 4000  # characters: a goal is a sentence or a paragraph, not a document


class PlanWorkflow(View, kw_only=True):
    yaml: str  # the proposed workflow as YAML text (what `flowyard workflows apply` would take)
    document: dict[str, Any] | None = None  # the same, parsed


class PlanView(View, kw_only=True):
    id: str
    goal: str
    status: str  # drafting, proposed, approved, rejected, failed, expired
    workflow: PlanWorkflow | None = None
    explanation: str = ""
    rounds: list[PlanRound] = []
    model: str = ""
    usage: Usage = Usage()
    fallback: str | None = None  # the template proposed when the model gave no valid plan
    error: str | None = None
    inputs: dict[str, Any] = {}
    run: bool = False
    workflow_name: str | None = None
    requested_by: str = ""
    decided_by: list[str] = []
    decided_at: str | None = None
    reason: str = ""  # a rejection's
    comment: str = ""
    approval_id: str = ""
    workflow_version: int | None = None
    run_id: str | None = None
    created_at: str = ""
    updated_at: str = ""


class PlanAccepted(View, kw_only=True):
    id: str
    status: str
    url: str


class StartPlan(Body, kw_only=True):
    goal: str
    inputs: dict[str, Any] = {}
    context: Any = None
    workflow_name: str | None = None
    run: bool = False


def plan_view(record: PlanRecord) -> PlanView:
    workflow = PlanWorkflow(yaml=record.workflow_yaml, document=record.workflow) if record.workflow_yaml else None
    return PlanView(
        id=record.id,
        goal=record.goal,
        status=record.status,
        workflow=workflow,
        explanation=record.explanation,
        rounds=record.rounds,
        model=record.model,
        usage=record.usage,
        fallback=record.fallback,
        error=record.error,
        inputs=record.inputs,
        run=record.run,
        workflow_name=record.workflow_name,
        requested_by=record.requested_by,
        decided_by=record.decided_by,
        decided_at=record.decided_at,
        reason=record.reason,
        comment=record.comment,
        approval_id=f"{record.id}.plan" if record.status != "drafting" and record.workflow_yaml else "",
        workflow_version=record.workflow_version,
        run_id=record.run_id,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def pending_plan(request: PlanRequested) -> PlanView:
    """A plan asked for whose record the planner has not stored yet."""
    return PlanView(
        id=request.run_id,
        goal=request.goal,
        status="drafting",
        inputs=request.inputs,
        run=request.run,
        workflow_name=request.workflow_name,
        requested_by=request.requested_by,
        created_at=request.requested_at,
    )


async def get_view(bus: Bus, plan_id: str) -> PlanView | None:
    """The plan as people see it; one asked for but not stored yet by the planner is `drafting`
    (read from its request), so the URL a 202 gave never answers 404."""
    record = await plans.get(bus, plan_id)
    if record is not None:
        return plan_view(record)
    if not plans.valid_plan_id(plan_id):
        return None
    request = await last_event(bus, subjects.plan_requested(plan_id), PlanRequested)
    return pending_plan(request) if request is not None else None


def check_start(body: StartPlan) -> list[str]:
    """What is wrong with a request to draft a plan, in words (empty: nothing)."""
    problems = []
    goal = body.goal.strip()
    if not goal:
        problems.append("goal: must not be empty; say what the workflow should achieve")
    elif len(goal) > MAX_GOAL:
        problems.append(f"goal: {len(goal)} characters, over {MAX_GOAL}; say it shorter and put details in context")
    if body.workflow_name is not None and not NAME_RE.match(body.workflow_name):
        problems.append(
            f"workflow_name: {body.workflow_name!r} must be lower-case letters, digits and '-' (at most 63)"
        )
    return problems


async def request_plan(bus: Bus, body: StartPlan, *, user: str, source: str) -> PlanRequested:
    """Ask the planner to draft a plan; raises ValidationFailed naming what is wrong with ``body``."""
    problems = check_start(body)
    if problems:
        raise ValidationFailed(problems)
    request = PlanRequested(
        run_id=plans.new_plan_id(),
        goal=body.goal.strip(),
        inputs=body.inputs,
        context=body.context,
        workflow_name=body.workflow_name,
        run=body.run,
        requested_by=user,
        requested_at=now_rfc3339(),
        source=source,
    )
    await bus.publish(subjects.plan_requested(request.run_id), request, msg_id=f"{request.run_id}:requested")
    return request

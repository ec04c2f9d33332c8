"""``/v1/plans``: ask the planner for a plan, read plans, and decide them (through the approver,
as any approval: a plan's approval is ``<plan>.plan``)."""

from __future__ import annotations

from aiohttp import web

from shared.api.plans import PlanAccepted, StartPlan, get_view, plan_view, request_plan
from shared.api.views import ApproveBody, RejectBody
from shared.contract.drafts import PLAN_NODE, PLAN_STATUSES
from shared.state import plans

from . import approvals
from .context import GATEWAY
from .http import choice_param, int_param, json_body, json_response, user_of
from .problems import HttpProblem


def _id(request: web.Request) -> str:
    plan_id = request.match_info["plan_id"]
    if not plans.valid_plan_id(plan_id):
        raise HttpProblem(404, f"no plan {plan_id!r}; GET /v1/plans lists them")
    return plan_id


async def start_plan(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    user = user_of(request)
    body = await json_body(request, StartPlan)
    assert body is not None
    made = await request_plan(gw.bus, body, user=user.name, source="api")  # ValidationFailed -> 422
    request["audit_target"] = f"plan/{made.run_id}"
    request["audit_detail"] = made.goal[:200]
    url = f"/v1/plans/{made.run_id}"
    return json_response(
        PlanAccepted(id=made.run_id, status="drafting", url=url), status=202, headers={"Location": url}
    )


async def list_plans(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    status = choice_param(request, "status", PLAN_STATUSES)
    limit = int_param(request, "limit", 50, low=1, high=1000)
    found = [plan_view(r) for r in await plans.records(gw.bus) if status is None or r.status == status]
    return json_response(found[:limit])


async def get_plan(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    plan_id = _id(request)
    view = await get_view(gw.bus, plan_id)
    if view is None:
        raise HttpProblem(404, f"no plan {plan_id!r}; GET /v1/plans lists them")
    return json_response(view)


async def approve_plan(request: web.Request) -> web.Response:
    body = await json_body(request, ApproveBody, required=False) or ApproveBody()
    return await _decide(request, "approve", body.comment, "")


async def reject_plan(request: web.Request) -> web.Response:
    body = await json_body(request, RejectBody)
    assert body is not None
    if not body.reason.strip():
        raise HttpProblem(422, "a rejection needs a reason", errors=["body: reason: must not be empty"])
    return await _decide(request, "reject", "", body.reason)


async def _decide(request: web.Request, decision: str, comment: str, reason: str) -> web.Response:
    gw = request.app[GATEWAY]
    plan_id = _id(request)
    record = await plans.get(gw.bus, plan_id)
    if record is None:
        if await get_view(gw.bus, plan_id) is not None:
            raise HttpProblem(409, f"plan {plan_id} is drafting; only a proposed plan can be decided")
        raise HttpProblem(404, f"no plan {plan_id!r}; GET /v1/plans lists them")
    if record.status != "proposed":
        raise HttpProblem(409, f"plan {plan_id} is {record.status}; only a proposed plan can be decided")
    request["audit_target"] = f"plan/{plan_id}"
    return await approvals.decide_as_user(request, f"{plan_id}.{PLAN_NODE}", decision, comment, reason)

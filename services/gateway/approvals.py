"""``/v1/approvals``: read the approver's records; decide through its request subject, as the token's user.

The approver applies every rule (approvers, groups, no self-approval, N of M); its refusal
codes map to HTTP: unknown 404, already decided or expired 409, not allowed 403, invalid 422.
"""

from __future__ import annotations

from aiohttp import web

from shared.api.views import ApprovalView, ApproveBody, DecisionResult, RejectBody, approval_view
from shared.contract import subjects
from shared.state import approvals
from shared.state.decide import DecisionRequest, NoApprover, request_decision

from .context import GATEWAY, Gateway
from .http import choice_param, json_body, json_response, user_of
from .problems import HttpProblem

STATUSES = ("pending", "granted", "rejected", "expired", "closed")
_HTTP = {"unknown": 404, "decided": 409, "expired": 409, "not_allowed": 403, "self_approval": 403, "duplicate": 403}


def _id(request: web.Request) -> str:
    approval_id = request.match_info["approval_id"]
    if not subjects.TOKEN.match(approval_id.replace(".", "-")):
        raise HttpProblem(404, f"no approval {approval_id!r}; GET /v1/approvals lists them")
    return approval_id


async def list_approvals(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    status = choice_param(request, "status", STATUSES)
    views = [approval_view(r) for r in await approvals.records(gw.bus) if status is None or r.status == status]
    views.sort(key=lambda v: v.requested_at, reverse=True)
    return json_response(views)


async def _get(gw: Gateway, approval_id: str) -> ApprovalView:
    record = await approvals.get(gw.bus, approval_id)
    if record is None:
        raise HttpProblem(404, f"no approval {approval_id!r}; GET /v1/approvals lists them")
    return approval_view(record)


async def get_approval(request: web.Request) -> web.Response:
    return json_response(await _get(request.app[GATEWAY], _id(request)))


async def approve(request: web.Request) -> web.Response:
    body = await json_body(request, ApproveBody, required=False) or ApproveBody()
    return await _decide(request, DecisionRequest(approval_id="", decision="approve", user="", comment=body.comment))


async def reject(request: web.Request) -> web.Response:
    body = await json_body(request, RejectBody)
    assert body is not None
    if not body.reason.strip():
        raise HttpProblem(422, "a rejection needs a reason", errors=["body: reason: must not be empty"])
    return await _decide(request, DecisionRequest(approval_id="", decision="reject", user="", reason=body.reason))


async def _decide(request: web.Request, partial: DecisionRequest) -> web.Response:
    approval_id = _id(request)
    request["audit_target"] = f"approval/{approval_id}"
    return await decide_as_user(request, approval_id, partial.decision, partial.comment, partial.reason)


async def decide_as_user(
    request: web.Request, approval_id: str, choice: str, comment: str, reason: str
) -> web.Response:
    """Ask the approver to decide ``approval_id`` as the request's user; its refusal as a problem."""
    gw = request.app[GATEWAY]
    user = user_of(request)
    decision = DecisionRequest(
        approval_id=approval_id,
        decision="approve" if choice == "approve" else "reject",
        user=user.name,
        comment=comment.strip(),
        reason=reason.strip(),
    )
    try:
        reply = await request_decision(gw.bus, decision)
    except NoApprover as exc:
        raise HttpProblem(503, str(exc), headers={"Retry-After": "5"}) from None
    request["audit_detail"] = reply.message
    if not reply.ok:
        raise HttpProblem(_HTTP.get(reply.code, 422), reply.message)
    view = approval_view(reply.approval) if reply.approval else None
    return json_response(DecisionResult(ok=True, status=reply.status, message=reply.message, approval=view))

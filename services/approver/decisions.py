"""Who may decide what, as pure functions of an approval record and a decision request."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from shared.contract.messages import ApprovalRecord, Decision
from shared.formats.durations import format_duration
from shared.state.decide import DecisionReply, DecisionRequest, RefusalCode

replace = msgspec.structs.replace
__all__ = ["DecisionReply", "DecisionRequest", "Refused", "allowed", "apply", "close", "expire"]


class Refused(Exception):
    """A decision that may not be taken; the message says why, in words for the person."""

    def __init__(self, message: str, code: RefusalCode) -> None:
        super().__init__(message)
        self.code = code


def allowed(user: str, approvers: list[str], groups: Mapping[str, list[str]]) -> bool:
    if not approvers:
        return True
    for entry in approvers:
        if entry.startswith("group:"):
            if user in groups.get(entry.removeprefix("group:"), []):
                return True
        elif entry == user:
            return True
    return False


def apply(
    record: ApprovalRecord, req: DecisionRequest, *, now: str, epoch: float, groups: Mapping[str, list[str]]
) -> ApprovalRecord:
    """The record after a decision; raises Refused with the reason when the decision is not allowed."""
    request = record.request
    policy = request.policy
    user = req.user.strip()
    if record.status != "pending":
        raise Refused(f"approval {record.request.approval_id} is already {record.status}: {record.summary}", "decided")
    if epoch >= request.expires_at:
        raise Refused(f"approval {request.approval_id} has expired; decisions are no longer taken", "expired")
    if not user:
        raise Refused("say who decides: --as USER", "invalid")
    if not allowed(user, policy.approvers, groups):
        raise Refused(f"{user} may not decide on this step; approvers: {', '.join(policy.approvers)}", "not_allowed")
    if req.decision == "reject":
        if not req.reason.strip():
            raise Refused("a rejection needs a reason: --reason TEXT", "invalid")
        decision = Decision(user=user, at=now, comment=req.reason.strip())
        return replace(
            record,
            status="rejected",
            rejection=decision,
            decided_at=now,
            summary=f"rejected by {user}: {req.reason.strip()}",
        )
    if user == request.requested_by and not policy.allow_self_approval:
        if request.kind == "plan":
            raise Refused(
                f"{user} asked for this plan and may not approve it (planner.approval.allow_self_approval is false)",
                "self_approval",
            )
        raise Refused(
            f"{user} started this run and may not approve its steps (allow_self_approval is false)", "self_approval"
        )
    if any(d.user == user for d in record.approvals):
        raise Refused(
            f"{user} has already approved this step; {policy.min_approvals} different approvers are needed", "duplicate"
        )
    approvals = [*record.approvals, Decision(user=user, at=now, comment=req.comment)]
    if len(approvals) >= policy.min_approvals:
        return replace(
            record,
            approvals=approvals,
            status="granted",
            decided_at=now,
            summary="approved by " + ", ".join(d.user for d in approvals),
        )
    return replace(record, approvals=approvals, summary=f"{len(approvals)} of {policy.min_approvals} approvals")


def close(record: ApprovalRecord, *, now: str, how: str) -> ApprovalRecord | None:
    """The run ended before anyone decided: no decision is needed any more."""
    if record.status != "pending":
        return None
    return replace(
        record, status="closed", decided_at=now, published=True, summary=f"closed without a decision: the run {how}"
    )


def expire(record: ApprovalRecord, *, now: str) -> ApprovalRecord | None:
    """At the deadline: reject (the default) or approve, as the workflow said; None if decided."""
    if record.status != "pending":
        return None
    policy = record.request.policy
    waited = format_duration(policy.expires_in_s)
    if policy.on_expiry == "approve":
        return replace(
            record,
            status="granted",
            decided_at=now,
            summary=f"approved automatically: no decision within {waited} (on_expiry: approve)",
        )
    return replace(
        record,
        status="expired",
        decided_at=now,
        summary=f"approval expired after {waited} with {len(record.approvals)} of {policy.min_approvals} approvals",
    )

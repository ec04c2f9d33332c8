"""``flowyard approvals``: read the approver's records, decide through its request/reply subject."""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec

from shared.api.views import approval_view, to_json
from shared.config.settings import Config
from shared.contract.messages import ApprovalRecord
from shared.state import approvals
from shared.state.decide import DecisionRequest, NoApprover, request_decision

from .client import connected
from .output import EXIT_BROKEN, EXIT_FAILED, EXIT_INVALID, EXIT_OK, echo_json
from .workflows import record as record_audit

_reply_decoder = msgspec.json.Decoder()


def approval_json(record: ApprovalRecord) -> dict[str, Any]:
    return to_json(approval_view(record))


async def list_approvals(config: Config, *, pending_only: bool, as_json: bool) -> int:
    async with connected(config) as bus:
        records = [r for r in await approvals.records(bus) if not pending_only or r.status == "pending"]
    if as_json:
        echo_json([approval_json(r) for r in records])
    elif not records:
        print("no approvals waiting" if pending_only else "no approvals yet")
    else:
        for r in records:
            a = approval_json(r)
            who = ", ".join(a["approvers"]) or "anyone but the requester"
            print(
                f"{a['id']}  {a['status']:<8} {a['workflow']}/{a['node']}  approvers: {who}  "
                f"({len(a['approvals'])}/{a['min_approvals']})  expires {a['expires_at']}"
            )
    return EXIT_OK


async def show_approval(config: Config, approval_id: str, *, as_json: bool) -> int:
    async with connected(config) as bus:
        record = await approvals.get(bus, approval_id)
    if record is None:
        print(f"flowyard: no approval {approval_id!r}; `flowyard approvals list` shows them", file=sys.stderr)
        return EXIT_INVALID
    a = approval_json(record)
    if as_json:
        echo_json(a)
        return EXIT_OK
    print(f"approval  {a['id']}  ({a['status']})")
    print(f"step      {a['workflow']} / {a['node']} (agent {a['agent']}), run {a['run_id']} by {a['requested_by']}")
    print(f"why       {a['reason']}")
    print(
        f"who       {', '.join(a['approvers']) or 'anyone but the requester'}; {a['min_approvals']} needed; "
        f"expires {a['expires_at']} ({a['on_expiry']} then)"
    )
    for d in a["approvals"]:
        print(f"approved  by {d['user']} at {d['at']}" + (f": {d['comment']}" if d["comment"] else ""))
    if a["rejection"]:
        print(f"rejected  by {a['rejection']['user']} at {a['rejection']['at']}: {a['rejection']['comment']}")
    print("inputs:")
    print(json.dumps(a["inputs"], indent=2, ensure_ascii=False))
    return EXIT_OK


async def decide(config: Config, approval_id: str, decision: str, *, user: str, text: str, as_json: bool) -> int:
    request = DecisionRequest(
        approval_id=approval_id,
        decision="approve" if decision == "approve" else "reject",
        user=user,
        comment=text if decision == "approve" else "",
        reason=text if decision != "approve" else "",
    )
    async with connected(config) as bus:
        try:
            reply = await request_decision(bus, request)
        except NoApprover as exc:
            print(f"flowyard: {exc}", file=sys.stderr)
            return EXIT_BROKEN
        if reply.code != "unknown":
            await record_audit(
                bus,
                user,
                "approve" if decision == "approve" else "reject",
                f"approval/{approval_id}",
                reply.message,
                ok=reply.ok,
            )
    if as_json:
        echo_json(
            {
                "ok": reply.ok,
                "status": reply.status,
                "message": reply.message,
                "code": reply.code,
                "approval": approval_json(reply.approval) if reply.approval else None,
            }
        )
    if not reply.ok:
        if not as_json:
            print(f"flowyard: refused: {reply.message}", file=sys.stderr)
        return EXIT_INVALID if reply.code == "unknown" else EXIT_FAILED
    if not as_json:
        print(f"{approval_id}: {reply.status} — {reply.message}")
    return EXIT_OK

"""``flowyard approvals``: read the approver's records, decide through its request/reply subject."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors

from shared import subjects
from shared.bus import Bus
from shared.config import Config
from shared.contract import ApprovalRecord, decode_approval

from .client import connected
from .output import EXIT_BROKEN, EXIT_FAILED, EXIT_INVALID, EXIT_OK, echo_json

_reply_decoder = msgspec.json.Decoder()


def approval_json(record: ApprovalRecord) -> dict[str, Any]:
    req = record.request
    return {
        "id": req.approval_id,
        "run_id": req.run_id,
        "node": req.node_id,
        "workflow": req.workflow,
        "agent": req.agent,
        "status": record.status,
        "reason": req.reason,
        "requested_by": req.requested_by,
        "requested_at": req.requested_at,
        "approvers": req.policy.approvers,
        "min_approvals": req.policy.min_approvals,
        "approvals": [msgspec.to_builtins(d) for d in record.approvals],
        "rejection": msgspec.to_builtins(record.rejection) if record.rejection else None,
        "expires_at": datetime.fromtimestamp(req.expires_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "on_expiry": req.policy.on_expiry,
        "allow_self_approval": req.policy.allow_self_approval,
        "inputs": req.inputs,
        "inputs_hash": req.inputs_hash,
        "summary": record.summary,
    }


async def _records(bus: Bus) -> list[ApprovalRecord]:
    kv = await bus.kv(subjects.APPROVALS_BUCKET)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    out = []
    for key in sorted(keys, reverse=True):
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:
            out.append(decode_approval(entry.value))
    return out


async def list_approvals(config: Config, *, pending_only: bool, as_json: bool) -> int:
    async with connected(config) as bus:
        records = [r for r in await _records(bus) if not pending_only or r.status == "pending"]
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
        kv = await bus.kv(subjects.APPROVALS_BUCKET)
        try:
            entry = await kv.get(approval_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
            print(f"flowyard: no approval {approval_id!r}; `flowyard approvals list` shows them", file=sys.stderr)
            return EXIT_INVALID
    a = approval_json(decode_approval(entry.value or b""))
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
    body = {"approval_id": approval_id, "decision": decision, "user": user}
    body["comment" if decision == "approve" else "reason"] = text
    async with connected(config) as bus:
        try:
            assert bus.nc is not None
            msg = await bus.nc.request(subjects.DECIDE, json.dumps(body).encode(), timeout=10)
        except nats.errors.NoRespondersError:
            print(
                "flowyard: no approver is running to take the decision; start one (`flowyard serve approver`)",
                file=sys.stderr,
            )
            return EXIT_BROKEN
        except nats.errors.TimeoutError:
            print("flowyard: the approver did not answer within 10s; try again", file=sys.stderr)
            return EXIT_BROKEN
    reply = _reply_decoder.decode(msg.data)
    if as_json:
        echo_json(reply)
    if not reply.get("ok"):
        if not as_json:
            print(f"flowyard: refused: {reply.get('message')}", file=sys.stderr)
        return EXIT_INVALID if reply.get("status") == "unknown" else EXIT_FAILED
    if not as_json:
        print(f"{approval_id}: {reply.get('status')} — {reply.get('message')}")
    return EXIT_OK

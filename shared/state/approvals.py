"""Reading the approver's records (KV ``fy_approvals``): what the CLI and the gateway both show."""

from __future__ import annotations

import nats.js.errors

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.messages import ApprovalRecord, decode_approval
from shared.state import kvread


async def records(bus: Bus) -> list[ApprovalRecord]:
    """Every approval request, newest first (ids start with the run id, which sorts by time)."""
    return [decode_approval(v) for v in await kvread.values(bus, subjects.APPROVALS_BUCKET, newest_first=True)]


async def get(bus: Bus, approval_id: str) -> ApprovalRecord | None:
    kv = await bus.kv(subjects.APPROVALS_BUCKET)
    try:
        entry = await kv.get(approval_id)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
        return None
    return decode_approval(entry.value) if entry.value else None

"""Reading the approver's records (KV ``fy_approvals``): what the CLI and the gateway both show."""

from __future__ import annotations

import asyncio

import nats.js.errors

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.messages import ApprovalRecord, decode_approval


async def records(bus: Bus) -> list[ApprovalRecord]:
    """Every approval request, newest first (ids start with the run id, which sorts by time)."""
    kv = await bus.kv(subjects.APPROVALS_BUCKET)
    keys = sorted(await bus.kv_keys(subjects.APPROVALS_BUCKET), reverse=True)
    entries = await asyncio.gather(*(kv.get(k) for k in keys), return_exceptions=True)
    out = []
    for entry in entries:
        if isinstance(entry, nats.js.errors.KeyNotFoundError):
            continue  # removed between listing and reading
        if isinstance(entry, BaseException):
            raise entry
        if entry.value:
            out.append(decode_approval(entry.value))
    return out


async def get(bus: Bus, approval_id: str) -> ApprovalRecord | None:
    kv = await bus.kv(subjects.APPROVALS_BUCKET)
    try:
        entry = await kv.get(approval_id)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
        return None
    return decode_approval(entry.value) if entry.value else None

"""Plans' records (KV ``fy_plans``, key = plan id): written by the planner, read by both clients.

Changed with compare-and-set only, so two planner replicas (a redelivered request, a decision
arriving while a draft is saved) never lose each other's update.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import nats.js.errors

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.drafts import PLAN_ID, PlanRecord, decode_plan
from shared.contract.errors import RetryableError
from shared.contract.messages import encode
from shared.state import kvread


def new_plan_id() -> str:
    # Sortable by time like a run id, and told apart from one by its first letter.
    return f"p{int(time.time() * 1000):011x}{secrets.token_hex(4)}"


def valid_plan_id(plan_id: str) -> bool:
    return bool(PLAN_ID.match(plan_id))


async def get(bus: Bus, plan_id: str) -> PlanRecord | None:
    if not valid_plan_id(plan_id):
        return None
    kv = await bus.kv(subjects.PLANS_BUCKET)
    try:
        entry = await kv.get(plan_id)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
        return None
    return decode_plan(entry.value) if entry.value else None


async def records(bus: Bus) -> list[PlanRecord]:
    """Every plan, newest first (a plan's id starts with the time)."""
    return [decode_plan(v) for v in await kvread.values(bus, subjects.PLANS_BUCKET, newest_first=True)]


async def create(bus: Bus, record: PlanRecord) -> PlanRecord:
    """Store a new plan; a plan stored before (a redelivered request) is returned as it is."""
    kv = await bus.kv(subjects.PLANS_BUCKET)
    try:
        await kv.create(record.id, encode(record))
        return record
    except nats.js.errors.KeyWrongLastSequenceError:
        found = await get(bus, record.id)
        assert found is not None
        return found


async def mutate(bus: Bus, plan_id: str, change: Callable[[PlanRecord], PlanRecord | None]) -> PlanRecord | None:
    """Apply ``change`` under compare-and-set; None from it leaves the record as it is. None: no such plan."""
    kv = await bus.kv(subjects.PLANS_BUCKET)
    for _ in range(50):
        try:
            entry = await kv.get(plan_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        current = decode_plan(entry.value or b"")
        new = change(current)
        if new is None:
            return current
        try:
            await kv.update(plan_id, encode(new), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
        return new
    raise RetryableError(f"plan {plan_id}: record kept changing", delay=0.2)

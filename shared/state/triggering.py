"""What triggers did, as the planner records it and the CLI and gateway read it.

Each planner counts per trigger (fired, deduplicated, suppressed, refused, skipped) and writes its
counts to KV ``fy_trigger_state`` every second; ``flowyard triggers list`` and ``GET /v1/triggers``
add up the planners that wrote within the last 30 s, beside what the registry says is active.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.state import registry
from shared.workflow.model import TriggerDef
from shared.workflow.schedules import next_time
from shared.workflow.triggers import describe_cron

Outcome = Literal["fired", "deduplicated", "suppressed", "refused", "skipped"]
LIVE_S = 30.0


class TriggerOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """Published on fy.trigger.<workflow>.<outcome> for everything but a plain `fired`."""

    workflow: str
    trigger: int  # its index in spec.triggers
    kind: str
    outcome: Outcome
    reason: str = ""
    key: str = ""  # the de-duplication key (event id, alert fingerprint and start, scheduled time)
    run_id: str | None = None
    at: str = ""
    window_start: float | None = None  # suppressed: when the max_runs window opened (one notice per window)


class TriggerCounts(msgspec.Struct, kw_only=True):
    fired: int = 0
    deduplicated: int = 0
    suppressed: int = 0
    refused: int = 0
    skipped: int = 0


class PlannerCounts(msgspec.Struct, kw_only=True):
    instance: str
    updated_at: float
    triggers: dict[str, TriggerCounts] = {}  # trigger id (workflow#index) -> counts since that planner started


class TriggerView(msgspec.Struct, kw_only=True):
    id: str  # workflow#index
    workflow: str
    version: int
    index: int
    kind: str
    description: str
    spec: dict[str, Any]
    next_at: str | None = None  # cron: the next scheduled time (UTC)
    counts: TriggerCounts = msgspec.field(default_factory=TriggerCounts)


def trigger_id(workflow: str, index: int) -> str:
    return f"{workflow}#{index}"


def describe(trig: TriggerDef) -> str:
    if trig.nats is not None:
        text = f"NATS messages on {trig.nats.subject}"
        return text + (f" when {trig.nats.when}" if trig.nats.when else "")
    if trig.alertmanager is not None:
        return f"alerts matching {', '.join(trig.alertmanager.matchers)} (resolved: {trig.alertmanager.on_resolved})"
    assert trig.cron is not None
    c = trig.cron
    when = f"every {c.every}" if c.every else f"{describe_cron(c.schedule or '')} ({c.schedule}, {c.timezone})"
    return f"{when}; overlap {c.overlap}" + (f", catch up {c.catchup_window}" if c.catchup_window != "0s" else "")


_counts = msgspec.json.Decoder(PlannerCounts)


async def live_counts(bus: Bus) -> dict[str, TriggerCounts]:
    kv = await bus.kv(subjects.TRIGGER_STATE_BUCKET)
    keys = await bus.kv_keys(subjects.TRIGGER_STATE_BUCKET, "counts.")
    total: dict[str, TriggerCounts] = {}
    now = time.time()
    for entry in await asyncio.gather(*(kv.get(k) for k in keys), return_exceptions=True):
        if isinstance(entry, BaseException) or not entry.value:
            continue
        planner = _counts.decode(entry.value)
        if now - planner.updated_at > LIVE_S:
            continue  # a planner that stopped: its counts went with it
        for tid, c in planner.triggers.items():
            t = total.setdefault(tid, TriggerCounts())
            for field in ("fired", "deduplicated", "suppressed", "refused", "skipped"):
                setattr(t, field, getattr(t, field) + getattr(c, field))
    return total


async def list_triggers(bus: Bus) -> list[TriggerView]:
    """Every active trigger (those of registered workflows), with the running planners' counts."""
    heads = await registry.listing(bus)
    counts = await live_counts(bus)
    views: list[TriggerView] = []
    now = datetime.now(UTC)
    for head in heads:
        version = await registry.get_version(bus, head.name, head.version)
        if version is None:
            continue
        doc = registry.parse_version(version)
        for i, trig in enumerate(doc.spec.triggers):
            tid = trigger_id(head.name, i)
            views.append(
                TriggerView(
                    id=tid,
                    workflow=head.name,
                    version=head.version,
                    index=i,
                    kind=trig.kind,
                    description=describe(trig),
                    spec=msgspec.to_builtins(trig),
                    next_at=next_time(trig.cron, now).isoformat().replace("+00:00", "Z") if trig.cron else None,
                    counts=counts.get(tid, TriggerCounts()),
                )
            )
    return views

"""What one step of a run means for the metrics, the run's root span and the index of active runs.

Called after a step was stored (so a transition is counted once: the compare-and-set write is
what makes it happen once). Pure apart from the metrics and the span it records.
"""

from __future__ import annotations

from shared.contract import subjects
from shared.contract.envelope import epoch
from shared.contract.messages import RunRecord
from shared.telemetry import metrics
from shared.telemetry import tracing as telemetry

_NODE_ENDS = ("succeeded", "failed", "skipped", "cancelled", "rejected")


def trigger_label(record: RunRecord) -> str:
    """What started the run, from a closed set: cli, api, retry, schedule, event, alert, other."""
    if record.retry_of:
        return "retry"
    if record.requested_by.startswith("trigger:"):
        kind = record.requested_by.removeprefix("trigger:")
        return kind if kind in ("schedule", "event", "alert") else "other"
    kind = str(record.trigger.get("type", ""))
    return {"manual": "cli", "api": "api"}.get(kind, "other")


def requested(record: RunRecord) -> float:
    """When the run was asked for (older records: when the scheduler took it)."""
    return epoch(record.requested_at) or epoch(record.created_at)


def active_subject(record: RunRecord) -> str:
    return subjects.active_run(record.workflow, requested(record), record.run_id)


def ended_subject(record: RunRecord) -> str:
    return subjects.ended_run(record.status, record.workflow, record.run_id)


def step(before: RunRecord | None, after: RunRecord, *, now: float) -> tuple[str | None, str | None]:
    """Count what changed; return the active-index subjects to (add, remove)."""
    add = remove = None
    if before is None and after.status == "running":
        metrics.RUNS_STARTED.labels(after.workflow, trigger_label(after)).inc()
        add = active_subject(after)
    agents = {n.id: n.agent.name for n in after.plan.nodes} if after.plan else {}
    for nid, node in after.nodes.items():
        old = before.nodes.get(nid) if before is not None else None
        if node.status in _NODE_ENDS and (old is None or old.status not in _NODE_ENDS):
            if node.reused_from:
                continue  # kept from the run retried, not run again
            metrics.NODES_FINISHED.labels(after.workflow, node.agent or agents.get(nid, ""), node.status).inc()
    ended = after.status != "running" and (before is None or before.status == "running")
    if ended:
        status = "rejected" if after.rejected else after.status
        start = requested(after) or now
        metrics.RUNS_FINISHED.labels(after.workflow, status).inc()
        metrics.RUN_SECONDS.labels(after.workflow, status).observe(max(now - start, 0.0))
        telemetry.record_run_span(
            run_id=after.run_id,
            workflow=after.workflow,
            start_s=start,
            end_s=now,
            status=status,
            error=after.error,
            retry_of=after.retry_of,
            attributes={"flowyard.trigger": trigger_label(after), "flowyard.requested_by": after.requested_by},
        )
        if before is not None:
            remove = active_subject(after)
    return add, remove

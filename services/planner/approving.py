"""A plan a person approved: its workflow registered (with the plan and the model as its
provenance) and, when asked for, its run requested — once, whatever is redelivered."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
import structlog

from shared.api.runs import new_run_id
from shared.bus.connection import Bus
from shared.contract.drafts import PlanRecord
from shared.contract.envelope import now_rfc3339
from shared.contract.errors import ValidationFailed
from shared.contract.messages import ApprovalDecided, RunRequested
from shared.state import plans, registry
from shared.telemetry import metrics
from shared.workflow.loader import parse_workflow
from shared.workflow.validate import check_inputs

log = structlog.get_logger("flowyard.planner.plans")


async def approve(
    bus: Bus, record: PlanRecord, event: ApprovalDecided, priorities: Mapping[str, list[str]] | None = None
) -> PlanRecord:
    approvers = [d.user for d in event.approvals]
    comment = "; ".join(f"{d.user}: {d.comment}" for d in event.approvals if d.comment)
    run_id = new_run_id() if record.run else None
    try:
        if run_id is not None:
            # The run it asks for is built (its inputs checked) before anything is stored, so an
            # approved plan never names a run that cannot be requested.
            run_request(msgspec.structs.replace(record, run_id=run_id))
        # Checked again: an agent it uses may have changed since it was proposed.
        bundle = (
            None
            if record.fallback
            else await registry.check_text(bus, record.workflow_yaml, f"plan {record.id}", priorities)
        )
    except ValidationFailed as exc:
        return await _failed(bus, record, "approved, but no longer valid: " + "; ".join(exc.problems))
    if bundle is None:
        version = record.template_version
    else:
        applied = await registry.apply(
            bus, bundle, record.workflow_yaml, user=approvers[0] if approvers else "approver", plan_id=record.id,
            model=record.model or None,
        )  # fmt: skip
        version = applied[0].version

    def approved(r: PlanRecord) -> PlanRecord | None:
        if r.status != "proposed":
            return None
        return msgspec.structs.replace(
            r,
            status="approved",
            workflow_version=version,
            decided_by=approvers,
            decided_at=now_rfc3339(),
            comment=comment,
            run_id=run_id,
            updated_at=now_rfc3339(),
        )

    stored = await plans.mutate(bus, record.id, approved)
    if stored is not None and stored.status == "approved" and stored.run_id == run_id:
        metrics.PLANS.labels("approved").inc()
        log.info("plan approved", plan_id=record.id, workflow_version=version, run_id=run_id, by=approvers)
    return stored or record


async def _failed(bus: Bus, record: PlanRecord, why: str) -> PlanRecord:
    def failed(r: PlanRecord) -> PlanRecord | None:
        if r.status != "proposed":
            return None
        return msgspec.structs.replace(r, status="failed", error=why, updated_at=now_rfc3339())

    stored = await plans.mutate(bus, record.id, failed)
    if stored is not None and stored.status == "failed" and stored.error == why:
        metrics.PLANS.labels("failed").inc()
    return stored or record


def run_request(record: PlanRecord) -> RunRequested:
    """The run an approved plan asked for; the same request however often it is built."""
    assert record.run_id is not None and record.workflow is not None
    where = f"plan {record.id}"
    wf = parse_workflow(record.workflow, where)
    return RunRequested(
        run_id=record.run_id,
        workflow=wf.metadata.name,
        definition=record.workflow,
        inputs=check_inputs(wf, record.inputs, file=where),
        trigger=record.trigger or {"type": "plan", "plan_id": record.id},
        source=where,
        requested_by=record.requested_by,
        requested_at=record.decided_at or record.updated_at,
        workflow_version=record.workflow_version,
        plan_id=record.id,
    )

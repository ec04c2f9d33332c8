"""The run state machine, as pure functions of a record and an event.

Each function returns the next record with its ``outbox``: the messages that must be published
because of this transition. The service writes the record with compare-and-set *before*
publishing, and every message carries a de-dup id, so a crash at any point neither loses nor
doubles a dispatch.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from shared import subjects
from shared.contract import (
    NodeRecord,
    Outgoing,
    PlannedNode,
    RunFinished,
    RunPlanned,
    RunRecord,
    RunRejected,
    RunStarted,
    TaskDispatched,
    TaskFailed,
    TaskSucceeded,
    node_results,
)
from shared.workflow.templates import TemplateError, render

_DONE = ("succeeded", "failed", "skipped", "cancelled")


def start_run(event: RunPlanned, *, now: str, pool: str) -> RunRecord:
    assert event.plan is not None
    record = RunRecord(
        run_id=event.run_id,
        workflow=event.workflow,
        status="running",
        inputs=event.inputs,
        trigger=event.trigger,
        plan=event.plan,
        nodes={n.id: NodeRecord() for n in event.plan.nodes},
        created_at=now,
        updated_at=now,
    )
    started = Outgoing(
        subject=subjects.run_started(event.run_id),
        msg_id=f"{event.run_id}:started",
        event=RunStarted(run_id=event.run_id, workflow=event.workflow, nodes=[n.id for n in event.plan.nodes]),
    )
    return advance(record, now=now, pool=pool, outbox=[started])


def reject_run(event: RunRejected, *, now: str) -> RunRecord:
    error = "the workflow was rejected before it ran:\n" + "\n".join(event.errors)
    record = RunRecord(
        run_id=event.run_id,
        workflow=event.workflow,
        status="failed",
        error=error,
        created_at=now,
        updated_at=now,
        finished_at=now,
        rejected=list(event.errors),
    )
    return msgspec.structs.replace(record, outbox=[_finished(record)])


def apply_result(record: RunRecord, event: TaskSucceeded | TaskFailed, *, now: str, pool: str) -> RunRecord | None:
    """The record after a task result, or None when the result is stale or already applied."""
    node = record.nodes.get(event.node_id)
    if node is None or node.status != "running" or node.attempts != event.attempt or record.status != "running":
        return None
    if isinstance(event, TaskSucceeded):
        updated = msgspec.structs.replace(
            node, status="succeeded", output=event.output, error=None, finished_at=now, duration_s=event.duration_s
        )
    else:
        updated = msgspec.structs.replace(
            node,
            status="failed",
            error=event.error,
            errors=[*node.errors, f"attempt {event.attempt}: {event.error}"],
            finished_at=now,
            duration_s=event.duration_s,
        )
    record = msgspec.structs.replace(record, nodes={**record.nodes, event.node_id: updated})
    return advance(record, now=now, pool=pool, outbox=[])


def advance(record: RunRecord, *, now: str, pool: str, outbox: list[Outgoing]) -> RunRecord:
    """Skip what can no longer run, dispatch what is ready, and finish the run when nothing is left."""
    assert record.plan is not None
    nodes = dict(record.nodes)
    plan = {n.id: n for n in record.plan.nodes}
    changed = True
    while changed:  # a skip or a template failure can unblock further decisions
        changed = False
        for node_id, planned in plan.items():
            state = nodes[node_id]
            if state.status != "pending":
                continue
            deps = [nodes[d].status for d in planned.needs]
            if any(s in ("failed", "skipped", "cancelled") for s in deps):
                blocked = [d for d in planned.needs if nodes[d].status != "succeeded"]
                nodes[node_id] = msgspec.structs.replace(
                    state,
                    status="skipped",
                    error=f"not run: upstream {', '.join(blocked)} did not succeed",
                    finished_at=now,
                )
                changed = True
            elif all(s == "succeeded" for s in deps):
                try:
                    task_input = render(planned.with_, _context(record, nodes))
                except TemplateError as exc:
                    nodes[node_id] = msgspec.structs.replace(
                        state, status="failed", error=f"cannot build the input: {exc}", finished_at=now
                    )
                    changed = True
                    continue
                attempt = state.attempts + 1
                nodes[node_id] = msgspec.structs.replace(state, status="running", attempts=attempt, started_at=now)
                outbox.append(_dispatch(record, planned, task_input, attempt, pool))
    record = msgspec.structs.replace(record, nodes=nodes, updated_at=now)
    if all(n.status in _DONE for n in nodes.values()):
        record = _finish(record, now=now)
        outbox.append(_finished(record))
    return msgspec.structs.replace(record, outbox=outbox)


def _context(record: RunRecord, nodes: dict[str, NodeRecord]) -> dict[str, Any]:
    return {
        "inputs": record.inputs,
        "trigger": record.trigger,
        "nodes": {nid: {"output": n.output, "status": n.status} for nid, n in nodes.items() if n.status in _DONE},
    }


def _dispatch(record: RunRecord, planned: PlannedNode, task_input: Any, attempt: int, pool: str) -> Outgoing:
    task = TaskDispatched(
        run_id=record.run_id,
        workflow=record.workflow,
        node_id=planned.id,
        attempt=attempt,
        agent=planned.agent,
        input=task_input,
        timeout_s=planned.timeout_s or planned.agent.timeout_s,
        dispatched_at=time.time(),
    )
    return Outgoing(subject=subjects.dispatch(pool), msg_id=task.key, event=task)


def _finish(record: RunRecord, *, now: str) -> RunRecord:
    failed = [nid for nid, n in record.nodes.items() if n.status == "failed"]
    outputs: dict[str, Any] = {}
    error: str | None = None
    context = _context(record, record.nodes)
    assert record.plan is not None
    for name, template in record.plan.outputs.items():
        try:
            outputs[name] = render(template, context)
        except TemplateError as exc:
            if not failed:
                error = f"output {name!r}: {exc}"
    if failed:
        first = record.nodes[failed[0]]
        error = f"node {failed[0]!r} failed: {first.error}"
        if len(failed) > 1:
            error += f" (and {len(failed) - 1} more: {', '.join(failed[1:])})"
    status = "failed" if error else "succeeded"
    return msgspec.structs.replace(record, status=status, outputs=outputs, error=error, finished_at=now)


def _finished(record: RunRecord) -> Outgoing:
    status = record.status
    assert status in ("succeeded", "failed", "cancelled")
    return Outgoing(
        subject=subjects.run_finished(record.run_id, status),
        msg_id=f"{record.run_id}:finished",
        event=RunFinished(
            run_id=record.run_id,
            workflow=record.workflow,
            status=status,
            outputs=record.outputs,
            error=record.error,
            nodes=node_results(record),
        ),
    )

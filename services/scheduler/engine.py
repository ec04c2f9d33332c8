"""The run state machine, as pure functions of a record and an event.

Each function returns the next record with its ``outbox``: the messages that must be published
because of this transition (dispatches, timers, run events). The service stores the record with
compare-and-set *before* publishing, and every message carries a de-dup id, so a crash at any
point neither loses nor doubles a dispatch. Functions return None when the event changes nothing
(a repeat, or a result for an attempt that is no longer current): events are idempotent.

A *slot* is what runs: a node, or one item of a ``foreach`` node. Time comes in as ``Clock``
(wall-clock text for the record, epoch seconds for timers), so replicas replaying the same event
decide the same thing; retry jitter is seeded by run, slot and attempt for the same reason.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.contract import subjects
from shared.contract.messages import (
    ApprovalDecided,
    ApprovalRequested,
    ItemDispatches,
    NodeRecord,
    Outgoing,
    PlannedNode,
    RetryPolicy,
    RunAbandoned,
    RunCancelRequested,
    RunFinished,
    RunPlanned,
    RunRecord,
    RunRejected,
    RunStarted,
    TaskDispatched,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    TimerDue,
    node_results,
    unit_token,
)
from shared.formats.durations import format_duration
from shared.formats.masking import mask_secrets
from shared.workflow.expressions import ExpressionError, evaluate
from shared.workflow.templates import TemplateError, render

from . import spending

DONE = ("succeeded", "failed", "skipped", "cancelled", "rejected")
replace = msgspec.structs.replace


@dataclass(frozen=True, slots=True)
class Clock:
    now: str  # RFC 3339, for the record
    epoch: float  # seconds, for timers
    pool: str = "default"


# --- entry points -------------------------------------------------------------------------------


def start_run(event: RunPlanned, clock: Clock, *, queued: bool = False) -> RunRecord:
    nodes = {}
    for n in event.plan.nodes:
        if n.id in event.reuse:
            nodes[n.id] = NodeRecord(
                status="succeeded", output=event.reuse[n.id], reused_from=event.retry_of, finished_at=clock.now
            )
        else:
            nodes[n.id] = NodeRecord()
    record = RunRecord(
        run_id=event.run_id,
        workflow=event.workflow,
        inputs=event.inputs,
        trigger=event.trigger,
        plan=event.plan,
        nodes=nodes,
        created_at=clock.now,
        updated_at=clock.now,
        queued=queued,
        retry_of=event.retry_of,
        requested_by=event.requested_by,
        labels=event.labels,
        workspace=event.workspace,
        workflow_version=event.workflow_version,
        plan_id=event.plan_id,
        requested_at=event.requested_at,
    )
    if queued:
        return record  # waits for `admit` under the workflow's concurrency
    return _begin(record, clock)


def admit(record: RunRecord, clock: Clock) -> RunRecord | None:
    """A queued run's turn has come."""
    if not record.queued or record.status != "running":
        return None
    return _begin(replace(record, queued=False), clock)


def reject_run(event: RunRejected, clock: Clock) -> RunRecord:
    error = "the workflow was rejected before it ran:\n" + "\n".join(event.errors)
    record = RunRecord(
        run_id=event.run_id,
        workflow=event.workflow,
        status="failed",
        error=error,
        created_at=clock.now,
        updated_at=clock.now,
        finished_at=clock.now,
        rejected=list(event.errors),
    )
    return replace(record, outbox=[_finished(record)])


def apply_result(record: RunRecord, event: TaskSucceeded | TaskFailed, clock: Clock) -> RunRecord | None:
    """The record after a task result, or None when the result is stale or already applied."""
    return apply_results(record, [event], clock)


def apply_results(
    record: RunRecord, events: Sequence[TaskStarted | TaskSucceeded | TaskFailed], clock: Clock
) -> RunRecord | None:
    """The record after results that came together (``TaskResults``), each applied as if it came
    alone, then one decision of what is next: a 1,000-item fan-out's results cost one pass over
    its items per batch, not per result. ``started`` events change nothing here."""
    outbox: list[Outgoing] = []
    applied = None
    for event in events:
        if isinstance(event, TaskStarted):
            continue
        step = _result(applied if applied is not None else record, event, clock, outbox)
        if step is not None:
            applied = step
    return advance(applied, clock, outbox) if applied is not None else None


def _result(
    record: RunRecord, event: TaskSucceeded | TaskFailed, clock: Clock, outbox: list[Outgoing]
) -> RunRecord | None:
    if record.status != "running" or record.queued or record.plan is None:
        return None
    slot = _slot(record, event.node_id, event.item)
    if slot is None or slot.status != "running" or slot.attempts != event.attempt or slot.retry_at is not None:
        return None
    record, slot = spending.spent(record, slot, event)
    if isinstance(event, TaskSucceeded):
        slot = replace(
            slot,
            status="succeeded",
            output=event.output,
            error=None,
            finished_at=clock.now,
            duration_s=event.duration_s,
        )
        if event.workspace and event.workspace != record.workspace:
            # An `rw` agent changed the files: nodes dispatched from now on see its version.
            record = replace(record, workspace=event.workspace, workspace_version=record.workspace_version + 1)
    else:
        planned = _planned(record, event.node_id)
        slot = replace(
            slot, errors=[*slot.errors, f"attempt {event.attempt}: {event.error}"], duration_s=event.duration_s
        )
        if event.retryable and event.attempt < planned.retry.attempts:
            due = clock.epoch + backoff(planned.retry, event.attempt, f"{record.run_id}:{event.node_id}:{event.item}")
            slot = replace(slot, retry_at=due, error=event.error)
            outbox.append(_timer(record.run_id, "retry", due, event.node_id, event.item, event.attempt + 1))
        else:
            slot = replace(slot, status="failed", error=event.error, finished_at=clock.now)
    return _put_slot(record, event.node_id, event.item, slot)


def fire_timer(record: RunRecord, timer: TimerDue, clock: Clock) -> RunRecord | None:
    if timer.kind == "admit":
        return admit(record, clock)
    if record.status != "running" or record.plan is None:
        return None
    if timer.kind == "deadline":
        if record.queued:
            return None
        limit = format_duration(record.plan.timeout_s or 0)
        return _stop(
            record,
            clock,
            status="failed",
            error=f"the run exceeded its timeout of {limit}; running nodes were cancelled",
        )
    slot = _slot(record, timer.node_id, timer.item)
    if slot is None or slot.status != "running" or slot.retry_at is None or slot.attempts != timer.attempt - 1:
        return None
    planned = _planned(record, timer.node_id)
    if (why := spending.over_budget(record, planned)) is not None:
        slot = replace(slot, status="failed", retry_at=None, error=why, finished_at=clock.now)
        return advance(_put_slot(record, timer.node_id, timer.item, slot), clock, [])
    slot = replace(slot, attempts=timer.attempt, retry_at=None, started_at=clock.now)
    record = _put_slot(record, timer.node_id, timer.item, slot)
    return advance(record, clock, [_dispatch(record, planned, timer.item, slot.input, timer.attempt, clock)])


def overflow(record: RunRecord, clock: Clock, *, size: int, limit: int, drop_items: bool = False) -> RunRecord:
    """The record grew past what the bus carries: end the run, saying why, without the outputs
    (and, when even that is too big — a fan-out of thousands — without the per-item records)."""

    def strip(slot: NodeRecord) -> NodeRecord:
        if drop_items and slot.items is not None:
            done = sum(1 for it in slot.items if it.status == "succeeded")
            note = f"{done} of {len(slot.items)} items succeeded; per-item results dropped (the run was too big)"
            return replace(slot, output=None, input=None, items=None, errors=slot.errors[-3:], error=slot.error or note)
        items = [strip(it) for it in slot.items] if slot.items is not None else None
        return replace(slot, output=None, input=None, items=items)

    lean = replace(record, nodes={nid: strip(n) for nid, n in record.nodes.items()}, outputs={})
    error = (
        f"the run's state grew to {size} bytes, over the {limit}-byte limit (bus.max_payload): its agents "
        "return too much data; return references (paths, ids) instead, or raise bus.max_payload"
    )
    return _stop(lean, clock, status="failed", error=error)


def abandon(record: RunRecord | None, event: RunAbandoned, clock: Clock) -> RunRecord | None:
    """A service gave up on one of the run's messages: the run cannot go on, so it fails, saying why."""
    error = (
        f"the {event.service} gave up on a message of this run ({event.subject}): {event.reason}. "
        "The message is kept on the dead-letter subject fy.dlq." + event.service
    )
    if record is None:
        return reject_run(RunRejected(run_id=event.run_id, workflow=event.workflow, errors=[error]), clock)
    if record.status != "running":
        return None
    return _stop(record, clock, status="failed", error=error)


def cancel(record: RunRecord, event: RunCancelRequested, clock: Clock) -> RunRecord | None:
    if record.status != "running":
        return None
    who = f" by {event.requested_by}" if event.requested_by else ""
    why = f": {event.reason}" if event.reason else ""
    return _stop(record, clock, status="cancelled", error=f"cancelled{who}{why}")


# --- the core -----------------------------------------------------------------------------------


def advance(record: RunRecord, clock: Clock, outbox: list[Outgoing]) -> RunRecord:
    """Skip what can no longer run, start what is ready, finish the run when nothing is left."""
    assert record.plan is not None
    nodes = dict(record.nodes)
    changed = True
    while changed:  # a skip or an instant failure can unblock further decisions
        changed = False
        for planned in record.plan.nodes:
            state = nodes[planned.id]
            if state.status == "pending":
                new = _decide(record, nodes, planned, clock, outbox)
                if new is not state:
                    nodes[planned.id] = new
                    changed = changed or new.status in DONE
            if planned.foreach is not None and nodes[planned.id].status == "running":
                new = _fan_out(record, nodes[planned.id], planned, clock, outbox)
                if new is not nodes[planned.id]:
                    nodes[planned.id] = new
                    changed = changed or new.status in DONE
    record = replace(record, nodes=nodes, updated_at=clock.now)
    if all(n.status in DONE for n in nodes.values()):
        record = _finish(record, clock)
        outbox.append(_finished(record))
    return replace(record, outbox=outbox)


def _decide(
    record: RunRecord, nodes: dict[str, NodeRecord], planned: PlannedNode, clock: Clock, outbox: list[Outgoing]
) -> NodeRecord:
    state = nodes[planned.id]
    if state.approval is not None:
        return state  # waiting for the approver's decision
    deps = {d: nodes[d] for d in planned.needs}
    plan = {p.id: p for p in record.plan.nodes} if record.plan else {}
    # A need that ended any way but success (or a failure it may continue on) means this node
    # can never run: say so at once rather than when the other needs are done.
    blocked = [
        d
        for d, s in deps.items()
        if s.status in DONE and not (s.status == "succeeded" or (s.status == "failed" and plan[d].continue_on_failure))
    ]
    if blocked:
        why = ", ".join(f"{d} {deps[d].status}" for d in blocked)
        return replace(state, status="skipped", error=f"not run: upstream {why}", finished_at=clock.now)
    if any(d.status not in DONE for d in deps.values()):
        return state
    context = _context(record, nodes)
    if planned.when is not None:
        try:
            go = evaluate(planned.when, context)
        except ExpressionError as exc:
            return replace(state, status="failed", error=f"cannot evaluate `when`: {exc}", finished_at=clock.now)
        if not go:
            return replace(
                state, status="skipped", error=f"not run: `when` is false ({planned.when})", finished_at=clock.now
            )
    if planned.foreach is not None:
        try:
            values = render(planned.foreach, context)
        except TemplateError as exc:
            return replace(state, status="failed", error=f"cannot build the foreach list: {exc}", finished_at=clock.now)
        if not isinstance(values, list):
            return replace(
                state,
                status="failed",
                finished_at=clock.now,
                error=f"foreach must yield a list, but {planned.foreach!r} is {type(values).__name__}",
            )
        if not values:
            return replace(state, status="succeeded", output=[], items=[], finished_at=clock.now, started_at=clock.now)
        items = []
        for index, value in enumerate(values):
            try:
                item_input = render(planned.with_, {**context, "item": value, "index": index})
            except TemplateError as exc:
                items.append(NodeRecord(status="failed", error=f"cannot build the input: {exc}", finished_at=clock.now))
                continue
            items.append(NodeRecord(input=item_input))
        if planned.approval is not None:
            return _request_approval(record, replace(state, items=items), planned, clock, outbox)
        return replace(state, status="running", items=items, started_at=clock.now)
    try:
        task_input = render(planned.with_, context)
    except TemplateError as exc:
        return replace(state, status="failed", error=f"cannot build the input: {exc}", finished_at=clock.now)
    if planned.approval is not None:
        return _request_approval(record, replace(state, input=task_input), planned, clock, outbox)
    if (why := spending.over_budget(record, planned)) is not None:
        return replace(state, status="failed", input=task_input, error=why, finished_at=clock.now)
    outbox.append(_dispatch(record, planned, None, task_input, 1, clock))
    return replace(state, status="running", attempts=1, input=task_input, started_at=clock.now)


def _request_approval(
    record: RunRecord, state: NodeRecord, planned: PlannedNode, clock: Clock, outbox: list[Outgoing]
) -> NodeRecord:
    """Hold the node (still pending) until the approver's decision arrives."""
    assert planned.approval is not None
    inputs = [it.input for it in state.items] if state.items is not None else state.input
    # run.node: a KV key whose first token is the run, so the approver finds a run's requests.
    approval_id = f"{record.run_id}.{planned.id}"
    request = ApprovalRequested(
        run_id=record.run_id,
        approval_id=approval_id,
        workflow=record.workflow,
        node_id=planned.id,
        agent=planned.agent.name,
        risk=planned.agent.risk,
        reason=planned.approval.reason,
        inputs=mask_secrets(inputs),
        inputs_hash=inputs_hash(inputs),
        policy=planned.approval,
        expires_at=clock.epoch + planned.approval.expires_in_s,
        requested_by=record.requested_by,
        requested_at=clock.now,
        labels=record.labels,
    )
    outbox.append(
        Outgoing(
            subject=subjects.approval_requested(record.run_id, planned.id),
            msg_id=f"{approval_id}:requested",
            event=request,
        )
    )
    return replace(state, approval_id=approval_id, approval="pending")


def decide(record: RunRecord, event: ApprovalDecided, clock: Clock) -> RunRecord | None:
    """The approver's decision on a held node: run it, or mark it rejected."""
    if record.status != "running" or record.plan is None:
        return None
    state = record.nodes.get(event.node_id)
    if (
        state is None
        or state.status != "pending"
        or state.approval != "pending"
        or state.approval_id != event.approval_id
    ):
        return None
    planned = _planned(record, event.node_id)
    outbox: list[Outgoing] = []
    inputs = [it.input for it in state.items] if state.items is not None else state.input
    if event.outcome == "granted" and event.inputs_hash == inputs_hash(inputs):
        if state.items is not None:
            state = replace(state, approval="granted", status="running", started_at=clock.now)
        else:
            outbox.append(_dispatch(record, planned, None, state.input, 1, clock))
            state = replace(state, approval="granted", status="running", attempts=1, started_at=clock.now)
    elif event.outcome == "granted":
        # Approved inputs are not the inputs the node would run with: never run unapproved input.
        state = replace(
            state,
            approval="rejected",
            status="rejected",
            finished_at=clock.now,
            error="approval was for different inputs than the node has; request a new approval",
        )
    else:
        status = "expired" if event.outcome == "expired" else "rejected"
        state = replace(state, approval=status, status="rejected", finished_at=clock.now, error=event.summary)
    record = replace(record, nodes={**record.nodes, event.node_id: state})
    return advance(record, clock, outbox)


def inputs_hash(value: Any) -> str:
    return "sha256:" + hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()


def _fan_out(
    record: RunRecord, state: NodeRecord, planned: PlannedNode, clock: Clock, outbox: list[Outgoing]
) -> NodeRecord:
    """Start pending items up to `parallelism`; complete the node when every item is done."""
    items = state.items or []
    running = sum(1 for it in items if it.status == "running")
    room = (planned.parallelism or len(items)) - running
    started: dict[int, NodeRecord] = {}
    if room > 0:
        for index, item in enumerate(items):
            if room <= 0:
                break
            if item.status == "pending" and (why := spending.over_budget(record, planned)) is not None:
                started[index] = replace(item, status="failed", error=why, finished_at=clock.now)
            elif item.status == "pending":
                outbox.append(_dispatch(record, planned, index, item.input, 1, clock))
                started[index] = replace(item, status="running", attempts=1, started_at=clock.now)
                room -= 1
    if started:
        items = [started.get(i, it) for i, it in enumerate(items)]
    if any(it.status not in DONE for it in items):
        return replace(state, items=items) if started else state
    failed = [i for i, it in enumerate(items) if it.status != "succeeded"]
    if failed:
        first = items[failed[0]]
        error = f"{len(failed)} of {len(items)} items did not succeed; item {failed[0]}: {first.error}"
        return replace(
            state,
            items=items,
            status="failed",
            error=error,
            finished_at=clock.now,
            output=[it.output for it in items],
            usage=spending.node_usage(items),
        )
    return replace(
        state,
        items=items,
        usage=spending.node_usage(items),
        status="succeeded",
        output=[it.output for it in items],
        finished_at=clock.now,
        attempts=max((it.attempts for it in items), default=0),
    )


def _begin(record: RunRecord, clock: Clock) -> RunRecord:
    assert record.plan is not None
    outbox = [
        Outgoing(
            subject=subjects.run_started(record.run_id),
            msg_id=f"{record.run_id}:started",
            event=RunStarted(run_id=record.run_id, workflow=record.workflow, nodes=[n.id for n in record.plan.nodes]),
        )
    ]
    if record.plan.timeout_s:
        outbox.append(_timer(record.run_id, "deadline", clock.epoch + record.plan.timeout_s, "", None, 0))
    return advance(record, clock, outbox)


def _stop(record: RunRecord, clock: Clock, *, status: str, error: str) -> RunRecord:
    """End the run now: what runs or waits is cancelled."""

    def stop(slot: NodeRecord) -> NodeRecord:
        if slot.status in DONE:
            return slot
        items = [stop(it) for it in slot.items] if slot.items is not None else None
        return replace(
            slot,
            status="cancelled",
            items=items,
            retry_at=None,
            finished_at=clock.now,
            error=slot.error if slot.status == "running" and slot.error else error,
        )

    nodes = {nid: stop(n) for nid, n in record.nodes.items()}
    record = replace(
        record, nodes=nodes, status=status, error=error, finished_at=clock.now, updated_at=clock.now, queued=False
    )
    record = replace(record, outputs=_outputs(record)[0])
    return replace(record, outbox=[_finished(record)])


def _finish(record: RunRecord, clock: Clock) -> RunRecord:
    assert record.plan is not None
    plan = {p.id: p for p in record.plan.nodes}
    failed = [
        nid
        for nid, n in record.nodes.items()
        if (n.status == "failed" and not plan[nid].continue_on_failure) or n.status == "rejected"
    ]
    outputs, output_error = _outputs(record)
    error: str | None = None
    if failed:
        first = record.nodes[failed[0]]
        verb = "was rejected" if first.status == "rejected" else "failed"
        error = f"node {failed[0]!r} {verb}: {first.error}"
        if len(failed) > 1:
            error += f" (and {len(failed) - 1} more: {', '.join(failed[1:])})"
    elif output_error:
        error = output_error
    status = "failed" if error else "succeeded"
    return replace(record, status=status, outputs=outputs, error=error, finished_at=clock.now)


def _outputs(record: RunRecord) -> tuple[dict[str, Any], str | None]:
    assert record.plan is not None
    outputs: dict[str, Any] = {}
    first_error = None
    context = _context(record, record.nodes)
    for name, template in record.plan.outputs.items():
        try:
            outputs[name] = render(template, context)
        except TemplateError as exc:
            first_error = first_error or f"output {name!r}: {exc}"
    return outputs, first_error


# --- helpers ------------------------------------------------------------------------------------


def backoff(policy: RetryPolicy, attempt: int, seed: str) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
    delay = min(policy.backoff_s * policy.factor ** (attempt - 1), policy.max_backoff_s)
    if policy.jitter:
        delay *= random.Random(f"{seed}:{attempt}").uniform(0.5, 1.0)
    return delay


def _context(record: RunRecord, nodes: dict[str, NodeRecord]) -> dict[str, Any]:
    return {
        "inputs": record.inputs,
        "trigger": record.trigger,
        "nodes": {nid: {"output": n.output, "status": n.status} for nid, n in nodes.items() if n.status in DONE},
    }


def _planned(record: RunRecord, node_id: str) -> PlannedNode:
    assert record.plan is not None
    return next(n for n in record.plan.nodes if n.id == node_id)


def _slot(record: RunRecord, node_id: str, item: int | None) -> NodeRecord | None:
    node = record.nodes.get(node_id)
    if node is None or item is None:
        return node if item is None else None
    if node.items is None or not 0 <= item < len(node.items):
        return None
    return node.items[item]


def _put_slot(record: RunRecord, node_id: str, item: int | None, slot: NodeRecord) -> RunRecord:
    if item is None:
        return replace(record, nodes={**record.nodes, node_id: slot})
    node = record.nodes[node_id]
    items = list(node.items or [])
    items[item] = slot
    return replace(record, nodes={**record.nodes, node_id: replace(node, items=items)})


def _uses_workspace(planned: PlannedNode) -> bool:
    return any(a.workspace != "none" for a in (planned.candidates or [planned.agent]))


def _dispatch(
    record: RunRecord, planned: PlannedNode, item: int | None, task_input: Any, attempt: int, clock: Clock
) -> Outgoing:
    task = TaskDispatched(
        run_id=record.run_id,
        workflow=record.workflow,
        node_id=planned.id,
        item=item,
        attempt=attempt,
        agent=planned.agent,
        input=task_input,
        timeout_s=planned.timeout_s or planned.agent.timeout_s,
        dispatched_at=clock.epoch,
        workspace=record.workspace if _uses_workspace(planned) else None,
        capability=planned.capability,
        candidates=planned.candidates,
    )
    return Outgoing(subject=subjects.dispatch(clock.pool), msg_id=task.key, event=task)


def item_dispatches(record: RunRecord, spans: list[ItemDispatches]) -> list[Outgoing]:
    """A fan-out's first dispatches, rebuilt from their stored ranges (ADR 11); the same messages,
    de-dup ids included, as the step that decided them sent."""
    out = []
    for span in spans:
        planned = _planned(record, span.node_id)
        items = record.nodes[span.node_id].items or []
        for index in range(span.start, min(span.stop, len(items))):
            task = TaskDispatched(
                run_id=record.run_id,
                workflow=record.workflow,
                node_id=planned.id,
                item=index,
                attempt=1,
                agent=planned.agent,
                input=items[index].input,
                timeout_s=planned.timeout_s or planned.agent.timeout_s,
                dispatched_at=span.dispatched_at,
                workspace=span.workspace,
                capability=planned.capability,
                candidates=planned.candidates,
            )
            out.append(Outgoing(subject=span.subject, msg_id=task.key, event=task))
    return out


def _timer(run_id: str, kind: str, due: float, node_id: str, item: int | None, attempt: int) -> Outgoing:
    unit = unit_token(node_id, item) if node_id else "-"
    return Outgoing(
        subject=subjects.timer(run_id),
        msg_id=f"{run_id}:timer:{kind}:{unit}:{attempt}",
        event=TimerDue(run_id=run_id, kind=kind, due_at=due, node_id=node_id, item=item, attempt=attempt),  # type: ignore[arg-type]
    )


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
            labels=record.labels,
        ),
    )

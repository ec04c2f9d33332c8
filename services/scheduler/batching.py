"""How a fan-out's first dispatches travel: many items per message (issue 23, item 3).

Pure functions of the record and an outbox. The engine decides each item's dispatch as before;
here the first attempts of one node's items that were decided together are grouped into
:class:`TaskBatch` messages of ``batch`` items. Grouping works on the same maximal ranges that
the record stores (``ItemDispatches``, ADR 11) and cuts them at fixed offsets, so an outbox sent
again after a crash makes the same batches under the same de-dup ids. Retries, approvals'
dispatches and single nodes stay one message each.
"""

from __future__ import annotations

import math

import msgspec

from shared.contract.messages import (
    BatchItem,
    Outgoing,
    PlannedNode,
    RunRecord,
    TaskBatch,
    TaskDispatched,
)

# Without `batch:` on the node: about 16 batches per fan-out (several per executor, so that
# replicas share the work), at most 32 items each (a batch's results come back in a few
# messages), and no batching below 16 items, where one message per item costs little.
_AUTO_GROUPS = 16
_AUTO_MAX = 32
_encode = msgspec.json.encode


def batch_size(planned: PlannedNode, items: int) -> int:
    """Items per dispatch message for a foreach node of ``items`` items."""
    if planned.batch is not None:
        return max(planned.batch, 1)
    live = min(items, planned.parallelism or items)
    return max(1, min(_AUTO_MAX, math.ceil(live / _AUTO_GROUPS)))


def batched(record: RunRecord, outbox: list[Outgoing], max_bytes: int) -> list[Outgoing]:
    """The outbox with each node's consecutive first item dispatches grouped into batches; the
    batches stand where their first item stood, everything else keeps its place. A batch's
    inputs stay under half of ``max_bytes`` (a message's size), so it always fits."""
    plan = {n.id: n for n in record.plan.nodes} if record.plan is not None else {}
    runs: list[list[Outgoing]] = []
    order: list[Outgoing | int] = []  # an Outgoing, or the index of a run of item dispatches
    for o in outbox:
        e = o.event
        if not (isinstance(e, TaskDispatched) and e.item is not None and e.attempt == 1 and e.node_id in plan):
            order.append(o)
            continue
        last = runs[-1][-1] if runs else None
        if last is not None and _continues(last, o):
            runs[-1].append(o)
        else:
            order.append(len(runs))
            runs.append([o])
    if not runs:
        return outbox
    out: list[Outgoing] = []
    for entry in order:
        if isinstance(entry, Outgoing):
            out.append(entry)
            continue
        run = runs[entry]
        first = run[0].event
        assert isinstance(first, TaskDispatched)
        items = record.nodes[first.node_id].items or []
        size = batch_size(plan[first.node_id], len(items))
        out.extend(_group(chunk) for chunk in _chunks(run, size, max_bytes // 2))
    return out


def _chunks(run: list[Outgoing], size: int, budget: int) -> list[list[Outgoing]]:
    """Cut at ``size`` items, or sooner where the inputs would pass ``budget`` bytes."""
    chunks: list[list[Outgoing]] = []
    chunk: list[Outgoing] = []
    used = 0
    for o in run:
        cost = len(_encode(o.event.input)) if size > 1 else 0  # type: ignore[union-attr]
        if chunk and (len(chunk) >= size or used + cost > budget):
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(o)
        used += cost
    if chunk:
        chunks.append(chunk)
    return chunks


def _continues(last: Outgoing, o: Outgoing) -> bool:
    a, b = last.event, o.event
    assert isinstance(a, TaskDispatched) and isinstance(b, TaskDispatched)
    return (
        a.node_id == b.node_id
        and a.item is not None
        and b.item == a.item + 1
        and a.dispatched_at == b.dispatched_at
        and a.workspace == b.workspace
        and last.subject == o.subject
    )


def _group(run: list[Outgoing]) -> Outgoing:
    if len(run) == 1:
        return run[0]
    first = run[0].event
    assert isinstance(first, TaskDispatched)
    batch = TaskBatch(
        run_id=first.run_id,
        workflow=first.workflow,
        node_id=first.node_id,
        agent=first.agent,
        items=[BatchItem(item=o.event.item, input=o.event.input) for o in run],  # type: ignore[union-attr,arg-type]
        timeout_s=first.timeout_s,
        dispatched_at=first.dispatched_at,
        workspace=first.workspace,
        capability=first.capability,
        candidates=first.candidates,
    )
    return Outgoing(subject=run[0].subject, msg_id=batch.key, event=batch)

"""A run's state as it is stored (ADR 11), and putting a whole record back together.

The scheduler keeps a foreach node's items outside the run record, so that a step of a
10,000-item fan-out writes what changed, not every item again: the record holds the items as
runs of shared state (``item_runs``: open items that share a state, and ended items), each ended
item's record is written once to KV ``fy_items`` as ``RUN.NODE.INDEX``, the items' inputs are the
node's ``input`` list, and large values are references into the object store (shared.state.values).
``hydrate`` turns a stored record into the whole one the engine and people read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import nats.js.errors

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.messages import ItemRun, NodeRecord, RunRecord
from shared.state.values import ValueMissing, Values

replace = msgspec.structs.replace
_item_decoder = msgspec.json.Decoder(NodeRecord)
_CHUNK = 256


def item_key(run_id: str, node_id: str, index: int) -> str:
    return f"{run_id}.{node_id}.{index}"


def item_state(record: RunRecord, node_id: str, index: int) -> NodeRecord | str | None:
    """In a stored or whole record: an open item's record, "ended", or None when there is no such item."""
    node = record.nodes.get(node_id)
    if node is None or index < 0:
        return None
    if node.items is not None:
        if index >= len(node.items):
            return None
        item = node.items[index]
        return "ended" if item.status in ("succeeded", "failed", "skipped", "cancelled", "rejected") else item
    start = 0
    for run in node.item_runs or []:
        if index < start + run.count:
            return run.slot if run.slot is not None else "ended"
        start += run.count
    return None


def item_runs(items: list[NodeRecord], ended: set[int]) -> list[ItemRun]:
    """Items as runs: consecutive open items with equal state (inputs aside) share one entry."""
    runs: list[list[Any]] = []  # [count, slot]
    for index, item in enumerate(items):
        slot = None if index in ended else replace(item, input=None)
        if runs and (runs[-1][1] is None if slot is None else runs[-1][1] == slot):
            runs[-1][0] += 1
        else:
            runs.append([1, slot])
    return [ItemRun(count=count, slot=slot) for count, slot in runs]


async def hydrate(bus: Bus, record: RunRecord, values: Values | None = None) -> RunRecord:
    """The whole record: items back in their nodes and, with ``values``, every reference resolved."""
    nodes: dict[str, NodeRecord] = {}
    for nid, node in record.nodes.items():
        if node.item_runs is not None:
            node = await _items(bus, record.run_id, nid, node, values)
        if values is not None:
            if node.items is None:
                node = replace(node, output=await _value(values, node.output), input=await _value(values, node.input))
            else:
                items = [
                    replace(it, output=await _value(values, it.output)) if it.output is not None else it
                    for it in node.items
                ]
                node = replace(node, items=items, output=await _value(values, node.output))
        nodes[nid] = node
    if values is None:
        return replace(record, nodes=nodes)

    async def each(mapping: dict[str, Any]) -> dict[str, Any]:
        return {k: await _value(values, v) for k, v in mapping.items()}

    return replace(
        record,
        nodes=nodes,
        outputs=await each(record.outputs),
        inputs=await each(record.inputs),
        trigger=await each(record.trigger),
    )


async def _value(values: Values, value: Any) -> Any:
    """The value a reference stands for; a reference whose object is gone stays as it is (a
    template that reads into it fails in plain words) rather than making the record unreadable."""
    try:
        return await values.resolve(value)
    except ValueMissing:
        return value


async def _items(bus: Bus, run_id: str, node_id: str, node: NodeRecord, values: Values | None) -> NodeRecord:
    resolver = values or Values(bus, 0)
    inputs: Any = await resolver.resolve(node.input)
    runs = node.item_runs or []
    total = sum(r.count for r in runs)
    if not isinstance(inputs, list) or len(inputs) != total:
        inputs = [None] * total
    ended: list[int] = []
    start = 0
    for run in runs:
        if run.slot is None:
            ended.extend(range(start, start + run.count))
        start += run.count
    kv = await bus.kv(subjects.ITEMS_BUCKET)
    found: dict[int, NodeRecord] = {}
    for chunk in (ended[i : i + _CHUNK] for i in range(0, len(ended), _CHUNK)):
        entries = await asyncio.gather(*(_get(kv, item_key(run_id, node_id, i)) for i in chunk))
        found.update(zip(chunk, entries, strict=True))
    items: list[NodeRecord] = []
    start = 0
    for run in runs:
        for index in range(start, start + run.count):
            items.append(found[index] if run.slot is None else replace(run.slot, input=inputs[index]))
        start += run.count
    return replace(node, items=items, item_runs=None, input=None)


async def _get(kv: Any, key: str) -> NodeRecord:
    """An ended item's record; one that is gone or unreadable reads as failed, saying so, so the
    run can still end (or be abandoned) instead of every load of it failing for ever."""
    try:
        entry = await kv.get(key)
        return _item_decoder.decode(entry.value or b"")
    except nats.js.errors.KeyNotFoundError:
        why = "is missing"
    except (msgspec.DecodeError, msgspec.ValidationError):
        why = "cannot be read"
    return NodeRecord(status="failed", error=f"the item's record {key!r} {why} in {subjects.ITEMS_BUCKET}")

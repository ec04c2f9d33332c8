"""What a step of a run stores and sends (ADR 11).

The engine works on the whole record. What is stored is leaner, so that the bytes a run writes
grow with what changed, not with the size of the run: a foreach node's ended items are written
once each to KV fy_items (before the record, so a stored record never names an item that is not
there) and the record keeps its items as runs of shared state; the fan-out's dispatches are kept
in the record's outbox as ranges; and every value larger than ``bus.inline_bytes`` — outputs,
inputs, run outputs, in the record and in the messages — is a reference into the object store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from shared.contract.messages import (
    ApprovalRequested,
    ItemDispatches,
    NodeRecord,
    Outgoing,
    RunFinished,
    RunRecord,
    TaskDispatched,
    encode,
)
from shared.state.runstate import item_key, item_runs
from shared.state.values import Values
from shared.telemetry import metrics

from .engine import DONE

replace = msgspec.structs.replace
_CHUNK = 256
# A record is written at every step of its run, so values in it are kept small: anything larger
# is stored once and referenced. Messages are sent once; they keep values up to bus.inline_bytes.
_RECORD_INLINE = 1024
_SMALL = 256  # the second try when a record is still too big: offload nearly everything


class TooBig(Exception):
    """Even with every value offloaded, the record is larger than a message may be."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


@dataclass(frozen=True, slots=True)
class Prepared:
    data: bytes  # the stored record, for the compare-and-set
    outbox: list[Outgoing]  # what to publish, large values offloaded


class Persist:
    def __init__(self, values: Values, items: KeyValue, limit: int) -> None:
        self.values = values
        self.items = items
        self.limit = limit  # the largest stored record: a message's size, headers aside
        # A fan-out's item inputs never change: offloaded once per node, not at every step.
        self._inputs: dict[tuple[str, str, int], Any] = {}

    def forget(self, run_id: str) -> None:
        for key in [k for k in self._inputs if k[0] == run_id]:
            del self._inputs[key]

    async def prepare(self, before: RunRecord | None, after: RunRecord) -> Prepared:
        """Write the step's ended items and large values; return the record to store and what to send."""
        stored_before = self.values.bytes_stored
        try:
            await self._write_ended(before, after)
            outbox = [await self._offload_event(after.run_id, o) for o in after.outbox]
            for inline in (min(_RECORD_INLINE, self.values.inline_bytes), _SMALL):
                data = encode(await self._stored(after, outbox, inline))
                if len(data) <= self.limit:
                    metrics.STATE_BYTES.labels("record").inc(len(data))
                    return Prepared(data=data, outbox=outbox)
            raise TooBig(len(data))
        finally:
            metrics.STATE_BYTES.labels("value").inc(self.values.bytes_stored - stored_before)

    async def _write_ended(self, before: RunRecord | None, after: RunRecord) -> None:
        writes: list[tuple[str, NodeRecord]] = []
        for nid, node in after.nodes.items():
            if node.items is None:
                continue
            old = before.nodes.get(nid) if before is not None else None
            old_items = old.items if old is not None and old.items is not None else []
            if node.items is old_items:
                continue
            for index, item in enumerate(node.items):
                if item.status in DONE and (index >= len(old_items) or old_items[index] is not item):
                    writes.append((item_key(after.run_id, nid, index), item))
        for chunk in (writes[i : i + _CHUNK] for i in range(0, len(writes), _CHUNK)):
            await asyncio.gather(*(self._write_item(after.run_id, key, item) for key, item in chunk))

    async def _write_item(self, run_id: str, key: str, item: NodeRecord) -> None:
        stored = replace(item, input=None, output=await self.values.offload(run_id, item.output))
        data = encode(stored)
        try:
            await self.items.create(key, data)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # written before (a repeat of this step, or another replica's): the first one stands
        metrics.STATE_BYTES.labels("item").inc(len(data))

    async def _stored(self, record: RunRecord, outbox: list[Outgoing], inline: int) -> RunRecord:
        run_id = record.run_id
        nodes: dict[str, NodeRecord] = {}
        for nid, node in record.nodes.items():
            output = await self.values.offload(run_id, node.output, limit=inline)
            if node.items is None:
                nodes[nid] = replace(
                    node, output=output, input=await self.values.offload(run_id, node.input, limit=inline)
                )
                continue
            ended = {i for i, it in enumerate(node.items) if it.status in DONE}
            nodes[nid] = replace(
                node,
                items=None,
                item_runs=item_runs(node.items, ended),
                input=await self._item_inputs(run_id, nid, node.items, inline),
                output=output,
            )
        explicit, spans = _ranges(outbox)
        outputs = await self._offload_map(run_id, record.outputs, inline)
        inputs = await self._offload_map(run_id, record.inputs, inline)
        trigger = await self._offload_map(run_id, record.trigger, inline)
        return replace(
            record, nodes=nodes, outputs=outputs, inputs=inputs, trigger=trigger, outbox=explicit, outbox_items=spans
        )

    async def _offload_map(self, run_id: str, values: dict[str, Any], inline: int) -> dict[str, Any]:
        return {k: await self.values.offload(run_id, v, limit=inline) for k, v in values.items()}

    async def _item_inputs(self, run_id: str, node_id: str, items: list[NodeRecord], inline: int) -> Any:
        """The items' inputs as one list; they never change after the fan-out, so it is built once."""
        key = (run_id, node_id, inline)
        if key not in self._inputs:
            if len(self._inputs) > 10_000:
                self._inputs.clear()
            self._inputs[key] = await self.values.offload(run_id, [it.input for it in items], limit=inline)
        return self._inputs[key]

    async def _offload_event(self, run_id: str, o: Outgoing) -> Outgoing:
        event = o.event
        match event:
            case TaskDispatched():
                new = replace(event, input=await self.values.offload(run_id, event.input))
            case ApprovalRequested():
                new = replace(event, inputs=await self.values.offload(run_id, event.inputs))
            case RunFinished():
                outputs = {k: await self.values.offload(run_id, v) for k, v in event.outputs.items()}
                results = {
                    nid: replace(r, output=await self.values.offload(run_id, r.output))
                    for nid, r in event.nodes.items()
                }
                new = replace(event, outputs=outputs, nodes=results)
            case _:
                return o
        return replace(o, event=new)

    async def offload_all(self, run_id: str, outbox: list[Outgoing]) -> list[Outgoing]:
        return [await self._offload_event(run_id, o) for o in outbox]


def _ranges(outbox: list[Outgoing]) -> tuple[list[Outgoing], list[ItemDispatches]]:
    """A fan-out's first dispatches as ranges of items; everything else as it is."""
    explicit: list[Outgoing] = []
    spans: list[ItemDispatches] = []
    for o in outbox:
        e = o.event
        if isinstance(e, TaskDispatched) and e.item is not None and e.attempt == 1:
            last = spans[-1] if spans else None
            if (
                last is not None
                and last.node_id == e.node_id
                and last.stop == e.item
                and last.dispatched_at == e.dispatched_at
                and last.subject == o.subject
                and last.workspace == e.workspace
            ):
                spans[-1] = replace(last, stop=e.item + 1)
            else:
                spans.append(
                    ItemDispatches(
                        node_id=e.node_id,
                        start=e.item,
                        stop=e.item + 1,
                        dispatched_at=e.dispatched_at,
                        subject=o.subject,
                        workspace=e.workspace,
                    )
                )
        else:
            explicit.append(o)
    return explicit, spans

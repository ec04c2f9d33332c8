"""``spec.concurrency``: at most N runs of a workflow at once, the rest wait their turn in order.

One KV entry per workflow in ``fy_concurrency`` holds the admitted run ids and the queue,
updated with compare-and-set so that replicas agree. Entering and leaving are idempotent: a
redelivered event neither takes a second place nor frees one twice.
"""

from __future__ import annotations

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from shared.contract.errors import RetryableError


class Slots(msgspec.Struct, kw_only=True):
    running: list[str] = []
    queued: list[str] = []


_decode = msgspec.json.Decoder(Slots).decode
_encode = msgspec.json.Encoder().encode


class Admission:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def enter(self, workflow: str, run_id: str, limit: int) -> bool:
        """True when the run may start now; False when it is queued."""
        result = False

        def change(slots: Slots) -> Slots:
            nonlocal result
            if run_id in slots.running:
                result = True
                return slots
            if run_id in slots.queued:
                result = False
                return slots
            if len(slots.running) < limit:
                result = True
                return Slots(running=[*slots.running, run_id], queued=slots.queued)
            result = False
            return Slots(running=slots.running, queued=[*slots.queued, run_id])

        await self._update(workflow, change)
        return result

    async def leave(self, workflow: str, run_id: str, limit: int) -> list[str]:
        """Free the run's place; return the queued runs admitted in its stead."""
        admitted: list[str] = []

        def change(slots: Slots) -> Slots:
            admitted.clear()
            running = [r for r in slots.running if r != run_id]
            queued = [r for r in slots.queued if r != run_id]
            while queued and len(running) < limit:
                running.append(queued.pop(0))
                admitted.append(running[-1])
            return Slots(running=running, queued=queued)

        await self._update(workflow, change)
        return list(admitted)

    async def _update(self, workflow: str, change) -> None:
        for _ in range(100):
            try:
                entry = await self.kv.get(workflow)
                slots, revision = (_decode(entry.value) if entry.value else Slots()), entry.revision or 0
            except nats.js.errors.KeyNotFoundError:
                slots, revision = Slots(), 0
            new = change(slots)
            if new is slots:
                return
            try:
                if revision:
                    await self.kv.update(workflow, _encode(new), last=revision)
                else:
                    await self.kv.create(workflow, _encode(new))
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise RetryableError(f"workflow {workflow}: concurrency slots kept changing", delay=0.2)

"""``spec.concurrency``: at most N runs of a workflow at once, the rest wait their turn in order.

In ``fy_concurrency``, the key ``WORKFLOW`` holds the admitted run ids (at most N, whatever the
queue's length), updated with compare-and-set so that replicas agree; each queued run is a key of
its own, ``WORKFLOW.q.RUN``, created once and purged from the stream when the run is admitted or
leaves. The queue's order is the stream's: its head is the first message under ``WORKFLOW.q.*``.
So queueing a run writes a few bytes, not the whole queue again: N queued runs cost O(N) bytes,
where one value holding the queue cost O(N²).

Entering and leaving are idempotent: a redelivered event neither takes a second place nor frees
one twice. Whoever changes the state (a run queued, a place freed) then fills the free places
from the queue's head, so a place freed while a run was being queued is never left empty; a
crash between admitting a run and purging its queue key is repaired by the next fill, or when
the run leaves.
"""

from __future__ import annotations

import contextlib

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from shared.contract.errors import RetryableError


class Slots(msgspec.Struct, kw_only=True):
    running: list[str] = []
    # Stacks from before the per-run queue keys kept the queue here; moved out on first touch.
    queued: list[str] = []


class Entry(msgspec.Struct, frozen=True):
    now: bool  # the run may start now
    admitted: list[str]  # runs taken from the queue meanwhile (they need their admit timer)


_decode = msgspec.json.Decoder(Slots).decode
_encode = msgspec.json.Encoder().encode
_ROUNDS = 100  # compare-and-set attempts before the caller retries the whole event


class Admission:
    def __init__(self, kv: KeyValue, js: JetStreamContext, bucket: str) -> None:
        self.kv = kv
        self.js = js
        self.stream = f"KV_{bucket}"
        self.root = f"$KV.{bucket}."

    async def enter(self, workflow: str, run_id: str, limit: int) -> Entry:
        for _ in range(_ROUNDS):
            slots, revision = await self._read(workflow)
            if run_id in slots.running:
                return Entry(now=True, admitted=[])
            if len(slots.running) < limit and await self._head(workflow) is None:
                # A free place and nobody waiting (so not this run either): take it.
                if await self._write(workflow, Slots(running=[*slots.running, run_id]), revision):
                    return Entry(now=True, admitted=[])
                continue
            if not await self._is_queued(workflow, run_id):
                await self._enqueue(workflow, run_id)
            admitted = await self.fill(workflow, limit)
            return Entry(now=run_id in admitted, admitted=admitted)
        raise RetryableError(f"workflow {workflow}: concurrency slots kept changing", delay=0.2)

    async def leave(self, workflow: str, run_id: str, limit: int) -> list[str]:
        """Free the run's place (or its place in the queue); return the runs admitted in its stead."""
        for _ in range(_ROUNDS):
            slots, revision = await self._read(workflow)
            if run_id not in slots.running:
                break
            if await self._write(workflow, Slots(running=[r for r in slots.running if r != run_id]), revision):
                break
        else:
            raise RetryableError(f"workflow {workflow}: concurrency slots kept changing", delay=0.2)
        await self._dequeue(workflow, run_id)
        return await self.fill(workflow, limit)

    async def fill(self, workflow: str, limit: int) -> list[str]:
        """Admit runs from the queue's head while there are free places."""
        admitted: list[str] = []
        for _ in range(_ROUNDS):
            slots, revision = await self._read(workflow)
            if len(slots.running) >= limit:
                return admitted
            head = await self._head(workflow)
            if head is None:
                return admitted
            if head not in slots.running:
                if not await self._write(workflow, Slots(running=[*slots.running, head]), revision):
                    continue
                admitted.append(head)
            # Admitted (by this replica or another that crashed before this step): out of the queue.
            await self._dequeue(workflow, head)
        raise RetryableError(f"workflow {workflow}: concurrency slots kept changing", delay=0.2)

    # --- the stored state ----------------------------------------------------------------------

    async def _read(self, workflow: str) -> tuple[Slots, int]:
        for _ in range(_ROUNDS):
            try:
                entry = await self.kv.get(workflow)
            except nats.js.errors.KeyNotFoundError:
                return Slots(), 0
            slots = _decode(entry.value) if entry.value else Slots()
            revision = entry.revision or 0
            if not slots.queued:
                return slots, revision
            # The old layout: queue each run under its own key, in order, then drop the list.
            for run_id in slots.queued:
                if run_id not in slots.running:
                    await self._enqueue(workflow, run_id)
            await self._write(workflow, Slots(running=slots.running), revision)
        raise RetryableError(f"workflow {workflow}: concurrency slots kept changing", delay=0.2)

    async def _write(self, workflow: str, slots: Slots, revision: int) -> bool:
        """Compare-and-set; False when another writer was first."""
        try:
            if revision:
                await self.kv.update(workflow, _encode(slots), last=revision)
            else:
                await self.kv.create(workflow, _encode(slots))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    def _queue_key(self, workflow: str, run_id: str) -> str:
        return f"{workflow}.q.{run_id}"

    async def _enqueue(self, workflow: str, run_id: str) -> None:
        # Queued already: its place (the first message) stands.
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self.kv.create(self._queue_key(workflow, run_id), b"")

    async def _is_queued(self, workflow: str, run_id: str) -> bool:
        try:
            await self.kv.get(self._queue_key(workflow, run_id))
        except nats.js.errors.KeyNotFoundError:
            return False
        return True

    async def _head(self, workflow: str) -> str | None:
        # The first message under WORKFLOW.q.* in the stream: the run queued longest ago.
        try:
            msg = await self.js.get_msg(
                self.stream, seq=1, subject=f"{self.root}{self._queue_key(workflow, '*')}", next=True
            )
        except nats.js.errors.NotFoundError:
            return None
        subject = msg.subject or ""
        return subject.rsplit(".", 1)[-1] or None

    async def _dequeue(self, workflow: str, run_id: str) -> None:
        # A purge by subject leaves no marker (a KV delete would), so the head is always a queued run.
        await self.js.purge_stream(self.stream, subject=f"{self.root}{self._queue_key(workflow, run_id)}")

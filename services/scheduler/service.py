"""Wires run, task and timer events to the engine, with the run record in KV under compare-and-set.

Write-then-publish with an outbox: a transition is first stored with its messages (CAS on the
revision, so two replicas never lose an update), then the messages are published with de-dup
ids, and only then is the event acked. A crash in between leaves the outbox in the record; the
event is redelivered, and whoever touches the run next publishes that outbox again (JetStream
drops the repeats). See docs/adr/0001-run-records-and-outbox.md.

Events of one run that arrive together (a fan-in, a 1,000-item foreach) are applied as one
batch: one KV write for all of them.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from shared.bus.delivery import Delivery
from shared.config.settings import seconds
from shared.contract import subjects
from shared.contract.envelope import epoch, now_rfc3339
from shared.contract.errors import NotYet, PermanentError, RetryableError
from shared.contract.messages import (
    AnyEvent,
    ApprovalDecided,
    NodeFailed,
    Outgoing,
    RunAbandoned,
    RunCancelRequested,
    RunFinished,
    RunPlanned,
    RunRecord,
    RunRejected,
    TaskDispatched,
    TaskFailed,
    TaskResults,
    TaskSucceeded,
    TimerDue,
    decode_record,
)
from shared.service.host import Service
from shared.state.runstate import hydrate
from shared.state.values import Values
from shared.telemetry import metrics

from . import batching, engine, observe
from .admission import Admission
from .indexing import index_ended_runs
from .persist import Persist, Prepared, TooBig

log = structlog.get_logger("flowyard.scheduler")

Transition = Callable[[RunRecord | None, engine.Clock], RunRecord | None]
_MAX_CONFLICTS = 50
_HEADROOM = 8 * 1024
_CACHE_RUNS = 10_000


class SchedulerService(Service):
    name = "scheduler"

    async def setup(self) -> None:
        self.records: KeyValue = await self.bus.kv(subjects.RUNS_BUCKET)
        self.values = Values(self.bus, self.config.bus.inline_limit)
        self.persist = Persist(
            self.values, await self.bus.kv(subjects.ITEMS_BUCKET), self.config.bus.max_payload - _HEADROOM
        )
        self.admission = Admission(
            await self.bus.kv(subjects.CONCURRENCY_BUCKET), self.bus.js, subjects.CONCURRENCY_BUCKET
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, list[tuple[Transition, asyncio.Future[None]]]] = {}
        # The last record this replica wrote per run, with its revision and whether its outbox
        # went out: saves a KV read per step. CAS catches a copy gone stale.
        self._cache: OrderedDict[str, tuple[int, RunRecord, bool]] = OrderedDict()
        self._dedup_window = seconds(self.config.bus.duplicate_window)
        self._active = metrics.InProgress(metrics.RUNS_ACTIVE, metrics.RUNS_OLDEST_START)
        self._ended_indexed = False
        concurrency = self.config.scheduler.concurrency
        ack_wait = seconds(self.config.scheduler.ack_wait)
        self.consume(
            "scheduler",
            subjects.RUNS_STREAM,
            subjects.SCHEDULER_FILTERS,
            self.handle,
            concurrency=concurrency,
            ack_wait=ack_wait,
        )
        # Timers are handed back by JetStream until due; they never run out of deliveries.
        self.consume(
            "scheduler-timers",
            subjects.TIMERS_STREAM,
            subjects.TIMER_FILTERS,
            self.handle_timer,
            concurrency=concurrency,
            max_deliver=-1,
            ack_wait=ack_wait,
        )

    def clock(self) -> engine.Clock:
        return engine.Clock(now=now_rfc3339(), epoch=time.time(), pool=self.config.scheduler.pool)

    async def handle(self, event: AnyEvent, delivery: Delivery) -> None:
        match event:
            case RunPlanned():
                if event.reuse:  # `runs retry` keeps outputs, by reference where they were large
                    event = msgspec.structs.replace(
                        event, reuse={k: await self.values.resolve(v) for k, v in event.reuse.items()}
                    )
                await self._plan(event)
            case RunAbandoned():
                await self.mutate(event.run_id, lambda rec, clk: engine.abandon(rec, event, clk))
            case RunRejected():
                await self.mutate(event.run_id, lambda rec, clk: engine.reject_run(event, clk) if rec is None else None)
            case TaskSucceeded():
                # An output too large for a message came by reference: templates read the value.
                event = msgspec.structs.replace(event, output=await self.values.resolve(event.output))
                await self.mutate(event.run_id, lambda rec, clk: engine.apply_result(rec, event, clk) if rec else None)
            case TaskFailed():
                await self.mutate(event.run_id, lambda rec, clk: engine.apply_result(rec, event, clk) if rec else None)
            case TaskResults():
                if not any(isinstance(e, TaskSucceeded | TaskFailed) for e in event.events):
                    return  # only `started` events: nothing of the record changes
                events = [
                    msgspec.structs.replace(e, output=await self.values.resolve(e.output))
                    if isinstance(e, TaskSucceeded)
                    else e
                    for e in event.events
                    if e.run_id == event.run_id  # one run per message: its record is the one locked
                ]
                await self.mutate(
                    event.run_id, lambda rec, clk: engine.apply_results(rec, events, clk) if rec else None
                )
            case RunCancelRequested():
                await self.mutate(event.run_id, lambda rec, clk: engine.cancel(rec, event, clk) if rec else None)
            case ApprovalDecided():
                await self.mutate(event.run_id, lambda rec, clk: engine.decide(rec, event, clk) if rec else None)
            case _:
                raise PermanentError(f"the scheduler does not handle {type(event).__name__}")

    async def handle_timer(self, event: AnyEvent, delivery: Delivery) -> None:
        if not isinstance(event, TimerDue):
            raise PermanentError(f"the timer consumer handles timers only, got {type(event).__name__}")
        wait = event.due_at - time.time()
        if wait > 0.001:
            raise NotYet(wait)
        await self.mutate(event.run_id, lambda rec, clk: engine.fire_timer(rec, event, clk) if rec else None)

    async def _plan(self, event: RunPlanned) -> None:
        limit = event.plan.concurrency
        queued = False
        admitted: list[str] = []
        if limit is not None:
            entry = await self.admission.enter(event.workflow, event.run_id, limit)
            queued, admitted = not entry.now, entry.admitted
            if queued:
                log.info("run queued", run_id=event.run_id, workflow=event.workflow, concurrency=limit)
        await self.mutate(
            event.run_id, lambda rec, clk: engine.start_run(event, clk, queued=queued) if rec is None else None
        )
        # Runs taken from the queue while this one entered (itself, when a place was free by then).
        await self._admit(admitted)

    # --- the record under compare-and-set ------------------------------------------------------

    async def mutate(self, run_id: str, transition: Transition) -> None:
        try:
            subjects.check_token(run_id, "run id")
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(run_id, []).append((transition, done))
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        async with lock:
            if not done.done():
                # Everything queued for this run while the previous batch was written goes in one write.
                batch = self._waiting.pop(run_id, [])
                try:
                    await self._apply(run_id, [t for t, _ in batch])
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        if not lock.locked() and not self._waiting.get(run_id):
            self._locks.pop(run_id, None)
            self._waiting.pop(run_id, None)
        await done

    async def _apply(self, run_id: str, transitions: list[Transition]) -> None:
        for _ in range(_MAX_CONFLICTS):
            cached = self._cache.get(run_id)
            if cached is not None:
                revision, record, sent = cached
            else:
                record, revision = await self._load(run_id)
                sent = False
            if record is not None and (record.outbox or record.outbox_items) and not sent:
                await self._flush_foreign(record)
            clock = self.clock()
            new, outbox = record, []
            for transition in transitions:
                step = transition(new, clock)
                if step is not None:
                    new = step
                    outbox.extend(step.outbox)
            if new is record:
                if cached is not None:
                    # Our copy may be behind another replica's: judge the events on the stored one.
                    self._cache.pop(run_id, None)
                    continue
                if record is not None and record.status != "running":
                    # In case a crash came between finishing and releasing.
                    await self._release(record)
                    await self._index(observe.ended_subject(record), observe.active_subject(record))
                return
            assert new is not None
            new = engine.replace(new, outbox=outbox + _node_failures(record, new))
            try:
                new, prepared = await self._prepare(record, new, clock)
            except TooBig as exc:
                raise PermanentError(
                    f"run {run_id}: its record is {exc.size} bytes even without its items and values; "
                    "a workflow this large needs a larger bus.max_payload"
                ) from None
            data = prepared.data
            try:
                if record is None:
                    revision = await self.records.create(run_id, data)
                else:
                    revision = await self.records.update(run_id, data, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._cache.pop(run_id, None)
                continue  # another replica moved the record on; apply to its version
            self._remember(run_id, revision, new, sent=False)
            added, removed = observe.step(record, new, now=time.time())
            await self._publish(batching.batched(new, prepared.outbox, self.config.bus.max_payload))
            # After the outbox: the run's first dispatch does not wait for the gauges' bookkeeping.
            await self._index(added, None)
            if new.status == "running":
                self._remember(run_id, revision, new, sent=True)
                return
            self._cache.pop(run_id, None)
            self.persist.forget(run_id)
            if record is None or record.status == "running":
                log.info("run finished", run_id=run_id, workflow=new.workflow, status=new.status, error=new.error)
            await self._release(new)
            # Listed as ended before it stops being listed as active: always in one of the two.
            await self._index(observe.ended_subject(new), removed)
            return
        raise RetryableError(f"run {run_id}: record kept changing under {_MAX_CONFLICTS} attempts", delay=0.2)

    async def _prepare(
        self, record: RunRecord | None, new: RunRecord, clock: engine.Clock
    ) -> tuple[RunRecord, Prepared]:
        """The record to keep and what to store and send: a run whose record cannot fit even with
        its items and values outside ends, saying why (the record that says so is returned)."""
        try:
            return new, await self.persist.prepare(record, new)
        except TooBig as exc:
            size = exc.size
        limit = self.config.bus.max_payload
        ended = engine.overflow(new, clock, size=size, limit=limit)
        try:
            return ended, await self.persist.prepare(record, ended)
        except TooBig:
            lean = engine.overflow(new, clock, size=size, limit=limit, drop_items=True)
            return lean, await self.persist.prepare(record, lean)

    async def _index(self, add: str | None, remove: str | None) -> None:
        """Keep FY_ACTIVE in step (for flowyard_runs_active); a miss costs a gauge, never a run."""
        try:
            if add:
                await self.bus.mark_active(add)
            if remove:
                await self.bus.clear_active(remove)
        except Exception as exc:
            log.warning("active-runs index not updated", error=repr(exc))

    async def refresh_gauges(self) -> None:
        await super().refresh_gauges()
        self._active.update(await self.bus.active(subjects.ACTIVE_RUNS))
        if not self._ended_indexed:
            self._ended_indexed = await index_ended_runs(self.bus, self.records)

    async def _release(self, record: RunRecord) -> None:
        """A finished run leaves its workflow's concurrency; the next queued run is admitted."""
        if record.plan is None or record.plan.concurrency is None:
            return
        await self._admit(await self.admission.leave(record.workflow, record.run_id, record.plan.concurrency))

    async def _admit(self, admitted: list[str]) -> None:
        for run_id in admitted:
            timer = TimerDue(run_id=run_id, kind="admit", due_at=0.0)
            await self.bus.publish(subjects.timer(run_id), timer, msg_id=f"{run_id}:timer:admit")

    def _remember(self, run_id: str, revision: int, record: RunRecord, *, sent: bool) -> None:
        self._cache[run_id] = (revision, record, sent)
        self._cache.move_to_end(run_id)
        while len(self._cache) > _CACHE_RUNS:
            self._cache.popitem(last=False)

    async def _load(self, run_id: str) -> tuple[RunRecord | None, int]:
        try:
            entry = await self.records.get(run_id)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        if not entry.value:
            return None, entry.revision or 0
        return await hydrate(self.bus, decode_record(entry.value), self.values), entry.revision or 0

    async def _publish(self, outbox: list[Outgoing]) -> None:
        """Publish concurrently (a fan-out is hundreds of dispatches); the run's end goes last."""
        first = [o for o in outbox if not isinstance(o.event, RunFinished)]
        last = [o for o in outbox if isinstance(o.event, RunFinished)]
        for chunk in (first[i : i + 256] for i in range(0, len(first), 256)):
            await asyncio.gather(*(self.bus.publish(o.subject, o.event, msg_id=o.msg_id) for o in chunk))
        for o in last:
            await self.bus.publish(o.subject, o.event, msg_id=o.msg_id)

    async def _flush_foreign(self, record: RunRecord) -> None:
        """Publish an outbox another writer (or an earlier life of this one) stored.

        Outboxes are not cleared after publishing (that would cost a KV write per step), so this
        is usually a repeat that JetStream drops as a duplicate. Past the de-dup window only
        dispatches and timers are re-sent: executors check the run record before running an old
        dispatch, and timers are idempotent.
        """
        age = time.time() - epoch(record.updated_at)
        fresh = age < self._dedup_window
        items = await self.persist.offload_all(record.run_id, engine.item_dispatches(record, record.outbox_items))
        again = [o for o in record.outbox if fresh or isinstance(o.event, TaskDispatched | TimerDue)] + items
        await self._publish(batching.batched(record, again, self.config.bus.max_payload))


def _node_failures(before: RunRecord | None, after: RunRecord) -> list[Outgoing]:
    """A `node.failed` event for each node this step left failed (after its retries)."""
    out = []
    for nid, node in after.nodes.items():
        if node.status == "failed" and (
            before is None or before.nodes.get(nid) is None or before.nodes[nid].status != "failed"
        ):
            event = NodeFailed(
                run_id=after.run_id,
                workflow=after.workflow,
                node_id=nid,
                error=node.error or "",
                attempts=node.attempts,
                labels=after.labels,
            )
            out.append(
                Outgoing(
                    subject=subjects.node_failed(after.run_id, nid), msg_id=f"{after.run_id}:{nid}:failed", event=event
                )
            )
    return out

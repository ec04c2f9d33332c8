"""Wires run and task events to the engine, with the run record in KV under compare-and-set.

Write-then-publish with an outbox: a transition is first stored with its messages (CAS on the
revision, so two replicas never lose an update), then the messages are published with de-dup
ids, and only then is the event acked. A crash in between leaves the outbox in the record; the
event is redelivered, and whoever touches the run next publishes that outbox again (JetStream
drops the repeats).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from shared import subjects
from shared.bus import Delivery
from shared.config import seconds
from shared.contract import (
    AnyEvent,
    RunPlanned,
    RunRecord,
    RunRejected,
    TaskDispatched,
    TaskFailed,
    TaskSucceeded,
    decode_event,
    decode_record,
    encode,
)
from shared.envelope import now_rfc3339
from shared.errors import PermanentError, RetryableError
from shared.service import Service

from . import engine

log = structlog.get_logger("flowyard.scheduler")

Transition = Callable[[RunRecord | None], RunRecord | None]
_MAX_CONFLICTS = 50
_CACHE_RUNS = 10_000


class SchedulerService(Service):
    name = "scheduler"

    async def setup(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        # The last record this replica wrote per run, with its revision and whether its outbox
        # went out: saves a KV read and an outbox-clearing write per step. CAS catches staleness.
        self._cache: OrderedDict[str, tuple[int, RunRecord, bool]] = OrderedDict()
        self._dedup_window = seconds(self.config.bus.duplicate_window)
        self.records: KeyValue = await self.bus.kv(subjects.RUNS_BUCKET)
        self.consumers.append(
            self.bus.consumer(
                durable="scheduler",
                stream=subjects.RUNS_STREAM,
                filters=subjects.SCHEDULER_FILTERS,
                decode=decode_event,
                handler=self.handle,
                concurrency=self.config.scheduler.concurrency,
            )
        )

    async def handle(self, event: AnyEvent, delivery: Delivery) -> None:
        pool = self.config.scheduler.pool
        match event:
            case RunPlanned():
                await self.mutate(
                    event.run_id,
                    lambda rec: engine.start_run(event, now=now_rfc3339(), pool=pool) if rec is None else None,
                )
            case RunRejected():
                await self.mutate(
                    event.run_id, lambda rec: engine.reject_run(event, now=now_rfc3339()) if rec is None else None
                )
            case TaskSucceeded() | TaskFailed():
                await self.mutate(
                    event.run_id,
                    lambda rec: engine.apply_result(rec, event, now=now_rfc3339(), pool=pool) if rec else None,
                )
            case _:
                raise PermanentError(f"the scheduler does not handle {type(event).__name__}")

    async def mutate(self, run_id: str, transition: Transition) -> None:
        try:
            subjects.check_token(run_id, "run id")
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        # Results of one run arriving together (a fan-in) would otherwise race each other into
        # CAS conflicts inside this replica; CAS still arbitrates between replicas.
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        try:
            async with lock:
                await self._mutate(run_id, transition)
        finally:
            if not lock.locked() and not lock._waiters:
                self._locks.pop(run_id, None)

    async def _mutate(self, run_id: str, transition: Transition) -> None:
        for _ in range(_MAX_CONFLICTS):
            cached = self._cache.get(run_id)
            if cached is not None:
                revision, record, sent = cached
            else:
                record, revision = await self._load(run_id)
                sent = False
            if record is not None and record.outbox and not sent:
                await self._flush_foreign(record)
            new = transition(record)
            if new is None:
                if cached is not None:
                    # Our copy may be behind another replica's: judge the event on the stored one.
                    self._cache.pop(run_id, None)
                    continue
                return
            try:
                if record is None:
                    revision = await self.records.create(run_id, encode(new))
                else:
                    revision = await self.records.update(run_id, encode(new), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._cache.pop(run_id, None)
                continue  # another replica moved the record on; apply to its version
            self._remember(run_id, revision, new, sent=False)
            await self._flush(new)
            if new.status == "running":
                self._remember(run_id, revision, new, sent=True)
            else:
                self._cache.pop(run_id, None)
                if record is None or record.status == "running":
                    log.info("run finished", run_id=run_id, workflow=new.workflow, status=new.status, error=new.error)
            return
        raise RetryableError(f"run {run_id}: record kept changing under {_MAX_CONFLICTS} attempts", delay=0.2)

    def _remember(self, run_id: str, revision: int, record: RunRecord, *, sent: bool) -> None:
        self._cache[run_id] = (revision, record, sent)
        self._cache.move_to_end(run_id)
        while len(self._cache) > _CACHE_RUNS:
            self._cache.popitem(last=False)

    async def _flush_foreign(self, record: RunRecord) -> None:
        """Publish an outbox another writer (or an earlier life of this one) stored.

        Outboxes are not cleared after publishing (that would cost a KV write per step), so this
        is usually a repeat that JetStream drops as a duplicate. Past the de-dup window only
        dispatches are re-sent: executors check the run record before running an old dispatch.
        """
        age = time.time() - _epoch(record.updated_at)
        fresh = age < self._dedup_window
        for out in record.outbox:
            if fresh or isinstance(out.event, TaskDispatched):
                await self.bus.publish(out.subject, out.event, msg_id=out.msg_id)

    async def _load(self, run_id: str) -> tuple[RunRecord | None, int]:
        try:
            entry = await self.records.get(run_id)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        if not entry.value:
            return None, entry.revision or 0
        return decode_record(entry.value), entry.revision or 0

    async def _flush(self, record: RunRecord) -> None:
        for out in record.outbox:
            await self.bus.publish(out.subject, out.event, msg_id=out.msg_id)


def _epoch(rfc3339: str) -> float:
    try:
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0

"""Wires run and task events to the engine, with the run record in KV under compare-and-set.

Write-then-publish with an outbox: a transition is first stored (CAS on the revision, so two
replicas never lose an update), then its messages are published with de-dup ids, then the outbox
is cleared. A writer that finds an uncleared outbox (its predecessor crashed) publishes it first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from shared import subjects
from shared.bus import Delivery
from shared.contract import (
    AnyEvent,
    RunPlanned,
    RunRecord,
    RunRejected,
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


class SchedulerService(Service):
    name = "scheduler"

    async def setup(self) -> None:
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
        for _ in range(_MAX_CONFLICTS):
            record, revision = await self._load(run_id)
            if record is not None and record.outbox:
                await self._flush(record)  # left behind by a writer that crashed before clearing it
            new = transition(record)
            if new is None:
                if record is not None and record.outbox:
                    await self._clear(record, revision)
                return
            try:
                if record is None:
                    revision = await self.records.create(run_id, encode(new))
                else:
                    revision = await self.records.update(run_id, encode(new), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another replica moved the record on; apply to its version
            await self._flush(new)
            await self._clear(new, revision)
            if new.status != "running" and (record is None or record.status == "running"):
                log.info("run finished", run_id=run_id, workflow=new.workflow, status=new.status, error=new.error)
            return
        raise RetryableError(f"run {run_id}: record kept changing under {_MAX_CONFLICTS} attempts", delay=0.2)

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

    async def _clear(self, record: RunRecord, revision: int) -> None:
        # On a conflict a newer writer owns the record, and it flushes whatever outbox it finds.
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self.records.update(record.run_id, encode(msgspec.structs.replace(record, outbox=[])), last=revision)

"""The index of ended runs for stacks older than it: filled once, then kept by every run's end.

``GET /v1/runs?status=…`` reads only the runs its index names (ADR 11). Runs that ended before
the index existed are not in it, so the first scheduler to start indexes them and leaves a marker;
until the marker is there, the lists read every record, as they did before.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.js.kv import KeyValue

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.messages import decode_record

from . import observe

log = structlog.get_logger("flowyard.scheduler")
_BATCH = 256


async def indexed(bus: Bus) -> bool:
    return bool(await bus.active(subjects.ENDED_INDEXED))


async def index_ended_runs(bus: Bus, records: KeyValue) -> bool:
    """Index every ended run not yet indexed; True once the marker says it is done (by anyone)."""
    if await indexed(bus):
        return True
    keys = await bus.kv_keys(subjects.RUNS_BUCKET)
    already = {s.rsplit(".", 1)[-1] for s in await bus.active(subjects.ENDED_RUNS)}
    todo = [k for k in keys if k not in already]
    count = 0
    for start in range(0, len(todo), _BATCH):
        entries = await asyncio.gather(*(records.get(k) for k in todo[start : start + _BATCH]), return_exceptions=True)
        marks = []
        for entry in entries:
            if isinstance(entry, BaseException) or not entry.value:
                continue
            record = decode_record(entry.value)
            if record.status != "running":
                marks.append(bus.mark_active(observe.ended_subject(record)))
        await asyncio.gather(*marks)
        count += len(marks)
    await bus.mark_active(subjects.ENDED_INDEXED)
    log.info("ended runs indexed", runs=count, records=len(keys))
    return True

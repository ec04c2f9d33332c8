"""Reading and starting runs over NATS: what the CLI and the gateway both do as clients.

The scheduler's record (KV ``fy_runs``) is the truth about a run once it is planned; before that,
its request in the run events stream is. Neither client imports a service: they publish the same
events and read the same records.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TypeVar

import msgspec
import nats.js.errors

from shared.api.views import RunView, ViewStatus, pending_view, run_status, run_view
from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.envelope import now_rfc3339
from shared.contract.messages import RunCancelRequested, RunRecord, RunRequested, decode_event, decode_record
from shared.state.runstate import hydrate
from shared.state.values import Values

E = TypeVar("E")


def new_run_id() -> str:
    # Sortable by time (hex milliseconds, fixed width) and unique (random suffix); one subject token.
    return f"r{int(time.time() * 1000):011x}{secrets.token_hex(4)}"


def valid_run_id(run_id: str) -> bool:
    return bool(subjects.TOKEN.match(run_id))


async def get_record(bus: Bus, run_id: str, *, whole: bool = True) -> RunRecord | None:
    """The run's record; ``whole``: with its foreach items and its large values read back in
    (ADR 11), as people see it; else as stored (statuses, references), which is one read."""
    if not valid_run_id(run_id):
        return None
    kv = await bus.kv(subjects.RUNS_BUCKET)
    try:
        entry = await kv.get(run_id)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
        return None
    if not entry.value:
        return None
    record = decode_record(entry.value)
    return await hydrate(bus, record, Values(bus, bus.cfg.inline_limit)) if whole else record


async def get_request(bus: Bus, run_id: str) -> RunRequested | None:
    """The request that started a run, from the run events stream (the audit log)."""
    if not valid_run_id(run_id):
        return None
    return await last_event(bus, subjects.run_requested(run_id), RunRequested)


async def last_event(bus: Bus, subject: str, kind: type[E]) -> E | None:
    """The last event on a subject of the run events stream, if it is a ``kind``."""
    try:
        msg = await bus.js.get_last_msg(subjects.RUNS_STREAM, subject, direct=True)
    except nats.js.errors.NotFoundError:
        return None
    try:
        event = decode_event(msg.data or b"")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return event if isinstance(event, kind) else None


async def get_view(bus: Bus, run_id: str) -> RunView | None:
    """The run as people see it: from its record, or still pending from its request; None: unknown."""
    record = await get_record(bus, run_id)
    if record is not None:
        return run_view(record)
    request = await get_request(bus, run_id)
    return pending_view(request) if request is not None else None


ACTIVE_VIEWS = ("pending", "running", "waiting")


async def list_records(
    bus: Bus, limit: int, *, workflow: str | None = None, status: ViewStatus | None = None
) -> list[RunRecord]:
    """The newest ``limit`` records of ``workflow`` in ``status`` (either may be None: any), newest
    first. With a filter, only the runs the index in FY_ACTIVE names are read (ADR 11)."""
    kv = await bus.kv(subjects.RUNS_BUCKET)
    # Run ids sort by creation time, so the newest are the largest keys.
    keys = sorted(await _candidates(bus, workflow, status), reverse=True)
    records: list[RunRecord] = []
    batch = max(limit, 32)
    for start in range(0, len(keys), batch):
        entries = await asyncio.gather(*(kv.get(k) for k in keys[start : start + batch]), return_exceptions=True)
        for e in entries:
            if isinstance(e, BaseException) or not e.value:
                continue
            record = decode_record(e.value)
            # The index may name a run in a status it has since left: the record decides.
            if (workflow is None or record.workflow == workflow) and (status is None or run_status(record) == status):
                records.append(record)
                if len(records) >= limit:
                    return records
    return records


async def _candidates(bus: Bus, workflow: str | None, status: ViewStatus | None) -> set[str] | list[str]:
    """The run ids that may match: from the index when there is a filter and the index is whole."""
    if (workflow is None and status is None) or not await bus.active(subjects.ENDED_INDEXED):
        return await bus.kv_keys(subjects.RUNS_BUCKET)
    wf = subjects.index_workflow(workflow) if workflow is not None else "*"
    filters = []
    if status is None or status in ACTIVE_VIEWS:
        filters.append(f"fy.active.run.{wf}.>")
    if status is None or status in subjects.RUN_ENDS:
        filters.append(f"fy.ended.run.{status or '*'}.{wf}.>")
    found = await asyncio.gather(*(bus.active(f) for f in filters))
    return {subject.rsplit(".", 1)[-1] for listed in found for subject in listed}


async def publish_request(bus: Bus, request: RunRequested) -> None:
    await bus.publish(subjects.run_requested(request.run_id), request, msg_id=f"{request.run_id}:requested")


async def request_cancel(bus: Bus, run_id: str, *, user: str, reason: str = "") -> None:
    event = RunCancelRequested(run_id=run_id, requested_by=user, reason=reason)
    await bus.publish(subjects.run_cancel(run_id), event, msg_id=f"{run_id}:cancel")


def retry_request(original: RunRequested, record: RunRecord, *, user: str, trigger: dict[str, object]) -> RunRequested:
    """A new run of a failed or cancelled one: succeeded nodes keep their outputs, the rest run again."""
    reuse = {nid: node.output for nid, node in record.nodes.items() if node.status == "succeeded"}
    return msgspec.structs.replace(
        original,
        run_id=new_run_id(),
        requested_by=user,
        requested_at=now_rfc3339(),
        retry_of=record.run_id,
        reuse=reuse,
        trigger=dict(trigger),
        # Carry on from the files as the failed run left them.
        workspace=record.workspace or original.workspace,
    )

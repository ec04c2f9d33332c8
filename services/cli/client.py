"""Submitting runs and following them: what ``flowyard run`` and ``flowyard runs`` do over NATS."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats.errors
import nats.js.errors

from shared import subjects
from shared.bus import Bus
from shared.config import Config
from shared.contract import (
    AnyEvent,
    NodeRecord,
    RunFinished,
    RunRecord,
    RunRejected,
    RunRequested,
    decode_event,
    decode_record,
    node_results,
)


@contextlib.asynccontextmanager
async def connected(config: Config) -> AsyncIterator[Bus]:
    """A quiet connection to the stack the configuration names, closed on the way out."""
    from .main import configure  # the CLI's logging set-up; imported late, main imports us

    configure(config, "cli", quiet=True)
    bus = Bus(config.nats, config.bus, name="cli")
    await bus.connect()
    try:
        yield bus
    finally:
        await bus.close()


def new_run_id() -> str:
    # Sortable by time (hex milliseconds, fixed width) and unique (random suffix); one subject token.
    return f"r{int(time.time() * 1000):011x}{secrets.token_hex(4)}"


async def submit_and_follow(
    bus: Bus,
    request: RunRequested,
    on_event: Callable[[AnyEvent], None],
    *,
    timeout: float | None = None,
) -> RunFinished | RunRejected:
    """Publish the request and return the run's final event, passing every event to ``on_event``."""
    # Subscribe first (an ordered consumer replays from the start of the run's subjects), so no
    # event can slip past between publishing and listening.
    sub = await bus.js.subscribe(
        subjects.run_events(request.run_id), ordered_consumer=True, stream=subjects.RUNS_STREAM
    )
    try:
        await bus.publish(subjects.run_requested(request.run_id), request, msg_id=f"{request.run_id}:requested")
        deadline = None if timeout is None else time.monotonic() + timeout
        quiet = 0
        heard = False
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"run {request.run_id} did not finish within {timeout:g}s")
            try:
                msg = await sub.next_msg(timeout=min(remaining or 1.0, 1.0))
                quiet = 0
            except nats.errors.TimeoutError:
                # The subscription may have lost its place (NATS restarted): the record is the
                # truth, so after two quiet seconds look at it.
                quiet += 1
                if quiet == 10 and not heard:
                    print(
                        f"flowyard: run {request.run_id} was requested but nothing has answered for 10s; "
                        "is a planner running for this NATS (`flowyard serve planner`, or `flowyard up`)?",
                        file=sys.stderr,
                        flush=True,
                    )
                if quiet % 2 == 0 and (final := await _final_from_record(bus, request.run_id)) is not None:
                    return final
                continue
            try:
                event = decode_event(msg.data)
            except Exception:
                continue  # not ours to judge here; the services dead-letter poison
            heard = heard or not isinstance(event, RunRequested)
            on_event(event)
            if isinstance(event, RunFinished | RunRejected):
                return event
    finally:
        await sub.unsubscribe()


async def _final_from_record(bus: Bus, run_id: str) -> RunFinished | RunRejected | None:
    try:
        record = await get_record(bus, run_id)
    except Exception:
        return None  # not reachable right now; keep following
    if record is None or record.status == "running":
        return None
    if record.rejected:
        return RunRejected(run_id=run_id, workflow=record.workflow, errors=record.rejected)
    return RunFinished(
        run_id=run_id,
        workflow=record.workflow,
        status=record.status,
        outputs=record.outputs,
        error=record.error,
        nodes=node_results(record),
    )


async def get_request(bus: Bus, run_id: str) -> RunRequested | None:
    """The request that started a run, from the run events stream (the audit log)."""
    try:
        msg = await bus.js.get_last_msg(subjects.RUNS_STREAM, subjects.run_requested(run_id))
    except nats.js.errors.NotFoundError:
        return None
    event = decode_event(msg.data or b"")
    return event if isinstance(event, RunRequested) else None


async def wait_for_end(bus: Bus, run_id: str, *, timeout: float) -> RunRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = await get_record(bus, run_id)
        if record is not None and (record.status != "running" or time.monotonic() > deadline):
            return record
        await asyncio.sleep(0.1)


async def get_record(bus: Bus, run_id: str) -> RunRecord | None:
    kv = await bus.kv(subjects.RUNS_BUCKET)
    try:
        entry = await kv.get(run_id)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.InvalidKeyError):
        return None
    return decode_record(entry.value) if entry.value else None


async def list_records(bus: Bus, limit: int) -> list[RunRecord]:
    kv = await bus.kv(subjects.RUNS_BUCKET)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    # Run ids sort by creation time, so the newest are the largest keys.
    keys = sorted(keys, reverse=True)[:limit]
    entries = await asyncio.gather(*(kv.get(k) for k in keys), return_exceptions=True)
    records = []
    for e in entries:
        if isinstance(e, BaseException) or not e.value:
            continue
        records.append(decode_record(e.value))
    return records


def result_json(record: RunRecord) -> dict[str, Any]:
    """The ``--json`` shape: run_id, workflow, status, outputs, nodes{status, attempts, output, error}.

    Each node also lists ``errors`` (one line per failed attempt) and, for a foreach node,
    ``items`` (the same fields per item).
    """
    return {
        "run_id": record.run_id,
        "workflow": record.workflow,
        "status": record.status,
        "outputs": record.outputs,
        "error": record.error,
        "nodes": {nid: _node_json(n) for nid, n in record.nodes.items()},
        "created_at": record.created_at,
        "finished_at": record.finished_at,
        "retry_of": record.retry_of,
        "workspace": {"version": record.workspace_version, "object": record.workspace} if record.workspace else None,
    }


def _node_json(n: NodeRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": n.status,
        "attempts": n.attempts,
        "output": n.output,
        "error": n.error,
        "errors": n.errors,
    }
    if n.items is not None:
        out["items"] = [_node_json(it) for it in n.items]
    if n.reused_from:
        out["reused_from"] = n.reused_from
    return out


def finished_json(event: RunFinished) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "workflow": event.workflow,
        "status": event.status,
        "outputs": event.outputs,
        "error": event.error,
        "nodes": {
            nid: {"status": n.status, "attempts": n.attempts, "output": n.output, "error": n.error}
            for nid, n in event.nodes.items()
        },
    }

"""Submitting runs and following them: what ``flowyard run`` and ``flowyard runs`` do over NATS."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats.errors
import nats.js.errors

from shared.api.runs import get_record, get_request, list_records, new_run_id, publish_request
from shared.api.views import finished_view, run_view, to_json
from shared.bus.connection import Bus
from shared.bus.delivery import TRANSIENT
from shared.config.settings import Config
from shared.contract import subjects
from shared.contract.messages import (
    AnyEvent,
    RunFinished,
    RunRecord,
    RunRejected,
    RunRequested,
    decode_event,
    node_results,
    unpacked,
)

__all__ = ["get_record", "get_request", "list_records", "new_run_id"]


@contextlib.asynccontextmanager
async def connected(config: Config) -> AsyncIterator[Bus]:
    """A quiet connection to the stack the configuration names, closed on the way out."""
    from .output import configure

    configure(config, "cli", quiet=True)
    bus = Bus(config.nats, config.bus, name="cli")
    await bus.connect()
    try:
        yield bus
    finally:
        await bus.close()


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
        await publish_request(bus, request)
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
            for one in unpacked(event):  # a batch of attempt events: each as if it came alone
                on_event(one)
            if isinstance(event, RunFinished | RunRejected):
                return event
    finally:
        with contextlib.suppress(*TRANSIENT, nats.errors.BadSubscriptionError):
            await sub.unsubscribe()


async def _final_from_record(bus: Bus, run_id: str) -> RunFinished | RunRejected | None:
    try:
        record = await get_record(bus, run_id, whole=False)
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


async def wait_for_end(bus: Bus, run_id: str, *, timeout: float) -> RunRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = await get_record(bus, run_id, whole=False)
        if record is not None and (record.status != "running" or time.monotonic() > deadline):
            return await get_record(bus, run_id) or record
        await asyncio.sleep(0.1)


def result_json(record: RunRecord, request: RunRequested | None = None) -> dict[str, Any]:
    """The ``--json`` shape, the same object as the gateway's (:class:`shared.api.views.RunView`)."""
    return to_json(run_view(record, request))


def finished_json(event: RunFinished) -> dict[str, Any]:
    return to_json(finished_view(event))

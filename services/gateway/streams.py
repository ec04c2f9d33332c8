"""Server-Sent Events: ``/v1/events`` (run, node and approval events) and followed logs.

Both replay JetStream with an ordered consumer, so ``id:`` is the event's stream sequence and a
client reconnecting with ``Last-Event-ID`` gets exactly what came after it — nothing twice,
nothing lost — however long it was away (within the stream's retention).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

import msgspec
import nats.errors
from aiohttp import web
from nats.js import api

from shared.api import runs
from shared.api.views import LogChunk, LogLine
from shared.contract import subjects
from shared.contract.messages import AnyEvent, ApprovalDecided, Event, RunFinished, TaskLog, TaskResults, decode_event

from .context import GATEWAY, Gateway
from .http import bool_param, json_response
from .problems import HttpProblem

_HEARTBEAT = 15.0  # seconds between comments that keep proxies from closing an idle stream
_QUIET = 1.0  # a followed log looks at whether its run ended after this long without a line
_encode = msgspec.json.Encoder().encode


def event_name(event: Event) -> str:
    """The event's type as the notifier names it: run.succeeded, task.started, approval.requested …"""
    if isinstance(event, RunFinished):
        return f"run.{event.status}"
    if isinstance(event, ApprovalDecided):
        return f"approval.{event.outcome}"
    return str(event.__struct_config__.tag)


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise HttpProblem(400, f"Last-Event-ID {raw!r} is not an event id (a whole number)") from None
    if value < 0:
        raise HttpProblem(400, "Last-Event-ID must not be negative")
    return value


async def _subscribe(gw: Gateway, subject: str, stream: str, after: int | None, *, everything: bool) -> Any:
    if after is not None:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
    elif everything:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
    else:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
    return await gw.bus.js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)


async def _open(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    return response


class _Workflows:
    """Which workflow a run belongs to, for filtering task events (which do not carry it)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.known: OrderedDict[str, str] = OrderedDict()

    async def of(self, run_id: str, event: AnyEvent) -> str:
        name = getattr(event, "workflow", None)
        if not name:
            name = self.known.get(run_id)
            if name is None:
                view = await runs.get_view(self.gw.bus, run_id)
                name = view.workflow if view else ""
        self.known[run_id] = name
        self.known.move_to_end(run_id)
        while len(self.known) > 10_000:
            self.known.popitem(last=False)
        return name


async def events(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    run_id = request.query.get("run_id") or None
    workflow = request.query.get("workflow") or None
    if run_id is not None and not runs.valid_run_id(run_id):
        raise HttpProblem(400, f"run_id {run_id!r} is not a run id")
    after = _last_event_id(request)
    subject = subjects.run_events(run_id) if run_id else subjects.RUNS_SUBJECTS
    sub = await _subscribe(gw, subject, subjects.RUNS_STREAM, after, everything=run_id is not None)
    workflows = _Workflows(gw)
    response = await _open(request)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=_HEARTBEAT)
            except nats.errors.TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            try:
                event = decode_event(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # not an event of ours; the services dead-letter poison
            if workflow is not None and await workflows.of(event.run_id, event) != workflow:
                continue
            seq = msg.metadata.sequence.stream
            if isinstance(event, TaskResults):  # each attempt event as its own, under the message's id
                for one in event.events:
                    await response.write(
                        b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event_name(one).encode(), _encode(one))
                    )
                continue
            await response.write(b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event_name(event).encode(), msg.data))
    except ConnectionResetError:
        pass  # the client went away
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return response


async def run_logs(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    run_id = request.match_info["run_id"]
    node = request.query.get("node") or None
    follow = bool_param(request, "follow")
    record = await runs.get_record(gw.bus, run_id, whole=False) if runs.valid_run_id(run_id) else None
    if record is None:
        if runs.valid_run_id(run_id) and await runs.get_request(gw.bus, run_id) is not None:
            if not follow:
                return json_response([])  # asked for, not planned yet: nothing written so far
        else:
            raise HttpProblem(404, f"no run {run_id!r}; GET /v1/runs lists them")
    elif node is not None and node not in record.nodes:
        raise HttpProblem(404, f"run {run_id} has no node {node!r}; its nodes: {', '.join(record.nodes) or 'none'}")
    after = _last_event_id(request) if follow else None
    sub = await _subscribe(gw, subjects.run_logs(run_id), subjects.LOGS_STREAM, after, everything=True)
    try:
        if follow:
            return await _follow(request, gw, sub, run_id, node)
        return json_response(await _collect(sub, node))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _logs(msg: Any, node: str | None) -> TaskLog | None:
    try:
        event = decode_event(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if isinstance(event, TaskLog) and (node is None or event.node_id == node):
        return event
    return None


async def _collect(sub: Any, node: str | None) -> list[LogLine]:
    lines: list[LogLine] = []
    while True:
        try:
            msg = await sub.next_msg(timeout=_QUIET)
        except nats.errors.TimeoutError:
            return lines  # nothing was kept for this run (or nothing more)
        event = _logs(msg, node)
        if event is not None:
            lines.extend(
                LogLine(node=event.node_id, item=event.item, attempt=event.attempt, line=ln) for ln in event.lines
            )
        if msg.metadata.num_pending == 0:
            return lines


async def _follow(request: web.Request, gw: Gateway, sub: Any, run_id: str, node: str | None) -> web.StreamResponse:
    response = await _open(request)
    quiet = 0.0
    ended = False
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=_QUIET)
            except nats.errors.TimeoutError:
                quiet += _QUIET
                if ended:
                    break  # one more quiet spell after the end, for lines still on their way
                view = await runs.get_view(gw.bus, run_id)
                ended = view is not None and view.status in ("succeeded", "failed", "cancelled")
                if quiet >= _HEARTBEAT:
                    await response.write(b": keep-alive\n\n")
                    quiet = 0.0
                continue
            quiet = 0.0
            event = _logs(msg, node)
            if event is None:
                continue
            chunk = LogChunk(
                node=event.node_id, item=event.item, attempt=event.attempt, lines=event.lines, truncated=event.truncated
            )
            seq = msg.metadata.sequence.stream
            await response.write(b"id: %d\nevent: log\ndata: %s\n\n" % (seq, _encode(chunk)))
        view = await runs.get_view(gw.bus, run_id)
        status = view.status if view else "unknown"
        await response.write(b"event: end\ndata: %s\n\n" % _encode({"run_id": run_id, "status": status}))
    except ConnectionResetError:
        pass  # the client went away
    return response

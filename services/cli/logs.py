"""``flowyard logs RUN_ID [--node ID] [--follow]``: agents' stderr, as it was streamed."""

from __future__ import annotations

import json
import sys

import msgspec
import nats.errors

from shared.config.settings import Config
from shared.contract import subjects
from shared.contract.messages import TaskLog, decode_event, unit_token

from . import client
from .client import connected
from .output import EXIT_INVALID, EXIT_OK

_QUIET = 1.0  # seconds without a line before looking at whether the run has ended


async def show_logs(config: Config, run_id: str, *, node: str | None, follow: bool, as_json: bool) -> int:
    async with connected(config) as bus:
        record = await client.get_record(bus, run_id, whole=False)
        if record is None:
            print(f"flowyard: no run {run_id!r}; `flowyard runs list` shows the runs this stack knows", file=sys.stderr)
            return EXIT_INVALID
        if node is not None and node not in record.nodes:
            known = ", ".join(record.nodes) or "none"
            print(f"flowyard: run {run_id} has no node {node!r}; its nodes: {known}", file=sys.stderr)
            return EXIT_INVALID
        sub = await bus.js.subscribe(subjects.run_logs(run_id), ordered_consumer=True, stream=subjects.LOGS_STREAM)
        try:
            ended = record.status != "running"
            while True:
                try:
                    msg = await sub.next_msg(timeout=_QUIET)
                except nats.errors.TimeoutError:
                    if not follow or ended:
                        break
                    latest = await client.get_record(bus, run_id, whole=False)
                    # One more quiet spell after the end, for lines still on their way.
                    ended = latest is None or latest.status != "running"
                    continue
                try:
                    event = decode_event(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if isinstance(event, TaskLog) and (node is None or event.node_id == node):
                    _print(event, as_json)
                if not follow and msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    return EXIT_OK


def _print(event: TaskLog, as_json: bool) -> None:
    if as_json:
        for line in event.lines:
            row = {"node": event.node_id, "item": event.item, "attempt": event.attempt, "line": line}
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        prefix = f"[{unit_token(event.node_id, event.item)} attempt {event.attempt}]"
        for line in event.lines:
            sys.stdout.write(f"{prefix} {line}\n")
        if event.truncated:
            sys.stdout.write(f"{prefix} … later lines dropped: the attempt reached executor.log_max_bytes\n")
    sys.stdout.flush()

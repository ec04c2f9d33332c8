"""An executor's attempt events on their way out: alone when the line is free, together when not.

Each run has one sender at a time. An event that arrives while nothing of its run is being
published goes at once, as itself, with its own de-dup id (``<key>:started``, ``<key>:result``),
exactly as before batching. Events that become ready while a publish is in flight wait for it and
then go in one ``TaskResults`` message, in the order they came. So a lone attempt pays no added
latency, and a fan-out's hundreds of results cost a few messages. Every ``send`` returns only
once the message holding its event is stored: the result is durable before its dispatch is
acked, as ADR 4 asks.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from shared.contract import subjects
from shared.contract.messages import Event, TaskFailed, TaskResults, TaskStarted, TaskSucceeded
from shared.telemetry import metrics

# (subject, event, de-dup id): the bus's publish, awaited until JetStream has stored it.
Publish = Callable[[str, Event, str], Awaitable[None]]
_encode = msgspec.json.encode


@dataclass(slots=True)
class _Waiting:
    subject: str
    event: TaskStarted | TaskSucceeded | TaskFailed
    msg_id: str
    done: asyncio.Future[None]


class Reporter:
    def __init__(self, publish: Publish, *, max_bytes: int) -> None:
        self.publish = publish
        self.budget = max_bytes // 2  # a group's events, leaving room for headers and the envelope
        self._waiting: dict[str, list[_Waiting]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}

    async def send(self, subject: str, event: TaskStarted | TaskSucceeded | TaskFailed, msg_id: str) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        run_id = event.run_id
        self._waiting.setdefault(run_id, []).append(_Waiting(subject, event, msg_id, done))
        if run_id not in self._senders:
            self._senders[run_id] = asyncio.create_task(self._drain(run_id), name=f"executor:report:{run_id}")
        await asyncio.shield(done)  # a cancelled attempt does not take the others' message with it

    async def _drain(self, run_id: str) -> None:
        try:
            while waiting := self._waiting.pop(run_id, None):
                for group in self._groups(waiting):
                    try:
                        await self._send_group(run_id, group)
                    except BaseException as exc:
                        for w in group:
                            if not w.done.done():
                                w.done.set_exception(exc)
                        if isinstance(exc, asyncio.CancelledError):
                            raise
                    else:
                        for w in group:
                            if not w.done.done():
                                w.done.set_result(None)
        finally:
            self._senders.pop(run_id, None)
            for w in self._waiting.pop(run_id, []):  # only when cancelled: nobody will send these
                if not w.done.done():
                    w.done.set_exception(asyncio.CancelledError())

    def _groups(self, waiting: list[_Waiting]) -> list[list[_Waiting]]:
        if len(waiting) == 1:
            return [waiting]  # the usual case: sent as itself, so it is encoded once, by the bus
        groups: list[list[_Waiting]] = []
        group: list[_Waiting] = []
        used = 0
        for w in waiting:
            size = len(_encode(w.event))
            if group and used + size > self.budget:
                groups.append(group)
                group, used = [], 0
            group.append(w)
            used += size
        if group:
            groups.append(group)
        return groups

    async def _send_group(self, run_id: str, group: list[_Waiting]) -> None:
        metrics.RESULTS_PER_MESSAGE.observe(len(group))
        if len(group) == 1:
            only = group[0]
            await self.publish(only.subject, only.event, only.msg_id)
            return
        # The same events give the same id: a publish retried after a lost ack is dropped.
        digest = hashlib.sha256("\n".join(w.msg_id for w in group).encode()).hexdigest()[:24]
        message = TaskResults(run_id=run_id, events=[w.event for w in group])
        await self.publish(subjects.task_results(run_id), message, f"{run_id}:results:{digest}")

    async def close(self) -> None:
        senders = list(self._senders.values())
        if senders:
            await asyncio.gather(*senders, return_exceptions=True)

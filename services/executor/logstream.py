"""An attempt's stderr, line by line, on its way to ``fy.log.<run>.<unit>`` while the agent runs.

The runtime feeds raw chunks (never blocking it); lines are redacted of the attempt's secrets,
batched (a batch goes when it is a fifth of a second old or 32 KiB big) and published in order.
Past ``max_bytes`` per attempt further lines are dropped and the last batch says so. ``close``
sends what is left, so the log is complete before the attempt's result is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import structlog

from shared.contract.messages import TaskDispatched, TaskLog

log = structlog.get_logger("flowyard.executor.logs")

BATCH_BYTES = 32 * 1024
BATCH_AGE = 0.2
MAX_LINE = 16 * 1024  # a longer "line" (binary garbage, no newlines) is cut into pieces


class LogStream:
    def __init__(
        self,
        task: TaskDispatched,
        publish: Callable[[TaskLog], Awaitable[None]],
        *,
        secrets: Mapping[str, str],
        max_bytes: int,
    ) -> None:
        self.task = task
        self._publish = publish
        self._secrets = [v for v in secrets.values() if len(v) >= 4]
        self._max = max_bytes
        self._partial = b""
        self._lines: list[str] = []
        self._pending_bytes = 0
        self._sent_bytes = 0
        self._truncated = False
        self._told = False  # the truncation has been published
        self._seq = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._pump = asyncio.create_task(self._run())

    def feed(self, chunk: bytes) -> None:
        if self._truncated or not chunk:
            return
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        while len(self._partial) > MAX_LINE:
            complete.append(self._partial[:MAX_LINE])
            self._partial = self._partial[MAX_LINE:]
        for raw in complete:
            self._add(raw)

    def _add(self, raw: bytes) -> None:
        if self._truncated:
            return
        if self._sent_bytes + self._pending_bytes + len(raw) > self._max:
            self._truncated = True
            self._wake.set()
            return
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        for value in self._secrets:
            text = text.replace(value, "[redacted]")
        self._lines.append(text)
        self._pending_bytes += len(raw) + 1
        if self._pending_bytes >= BATCH_BYTES:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=BATCH_AGE)
            self._wake.clear()
            await self._flush()
            if self._closing:
                return

    async def _flush(self) -> None:
        if not self._lines and (not self._truncated or self._told):
            return
        lines, self._lines = self._lines, []
        self._sent_bytes += self._pending_bytes
        self._pending_bytes = 0
        t = self.task
        event = TaskLog(
            run_id=t.run_id,
            node_id=t.node_id,
            item=t.item,
            attempt=t.attempt,
            seq=self._seq,
            lines=lines,
            truncated=self._truncated,
        )
        self._seq += 1
        self._told = self._truncated
        try:
            await self._publish(event)
        except Exception as exc:  # logs are a convenience: never fail the attempt over them
            log.warning("could not publish agent log lines", task=t.key, error=repr(exc), lines=len(lines))

    async def close(self) -> None:
        if self._partial:
            self._add(self._partial)
            self._partial = b""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await self._pump

    def cancel(self) -> None:
        self._pump.cancel()

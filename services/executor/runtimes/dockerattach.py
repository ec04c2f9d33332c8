"""One attach per agent container: its input written while its output is read (docs/adr/0006).

Made before the start so that no output is missed, as ``docker run -i`` does; stdout is kept up to
one byte past the limit (the byte past it tells an overflow), stderr passed on as it comes and its
tail kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiodocker
import aiohttp
import structlog

from .base import LogSink

log = structlog.get_logger("flowyard.executor.docker")


@dataclasses.dataclass(frozen=True, slots=True)
class Attached:
    """The two halves of an agent's attach: writing its input (None: it reads a file), reading its output."""

    stream: Any  # aiodocker's Stream
    feeder: asyncio.Task[None] | None
    reader: asyncio.Task[tuple[bytes, bytes]]

    @property
    def input_done(self) -> bool:
        return self.feeder is None or self.feeder.done()

    async def close(self) -> None:
        if self.feeder is not None:
            self.feeder.cancel()
        self.reader.cancel()
        await self.stream.close()  # idempotent; here, not in the reader, which may never have run


class Attach:
    def __init__(self, *, max_output_bytes: int, stderr_keep: int) -> None:
        self.max_output_bytes = max_output_bytes
        self.stderr_keep = stderr_keep

    async def start(self, container: Any, stdin: bytes | None, on_log: LogSink | None) -> Attached:
        """Start the agent; returns the tasks that feed its stdin (when it does not read a file)
        and read what it prints.

        One attach carries the streams, made before the start so no output is missed, as
        `docker run -i` does.
        """
        stream = container.attach(stdin=stdin is not None, stdout=True, stderr=True)
        await stream._init()
        try:
            await container.start()
        except BaseException:
            await stream.close()
            raise
        # The input is written while the output is read: an agent that prints before it reads
        # would otherwise deadlock with us on full buffers.
        return Attached(
            stream=stream,
            feeder=asyncio.create_task(self.feed(stream, stdin)) if stdin is not None else None,
            reader=asyncio.create_task(self.read(stream, on_log)),
        )

    @staticmethod
    async def feed(stream: Any, stdin: bytes) -> None:
        try:
            await stream.write_in(stdin)
            end_input(stream)  # StdinOnce: the agent sees the end of its input; its output still flows
        except (ConnectionError, OSError):
            pass  # it ended without reading all of its input; its exit says how it went

    async def read(self, stream: Any, on_log: LogSink | None) -> tuple[bytes, bytes]:
        """(stdout up to one byte past the limit, the tail of stderr), until the agent ends."""
        out = bytearray()
        err = bytearray()
        keep_out = self.max_output_bytes + 1  # the byte past the limit tells an overflow
        while (message := await stream.read_out()) is not None:
            if message.stream == 2:
                if on_log is not None:
                    on_log(message.data)
                err += message.data
                if len(err) > 2 * self.stderr_keep:
                    del err[: -self.stderr_keep]
            elif len(out) < keep_out:
                out += message.data[: keep_out - len(out)]
        return bytes(out), bytes(err[-self.stderr_keep :])

    async def captured(self, attached: Attached | None) -> tuple[bytes, bytes] | None:
        """What the attach read, once the agent has ended; None: read the container's log instead."""
        if attached is None:
            return None
        # The attach ends with the container (its init takes every process with it) — unless the
        # agent left part of its input unread: Docker then holds the stream open on it.
        grace = 10.0 if attached.input_done else 0.5
        try:
            return await asyncio.wait_for(asyncio.shield(attached.reader), timeout=grace)
        except (TimeoutError, aiohttp.ClientError, aiodocker.DockerError) as exc:
            if attached.input_done:
                log.warning("the agent's output stream did not end; reading its log", error=repr(exc))
            return None
        finally:
            await attached.close()

    async def follow(self, container: Any, on_log: LogSink) -> None:
        async for line in container.log(stdout=False, stderr=True, follow=True):
            on_log(line.encode() if isinstance(line, str) else line)


def end_input(stream: Any) -> None:
    """Half-close the attach: end of stdin for the agent, while its stdout and stderr keep coming.

    aiodocker's ``Stream.close`` closes both directions; this is its first half.
    """
    transport = stream._resp.connection.transport
    if transport is not None and transport.can_write_eof():
        transport.write_eof()


async def oom_killed(container: Any, exit_code: int) -> bool:
    """Whether the memory limit killed it. The daemon learns of an OOM kill from an event that can
    arrive after `wait` returned, so a SIGKILL exit (137) is looked at again for up to a second."""
    for _ in range(10):
        if (await container.show())["State"].get("OOMKilled"):
            return True
        if exit_code != 137:
            return False
        await asyncio.sleep(0.1)
    return False

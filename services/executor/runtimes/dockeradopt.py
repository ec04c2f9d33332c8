"""Adopting a warm container's attempt after a redelivery (see dockerwarm.py for the files read).

Only a dispatch that may have been handled before looks (a redelivery, or one re-sent after the
de-dup window): the running warm containers of the agent are asked, by an exec of ``cat``, for
the claims they were given; the one holding the attempt's key answers it on the same line of its
answers file, now or once the agent gets there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
import structlog

from shared.contract.messages import TaskDispatched

from .base import Outcome

log = structlog.get_logger("flowyard.executor.docker")

LABEL = "io.flowyard"
FILES = "/tmp/fy-warm"
_POLL_S = 0.2


async def adopt(docker: aiodocker.Docker, task: TaskDispatched, stack_id: str | None, user: str) -> Outcome | None:
    """After a redelivery: the answer a warm container owes this attempt (waited for while the
    agent still works on it), or None when no worker ever got its input."""
    filters = [f"{LABEL}.warm={task.agent.name}", *([f"{LABEL}.stack={stack_id}"] if stack_id else [])]
    began = time.monotonic()
    for summary in await docker.containers.list(filters={"label": filters, "status": ["running"]}):
        container = await docker.containers.get(summary["Id"])
        found = await _claimed(container, task.key, user)
        if found is None:
            continue
        line, deadline = found
        log.info("adopting a warm container's attempt", container=summary["Id"][:12], task=task.key)
        while True:
            answer = await _answer(container, line, user)
            if answer is not None:
                return Outcome(0, answer, b"", time.monotonic() - began)
            # The agent has ended (its exit status is on file) or the container has: no answer comes.
            if await _read(container, f"{FILES}/rc", user) is not None or not await _running(container):
                if (again := await _answer(container, line, user)) is not None:
                    return Outcome(0, again, b"", time.monotonic() - began)
                return Outcome(None, b"", b"", time.monotonic() - began, lost=True)
            if time.time() > deadline:
                with contextlib.suppress(aiodocker.DockerError):
                    await container.kill(signal="SIGKILL")
                return Outcome(None, b"", b"", time.monotonic() - began, timed_out=True)
            await asyncio.sleep(_POLL_S)
    return None


async def _read(container: Any, path: str, user: str) -> bytes | None:
    """A file in the container (None when it is not there, or the container stopped)."""
    try:
        # `cat` of a missing file prints nothing on stdout; `test` tells missing from empty.
        command = ["sh", "-c", 'test -e "$1" && cat "$1"', "read", path]
        exe = await container.exec(command, stdout=True, stderr=False, user=user)
        chunks: list[bytes] = []
        async with exe.start(detach=False) as stream:
            while (message := await stream.read_out()) is not None:
                chunks.append(message.data)
        if (await exe.inspect()).get("ExitCode") != 0:
            return None
        return b"".join(chunks)
    except aiodocker.DockerError:
        return None  # it stopped in between


async def _claimed(container: Any, key: str, user: str) -> tuple[int, float] | None:
    """(the line of its answers that holds this key's answer, the attempt's deadline)."""
    for number, raw in enumerate(((await _read(container, f"{FILES}/claims", user)) or b"").split(b"\n"), start=1):
        parts = raw.decode("utf-8", "replace").split(" ", 2)
        if len(parts) == 3 and parts[2] == key:
            try:
                return number, float(parts[1])
            except ValueError:
                return number, time.time()
    return None


async def _answer(container: Any, line: int, user: str) -> bytes | None:
    lines = ((await _read(container, f"{FILES}/stdout", user)) or b"").split(b"\n")
    return lines[line - 1] + b"\n" if len(lines) > line else None


async def _running(container: Any) -> bool:
    try:
        return bool((await container.show())["State"].get("Running"))
    except aiodocker.DockerError:
        return False


async def sweep_orphans(
    docker: aiodocker.Docker,
    stack_id: str,
    run_status: Callable[[str], Awaitable[str | None]],
    mine: set[str],
    user: str,
) -> int:
    """Warm containers an executor before us left (their input ended: they keep their answers for
    adoption) whose every claim belongs to a run that has ended or is gone: nothing can adopt from
    them any more. ``mine``: this executor's own workers' names, never judged here."""
    removed = 0
    filters = {"label": [f"{LABEL}.warm", f"{LABEL}.stack={stack_id}"], "status": ["running"]}
    for summary in await docker.containers.list(filters=filters):
        if any(name.lstrip("/") in mine for name in summary["Names"] or ()):
            continue
        container = await docker.containers.get(summary["Id"])
        if await _read(container, f"{FILES}/eof", user) is None:
            continue  # still fed by a live executor (another replica's worker)
        claims = ((await _read(container, f"{FILES}/claims", user)) or b"").decode("utf-8", "replace").splitlines()
        runs = {parts[2].split(":", 1)[0] for parts in (c.split(" ", 2) for c in claims) if len(parts) == 3}
        statuses = [await run_status(run_id) for run_id in runs]  # raises when it cannot tell: keep all
        if all(s in (None, "succeeded", "failed", "cancelled") for s in statuses):
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)
                removed += 1
                log.info("removed a warm container no attempt can be adopted from", container=summary["Id"][:12])
    return removed

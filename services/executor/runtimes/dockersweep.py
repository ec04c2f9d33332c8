"""Removing the Docker runtime's leftovers: containers of ended runs, and old exited ones.

Only this stack's containers (label ``io.flowyard.stack``) are judged by their run: several
stacks may share a daemon, and one must never judge another's runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime

import aiodocker
import structlog

log = structlog.get_logger("flowyard.executor.docker")
LABEL = "io.flowyard"


async def forget_run(docker: aiodocker.Docker, run_id: str) -> int:
    removed = 0
    for c in await docker.containers.list(
        all=True, filters={"label": [f"{LABEL}.run={run_id}"], "status": ["exited", "dead", "created"]}
    ):
        with contextlib.suppress(aiodocker.DockerError):
            await c.delete(force=True, v=True)
            removed += 1
    return removed


async def sweep_exited(docker: aiodocker.Docker, cutoff: float) -> int:
    """Exited (or only created) attempt and warm containers that ended before ``cutoff``."""
    removed = 0
    ended = ["exited", "dead", "created"]
    attempts = await docker.containers.list(all=True, filters={"label": [f"{LABEL}.key"], "status": ended})
    warm = await docker.containers.list(all=True, filters={"label": [f"{LABEL}.warm"], "status": ended})
    for c in [*attempts, *warm]:
        info = await c.show()
        # A container only created has no finish time: judge it by its creation, or a sweep
        # could remove one a live executor is about to start.
        ended = epoch(info["State"].get("FinishedAt")) or epoch(info.get("Created"))
        if ended < cutoff:
            with contextlib.suppress(aiodocker.DockerError):
                await c.delete(force=True, v=True)  # v: its workspace volume too
                removed += 1
    return removed


async def sweep_orphans(
    docker: aiodocker.Docker, stack_id: str, run_status: Callable[[str], Awaitable[str | None]]
) -> int:
    """This stack's containers (attempts and egress proxies) whose run has ended or is gone."""
    mine = await docker.containers.list(all=True, filters={"label": [f"{LABEL}.stack={stack_id}"]})
    status: dict[str, str | None] = {}
    removed = 0
    for c in mine:
        run_id = (c["Labels"] or {}).get(f"{LABEL}.run")
        if not run_id:
            continue
        if run_id not in status:
            status[run_id] = await run_status(run_id)  # raises when it cannot tell: keep all
        if status[run_id] in (None, "succeeded", "failed", "cancelled"):
            with contextlib.suppress(aiodocker.DockerError):
                await c.delete(force=True, v=True)
                removed += 1
                log.info("removed the container of a run that has ended or is gone", container=c.id[:12], run=run_id)
    return removed


def epoch(text: str | None) -> float:
    if not text or text.startswith("0001-"):
        return 0.0
    # Docker gives nanoseconds; Python's parser takes up to microseconds.
    main, _, rest = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(main + "+00:00").timestamp() + float("0." + (rest or "0")[:6])

"""Removing the containers a test made itself, by their run ids' prefix: never another tier's
(the chaos tier's stack may run on the same daemon at the same time, and its finished containers
wait there to be adopted)."""

from __future__ import annotations

import contextlib

import aiodocker

from services.executor.runtimes.docker import LABEL, DockerRuntime

# The run ids the Docker tests give their attempts (test_docker_runtime.py, test_agents.py).
PREFIXES = ("rdock", "rkeep", "rdone", "rgone", "ragents")


async def remove_mine(rt: DockerRuntime) -> int:
    removed = 0
    for c in await rt.docker.containers.list(all=True, filters={"label": [f"{LABEL}.run"]}):
        if (c["Labels"] or {}).get(f"{LABEL}.run", "").startswith(PREFIXES):
            with contextlib.suppress(aiodocker.DockerError):
                await c.delete(force=True, v=True)
                removed += 1
    return removed

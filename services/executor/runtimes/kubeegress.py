"""Egress by allowlist on the kubernetes runtime: the attempt's proxy Pod and NetworkPolicy made
before the agent's Pod, its refusals counted after (:mod:`.podegress` says what each object holds)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

import httpx2
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import NetworkPolicy

from shared.config.settings import seconds
from shared.contract.messages import TaskDispatched

from . import egressrules, podegress, podspec


class EgressRefused(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Conflict(Exception):
    """The object exists already (409)."""


class PodApi(Protocol):
    """What of the kubernetes runtime this needs (the runtime is one)."""

    client: Any
    cfg: Any
    egress_image: str

    @property
    def settings(self) -> podspec.PodSettings: ...

    async def _create(self, kind: Any, obj: dict[str, Any]) -> dict[str, Any]: ...

    async def _log(self, name: str, container: str) -> bytes: ...


async def open_egress(rt: PodApi, task: TaskDispatched) -> str:
    """The attempt's proxy Pod and NetworkPolicy made (or found), and the proxy's address once
    it is ready."""
    proxy = podegress.proxy_name(task)
    with contextlib.suppress(Conflict):
        await rt._create(NetworkPolicy, podegress.proxy_policy(task, rt.settings))
    try:
        obj = await rt._create(Pod, podegress.proxy_pod(task, rt.settings, rt.egress_image))
    except Conflict:
        obj = (await rt.client.get(Pod, proxy, namespace=rt.cfg.namespace)).to_dict()
    deadline = podspec.epoch(obj["metadata"].get("creationTimestamp")) + seconds(rt.cfg.start_timeout)
    while (address := podegress.ready_address(obj)) is None:
        if (why := podegress.proxy_failed(obj)) is not None:
            raise EgressRefused(why, retryable=False)
        if time.time() >= deadline:
            raise EgressRefused(
                f"the egress proxy pod {proxy} was not ready within executor.kubernetes.start_timeout "
                f"({rt.cfg.start_timeout}): see `kubectl -n {rt.cfg.namespace} describe pod {proxy}`",
                retryable=True,
            )
        obj = await _next_pod(rt, proxy, obj, deadline - time.time())
    return address


async def _next_pod(rt: PodApi, name: str, obj: dict[str, Any], within: float) -> dict[str, Any]:
    version = obj["metadata"].get("resourceVersion")
    with contextlib.suppress(TimeoutError, httpx2.TransportError, ApiError):
        async with asyncio.timeout(min(within, 30.0)):
            async for _op, new in rt.client.watch(Pod, namespace=rt.cfg.namespace, fields={"metadata.name": name}):
                fresh = new.to_dict()
                if fresh["metadata"].get("resourceVersion") != version:
                    return dict(fresh)
    return dict((await rt.client.get(Pod, name, namespace=rt.cfg.namespace)).to_dict())


async def close_egress(rt: PodApi, task: TaskDispatched) -> list[str]:
    """Count and log what the proxy refused, then remove it and its policy."""
    proxy = podegress.proxy_name(task)
    refused: list[str] = []
    with contextlib.suppress(ApiError, httpx2.TransportError):
        text = (await rt._log(proxy, podegress.PROXY)).decode("utf-8", "replace")
        refused = egressrules.refusals(text, every=True)
    egressrules.report(task.agent.name, refused, pod=podspec.pod_name(task.key))
    with contextlib.suppress(ApiError, httpx2.TransportError):
        await rt.client.delete(Pod, proxy, namespace=rt.cfg.namespace, grace_period=0)
    with contextlib.suppress(ApiError, httpx2.TransportError):
        await rt.client.delete(NetworkPolicy, proxy, namespace=rt.cfg.namespace)
    return refused

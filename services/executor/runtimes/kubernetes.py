"""The Kubernetes runtime: each attempt is one locked-down Pod, named after its key.

The Pod and a Secret of the same name (its input, environment and workspace) are made through the
API with lightkube (async, typed, small; the official client is generated, large and sync-first).
What each holds and why is in :mod:`.podspec` and docs/adr/0012-agents-as-kubernetes-pods.md.

Effectively once: a Pod's name is its attempt's key, so an executor that gets a redelivered
dispatch finds the Pod a previous executor made (409) and follows it instead of starting
another; its input was in the Secret before the Pod existed, so it never depended on the
executor that made it. Pods of ended runs are removed (their Secrets go with them: the Pod owns
its Secret), as are finished ones older than ``retention``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets as pysecrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx2
import structlog
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError, ConfigError
from lightkube.resources.core_v1 import Pod, PodLog, Secret
from lightkube.types import PatchType

from shared.config.settings import KubernetesRuntimeConfig, seconds
from shared.contract.errors import ConfigurationError
from shared.contract.messages import TaskDispatched

from . import kubeegress, podegress, podspec
from .base import LogSink, Outcome, Runtime, WorkspaceCopy, memory_limit

log = structlog.get_logger("flowyard.executor.kubernetes")

_ENDED = ("Succeeded", "Failed")
COLLECT_GRACE_S = 120.0  # after the agent's success, how long its rw workspace may take to be packed


def client_for(cfg: KubernetesRuntimeConfig) -> AsyncClient:
    try:
        config = KubeConfig.from_file(cfg.kubeconfig) if cfg.kubeconfig else KubeConfig.from_env()
    except (ConfigError, OSError) as exc:
        raise ConfigurationError(
            f"executor.runtime kubernetes: no way to reach the API ({exc}); run the executor in the cluster "
            "with its service account (k8s/base), or set executor.kubernetes.kubeconfig"
        ) from None
    return AsyncClient(config, namespace=cfg.namespace, timeout=httpx2.Timeout(30.0, read=None))


class KubernetesRuntime(Runtime):
    name = "kubernetes"

    def __init__(
        self,
        cfg: KubernetesRuntimeConfig,
        *,
        max_output_bytes: int,
        log_tail_bytes: int,
        retention: float = 900.0,
        workspace_max_bytes: int = 64 * 1024 * 1024,
        client: AsyncClient | None = None,
        egress_image: str = "flowyard/egress:latest",
    ) -> None:
        self.cfg = cfg
        self.egress_image = egress_image
        self.max_output_bytes = max_output_bytes
        self.stderr_keep = max(log_tail_bytes * 4, 16384)
        self.retention = retention
        self.workspace_max_bytes = workspace_max_bytes
        self.stack_id: str | None = None
        self.run_status: Callable[[str], Awaitable[str | None]] | None = None
        self._client = client
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            self._client = client_for(self.cfg)
        return self._client

    @property
    def settings(self) -> podspec.PodSettings:
        return podspec.PodSettings(
            namespace=self.cfg.namespace,
            helper_image=self.cfg.helper_image,
            pull_policy=self.cfg.image_pull_policy,
            stack_id=self.stack_id,
        )

    def start_sweeping(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def run(
        self,
        task: TaskDispatched,
        *,
        stdin: bytes,
        env: Mapping[str, str],
        timeout_s: float,
        workspace: WorkspaceCopy | None = None,
        on_log: LogSink | None = None,
    ) -> Outcome:
        try:
            return await self._run(task, stdin=stdin, env=env, timeout_s=timeout_s, workspace=workspace, on_log=on_log)
        except (httpx2.TransportError, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status.code not in (None, 429, 500, 502, 503, 504):
                return _refused(f"the Kubernetes API refused: {_api_message(exc)}")
            # The API is away or overloaded: the attempt may not have started; a retry finds its Pod.
            return Outcome(
                None, b"", b"", 0.0, start_error=f"the Kubernetes API cannot be reached: {exc}", start_retryable=True
            )

    async def _run(
        self,
        task: TaskDispatched,
        *,
        stdin: bytes,
        env: Mapping[str, str],
        timeout_s: float,
        workspace: WorkspaceCopy | None,
        on_log: LogSink | None,
    ) -> Outcome:
        agent = task.agent
        if not agent.image:
            return _refused(f"agent {agent.name!r} has no `image` to run", True)
        if not agent.command:
            return _refused(
                f"agent {agent.name!r} has no `command`: on the kubernetes runtime the executor cannot read an "
                "image's ENTRYPOINT; set `command:` to what the image runs",
                True,
            )
        packed = workspace.data if workspace is not None else None
        if (why := podspec.too_big(stdin, env, packed)) is not None:
            return _refused(why, True)
        if not agent.egress_allow:
            return await self._attempt(task, stdin, env, timeout_s, workspace, on_log)
        try:
            address = await kubeegress.open_egress(self, task)
        except kubeegress.EgressRefused as exc:
            await kubeegress.close_egress(self, task)
            return Outcome(None, b"", b"", 0.0, start_error=str(exc), start_retryable=exc.retryable)
        try:
            return await self._attempt(task, stdin, env, timeout_s, workspace, on_log, proxy=address)
        finally:
            if not self.detach:  # shutting down: the adopting executor closes it
                await asyncio.shield(kubeegress.close_egress(self, task))

    async def _attempt(
        self,
        task: TaskDispatched,
        stdin: bytes,
        env: Mapping[str, str],
        timeout_s: float,
        workspace: WorkspaceCopy | None,
        on_log: LogSink | None,
        *,
        proxy: str | None = None,
    ) -> Outcome:
        agent = task.agent
        assert agent.command is not None
        packed = workspace.data if workspace is not None else None
        name = podspec.pod_name(task.key)
        started = time.monotonic()
        mode = "none" if workspace is None else ("rw" if workspace.writable else "ro")
        want = podspec.pod(
            task,
            self.settings,
            command=list(agent.command),
            env_names=list(env),
            mark=podspec.mark_for(task.key, pysecrets.token_hex(8)),
            workspace=mode,
            timeout_s=timeout_s,
            max_output_bytes=self.max_output_bytes,
            workspace_max_bytes=workspace.max_bytes if workspace is not None else self.workspace_max_bytes,
            extra_labels=podegress.agent_labels(task) if proxy is not None else None,
            extra_env=podegress.proxy_env(proxy) if proxy is not None else None,
        )
        # The Secret first: the kubelet starts nothing before its volume is there, so the agent
        # never runs without its whole input. A Secret already there is an earlier delivery's
        # (the same input: a dispatch is deterministic).
        data = podspec.secret_data(stdin, env, packed)
        with contextlib.suppress(_Conflict):
            await self._create(Secret, podspec.secret(task, self.settings, data))
        try:
            pod = await self._create(Pod, want)
            adopted = False
        except _Conflict:
            pod = (await self.client.get(Pod, name, namespace=self.cfg.namespace)).to_dict()
            adopted = True
            log.info("adopting a pod started before", pod=name, phase=(pod.get("status") or {}).get("phase"))
        await self._own_secret(name, pod)
        mark = pod["metadata"]["annotations"][f"{podspec.LABEL}/mark"]
        follower = asyncio.create_task(self._follow(name, mark, on_log)) if on_log is not None else None
        try:
            state, timed_out = await self._wait(name, pod, timeout_s)
        except asyncio.CancelledError:
            if not self.detach:  # the run ended: nothing may keep running for it
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._delete(name))
            raise
        finally:
            if follower is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(follower), timeout=1.0)
                follower.cancel()
        duration = time.monotonic() - started
        if state.refused is not None:
            await self._delete(name)
            return _refused(state.refused)
        if timed_out:
            await self._delete(name)
            return Outcome(None, b"", b"", duration, timed_out=True)
        if state.exit_code is None:  # the Pod ended without the agent's status: removed, evicted
            return Outcome(None, b"", b"", duration, lost=True)
        raw = await self._log(name, podspec.AGENT)
        out, err, marked = podspec.split_log(
            raw, mark, max_output_bytes=self.max_output_bytes, stderr_keep=self.stderr_keep
        )
        if not marked and state.exit_code == 0:
            # The wrapper never printed the result: not the agent's fault to judge on stdout.
            log.warning("the agent's log holds no result mark", pod=name, adopted=adopted)
        outcome = Outcome(
            state.exit_code,
            out[: self.max_output_bytes],
            err,
            duration,
            stdout_overflow=len(out) > self.max_output_bytes,
            oom=state.oom or (state.exit_code == 137 and not marked),
            memory_limit=memory_limit(agent.resources.memory),
        )
        if mode == "rw" and state.exit_code == 0:
            outcome = await self._take_workspace(name, outcome)
        return outcome

    # --- the API --------------------------------------------------------------------------------

    async def _create(self, kind: Any, obj: dict[str, Any]) -> dict[str, Any]:
        try:
            made = await self.client.create(kind.from_dict(obj), namespace=self.cfg.namespace)
        except ApiError as exc:
            if exc.status.code == 409:
                raise _Conflict from None
            raise
        return dict(made.to_dict())

    async def _own_secret(self, name: str, pod: dict[str, Any]) -> None:
        """The Pod owns its Secret: removing the Pod removes the input and the secrets with it."""
        uid = pod["metadata"].get("uid")
        if not uid:
            return
        owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}
        with contextlib.suppress(ApiError):
            await self.client.patch(
                Secret,
                name,
                {"metadata": {"ownerReferences": [owner]}},
                namespace=self.cfg.namespace,
                patch_type=PatchType.MERGE,
            )

    async def _wait(self, name: str, pod: dict[str, Any], timeout_s: float) -> tuple[podspec.PodState, bool]:
        """Until the agent has ended (and a workspace collector after it), the Pod cannot start, or
        the agent's time is up: (its state, whether it timed out)."""
        state = podspec.read_state(pod)
        start_by = podspec.epoch(pod["metadata"].get("creationTimestamp")) + seconds(self.cfg.start_timeout)
        collect_by: float | None = None
        while not self._done(state):
            if state.exit_code is not None:
                # The agent ended well; only its workspace is still being packed. That is bounded
                # on its own: a collector that never ends must not turn a success into a timeout.
                collect_by = collect_by or time.time() + COLLECT_GRACE_S
                if time.time() >= collect_by:
                    return state, False
                state = await self._next_state(name, state, collect_by - time.time())
                continue
            deadline = start_by if state.started_at is None else podspec.epoch(state.started_at) + timeout_s
            remaining = deadline - time.time()
            if remaining <= 0 or state.deadline:
                if state.started_at is None:
                    return podspec.PodState(
                        state.phase,
                        refused=f"pod {name} did not start within executor.kubernetes.start_timeout "
                        f"({self.cfg.start_timeout}): see `kubectl -n {self.cfg.namespace} describe pod {name}`",
                    ), False
                return state, True
            state = await self._next_state(name, state, remaining)
        return state, False

    @staticmethod
    def _done(state: podspec.PodState) -> bool:
        if state.refused is not None or state.phase in _ENDED:
            return True
        # The agent has ended; a collector still packing its workspace is waited for (only after a
        # success: after a failure nothing is read back).
        return state.exit_code is not None and (state.collected or state.exit_code != 0)

    async def _next_state(self, name: str, state: podspec.PodState, within: float) -> podspec.PodState:
        """The Pod's next state from a watch (a fresh read when the watch ends or breaks)."""
        try:
            async with asyncio.timeout(min(within, 60.0)):
                async for _op, obj in self.client.watch(
                    Pod, namespace=self.cfg.namespace, fields={"metadata.name": name}
                ):
                    new = podspec.read_state(obj.to_dict())
                    if new != state:
                        return new
        except TimeoutError:
            pass
        except (httpx2.TransportError, ApiError) as exc:
            log.info("watch broke; reading the pod", pod=name, error=str(exc))
            await asyncio.sleep(0.5)
        try:
            return podspec.read_state((await self.client.get(Pod, name, namespace=self.cfg.namespace)).to_dict())
        except ApiError as exc:
            if exc.status.code == 404:  # removed from outside
                return podspec.PodState("Failed")
            raise

    async def _follow(self, name: str, mark: str, on_log: LogSink) -> None:
        """The agent's stderr as it writes it, up to the mark (what follows is its stdout).

        The log cannot be read before the container starts (the API answers 400 while the Pod is
        scheduled and its image pulled), and a followed stream can break: either way it is asked
        for again, and a stream opened again starts from the beginning, so the lines already
        passed on are skipped. The runtime cancels this once the attempt has ended."""
        passed = 0  # lines handled so far (passed on, or the one held back)
        held = ""  # a blank line is the wrapper's when the mark follows it: held back until we know
        while True:
            seen = 0
            try:
                async for line in self.client.log(
                    name, namespace=self.cfg.namespace, container=podspec.AGENT, follow=True
                ):
                    if line.rstrip("\n") == mark:
                        return
                    seen += 1
                    if seen <= passed:
                        continue
                    passed = seen
                    if held:
                        on_log(held.encode())
                        held = ""
                    if line == "\n":
                        held = line
                    else:
                        on_log(line.encode())
                return  # the stream ended with the container
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.5)  # not started yet, or the stream broke: ask again

    async def _log(self, name: str, container: str) -> bytes:
        """The container's whole log, byte for byte. lightkube's ``log`` gives decoded lines with a
        newline added to the last one (and ``\r`` read as a line end): an agent's stdout must come
        back exactly, so the same request is sent through lightkube's own client and read raw."""
        inner = self.client._client  # lightkube's GenericClient: its request building and auth
        request = inner.build_adapter_request(
            inner.prepare_request(
                "get", PodLog, name=name, namespace=self.cfg.namespace, params={"container": container}
            )
        )
        response = await inner.send(request)
        inner.raise_for_status(response)
        return bytes(response.content)

    async def _take_workspace(self, name: str, outcome: Outcome) -> Outcome:
        try:
            data = podspec.collected_workspace(await self._log(name, podspec.COLLECT))
        except ValueError as exc:
            return dataclasses.replace(outcome, workspace_error=f"the workspace could not be read back: {exc}")
        if data is None:
            return dataclasses.replace(
                outcome,
                workspace_error="the workspace could not be read back (larger than bus.workspace_max_bytes, or not "
                f"packed within {COLLECT_GRACE_S:.0f}s of the agent's end): see the pod's workspace-out log",
            )
        return dataclasses.replace(outcome, workspace=data)

    async def _delete(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            await self.client.delete(Pod, name, namespace=self.cfg.namespace, grace_period=0)
        with contextlib.suppress(ApiError):
            await self.client.delete(Secret, name, namespace=self.cfg.namespace)

    # --- removing what is no longer needed ------------------------------------------------------

    async def forget_run(self, run_id: str) -> int:
        """The run has ended and its results are recorded: its Pods (and Secrets) can go now."""
        removed = 0
        selector = {f"{podspec.LABEL}/run": podspec.label_value(run_id)}
        async for p in self.client.list(Pod, namespace=self.cfg.namespace, labels=selector):
            await self._delete(p.metadata.name)
            removed += 1
        async for s in self.client.list(Secret, namespace=self.cfg.namespace, labels=selector):
            with contextlib.suppress(ApiError):
                await self.client.delete(Secret, s.metadata.name, namespace=self.cfg.namespace)
        return removed

    async def sweep(self, older_than: float | None = None) -> int:
        """Remove finished Pods older than ``retention``, and this stack's Pods whose run has ended
        or is gone; then Secrets whose Pod was never made (an executor died in between)."""
        cutoff = time.time() - (self.retention if older_than is None else older_than)
        removed = 0
        status: dict[str, str | None] = {}
        names = set()
        managed = {"app.kubernetes.io/managed-by": "flowyard"}
        async for p in self.client.list(Pod, namespace=self.cfg.namespace, labels=managed):
            obj = p.to_dict()
            name = obj["metadata"]["name"]
            names.add(name)
            ended = (obj.get("status") or {}).get("phase") in _ENDED
            created = podspec.epoch(obj["metadata"].get("creationTimestamp"))
            gone = False
            labels = obj["metadata"].get("labels") or {}
            if self.run_status is not None and self.stack_id and labels.get(f"{podspec.LABEL}/stack") == self.stack_id:
                run_id = labels.get(f"{podspec.LABEL}/run", "")
                if run_id not in status:
                    status[run_id] = await self.run_status(run_id)
                gone = status[run_id] in (None, "succeeded", "failed", "cancelled")
            if gone or (ended and created < cutoff):
                await self._delete(name)
                removed += 1
        async for s in self.client.list(Secret, namespace=self.cfg.namespace, labels=managed):
            obj = s.to_dict()
            if (
                obj["metadata"]["name"] not in names
                and podspec.epoch(obj["metadata"].get("creationTimestamp")) < cutoff
            ):
                with contextlib.suppress(ApiError):
                    await self.client.delete(Secret, obj["metadata"]["name"], namespace=self.cfg.namespace)
        return removed

    async def _sweep_forever(self) -> None:
        await asyncio.sleep(10)
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("sweeping agents' pods failed; trying again later", error=str(exc))
            await asyncio.sleep(min(self.retention / 4, 300))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._client is not None:
            await self._client.close()


# The object exists already (409): made by an earlier delivery of the same attempt.
_Conflict = kubeegress.Conflict


def _refused(error: str, by_settings: bool = False) -> Outcome:
    return Outcome(None, b"", b"", 0.0, start_error=error, start_refused=by_settings)


def _api_message(exc: ApiError) -> str:
    status = exc.status
    return f"{status.code} {status.reason}: {status.message}" if status is not None else str(exc)

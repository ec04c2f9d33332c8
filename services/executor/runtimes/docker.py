"""The Docker runtime: each attempt is one locked-down container, named after its key.

Locked down by default: no network (`network: egress` opts into the default bridge), read-only
root file system, a size-capped tmpfs /tmp, every capability dropped, no-new-privileges, the
non-root user 10001, memory (no swap), CPU and pids limits from the agent spec with defaults,
no host mounts at all, and a capped log. The input is a file copied into the container before it
starts and made the agent's stdin by a `/bin/sh` wrapper, so an executor that dies never leaves
an agent with a cut-off input (docs/adr/0010; images without a shell get it through the attach).
One attach carries the output out, stdout and stderr as they come (docs/adr/0006); the log is
read only where the attach cannot serve: by an executor adopting a container another one
started, or after an agent left part of its input unread.

Effectively once: the container is named after the attempt's key (run, node, item, attempt)
and labelled with it. An executor that gets a redelivered dispatch finds the container a
previous executor started, waits for it and reads its result, instead of starting another.
Exited containers are removed after ``retention``; nothing is pulled (no registry is assumed):
a missing image is a clear error. Containers of runs that no longer exist (or have ended) are
removed, running or not, but only those labelled with this stack's id: several stacks may share
a daemon, and one must never judge another's runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiodocker
import structlog

from shared.contract.errors import RetryableError
from shared.contract.messages import TaskDispatched
from shared.docker import client as dockerclient
from shared.state import workspace as ws

from . import dockerinput, dockersweep
from .base import DEFAULT_CPUS, LogSink, Outcome, Runtime, WorkspaceCopy, memory_limit
from .dockerattach import Attach, Attached, oom_killed
from .dockeregress import DockerEgress, EgressError, proxy_env
from .dockerwarm import DockerWarm

log = structlog.get_logger("flowyard.executor.docker")

AGENT_USER = "10001:10001"
DEFAULT_PIDS = 256
TMPFS = "rw,noexec,nosuid,nodev,size=64m"
LABEL = "io.flowyard"
KILL_GRACE_S = 30.0  # how long a SIGKILLed container may take to be reported stopped


def container_name(key: str) -> str:
    # "#" (a foreach item) and "~" (a capability's later candidate) get markers of their own, so
    # that no two keys of a run share a name once ":" becomes "_" (node "n" route 1 vs node "n_1").
    return "fy-" + re.sub(r"[^a-zA-Z0-9_.-]", "_", key.replace("#", "_i").replace("~", "_r"))


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(
        self,
        *,
        max_output_bytes: int,
        log_tail_bytes: int,
        retention: float = 900.0,
        egress_image: str = "flowyard/egress:latest",
        egress_network: str = "bridge",
    ) -> None:
        self.max_output_bytes = max_output_bytes
        self.egress_image = egress_image
        self.egress_network = egress_network
        self._egress: DockerEgress | None = None
        self.stderr_keep = max(log_tail_bytes * 4, 16384)
        self.attach = Attach(max_output_bytes=max_output_bytes, stderr_keep=self.stderr_keep)
        self.retention = retention
        self.detach = False
        # Set by the executor once connected: which stack this is, and a run's status (None: no
        # such run). Without them only the age rule applies.
        self.stack_id: str | None = None
        self.run_status: Callable[[str], Awaitable[str | None]] | None = None
        self._docker: aiodocker.Docker | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._shell: set[str] = set()  # images known to have /bin/sh (checked once each)
        self._no_shell: set[str] = set()  # images without: their input goes through the attach
        self.warm = DockerWarm(self)

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = dockerclient.client()
        return self._docker

    @property
    def egress(self) -> DockerEgress:
        if self._egress is None:
            self._egress = DockerEgress(self.docker, image=self.egress_image, network=self.egress_network)
        return self._egress

    def start_sweeping(self) -> None:
        """Remove leftovers (see ``sweep``) soon after the start, then every so often."""
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    def spec(
        self,
        task: TaskDispatched,
        env: Mapping[str, str],
        *,
        workspace: bool = False,
        command: list[str] | None = None,
        stdin: bytes = b"",
        network: str | None = None,
    ) -> dict[str, Any]:
        """The container; with ``command`` (the agent's, resolved) its input is in the container
        before it starts (the environment, or a file for a large one), else it comes on the attach.
        ``network``: the attempt's internal network behind the egress proxy (``network.allow``)."""
        agent = task.agent
        mode = dockerinput.mode_for(stdin, shell=bool(command))
        res = agent.resources
        base_env = {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
        if workspace:
            base_env["FLOWYARD_WORKSPACE"] = ws.MOUNT
        allowed = network is not None  # network.allow: its own internal network, the proxy the only way out
        if allowed:
            env = {**env, **proxy_env()}
        spec: dict[str, Any] = {
            "Image": agent.image,
            "Entrypoint": agent.command or None,
            "Cmd": [] if agent.command else None,
            "User": AGENT_USER,
            "WorkingDir": ws.MOUNT if workspace else "/tmp",
            "Env": [f"{k}={v}" for k, v in {**base_env, **env}.items()]
            + ([f"{dockerinput.INPUT_ENV}={stdin.decode()}"] if mode == "env" else []),
            "OpenStdin": mode == "stdin",
            "StdinOnce": mode == "stdin",
            "AttachStdin": mode == "stdin",
            "Tty": False,
            "NetworkDisabled": agent.network == "none" and not allowed,
            "Labels": {
                f"{LABEL}.key": task.key,
                f"{LABEL}.run": task.run_id,
                f"{LABEL}.node": task.node_id,
                f"{LABEL}.attempt": str(task.attempt),
                f"{LABEL}.workflow": task.workflow,
                f"{LABEL}.timeout": repr(task.timeout_s),
                f"{LABEL}.input": mode,
                **({f"{LABEL}.stack": self.stack_id} if self.stack_id else {}),
            },
            "HostConfig": {
                "NetworkMode": network or ("none" if agent.network == "none" else "bridge"),
                "ReadonlyRootfs": True,
                "Tmpfs": {"/tmp": TMPFS},
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
                "Memory": memory_limit(res.memory),
                "MemorySwap": memory_limit(res.memory),
                "NanoCpus": int((res.cpus or DEFAULT_CPUS) * 1e9),
                "PidsLimit": res.pids or DEFAULT_PIDS,
                "Privileged": False,
                "Init": True,
                "LogConfig": {"Type": "json-file", "Config": {"max-size": str(self.max_output_bytes * 2 + 65536)}},
            },
        }
        volumes: dict[str, Any] = {}
        if workspace:
            # An anonymous volume, not a host mount: the files are copied in through the API
            # before the start, and it is removed with the container.
            volumes[ws.MOUNT] = {}
        if command:
            spec["Entrypoint"], spec["Cmd"] = dockerinput.wrapped(command, mode)
        if mode == "file":
            volumes[dockerinput.INPUT_DIR] = {}  # the same, for a large input
        if volumes:
            spec["Volumes"] = volumes
        return spec

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
        except Exception as exc:
            if not dockerclient.is_unreachable(exc):
                raise
            # The daemon is down or restarting: the attempt never ran; a retry may well work.
            return Outcome(
                None, b"", b"", 0.0, start_error=dockerclient.unreachable(self.docker, exc), start_retryable=True
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
        if not task.agent.image:
            return _refused(f"agent {task.agent.name!r} has no `image` to run", True)
        if DockerWarm.fits(task) and workspace is None and (command := await self._command(task)) is not None:
            warm = await self.warm.run(task, command, stdin, env, timeout_s, on_log)
            if warm is not None:
                return warm
        name = container_name(task.key)
        if not task.agent.egress_allow:
            return await self._attempt(task, name, stdin, env, timeout_s, workspace, on_log)
        try:
            network = await self.egress.open(name, task.agent.egress_allow, self._labels(task))
        except EgressError as exc:
            await self.egress.close(name, task.agent.name)
            return Outcome(None, b"", b"", 0.0, start_error=str(exc), start_retryable=exc.retryable)
        try:
            return await self._attempt(task, name, stdin, env, timeout_s, workspace, on_log, network=network)
        finally:
            if not self.detach:  # shutting down: the adopting executor closes it
                await asyncio.shield(self.egress.close(name, task.agent.name))

    def _labels(self, task: TaskDispatched) -> dict[str, str]:
        return {
            f"{LABEL}.run": task.run_id,
            f"{LABEL}.workflow": task.workflow,
            **({f"{LABEL}.stack": self.stack_id} if self.stack_id else {}),
        }

    async def _attempt(
        self,
        task: TaskDispatched,
        name: str,
        stdin: bytes,
        env: Mapping[str, str],
        timeout_s: float,
        workspace: WorkspaceCopy | None,
        on_log: LogSink | None,
        *,
        network: str | None = None,
    ) -> Outcome:
        started = time.monotonic()
        command = await self._command(task)
        # Create first: nearly always there is nothing to adopt, and a name already taken (409)
        # is how a redelivery finds the container an earlier executor started.
        container, adopted, refusal = await self._create(
            task, env, name, workspace=workspace is not None, command=command, stdin=stdin, network=network
        )
        if refusal is not None:
            return refusal
        if adopted:
            info = await container.show()
            state = info["State"]
            mode = (info["Config"].get("Labels") or {}).get(f"{LABEL}.input", "stdin")
        else:
            state = {"Status": "created"}
            mode = dockerinput.mode_for(stdin, shell=command is not None)
            image = task.agent.image or ""
            if mode != "stdin" and image not in self._shell:
                if await dockerinput.has_shell(self.docker, container):
                    self._shell.add(image)
                else:
                    # Learnt once per image: its agents get their input through the attach.
                    self._no_shell.add(image)
                    log.warning("image has no /bin/sh: input goes through the attach", image=image)
                    await container.delete(force=True, v=True)
                    container, adopted, refusal = await self._create(
                        task, env, name, workspace=workspace is not None, network=network
                    )
                    if refusal is not None:
                        return refusal
                    mode = "stdin"
        attached: Attached | None = None
        follower: asyncio.Task[None] | None = None
        exit_code: int | None = None
        timed_out = False
        try:
            if state["Status"] == "created":
                if workspace is not None:
                    archive = await asyncio.to_thread(ws.for_container, workspace.data, writable=workspace.writable)
                    await container.put_archive(ws.MOUNT, archive)
                if mode == "file":
                    # Written whole before the start (again, if we adopt one never started).
                    await container.put_archive(dockerinput.INPUT_DIR, dockerinput.archive(stdin))
                attached = await self.attach.start(container, stdin if mode == "stdin" else None, on_log)
                deadline = time.time() + timeout_s
            else:
                log.info("adopting a container started before", container=name, status=state["Status"])
                deadline = dockersweep.epoch(state.get("StartedAt")) + timeout_s
                if on_log is not None:
                    follower = asyncio.create_task(self.attach.follow(container, on_log))
            if state["Status"] in ("created", "running", "restarting", "paused"):
                try:
                    result = await asyncio.wait_for(container.wait(), timeout=max(deadline - time.time(), 0.01))
                    exit_code = result.get("StatusCode")
                except TimeoutError:
                    timed_out = True
                    with contextlib.suppress(aiodocker.DockerError):
                        await container.kill(signal="SIGKILL")
                    try:  # bounded: a kill the daemon could not carry out must not hang the attempt
                        await asyncio.wait_for(container.wait(), timeout=KILL_GRACE_S)
                    except TimeoutError:
                        raise RetryableError(
                            f"container {name} did not stop within {KILL_GRACE_S:.0f}s of SIGKILL after its "
                            "timeout; the daemon may be stuck (`docker ps`, dockerd's log)"
                        ) from None
            else:
                exit_code = state.get("ExitCode")
            captured = await self.attach.captured(attached)
        except asyncio.CancelledError:
            if not self.detach:  # the run ended: nothing may keep running for it
                with contextlib.suppress(Exception):
                    await asyncio.shield(container.kill(signal="SIGKILL"))
            raise
        finally:
            if attached is not None:
                await attached.close()
            if follower is not None:
                # The log ends with the container; give the last lines a moment, never longer.
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(follower), timeout=1.0)
                follower.cancel()
        outcome = await self._collect(container, time.monotonic() - started, exit_code, timed_out, task, captured)
        if workspace is not None and workspace.writable and outcome.exit_code == 0:
            outcome = await self._take_workspace(container, outcome, workspace.max_bytes)
        return outcome

    async def _command(self, task: TaskDispatched) -> list[str] | None:
        """The agent's command, to wrap so it reads its input from a file; None: use the attach
        (an image without a shell, or one whose command cannot be known: it is missing)."""
        image = task.agent.image or ""
        if image in self._no_shell:
            return None
        if task.agent.command:
            return list(task.agent.command)
        present, command = await dockerinput.image_command(self.docker, image)
        return command if present and command else None

    async def _take_workspace(self, container: Any, outcome: Outcome, max_bytes: int) -> Outcome:
        """Read back what an `rw` agent left, streamed, stopping at the limit."""
        # The archive comes uncompressed; allow it several times the packed limit.
        raw_limit = max_bytes * 4
        chunks: list[bytes] = []
        size = 0
        async with self.docker._query(
            f"containers/{container.id}/archive", method="GET", params={"path": ws.MOUNT}
        ) as response:
            async for chunk in response.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > raw_limit:
                    return dataclasses.replace(
                        outcome,
                        workspace_error=f"the agent left more than {raw_limit // (1024 * 1024)} MiB in {ws.MOUNT}, "
                        "over 4 times bus.workspace_max_bytes; clean up build output or raise the limit",
                    )
                chunks.append(chunk)
        try:
            data = await asyncio.to_thread(ws.from_container, b"".join(chunks), max_bytes=max_bytes)
        except ws.WorkspaceError as exc:
            return dataclasses.replace(outcome, workspace_error=str(exc))
        return dataclasses.replace(outcome, workspace=data)

    async def _create(
        self,
        task: TaskDispatched,
        env: Mapping[str, str],
        name: str,
        *,
        workspace: bool,
        command: list[str] | None = None,
        stdin: bytes = b"",
        network: str | None = None,
    ) -> tuple[Any, bool, Outcome | None]:
        """(the container, whether an earlier delivery made it, None), or (None, False, why not)."""
        try:
            return (
                await self.docker.containers.create(
                    self.spec(task, env, workspace=workspace, command=command, stdin=stdin, network=network),
                    name=name,
                ),
                False,
                None,
            )
        except aiodocker.DockerError as exc:
            if dockerclient.is_unreachable(exc):
                raise
            if exc.status == 400:  # e.g. more CPUs than the machine has: the agent's spec is at fault
                return None, False, _refused(f"Docker refused the agent's container settings: {exc.message}", True)
            if exc.status not in (404, 409):
                return None, False, _refused(f"Docker refused the container: {exc.message}")
            # 409: the name is taken, by an earlier delivery or another executor a moment ago.
            # 404: no such image — unless its container is already there (the image went since).
            existing = await self._existing(name)
            if existing is not None:
                return existing, True, None
            if exc.status == 409:  # removed again in between
                return None, False, _refused(f"Docker refused the container: {exc.message}")
            return (
                None,
                False,
                _refused(
                    f"image {task.agent.image!r} is not present on this executor; build it here "
                    "(`flowyard agents build` for the built-in agents, else `docker build`) — nothing is pulled"
                ),
            )

    async def _existing(self, name: str) -> Any:
        try:
            return await self.docker.containers.get(name)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            raise

    async def _collect(
        self,
        container: Any,
        duration: float,
        exit_code: int | None,
        timed_out: bool,
        task: TaskDispatched,
        captured: tuple[bytes, bytes] | None,
    ) -> Outcome:
        try:
            if captured is not None:
                out, err = captured
            else:  # adopted from an earlier executor, or the attach could not tell: read the log
                out = "".join(await container.log(stdout=True, stderr=False)).encode()
                err = "".join(await container.log(stdout=False, stderr=True)).encode()[-self.stderr_keep :]
            # Only a failed attempt needs the state: was it the memory limit that killed it?
            oom = exit_code != 0 and not timed_out and await oom_killed(container, exit_code)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise
            # Removed from outside while it ran (its run ended or vanished): no exit status.
            return Outcome(None, b"", b"", duration, lost=True)
        overflow = len(out) > self.max_output_bytes
        return Outcome(
            None if timed_out else exit_code,
            out[: self.max_output_bytes],
            err,
            duration,
            timed_out=timed_out,
            stdout_overflow=overflow,
            oom=oom,
            memory_limit=memory_limit(task.agent.resources.memory),
        )

    async def _sweep_forever(self) -> None:
        await asyncio.sleep(10)  # leftovers of an earlier life go soon after a start
        while True:
            with contextlib.suppress(Exception):
                await self.sweep()
            await asyncio.sleep(min(self.retention / 4, 300))

    async def forget_run(self, run_id: str) -> int:
        """The run has ended and its results are recorded: its finished containers can go now
        (and its warm ones, under `reuse: run`)."""
        return await self.warm.pools.forget_run(run_id) + await dockersweep.forget_run(self.docker, run_id)

    async def sweep(self, older_than: float | None = None) -> int:
        """Remove exited flowyard containers that finished more than ``retention`` ago, and this
        stack's containers whose run no longer exists or has ended."""
        removed = 0
        if self.stack_id is not None and self.run_status is not None:
            removed += await dockersweep.sweep_orphans(self.docker, self.stack_id, self.run_status)
            removed += await self.warm.sweep_orphans(self.stack_id, self.run_status)
        await self.egress.sweep()
        cutoff = time.time() - (self.retention if older_than is None else older_than)
        return removed + await dockersweep.sweep_exited(self.docker, cutoff)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._docker is not None:
            await self.warm.close()
        if self._egress is not None:
            await self._egress.drain()
        if self._docker is not None:
            await self._docker.close()


def _refused(error: str, by_settings: bool = False) -> Outcome:
    return Outcome(None, b"", b"", 0.0, start_error=error, start_refused=by_settings)

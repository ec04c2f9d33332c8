"""Warm workers on the Docker runtime: one locked-down container per worker, fed line by line.

The container is the one a cold attempt of the agent would get (docs/security.md), started once
with the agent's command under a small ``/bin/sh`` wrapper and one attach held open: each attempt
is a line written on its stdin and a line read from its stdout; stderr is the attempt's log.

Effectively once. Each input travels behind a claim line (``<bytes> <deadline> <attempt key>``)
that the wrapper appends to a claims file before handing the input to the agent, and the
agent's answers are teed into a file beside it (the container's tmpfs), so line *n* of the
answers answers claim *n*. An executor that dies drops the attach: the container's stdin ends
(``StdinOnce``), the agent finishes what it holds and ends, and the wrapper keeps the container
— and so the files — for ``keep`` seconds. The executor that gets the redelivered dispatch looks
in the running warm containers of the agent for its key's claim and reads (or waits for) that
answer instead of running the attempt again; the claim is written in the same write as the
input, so a key found in no claims file never reached an agent. An agent that exits while its
input is still open ends the container at once, with the agent's exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiodocker
import aiohttp
import structlog

from shared.contract.messages import TaskDispatched

from . import dockeradopt, dockerinput, warmio
from .base import MAYBE_STARTED, LogSink, Outcome, memory_limit
from .dockerattach import end_input, oom_killed
from .warm import WarmPools, pool_key, worker_env

log = structlog.get_logger("flowyard.executor.docker")

LABEL = "io.flowyard"
AGENT_USER = "10001:10001"  # as docker.py's: the user the container runs as
SHELL = "/bin/sh"
# $1: how long to keep the container once its input has ended (its answers may be adopted); the
# rest is the agent's command. Fifos, not a pipeline, so that the agent's own exit status is the
# container's; the claims reader stops at the first input it cannot hand on (the agent is gone).
WRAPPER = r"""
d=/tmp/fy-warm; keep=$1; shift
mkdir -p "$d" && : > "$d/claims" && : > "$d/stdout" && mkfifo "$d/in" "$d/out" || exit 125
exec 3<&0  # an asynchronous list's stdin would be /dev/null
tee -a "$d/stdout" < "$d/out" 3<&- &
(
  while IFS= read -r c; do
    printf '%s\n' "$c" >> "$d/claims"
    head -c "${c%% *}" || exit 0
  done
  : > "$d/eof"
) <&3 3<&- > "$d/in" &
exec 0</dev/null 3<&-
"$@" < "$d/in" > "$d/out"; rc=$?
echo "$rc" > "$d/rc"
if [ -e "$d/eof" ]; then wait; sleep "$keep"; fi
exit $rc
"""


@dataclass(eq=False)
class DockerWorker:
    """A started warm container, its attach, and the answers read from it so far."""

    container: Any
    stream: Any  # aiodocker's attach Stream
    max_output_bytes: int
    stderr_keep: int
    name: str = ""
    lines: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    sink: LogSink | None = None  # the current attempt's log
    err: bytearray = field(default_factory=bytearray)  # ... and its tail
    overflow: bool = False
    ended: bool = False
    reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return not self.ended

    def begin(self) -> None:
        self.reader = asyncio.create_task(self._read(), name=f"executor:warm:{self.name}")

    async def _read(self) -> None:
        """Split stdout into answers (one per line, none longer than the limit); stderr goes to
        the attempt that holds the worker."""
        buf = bytearray()
        try:
            while (message := await self.stream.read_out()) is not None:
                if message.stream == 2:
                    if self.sink is not None:
                        self.sink(message.data)
                    self.err += message.data
                    if len(self.err) > 2 * self.stderr_keep:
                        del self.err[: -self.stderr_keep]
                    continue
                buf += message.data
                while 0 <= (cut := buf.find(b"\n")) <= self.max_output_bytes:
                    self.lines.put_nowait(bytes(buf[: cut + 1]))
                    del buf[: cut + 1]
                if cut > self.max_output_bytes or (cut < 0 and len(buf) > self.max_output_bytes):
                    self.overflow = True  # an answer longer than executor.max_output_bytes
                    return
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            log.info("a warm container's attach ended", worker=self.name, error=repr(exc))
        finally:
            self.ended = True
            self.lines.put_nowait(None)

    def kill(self) -> None:
        self.ended = True
        if self.reader is not None:
            self.reader.cancel()

    def abandon(self) -> None:
        # StdinOnce: the end of our stdin is the container's; it finishes and keeps its answers.
        with contextlib.suppress(Exception):
            end_input(self.stream)

    async def stop(self) -> None:
        self.kill()
        with contextlib.suppress(Exception):
            await self.stream.close()
        try:
            await self.container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise


async def ask(
    worker: DockerWorker,
    key: str,
    stdin: bytes,
    *,
    timeout_s: float,
    on_log: LogSink | None,
    memory_limit: int | None = None,
) -> Outcome:
    """Write one claim and input to the worker and read its answer line."""
    began = time.monotonic()
    data = stdin.replace(b"\n", b" ") + b"\n"  # compact JSON holds no raw newline
    claim = f"{len(data)} {time.time() + timeout_s:.3f} {key}\n".encode()
    worker.sink = on_log
    worker.err.clear()
    try:
        await worker.stream.write_in(claim + data)
        line = await asyncio.wait_for(worker.lines.get(), timeout=timeout_s)
    except TimeoutError:
        return Outcome(None, b"", bytes(worker.err[-worker.stderr_keep :]), time.monotonic() - began, timed_out=True)
    except (ConnectionError, OSError):
        line = None
    finally:
        worker.sink = None
    err = bytes(worker.err[-worker.stderr_keep :])
    duration = time.monotonic() - began
    if line is not None:
        return Outcome(0, line, err, duration)
    if worker.overflow:
        return Outcome(0, b"", err, duration, stdout_overflow=True)
    code = await _exit_code(worker.container)
    # SIGKILLed (137): by the memory limit? The daemon says so in the container's state.
    oom = code == 137 and await oom_killed(worker.container, code)
    return Outcome(warmio.exit_status(code), b"", err, duration, lost=code is None, oom=oom, memory_limit=memory_limit)


async def _exit_code(container: Any) -> int | None:
    try:
        result = await asyncio.wait_for(container.wait(), timeout=10.0)
    except (TimeoutError, aiodocker.DockerError):
        return None
    code = result.get("StatusCode")
    return code if isinstance(code, int) else None


def worker_spec(
    spec: dict[str, Any],
    task: TaskDispatched,
    env: Mapping[str, str],
    command: list[str],
    keep_s: float,
    stack_id: str | None,
) -> dict[str, Any]:
    """A cold attempt's container (``spec``), turned into a worker: the wrapper, stdin held open,
    labelled as a worker of its agent rather than as one attempt."""
    labels = {
        f"{LABEL}.warm": task.agent.name,
        f"{LABEL}.workflow": task.workflow,
        **({f"{LABEL}.stack": stack_id} if stack_id else {}),
    }
    base = {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    return {
        **spec,
        "Entrypoint": [SHELL, "-c", WRAPPER, "flowyard-warm", f"{int(keep_s)}"],
        "Cmd": list(command),
        "Env": [f"{k}={v}" for k, v in {**base, **worker_env(env)}.items()],
        "OpenStdin": True,
        "StdinOnce": True,
        "AttachStdin": True,
        "Labels": labels,
    }


def worker_name(agent: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in agent)
    return f"fyw-{safe}-{secrets.token_hex(6)}"


class Host(Protocol):
    """What the warm containers need of the Docker runtime that holds them."""

    docker: aiodocker.Docker
    stack_id: str | None
    retention: float
    max_output_bytes: int
    stderr_keep: int
    detach: bool
    _shell: set[str]
    _no_shell: set[str]

    def spec(self, task: TaskDispatched, env: Mapping[str, str]) -> dict[str, Any]: ...


class DockerWarm:
    """The Docker runtime's warm pools: which agents may go warm, starting workers, attempts on them."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.pools = WarmPools(self._spawn)
        self._commands: dict[str, list[str]] = {}  # pool key -> the command its workers run

    @staticmethod
    def fits(task: TaskDispatched) -> bool:
        """Warm needs the agent's own container and nothing per attempt: no proxy network."""
        return task.agent.warm is not None and bool(task.agent.image) and not task.agent.egress_allow

    async def run(
        self,
        task: TaskDispatched,
        command: list[str],
        stdin: bytes,
        env: Mapping[str, str],
        timeout_s: float,
        on_log: LogSink | None,
    ) -> Outcome | None:
        """The attempt on a warm container; None: none is free (or the image cannot), start it cold."""
        if MAYBE_STARTED.get():
            adopted = await dockeradopt.adopt(self.host.docker, task, self.host.stack_id, AGENT_USER)
            if adopted is not None:
                return adopted
        res = task.agent.resources
        # Workers are shared only by attempts that would get the same container.
        program = "\0".join(
            [task.agent.image or "", task.agent.network, *command, str(res.memory), str(res.cpus), str(res.pids)]
        )
        key = pool_key(task, program, env)
        self._commands[key] = command
        claim = await self.pools.claim(task, key, program, env)
        if claim is None:
            return None
        worker = claim.worker
        handle = worker.handle
        assert isinstance(handle, DockerWorker)
        try:
            limit = memory_limit(task.agent.resources.memory)
            outcome = await ask(handle, task.key, stdin, timeout_s=timeout_s, on_log=on_log, memory_limit=limit)
        except asyncio.CancelledError:
            self.pools.cancelled(worker, detach=self.host.detach)
            raise
        self.pools.settle(claim, outcome)
        return outcome

    async def _spawn(self, task: TaskDispatched, key: str, program: str, env: Mapping[str, str]) -> DockerWorker | None:
        host = self.host
        image = task.agent.image or ""
        spec = worker_spec(host.spec(task, env), task, env, self._commands[key], host.retention, host.stack_id)
        name = worker_name(task.agent.name)
        try:
            container = await host.docker.containers.create(spec, name=name)
        except aiodocker.DockerError as exc:
            log.warning(
                "could not create a warm container; attempts start cold", agent=task.agent.name, error=exc.message
            )
            return None
        try:
            if image not in host._shell:
                if not await dockerinput.has_shell(host.docker, container):
                    host._no_shell.add(image)
                    log.warning("image has no /bin/sh: its warm agent runs cold", image=image)
                    await container.delete(force=True, v=True)
                    return None
                host._shell.add(image)
            stream = container.attach(stdin=True, stdout=True, stderr=True)
            await stream._init()  # before the start: no output is missed
            await container.start()
        except aiodocker.DockerError as exc:
            log.warning(
                "could not start a warm container; attempts start cold", agent=task.agent.name, error=exc.message
            )
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True, v=True)
            return None
        worker = DockerWorker(container, stream, host.max_output_bytes, host.stderr_keep, name=name)
        worker.begin()
        return worker

    async def sweep_orphans(self, stack_id: str, run_status: Callable[[str], Awaitable[str | None]]) -> int:
        mine = {h.name for h in self.pools.handles()}
        return await dockeradopt.sweep_orphans(self.host.docker, stack_id, run_status, mine, AGENT_USER)

    async def close(self) -> None:
        await self.pools.close()

"""The process runtime: the agent's ``command`` as a child process of the executor.

NOT A SANDBOX. It exists for development and engine tests: the agent runs with the executor's
user and can reach its filesystem and network. What it does do: a scrubbed environment (only
what the agent declares), a private working directory, its own process group killed on timeout
or when its run ends, and output capped in size.

Effectively once: every cold attempt gets a spool directory named after its key (run, node, item,
attempt) under ``executor.state_dir``. A small ``sh`` wrapper records its pid, feeds the input,
collects stdout and stderr into files and writes the exit status last. An executor that is
killed leaves the agent running; when the dispatch is redelivered, the executor that gets it (on
the same machine) finds the spool and waits for that agent, or reads the result it already left,
instead of starting the attempt a second time. Spools are removed ``spool_retention`` after they
were written. A warm attempt's spool is one file instead (warmio.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import shutil
import sys
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from shared.contract.messages import TaskDispatched
from shared.state import workspace as ws

from . import warmio
from .base import LogSink, Outcome, Runtime, WorkspaceCopy
from .spoolfiles import is_wrapper, kill_group, read_float, read_from, read_int
from .warm import WarmPools, pool_key
from .warmproc import ProcessSpawner, ProcessWorker

log = structlog.get_logger("flowyard.executor.process")

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
SH = "/bin/sh"
# $1 is the spool; the rest is the agent's command. The exit status is written last, atomically,
# so its presence means "finished"; the pid is written first, so an adopter can find the agent.
WRAPPER = r"""
spool=$1; shift
echo $$ > "$spool/pid.tmp" && mv "$spool/pid.tmp" "$spool/pid"
"$@" < "$spool/input.json" > "$spool/stdout" 2> "$spool/stderr"
echo $? > "$spool/rc.tmp" && mv "$spool/rc.tmp" "$spool/rc"
"""
_POLL = 0.02


@functools.lru_cache(maxsize=256)
def _which(name: str) -> str | None:
    # The executor's own PATH does not change while it runs; a lookup per attempt would. Then
    # flowyard's own install: built-in agents written in Python (flowyard-agent-llm) live there.
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def _watch_children_with_pidfd() -> None:
    """On 3.11, wait for agents through a pidfd instead of a thread per child (as 3.12+ does).

    The default ThreadedChildWatcher starts a thread per spawn, which blocks the event loop for
    a couple of milliseconds each time: all other services in the process wait with it.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # kernel without pidfd: keep the default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        current = asyncio.get_child_watcher()
        if isinstance(current, asyncio.PidfdChildWatcher):
            if not current.is_active():  # attached to a loop that has ended (a second asyncio.run)
                current.attach_loop(asyncio.get_running_loop())
            return
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


def spool_name(key: str) -> str:
    return key.replace(":", ".").replace("#", "@")


class ProcessRuntime(Runtime):
    name = "process"

    def __init__(
        self,
        *,
        max_output_bytes: int,
        log_tail_bytes: int,
        state_dir: str | Path | None = None,
        spool_retention: float = 900.0,
        file_threads: int = 8,
    ) -> None:
        self.max_output_bytes = max_output_bytes
        self.stderr_keep = max(log_tail_bytes * 4, 16384)
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.spool_retention = spool_retention
        # Set while the executor shuts down: running agents are left for the next executor to adopt.
        self.detach = False
        self.warm = WarmPools(ProcessSpawner(self.state_dir, max_output_bytes=max_output_bytes))
        # Spool files are small and many: their own threads, so they never queue behind other
        # blocking work of the process (asyncio's default pool has only cpu_count + 4 threads).
        self._files = ThreadPoolExecutor(max_workers=file_threads, thread_name_prefix="fy-spool")
        self._watcher_ready = False
        self._sweeper: asyncio.Task[None] | None = None

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
        if not self._watcher_ready:
            _watch_children_with_pidfd()
            await asyncio.to_thread(self.state_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
            self._sweeper = asyncio.create_task(self._sweep_forever())
            self._watcher_ready = True
        command = task.agent.command
        if not command:
            return Outcome(
                None,
                b"",
                b"",
                0.0,
                start_error=f"agent {task.agent.name!r} has no `command` to run",
                start_refused=True,
            )
        program = _which(command[0]) if os.sep not in command[0] else command[0]
        if program is None:
            return Outcome(None, b"", b"", 0.0, start_error=f"command {command[0]!r} is not on the executor's PATH")
        spool = self.state_dir / spool_name(task.key)
        if task.agent.warm is not None and workspace is None:
            warm = await self._run_warm(task, program, spool, stdin, env, timeout_s, on_log)
            if warm is not None:
                return warm
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        prepare = functools.partial(_prepare, spool, stdin, time.time() + timeout_s, workspace)
        while not await loop.run_in_executor(self._files, prepare):
            # The spool exists: an executor before us started this attempt.
            adopted = await self._adopt(task, spool)
            if adopted is not None:
                return await self._take_workspace(spool, adopted, workspace)
        work = spool / "work"
        child_env = {"PATH": SAFE_PATH, "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
        cwd = work
        if workspace is not None:
            cwd = spool / "workspace"
            child_env["FLOWYARD_WORKSPACE"] = str(cwd)
        child_env.update(env)
        try:
            proc = await asyncio.create_subprocess_exec(
                SH,
                "-c",
                WRAPPER,
                "flowyard-agent",
                str(spool),
                program,
                *command[1:],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                cwd=cwd,
                env=child_env,
                start_new_session=True,
            )
        except OSError as exc:
            return Outcome(None, b"", b"", 0.0, start_error=f"cannot start {command[0]!r}: {exc.strerror}")
        timed_out = False
        read = [0]  # how much of stderr has been handed on
        follower = asyncio.create_task(self._follow(spool / "stderr", on_log, read)) if on_log is not None else None
        try:
            await asyncio.wait_for(proc.wait(), timeout=timeout_s)
        except TimeoutError:
            timed_out = True
            kill_group(proc.pid)
            await proc.wait()
        except asyncio.CancelledError:
            if not self.detach:  # the run ended: nothing may keep running for it
                kill_group(proc.pid)
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
            raise
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(BaseException):
                    await follower
                # The agent has ended: hand on the last of what it wrote.
                with contextlib.suppress(Exception):
                    last = await loop.run_in_executor(self._files, read_from, spool / "stderr", read[0])
                    if last and on_log is not None:
                        on_log(last)
        kill_group(proc.pid)  # leftovers the agent started in the background
        outcome = await self._collect(spool, time.monotonic() - started, timed_out=timed_out)
        return await self._take_workspace(spool, outcome, workspace)

    async def _run_warm(
        self,
        task: TaskDispatched,
        program: str,
        spool: Path,
        stdin: bytes,
        env: Mapping[str, str],
        timeout_s: float,
        on_log: LogSink | None,
    ) -> Outcome | None:
        """The attempt on a warm worker (see warm.py); None: no worker is free, start it cold."""
        loop = asyncio.get_running_loop()
        base = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", **env}
        claim = await self.warm.claim(task, pool_key(task, program, base), program, base)
        if claim is None:
            return None
        worker = claim.worker
        proc = worker.handle
        assert isinstance(proc, ProcessWorker)
        prepare = functools.partial(warmio.prepare_spool, spool, proc.dir, claim.line, time.time() + timeout_s)
        stderr_from = await loop.run_in_executor(self._files, prepare)
        if stderr_from is None:  # an executor before us (or a second delivery) started it
            self.warm.release(claim, answered=None)
            return await self._adopt(task, spool)
        try:
            outcome = await warmio.ask(
                proc.proc, proc.dir, stdin, timeout_s=timeout_s, on_log=on_log, stderr_from=stderr_from
            )
        except asyncio.CancelledError:
            self.warm.cancelled(worker, detach=self.detach)
            raise
        # Read its log before the worker may go: a dead one's directory is removed with it.
        finish = functools.partial(warmio.finish_spool, spool, proc.dir, outcome, stderr_from, self.stderr_keep)
        err, size = await loop.run_in_executor(self._files, finish)
        worker.log_bytes = size
        self.warm.settle(claim, outcome)
        return dataclasses.replace(outcome, stderr_tail=err)

    async def _follow(self, path: Path, on_log: LogSink, read: list[int]) -> None:
        """Hand on what the agent writes to stderr as it writes it (read from its spool file)."""
        loop = asyncio.get_running_loop()
        while True:
            chunk = await loop.run_in_executor(self._files, read_from, path, read[0])
            if chunk:
                read[0] += len(chunk)
                on_log(chunk)
            else:
                await asyncio.sleep(0.1)

    async def _take_workspace(self, spool: Path, outcome: Outcome, workspace: WorkspaceCopy | None) -> Outcome:
        root = spool / "workspace"
        try:
            if workspace is None or not workspace.writable or outcome.exit_code != 0:
                return outcome
            try:
                data = await asyncio.to_thread(ws.pack_dir, root, max_bytes=workspace.max_bytes)
            except ws.WorkspaceError as exc:
                return dataclasses.replace(outcome, workspace_error=str(exc))
            return dataclasses.replace(outcome, workspace=data)
        finally:
            await asyncio.to_thread(_rmtree, root)

    async def _adopt(self, task: TaskDispatched, spool: Path) -> Outcome | None:
        """Wait for the agent a previous executor started, or read what it left. None: start afresh."""
        log.info("adopting an attempt started before", task=task.key)
        if not await asyncio.to_thread((spool / "rc").exists):
            warm = await warmio.adopt(spool)  # a warm worker's attempt: its answer is on file
            if warm is warmio.AFRESH:
                return None
            if warm is not None:
                return warm
        began = time.monotonic()
        deadline = await asyncio.to_thread(read_float, spool / "deadline")
        while True:
            if await asyncio.to_thread((spool / "rc").exists):
                return await self._collect(spool, time.monotonic() - began, timed_out=False)
            pid = await asyncio.to_thread(read_int, spool / "pid")
            if pid is None:
                if time.monotonic() - began > 5:
                    # Prepared but never started (the executor died in between): start it now.
                    await asyncio.to_thread(shutil.rmtree, spool, True)
                    return None
            elif not await asyncio.to_thread(is_wrapper, pid, spool):
                if await asyncio.to_thread((spool / "rc").exists):
                    continue
                timed_out = deadline is not None and time.time() > deadline
                outcome = await self._collect(spool, time.monotonic() - began, timed_out=timed_out)
                return outcome if timed_out else _lost(outcome)
            elif deadline is not None and time.time() > deadline:
                kill_group(pid)
                return await self._collect(spool, time.monotonic() - began, timed_out=True)
            await asyncio.sleep(_POLL)

    async def _collect(self, spool: Path, duration: float, *, timed_out: bool) -> Outcome:
        return await asyncio.get_running_loop().run_in_executor(
            self._files, _collect, spool, duration, timed_out, self.max_output_bytes, self.stderr_keep
        )

    async def _sweep_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_sweep, self.state_dir, self.spool_retention)
            await asyncio.sleep(min(self.spool_retention / 4, 600))

    async def forget_run(self, run_id: str) -> int:
        return await self.warm.forget_run(run_id)

    async def close(self) -> None:
        await self.warm.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._files.shutdown(wait=False)


def _prepare(spool: Path, stdin: bytes, deadline: float, workspace: WorkspaceCopy | None) -> bool:
    """Create the spool for a fresh start; False when it already exists (adopt instead)."""
    try:
        spool.mkdir(mode=0o700)
    except FileExistsError:
        return False
    (spool / "work").mkdir(mode=0o700)
    if workspace is not None:
        root = spool / "workspace"
        root.mkdir(mode=0o700)
        if workspace.data:
            ws.unpack_to_dir(workspace.data, root)
        if not workspace.writable:
            # Not a sandbox: this only keeps an honest agent from changing what it was lent.
            for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if not os.path.islink(path):
                        os.chmod(path, 0o444)
                os.chmod(dirpath, 0o555)
    (spool / "input.json").write_bytes(stdin)
    (spool / "deadline").write_text(repr(deadline))
    return True


def default_state_dir() -> Path:
    """Spools outlive the executor, not the machine: a per-user directory on tmpfs when there is one."""
    for base in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if base and os.path.isdir(base) and os.access(base, os.W_OK):
            return Path(base) / f"flowyard-{os.getuid()}" / "executor"
    return Path.home() / ".local/state/flowyard/executor"


def _collect(spool: Path, duration: float, timed_out: bool, max_out: int, keep_err: int) -> Outcome:
    rc = read_int(spool / "rc")
    out = b""
    overflow = False
    with contextlib.suppress(FileNotFoundError), (spool / "stdout").open("rb") as f:
        out = f.read(max_out + 1)
        overflow = len(out) > max_out
        out = out[:max_out]
    err = b""
    with contextlib.suppress(FileNotFoundError), (spool / "stderr").open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - keep_err))
        err = f.read()
    # The work directory goes now; the rest stays until swept, for a redelivery to read.
    shutil.rmtree(spool / "work", ignore_errors=True)
    exit_code = None if timed_out or rc is None else (rc if rc < 128 else -(rc - 128))
    return Outcome(exit_code, out, err, duration, timed_out=timed_out, stdout_overflow=overflow)


def _lost(outcome: Outcome) -> Outcome:
    return Outcome(None, outcome.stdout, outcome.stderr_tail, outcome.duration_s, lost=True)


def _sweep(state_dir: Path, retention: float) -> None:
    cutoff = time.time() - retention
    for spool in state_dir.iterdir():
        with contextlib.suppress(OSError):
            stat = spool.stat()
            if stat.st_mtime >= cutoff:
                continue
            if not spool.is_dir():
                spool.unlink()  # a warm attempt's spool (warmio.py)
            # An attempt's spool once it ended; a warm worker's directory once its agent exited.
            elif (spool / "rc").exists() or (spool / "warm").exists():
                _rmtree(spool)


def _rmtree(root: Path) -> None:
    """rmtree that also removes what a read-only workspace made unwritable."""
    for dirpath, _dirs, _files in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(root, ignore_errors=True)

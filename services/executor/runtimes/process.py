"""The process runtime: the agent's ``command`` as a child process of the executor.

NOT A SANDBOX. It exists for development and engine tests: the agent runs with the executor's
user and can reach its filesystem and network. What it does do: a scrubbed environment (only
what the agent declares), a private temporary working directory removed afterwards, its own
process group killed on timeout or cancellation, and death with the executor (PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping

import structlog

from shared.contract import TaskDispatched

from .base import Outcome, Runtime

log = structlog.get_logger("flowyard.executor.process")

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


# The agent must die with the executor (SIGKILL included). util-linux's setpriv sets the
# parent-death signal and then execs the agent: about 0.5 ms, where a Python preexec_fn would
# force a full fork and cost several.
_SETPRIV = shutil.which("setpriv")


def _argv(program: str, args: list[str]) -> list[str]:
    if _SETPRIV and sys.platform.startswith("linux"):
        return [_SETPRIV, "--pdeathsig", "KILL", "--", program, *args]
    return [program, *args]


@functools.lru_cache(maxsize=256)
def _which(name: str) -> str | None:
    # The executor's own PATH does not change while it runs; a lookup per attempt would.
    return shutil.which(name)


def _remove_dir(path: str) -> None:
    try:
        os.rmdir(path)  # most agents leave nothing behind
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


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
        if isinstance(asyncio.get_child_watcher(), asyncio.PidfdChildWatcher):
            return
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


class ProcessRuntime(Runtime):
    name = "process"

    def __init__(self, *, max_output_bytes: int, log_tail_bytes: int) -> None:
        self.max_output_bytes = max_output_bytes
        self.stderr_keep = max(log_tail_bytes * 4, 16384)
        self._cleanups: set[asyncio.Task[None]] = set()
        self._watcher_ready = False

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    async def run(self, task: TaskDispatched, *, stdin: bytes, env: Mapping[str, str], timeout_s: float) -> Outcome:
        if not self._watcher_ready:
            _watch_children_with_pidfd()
            self._watcher_ready = True
        command = task.agent.command
        if not command:
            return Outcome(None, b"", b"", 0.0, start_error=f"agent {task.agent.name!r} has no `command` to run")
        program = _which(command[0]) if os.sep not in command[0] else command[0]
        if program is None:
            return Outcome(None, b"", b"", 0.0, start_error=f"command {command[0]!r} is not on the executor's PATH")
        workdir = await asyncio.to_thread(tempfile.mkdtemp, prefix="fy-agent-")
        child_env = {"PATH": SAFE_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", **env}
        started = time.monotonic()
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *_argv(program, command[1:]),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=workdir,
                    env=child_env,
                    start_new_session=True,
                )
            except OSError as exc:
                return Outcome(None, b"", b"", 0.0, start_error=f"cannot start {command[0]!r}: {exc.strerror}")
            try:
                return await self._supervise(proc, stdin, timeout_s, started)
            finally:
                # Cancelled, or leftovers the agent started in the background: leave nothing behind.
                _kill_group(proc)
                if proc.returncode is None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(proc.wait())
        finally:
            # Off the critical path: the result does not wait for the scratch directory to go.
            cleanup = asyncio.create_task(asyncio.to_thread(_remove_dir, workdir))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)

    async def _supervise(
        self, proc: asyncio.subprocess.Process, stdin: bytes, timeout_s: float, started: float
    ) -> Outcome:
        out = bytearray()
        err = bytearray()
        overflow = False

        async def feed() -> None:
            assert proc.stdin is not None
            # An agent may exit without reading its input; that is its business, not an error.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
                proc.stdin.close()

        async def read_out() -> None:
            nonlocal overflow
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                if len(out) + len(chunk) > self.max_output_bytes:
                    overflow = True
                    continue  # keep draining so the agent is not blocked on a full pipe
                out.extend(chunk)

        async def read_err() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(65536):
                err.extend(chunk)
                if len(err) > self.stderr_keep:
                    del err[: len(err) - self.stderr_keep]

        io = asyncio.gather(feed(), read_out(), read_err(), proc.wait())
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(io), timeout=timeout_s)
        except TimeoutError:
            timed_out = True
            _kill_group(proc)
            # Children of the agent may hold the pipes open; do not wait on them forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(io, timeout=5)
            if not io.done():
                io.cancel()
        except asyncio.CancelledError:
            io.cancel()
            raise
        return Outcome(
            exit_code=proc.returncode,
            stdout=bytes(out),
            stderr_tail=bytes(err),
            duration_s=time.monotonic() - started,
            timed_out=timed_out,
            stdout_overflow=overflow,
        )


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()

"""A warm worker on the process runtime: the agent's process under a small ``sh`` wrapper.

Effectively once, as for cold attempts: the wrapper tees the worker's answers into a file in the
worker's directory, and each attempt's spool names the worker and the line that will hold its
answer before the input is written (warmio.py). An executor that dies closes the workers' stdin;
each finishes the request it holds, leaves the answer in its file and exits, and the executor
that gets the redelivered dispatch reads it from there (``warmio.adopt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from shared.contract.messages import TaskDispatched

from .spoolfiles import kill_group
from .warm import worker_env
from .warmio import make_worker_dir

log = structlog.get_logger("flowyard.executor.warm")

SH = "/bin/sh"
# $1 is the worker's directory; the rest is the agent's command. `tee -p` keeps writing the file
# when the executor's end of the pipe has gone (it died): the answer is kept for the adopter. The
# inputs it was given are kept too: an adopter tells "died holding it" from "never got it".
WRAPPER = r"""
dir=$1; shift
echo $$ > "$dir/pid.tmp" && mv "$dir/pid.tmp" "$dir/pid"
exec 3<&0
tee -a "$dir/stdin" <&3 3<&- |
  { "$@" 2>> "$dir/stderr"; echo $? > "$dir/rc.tmp"; mv "$dir/rc.tmp" "$dir/rc"; } 3<&- |
  tee -p -a "$dir/stdout" 3<&- &
# The shell lets go of the pipes: a dead agent's end of stdout is then the end the executor reads,
# though the input's tee still waits on stdin.
exec 0</dev/null 1>/dev/null 3<&-
wait
"""
STOP_GRACE_S = 5.0


@dataclass(eq=False)
class ProcessWorker:
    """The wrapper's process and the directory that holds its answers, inputs and log."""

    dir: Path
    proc: asyncio.subprocess.Process

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def kill(self) -> None:
        kill_group(self.proc.pid)

    def abandon(self) -> None:
        # EOF: it finishes what it holds and ends; its directory stays for the adopter.
        if self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()

    async def stop(self) -> None:
        """EOF on its stdin asks it to end; after a grace period it is killed, and its files go."""
        self.abandon()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            kill_group(self.proc.pid)
            await self.proc.wait()
        kill_group(self.proc.pid)
        await asyncio.to_thread(shutil.rmtree, self.dir, True)


class ProcessSpawner:
    """Starts warm workers as processes in directories under the runtime's state directory."""

    def __init__(self, state_dir: Path, *, max_output_bytes: int) -> None:
        self.state_dir = state_dir
        self.max_output_bytes = max_output_bytes

    async def __call__(
        self, task: TaskDispatched, key: str, program: str, env: Mapping[str, str]
    ) -> ProcessWorker | None:
        agent = task.agent.name
        home = self.state_dir / f"warm-{agent}-{secrets.token_hex(6)}"
        try:
            await asyncio.to_thread(make_worker_dir, home)
            proc = await asyncio.create_subprocess_exec(
                SH,
                "-c",
                WRAPPER,
                "flowyard-warm",
                str(home),
                program,
                *(task.agent.command or ())[1:],
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                cwd=home / "work",
                env={**worker_env(env), "HOME": str(home / "work"), "TMPDIR": str(home / "work")},
                start_new_session=True,
                limit=self.max_output_bytes + 2,  # a longer line is an overflow, not a hang
            )
        except OSError as exc:
            log.warning("could not start a warm worker; attempts start cold", agent=agent, error=exc.strerror)
            await asyncio.to_thread(shutil.rmtree, home, True)
            return None
        return ProcessWorker(home, proc)

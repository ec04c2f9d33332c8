"""One attempt on a warm worker: its spool, the line written and the line read, and adoption.

The attempt's spool (named after its key, as a cold attempt's) holds ``warm``: the worker's
directory and the line of its answers file that will hold this attempt's answer, written before
the input is. Once answered, the spool gets ``stdout`` and ``rc`` like a cold attempt's, so a
redelivery reads the same result. An executor that finds a spool with ``warm`` and no ``rc``
waits for that line, or for the worker to end without it (lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

from .base import LogSink, Outcome
from .spoolfiles import is_wrapper, kill_group, read_float, read_from, read_int

_POLL = 0.02


def make_worker_dir(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True)
    (home / "work").mkdir(mode=0o700)
    (home / "stderr").touch()
    (home / "stdout").touch()


def prepare_spool(spool: Path, worker_dir: Path, line: int, deadline: float) -> int | None:
    """Record which worker and line answer this attempt; None when the spool exists (adopt it).
    Returns how much the worker has written to stderr so far: this attempt's log starts there."""
    try:
        spool.mkdir(mode=0o700)
    except FileExistsError:
        return None
    try:
        stderr_from = (worker_dir / "stderr").stat().st_size
    except FileNotFoundError:
        stderr_from = 0
    (spool / "deadline").write_text(repr(deadline))
    (spool / "warm.tmp").write_text(f"{worker_dir}\n{line}\n{stderr_from}\n")
    os.replace(spool / "warm.tmp", spool / "warm")
    return stderr_from


def finish_spool(spool: Path, worker_dir: Path, outcome: Outcome, stderr_from: int, keep: int) -> tuple[bytes, int]:
    """Keep the answer where a redelivery finds it; (this attempt's stderr tail, stderr's size)."""
    err = b""
    size = stderr_from
    with contextlib.suppress(FileNotFoundError), (worker_dir / "stderr").open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(stderr_from, size - keep))
        err = f.read()
    if outcome.exit_code is not None:
        (spool / "stdout").write_bytes(outcome.stdout)
        (spool / "stderr").write_bytes(err)
        (spool / "rc.tmp").write_text(str(outcome.exit_code if outcome.exit_code >= 0 else 128 - outcome.exit_code))
        os.replace(spool / "rc.tmp", spool / "rc")
    return err, size


async def ask(
    proc: asyncio.subprocess.Process,
    worker_dir: Path,
    stdin: bytes,
    *,
    timeout_s: float,
    on_log: LogSink | None,
    stderr_from: int,
) -> Outcome:
    """Write one input line to the worker and read its answer line."""
    began = time.monotonic()
    follower = asyncio.create_task(_follow(worker_dir / "stderr", on_log, stderr_from)) if on_log else None
    # Compact JSON holds no raw newline; a pretty-printed input would be flattened, not split.
    data = stdin.replace(b"\n", b" ") + b"\n"
    try:
        line = await asyncio.wait_for(_exchange(proc, data), timeout=timeout_s)
    except TimeoutError:
        return Outcome(None, b"", b"", time.monotonic() - began, timed_out=True)
    except ValueError:  # the answer is longer than executor.max_output_bytes
        return Outcome(0, b"", b"", time.monotonic() - began, stdout_overflow=True)
    except (BrokenPipeError, ConnectionResetError):
        line = b""
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(BaseException):
                await follower
    duration = time.monotonic() - began
    if not line.endswith(b"\n"):  # it ended before answering
        code = await _exit_code(proc, worker_dir)
        return Outcome(code, line, b"", duration, lost=code is None)
    return Outcome(0, line, b"", duration)


async def _exchange(proc: asyncio.subprocess.Process, data: bytes) -> bytes:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data)
    await proc.stdin.drain()
    return await proc.stdout.readline()


async def _exit_code(proc: asyncio.subprocess.Process, worker_dir: Path) -> int | None:
    """Why a worker stopped answering: its agent's exit status, as the wrapper recorded it."""
    # The wrapper records the status as the agent ends (the wrapper itself may linger on stdin).
    for _ in range(100):
        rc = await asyncio.to_thread(read_int, worker_dir / "rc")
        if rc is not None or proc.returncode is not None:
            return _status(rc if rc is not None else await asyncio.to_thread(read_int, worker_dir / "rc"))
        await asyncio.sleep(0.05)
    return None


def _status(rc: int | None) -> int | None:
    if rc is None:
        return None
    if rc == 0:
        return 1  # it exited "successfully" without answering: this attempt failed
    return rc if rc < 128 else -(rc - 128)


# adopt(): the attempt never reached its worker; its spool is gone and it is to be started anew.
AFRESH = Outcome(None, b"", b"", 0.0, start_error="never started")


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


async def adopt(spool: Path) -> Outcome | None:
    """Wait for the answer a worker started by an executor before us owes this attempt.

    The spool has `warm` and no `rc`. Returns the outcome, written into the spool when it is an
    answer, or None when the spool is not a warm one after all."""
    marker = await asyncio.to_thread(_read_marker, spool)
    if marker is None:
        return None
    worker_dir, line, stderr_from = marker
    deadline = await asyncio.to_thread(read_float, spool / "deadline")
    began = time.monotonic()
    while True:
        answer = await asyncio.to_thread(answer_line, worker_dir, line)
        if answer is not None:
            outcome = Outcome(0, answer, b"", time.monotonic() - began)
            # Its log from where this attempt's began: never an earlier attempt's (another run's).
            err, _ = await asyncio.to_thread(finish_spool, spool, worker_dir, outcome, stderr_from, 16384)
            return Outcome(0, answer, err, outcome.duration_s)
        pid = await asyncio.to_thread(read_int, worker_dir / "pid")
        ended = await asyncio.to_thread((worker_dir / "rc").exists)
        if ended or pid is None or not await asyncio.to_thread(is_wrapper, pid, worker_dir):
            if await asyncio.to_thread(answer_line, worker_dir, line) is not None:
                continue  # it answered as it ended
            if await asyncio.to_thread(_lines, worker_dir / "stdin") < line:
                # The executor died between naming the worker and writing the input: it never
                # ran, so it starts afresh.
                await asyncio.to_thread(shutil.rmtree, spool, True)
                return AFRESH
            return Outcome(None, b"", b"", time.monotonic() - began, lost=True)
        if deadline is not None and time.time() > deadline:
            kill_group(pid)
            return Outcome(None, b"", b"", time.monotonic() - began, timed_out=True)
        await asyncio.sleep(_POLL)


def _read_marker(spool: Path) -> tuple[Path, int, int] | None:
    try:
        where, line, stderr_from = (spool / "warm").read_text().split("\n")[:3]
        return Path(where), int(line), int(stderr_from)
    except (FileNotFoundError, ValueError):
        return None


def answer_line(worker_dir: Path, line: int) -> bytes | None:
    """Line ``line`` (1-based) of a worker's answers, once it has been written whole."""
    try:
        data = (worker_dir / "stdout").read_bytes()
    except FileNotFoundError:
        return None
    lines = data.split(b"\n")
    # A whole line is followed by a newline: the last element is what is still being written.
    return lines[line - 1] + b"\n" if len(lines) > line else None


async def _follow(path: Path, on_log: LogSink | None, offset: int) -> None:
    """Hand on what the worker writes to stderr while it holds this attempt."""
    assert on_log is not None
    while True:
        chunk = await asyncio.to_thread(read_from, path, offset)
        if chunk:
            offset += len(chunk)
            on_log(chunk)
        else:
            await asyncio.sleep(0.1)

"""One attempt on a warm worker: its spool, the line written and the line read, and adoption.

A warm attempt's spool is one file (named after its key, where a cold attempt's directory would
be), so an attempt costs two small writes rather than a directory of files:

* its first line, written before the input is, names the worker's directory, the line of the
  worker's answers file that will hold this attempt's answer, where the attempt's log starts in
  the worker's stderr, and the deadline. The file is created exclusively: a second delivery (or
  a cold start of the same attempt) finds it and adopts instead. A first line that is not whole
  means the executor died before writing it, so before the input was written: start afresh.
* once answered, one more line holds the exit status, the answer and the log tail, so a
  redelivery reads the same result even after the worker is gone.

An executor that finds a spool without an answer waits for that line of the worker's answers,
or for the worker to end without it (lost). Spools of the earlier layout (a directory holding
``warm``, then ``stdout``, ``stderr`` and ``rc``) are still read, so attempts in flight across an
upgrade are adopted, not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

import msgspec

from .base import LogSink, Outcome
from .spoolfiles import is_wrapper, kill_group, read_float, read_from, read_int

_POLL = 0.02


def make_worker_dir(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True)
    (home / "work").mkdir(mode=0o700)
    (home / "stderr").touch()
    (home / "stdout").touch()


class _Claim(msgspec.Struct, frozen=True):
    worker: str
    line: int
    stderr_from: int
    deadline: float


class _Answer(msgspec.Struct, frozen=True):
    exit_code: int
    stdout: bytes
    stderr: bytes
    overflow: bool = False


_claim_decoder = msgspec.json.Decoder(_Claim)
_answer_decoder = msgspec.json.Decoder(_Answer)


def prepare_spool(spool: Path, worker_dir: Path, line: int, deadline: float) -> int | None:
    """Record which worker and line answer this attempt; None when the spool exists (adopt it).
    Returns how much the worker has written to stderr so far: this attempt's log starts there."""
    try:
        stderr_from = (worker_dir / "stderr").stat().st_size
    except FileNotFoundError:
        stderr_from = 0
    claim = msgspec.json.encode(_Claim(str(worker_dir), line, stderr_from, deadline)) + b"\n"
    try:
        fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    try:
        os.write(fd, claim)  # one write: a crash leaves the line whole or visibly cut
    finally:
        os.close(fd)
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
        record_answer(spool, _Answer(outcome.exit_code, outcome.stdout, err, outcome.stdout_overflow))
    return err, size


def record_answer(spool: Path, answer: _Answer) -> None:
    if spool.is_dir():  # the earlier layout: the files a cold attempt leaves, the status last
        (spool / "stdout").write_bytes(answer.stdout)
        (spool / "stderr").write_bytes(answer.stderr)
        code = answer.exit_code
        (spool / "rc.tmp").write_text(str(code if code >= 0 else 128 - code))
        os.replace(spool / "rc.tmp", spool / "rc")
        return
    fd = os.open(spool, os.O_RDWR | os.O_APPEND)
    try:
        # After a line cut by a crash, start a line of our own: a reader skips what is not whole.
        size = os.fstat(fd).st_size
        lead = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        os.write(fd, lead + msgspec.json.encode(answer) + b"\n")
    finally:
        os.close(fd)


def recorded(spool: Path) -> Outcome | None:
    """The answer a warm attempt's spool file holds, if it holds one."""
    try:
        lines = spool.read_bytes().split(b"\n")[1:-1]  # after the claim; the last is not whole
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    for raw in lines:
        with contextlib.suppress(msgspec.DecodeError):
            answer = _answer_decoder.decode(raw)
            return Outcome(answer.exit_code, answer.stdout, answer.stderr, 0.0, stdout_overflow=answer.overflow)
    return None


def remove_spool(spool: Path) -> None:
    if spool.is_dir():
        shutil.rmtree(spool, True)
    else:
        with contextlib.suppress(FileNotFoundError):
            spool.unlink()


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
            return exit_status(rc if rc is not None else await asyncio.to_thread(read_int, worker_dir / "rc"))
        await asyncio.sleep(0.05)
    return None


def exit_status(rc: int | None) -> int | None:
    """An attempt's exit code from a wrapper's (or container's) status: 128+n is signal n."""
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
    """Read, or wait for, the answer a worker started by an executor before us owes this attempt.

    Returns the outcome (recorded in the spool when it is an answer), :data:`AFRESH` when the
    attempt never reached its worker, or None when the spool is not a warm one after all."""
    answered = await asyncio.to_thread(recorded, spool)
    if answered is not None:
        return answered
    marker = await asyncio.to_thread(_read_marker, spool)
    if marker is None:
        if await asyncio.to_thread(spool.is_file):
            # Created, but its first line was never written whole: the input was not sent either.
            await asyncio.to_thread(remove_spool, spool)
            return AFRESH
        return None
    worker_dir, line, stderr_from, deadline = marker
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
                await asyncio.to_thread(remove_spool, spool)
                return AFRESH
            return Outcome(None, b"", b"", time.monotonic() - began, lost=True)
        if deadline is not None and time.time() > deadline:
            kill_group(pid)
            return Outcome(None, b"", b"", time.monotonic() - began, timed_out=True)
        await asyncio.sleep(_POLL)


def _read_marker(spool: Path) -> tuple[Path, int, int, float | None] | None:
    """(worker directory, answer line, where its log starts, deadline) of a warm spool."""
    try:
        if spool.is_dir():  # the earlier layout
            where, line, stderr_from = (spool / "warm").read_text().split("\n")[:3]
            return Path(where), int(line), int(stderr_from), read_float(spool / "deadline")
        first = spool.read_bytes().split(b"\n", 1)
        if len(first) < 2:
            return None  # not whole
        claim = _claim_decoder.decode(first[0])
        return Path(claim.worker), claim.line, claim.stderr_from, claim.deadline
    except (FileNotFoundError, NotADirectoryError, ValueError, msgspec.DecodeError):
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

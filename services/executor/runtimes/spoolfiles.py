"""Small reads of the files a process-runtime attempt or warm worker leaves, and its process group.

Shared by the process runtime (process.py) and its warm workers (warmio.py): both keep a pid, a
deadline and an exit status in files, so that the executor after a crash can find them.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def read_from(path: Path, offset: int, limit: int = 256 * 1024) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def read_float(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_wrapper(pid: int, directory: Path) -> bool:
    """Is ``pid`` alive and our wrapper for this spool or worker directory (not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and str(directory).encode() in cmdline


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)

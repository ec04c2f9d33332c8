"""Runtimes run an agent attempt: JSON on stdin, one JSON object on stdout, logs on stderr."""

from __future__ import annotations

from shared.errors import ConfigurationError

from .base import Outcome, Runtime
from .process import ProcessRuntime

__all__ = ["Outcome", "ProcessRuntime", "Runtime", "make_runtime"]


def make_runtime(
    name: str,
    *,
    max_output_bytes: int,
    log_tail_bytes: int,
    state_dir: str | None = None,
    spool_retention: float = 900.0,
    concurrency: int = 8,
) -> Runtime:
    if name == "process":
        return ProcessRuntime(
            max_output_bytes=max_output_bytes,
            log_tail_bytes=log_tail_bytes,
            state_dir=state_dir,
            spool_retention=spool_retention,
            file_threads=min(max(concurrency, 2), 32),
        )
    raise ConfigurationError(
        f"runtime {name!r} is not available in this build of flowyard (the Docker runtime is tracked "
        "separately); use --runtime process"
    )

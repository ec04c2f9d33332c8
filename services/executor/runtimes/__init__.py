"""Runtimes run an agent attempt: JSON on stdin, one JSON object on stdout, logs on stderr."""

from __future__ import annotations

from shared.errors import ConfigurationError

from .base import Outcome, Runtime
from .docker import DockerRuntime
from .process import ProcessRuntime

__all__ = ["DockerRuntime", "Outcome", "ProcessRuntime", "Runtime", "make_runtime"]


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
    if name == "docker":
        return DockerRuntime(
            max_output_bytes=max_output_bytes, log_tail_bytes=log_tail_bytes, retention=spool_retention
        )
    raise ConfigurationError(f"unknown runtime {name!r}; use process or docker")

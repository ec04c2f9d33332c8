"""Runtimes run an agent attempt: JSON on stdin, one JSON object on stdout, logs on stderr."""

from __future__ import annotations

from shared.config.settings import KubernetesRuntimeConfig
from shared.contract.errors import ConfigurationError
from shared.telemetry.metrics import VERSION

from .base import Outcome, Runtime
from .docker import DockerRuntime
from .kubernetes import KubernetesRuntime
from .process import ProcessRuntime

__all__ = ["DockerRuntime", "KubernetesRuntime", "Outcome", "ProcessRuntime", "Runtime", "make_runtime"]


def make_runtime(
    name: str,
    *,
    max_output_bytes: int,
    log_tail_bytes: int,
    state_dir: str | None = None,
    spool_retention: float = 900.0,
    concurrency: int = 8,
    kubernetes: KubernetesRuntimeConfig | None = None,
    workspace_max_bytes: int = 64 * 1024 * 1024,
    egress_image: str = "",
    egress_network: str = "bridge",
) -> Runtime:
    egress_image = egress_image or f"flowyard/egress:{VERSION}"
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
            max_output_bytes=max_output_bytes,
            log_tail_bytes=log_tail_bytes,
            retention=spool_retention,
            egress_image=egress_image,
            egress_network=egress_network,
        )
    if name == "kubernetes":
        return KubernetesRuntime(
            kubernetes or KubernetesRuntimeConfig(),
            max_output_bytes=max_output_bytes,
            log_tail_bytes=log_tail_bytes,
            retention=spool_retention,
            workspace_max_bytes=workspace_max_bytes,
            egress_image=egress_image,
        )
    raise ConfigurationError(f"unknown runtime {name!r}; use process, docker or kubernetes")

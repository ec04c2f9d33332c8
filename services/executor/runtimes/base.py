from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from shared.contract.messages import TaskDispatched
from shared.workflow.model import memory_bytes

# An agent's limits when its spec names none, whatever runs it (a container, a pod).
DEFAULT_MEMORY = 512 * 1024 * 1024
DEFAULT_CPUS = 1.0


def memory_limit(text: str | None) -> int:
    return memory_bytes(text) if text else DEFAULT_MEMORY


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one attempt, before it is judged (see ``handlers.judge``)."""

    exit_code: int | None
    stdout: bytes
    stderr_tail: bytes
    duration_s: float
    timed_out: bool = False
    stdout_overflow: bool = False
    start_error: str | None = None  # the agent could not be started at all
    start_retryable: bool = False  # ... for a reason that may pass (the Docker daemon restarting)
    start_refused: bool = False  # ... because of the agent's own settings, not the infrastructure
    lost: bool = False  # the agent's process vanished without an exit status
    oom: bool = False  # killed for using more memory than its limit
    memory_limit: int | None = None
    workspace: bytes | None = None  # what an `rw` agent left in its workspace (a packed version)
    workspace_error: str | None = None  # ... or why it could not be kept


@dataclass(frozen=True, slots=True)
class WorkspaceCopy:
    """The files an agent gets at its workspace: a packed version (None: start empty)."""

    data: bytes | None
    writable: bool
    max_bytes: int


# Set by the executor for an attempt whose dispatch may have been handled before (a redelivery,
# or one re-sent after the de-dup window): a runtime that cannot tell from a name alone whether
# the attempt was started (a warm container's claims) looks only then.
MAYBE_STARTED: ContextVar[bool] = ContextVar("flowyard_maybe_started", default=False)

# Called with each chunk of stderr as the agent writes it; must not block (it queues).
LogSink = Callable[[bytes], None]


class Runtime(ABC):
    name: str
    detach: bool = False  # shutting down: leave running agents for the next executor to adopt

    @abstractmethod
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
        """Run one attempt to completion (or timeout); cancellation must stop the agent."""

    async def forget_run(self, run_id: str) -> int:
        """The run has ended: remove what is kept for adopting its attempts. How many went."""
        return 0

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the runtime holds (connections, temp dirs)."""

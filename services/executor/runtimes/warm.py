"""Warm workers: an agent started once that answers one request per line, kept in pools.

An agent with ``spec.warm`` is started as a worker that reads one JSON input per line on stdin
and writes one JSON object per line on stdout, in order; stderr is its log (docs/agents.md,
"Warm agents"). The pool keeps up to ``max`` of them per agent and environment (its secrets and
provider included: a worker never sees another environment's secrets) and hands each attempt to
an idle one, so an attempt costs a line written and a line read instead of a process start.

* ``reuse: run`` (the default): a worker is bound to the first run it serves and stopped when
  that run ends; it never takes another run's input. Spares (``min``) have served no one yet.
* Beyond ``max`` busy workers an attempt starts cold, as without ``spec.warm``: never a queue.
* A worker that dies, times out or overflows fails that attempt only and is replaced.

The pool decides which worker serves; what a worker is — a process (warmproc.py) or a container
(dockerwarm.py) — is its runtime's ``Handle``. Each keeps its answers where an executor that
gets a redelivered dispatch can read them, so an executor killed mid-request loses nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from shared.contract.messages import TaskDispatched, WarmUse
from shared.telemetry import metrics

from .base import Outcome

log = structlog.get_logger("flowyard.executor.warm")

# What the worker is told: it is warm. Per-attempt values (run, node, attempt) are not in its
# environment, which was fixed when it started; the timeout is, and keys the pool like the rest.
PER_ATTEMPT = frozenset({"FLOWYARD_RUN_ID", "FLOWYARD_NODE_ID", "FLOWYARD_ATTEMPT"})
# A worker is replaced once its answers or its log pass this: its files live on tmpfs.
RETIRE_BYTES = 8 * 1024 * 1024
STOP_WAIT_S = 10.0  # how long closing waits for workers being stopped


class Handle(Protocol):
    """One started worker, as its runtime keeps it."""

    name: str  # for the log

    @property
    def alive(self) -> bool: ...

    def kill(self) -> None:
        """Stop it at once: what it holds is abandoned."""

    def abandon(self) -> None:
        """End its input and let it finish the request it holds (its answer stays readable)."""

    async def stop(self) -> None:
        """Ask it to end, then make sure it has, and remove what it leaves."""


# (the attempt that needs it, its pool key, the program, its environment) -> a started worker
Spawn = Callable[[TaskDispatched, str, str, Mapping[str, str]], Awaitable[Handle | None]]


def pool_key(task: TaskDispatched, program: str, env: Mapping[str, str]) -> str:
    """Workers are shared only by attempts of the same agent, command and environment (a digest:
    the secrets in it are never kept as text here)."""
    digest = hashlib.sha256()
    for part in (task.agent.name, program, *(task.agent.command or ())[1:]):
        digest.update(part.encode() + b"\0")
    for name in sorted(env):
        if name not in PER_ATTEMPT:
            digest.update(f"{name}={env[name]}".encode() + b"\0")
    return f"{task.agent.name}:{digest.hexdigest()[:24]}"


def worker_env(env: Mapping[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in env.items() if k not in PER_ATTEMPT}, "FLOWYARD_WARM": "1"}


@dataclass(eq=False)
class Worker:
    key: str
    agent: str
    handle: Handle
    run_id: str | None = None  # the run it is bound to (reuse: run); None: a spare, or reuse: agent
    answered: int = 0  # lines it has written: the next answer is line answered + 1
    busy: bool = False
    served: bool = False  # has taken a request (a spare has not)
    answers_bytes: int = 0  # what its answers file holds
    log_bytes: int = 0  # what its stderr file holds (as last read)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.handle.alive


@dataclass(frozen=True, slots=True)
class Claim:
    worker: Worker
    line: int  # the line of the worker's stdout file that will hold this attempt's answer


class WarmPools:
    """The warm workers of one runtime, by pool key; ``spawn`` starts one."""

    def __init__(self, spawn: Spawn) -> None:
        self.spawn = spawn
        self._workers: dict[str, list[Worker]] = {}
        self._settings: dict[str, WarmUse] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._starting: dict[str, int] = {}  # workers being started, by pool key

    # --- handing out workers -------------------------------------------------------------------

    async def claim(self, task: TaskDispatched, key: str, program: str, env: Mapping[str, str]) -> Claim | None:
        """An idle worker for this attempt (started if need be), marked busy; None: start cold."""
        warm = task.agent.warm
        assert warm is not None
        self._settings[key] = warm
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="executor:warm-reaper")
        bound = task.run_id if warm.reuse == "run" else None
        workers = self._workers.setdefault(key, [])
        for dead in [w for w in workers if not w.alive and not w.busy]:
            self._stop(dead)  # its directory goes with it
        chosen = next((w for w in workers if not w.busy and w.run_id == bound and w.served), None)
        chosen = chosen or next((w for w in workers if not w.busy and not w.served), None)
        if chosen is None and len(workers) >= warm.max and warm.reuse == "run":
            # Full, and an idle one is bound to another run: it makes room (a run that waits
            # for an approval would otherwise keep its workers from everyone).
            other = min((w for w in workers if not w.busy), key=lambda w: w.last_used, default=None)
            if other is not None:
                self._stop(other)
        if chosen is None and len(workers) + self._starting.get(key, 0) < warm.max:
            chosen = await self._start(task, key, program, env)
        if chosen is None:
            metrics.WARM_REQUESTS.labels(task.agent.name, "cold").inc()
            return None
        chosen.busy = True
        chosen.served = True
        chosen.run_id = bound
        self._count(task.agent.name)
        self._top_up(task, key, program, env)
        return Claim(chosen, chosen.answered + 1)

    def release(self, claim: Claim, *, answered: bool | None) -> None:
        """The attempt is over. A worker that did not answer cleanly is not used again; None:
        it was never given the input."""
        worker = claim.worker
        worker.busy = False
        worker.last_used = time.monotonic()
        if answered:
            worker.answered = claim.line
        elif answered is not None:
            self._stop(worker)
        self._count(worker.agent)

    def handles(self) -> list[Handle]:
        """Every worker this pool holds (busy or idle)."""
        return [w.handle for ws in self._workers.values() for w in ws]

    def settle(self, claim: Claim, outcome: Outcome) -> None:
        """The attempt has an outcome: free the worker (or replace it), count it, retire it if grown."""
        worker = claim.worker
        answered = outcome.exit_code == 0 and not outcome.stdout_overflow
        if outcome.timed_out:
            self.kill(worker)
        else:
            self.release(claim, answered=answered)
        worker.answers_bytes += len(outcome.stdout)
        self.retire_if_grown(worker)
        self.counted(worker.agent, "answered" if answered else "failed")

    def cancelled(self, worker: Worker, *, detach: bool) -> None:
        """The attempt was cancelled: shutting down, the worker finishes and keeps its answer for
        the next executor; else the run ended, and nothing may keep running for it."""
        if detach:
            self.abandon(worker)
        else:
            self.kill(worker)

    def counted(self, agent: str, outcome: str) -> None:
        metrics.WARM_REQUESTS.labels(agent, outcome).inc()

    def retire_if_grown(self, worker: Worker) -> None:
        """Replace a worker whose files (on tmpfs) have grown past RETIRE_BYTES."""
        if worker.answers_bytes + worker.log_bytes > RETIRE_BYTES and not worker.busy:
            self._stop(worker)
            self._count(worker.agent)

    def _top_up(self, task: TaskDispatched, key: str, program: str, env: Mapping[str, str]) -> None:
        """Keep `min` spares started, in the background: the next run's first attempt is warm too."""
        warm = self._settings[key]
        workers = self._workers[key]
        spares = sum(1 for w in workers if not w.served) + self._starting.get(key, 0)
        for _ in range(min(warm.min - spares, warm.max - len(workers) - self._starting.get(key, 0))):
            self._later(self._start(task, key, program, env))

    async def _start(self, task: TaskDispatched, key: str, program: str, env: Mapping[str, str]) -> Worker | None:
        # Counted while it starts, so that concurrent claims and top-ups never pass `max`.
        self._starting[key] = self._starting.get(key, 0) + 1
        try:
            return await self._spawn(task, key, program, env)
        finally:
            self._starting[key] -= 1

    async def _spawn(self, task: TaskDispatched, key: str, program: str, env: Mapping[str, str]) -> Worker | None:
        handle = await self.spawn(task, key, program, env)
        if handle is None:
            return None
        worker = Worker(key, task.agent.name, handle)
        self._workers.setdefault(key, []).append(worker)
        self._count(worker.agent)
        log.info("warm worker started", agent=worker.agent, worker=handle.name)
        return worker

    # --- stopping ------------------------------------------------------------------------------

    def _stop(self, worker: Worker) -> None:
        workers = self._workers.get(worker.key, [])
        if worker in workers:
            workers.remove(worker)
        self._later(self._end(worker))

    def _later(self, work: Coroutine[object, object, object]) -> None:
        task: asyncio.Task[object] = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _end(self, worker: Worker) -> None:
        """(A worker left to finish for the next executor is `abandon`ed instead.)"""
        try:
            await worker.handle.stop()
        except Exception as exc:  # e.g. the Docker daemon went away: its sweeper removes it later
            log.warning("could not stop a warm worker", agent=worker.agent, worker=worker.handle.name, error=repr(exc))
        else:
            log.info("warm worker stopped", agent=worker.agent, worker=worker.handle.name)

    def kill(self, worker: Worker) -> None:
        """Kill it now (a timeout, the run ended): what it was doing is abandoned."""
        worker.handle.kill()
        self._stop(worker)
        self._count(worker.agent)

    def abandon(self, worker: Worker) -> None:
        """The executor is shutting down with this worker busy: let it finish and keep its answer
        on file for the next executor to adopt; it ends when its stdin closes."""
        workers = self._workers.get(worker.key, [])
        if worker in workers:
            workers.remove(worker)
        worker.handle.abandon()
        self._count(worker.agent)

    async def forget_run(self, run_id: str) -> int:
        """The run ended: its bound workers go (reuse: run never hands them to another run)."""
        ended = [w for ws in self._workers.values() for w in ws if w.run_id == run_id]
        for worker in ended:
            if worker.busy:
                worker.handle.kill()
            self._stop(worker)
            self._count(worker.agent)
        return len(ended)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for key, workers in list(self._workers.items()):
                warm = self._settings.get(key)
                if warm is None:
                    continue
                idle = sorted((w for w in workers if not w.busy), key=lambda w: w.last_used)
                spares = sum(1 for w in workers if not w.served)
                for worker in idle:
                    if not worker.alive:
                        self._stop(worker)
                    elif now - worker.last_used > warm.idle_s and (worker.served or spares > warm.min):
                        spares -= 0 if worker.served else 1
                        self._stop(worker)
                    else:
                        continue
                    self._count(worker.agent)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        workers = [w for ws in self._workers.values() for w in ws]
        self._workers.clear()
        await asyncio.gather(*(self._end(w) for w in workers), return_exceptions=True)
        if self._background:
            await asyncio.wait(self._background, timeout=STOP_WAIT_S)

    def _count(self, agent: str) -> None:
        mine = [w for ws in self._workers.values() for w in ws if w.agent == agent]
        busy = sum(1 for w in mine if w.busy)
        metrics.WARM_WORKERS.labels(agent, "busy").set(busy)
        metrics.WARM_WORKERS.labels(agent, "idle").set(len(mine) - busy)

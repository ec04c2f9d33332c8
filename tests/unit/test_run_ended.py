"""The executor hears that a run ended: attempts still working stop, one reporting its result does not."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace

from services.executor.service import ExecutorService
from shared.bus.delivery import Delivery
from shared.config.services import ExecutorConfig
from shared.config.settings import Config
from shared.contract import subjects
from shared.contract.messages import AgentSnapshot, Event, TaskDispatched, TaskStarted
from shared.state.values import Values
from shared.telemetry import metrics


class GatedReporter:
    """Holds every result until the test opens the gate; records what was sent."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started_sent = asyncio.Event()
        self.result_sent = asyncio.Event()
        self.sent: list[Event] = []

    async def send(self, subject: str, event: Event, msg_id: str) -> None:
        if isinstance(event, TaskStarted):
            self.started_sent.set()
        else:
            self.result_sent.set()
            await self.gate.wait()
        self.sent.append(event)


def service(tmp_path: Path, agent: str) -> tuple[ExecutorService, GatedReporter, TaskDispatched]:
    config = Config(executor=ExecutorConfig(runtime="process", state_dir=str(tmp_path / "spool")))
    executor = ExecutorService(config)
    executor.values = Values(None, config.bus.inline_limit)  # type: ignore[arg-type]  # small values only
    executor.workspaces = None  # type: ignore[assignment]  # no node here uses a workspace
    reporter = GatedReporter()
    executor.reporter = reporter  # type: ignore[assignment]
    snapshot = AgentSnapshot(name=agent, command=[sys.executable, "-c", "print('{\"ok\": true}')"])
    task = TaskDispatched(run_id="r1", workflow="w", node_id="d", attempt=1, agent=snapshot, input=None, timeout_s=30)
    return executor, reporter, task


def counted(agent: str, outcome: str) -> float:
    return metrics.ATTEMPTS.labels(agent, outcome)._value.get()


async def test_an_attempt_whose_result_is_on_its_way_finishes_when_its_run_ends(tmp_path: Path) -> None:
    # The scheduler may end the run on this very result before the executor hears it stored.
    executor, reporter, task = service(tmp_path, "run-ended-reporting")
    before = counted(task.agent.name, "succeeded")
    attempt = asyncio.create_task(executor._attempt(task, Delivery("s", 1, 1, {})))
    sent = asyncio.create_task(reporter.result_sent.wait())
    await asyncio.wait([attempt, sent], return_when=asyncio.FIRST_COMPLETED)
    assert sent.done(), attempt.exception()  # the attempt did not end before reporting
    await executor._on_run_ended(SimpleNamespace(subject=subjects.run_finished("r1", "succeeded")))  # type: ignore[arg-type]
    reporter.gate.set()
    await attempt
    assert counted(task.agent.name, "succeeded") == before + 1  # finished and counted, not "stopped"
    assert [type(e).__name__ for e in reporter.sent] == ["TaskStarted", "TaskSucceeded"]
    await asyncio.gather(*executor._cleanups)
    await executor.runtime.close()


async def test_an_attempt_still_running_stops_when_its_run_ends(tmp_path: Path) -> None:
    executor, reporter, task = service(tmp_path, "run-ended-running")
    task.agent.command[:] = [sys.executable, "-c", "import time; time.sleep(60)"]
    attempt = asyncio.create_task(executor._attempt(task, Delivery("s", 1, 1, {})))
    await reporter.started_sent.wait()  # the attempt is under way; its agent may still be starting
    await executor._on_run_ended(SimpleNamespace(subject=subjects.run_finished("r1", "failed")))  # type: ignore[arg-type]
    await attempt  # returns: the agent is stopped, nothing is reported
    assert not any(type(e).__name__ in ("TaskSucceeded", "TaskFailed") for e in reporter.sent)
    assert counted(task.agent.name, "succeeded") == 0
    await asyncio.gather(*executor._cleanups)
    await executor.runtime.close()

"""Wires ``fy.run.*.requested`` to :func:`plan_run` and publishes the plan or the rejection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import structlog

from shared.bus.delivery import Delivery
from shared.contract import subjects
from shared.contract.errors import PermanentError
from shared.contract.messages import AnyEvent, RunPlanned, RunRequested
from shared.service.host import Service
from shared.state import agents, executors
from shared.workflow.builtin import builtin_agents
from shared.workflow.model import AgentDoc

from .drafts import Plans
from .planning import plan_run
from .triggering import Triggers

log = structlog.get_logger("flowyard.planner")


class PlannerService(Service):
    name = "planner"

    async def setup(self) -> None:
        await asyncio.to_thread(builtin_agents)  # read the shipped agents' files once, off the loop
        self.consume(
            "planner",
            subjects.RUNS_STREAM,
            subjects.PLANNER_FILTERS,
            self.handle,
            concurrency=self.config.planner.concurrency,
        )
        self.plans = Plans(self.bus, self.config, self._load_agents, self._runtimes)
        self.consume(
            "planner-drafts",
            subjects.RUNS_STREAM,
            subjects.PLAN_FILTERS,
            self.plans.handle,
            concurrency=self.config.planner.drafts,
        )
        self.triggers = Triggers(self.bus)
        self._runtimes_seen: set[str] = set()
        self._runtimes_at = -1e9
        self.consumers.append(self.triggers.consumer())

    async def start(self) -> None:
        await super().start()
        await self.triggers.start()

    async def stop(self) -> None:
        await self.triggers.stop()
        await super().stop()

    async def _runtimes(self) -> set[str]:
        """The runtimes of the live executors (cached for two seconds: read on every plan)."""
        now = time.monotonic()
        if now - self._runtimes_at > 2.0:
            self._runtimes_seen = {e.runtime for e in await executors.live(self.bus)}
            self._runtimes_at = now
        return self._runtimes_seen

    async def _load_agents(self, names: Iterable[str] | None) -> dict[str, AgentDoc]:
        wanted = set(names) if names is not None else None
        found = await agents.lookup(self.bus, wanted)
        shipped = builtin_agents()
        # Registered agents win; the ones flowyard ships fill in the rest.
        return {**{n: a for n, a in shipped.items() if wanted is None or n in wanted}, **found}

    async def handle(self, event: AnyEvent, delivery: Delivery) -> None:
        if not isinstance(event, RunRequested):
            raise PermanentError(f"the planner handles run requests only, got {type(event).__name__}")
        try:
            subjects.check_token(event.run_id, "run id")
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        result = await plan_run(event, self._load_agents, await self._runtimes(), self.config.agents.priorities)
        if isinstance(result, RunPlanned):
            subject = subjects.run_planned(event.run_id)
            log.info("run planned", run_id=event.run_id, workflow=result.workflow, nodes=len(result.plan.nodes))
        else:
            subject = subjects.run_rejected(event.run_id)
            log.info("run rejected", run_id=event.run_id, workflow=event.workflow, errors=result.errors)
        # One id for either outcome: a re-planned request can never be both planned and rejected.
        await self.bus.publish(subject, result, msg_id=f"{event.run_id}:plan")

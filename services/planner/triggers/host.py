"""What a cron schedule needs from the planner's triggers: the bus, the trigger state bucket, and
a way to count and record what a firing did.

A protocol, so the schedules (which decide *when* a trigger fires) and the triggers (which decide
*what* is active and record outcomes) do not import each other: ``Triggers`` satisfies it.
"""

from __future__ import annotations

from typing import Protocol

from nats.js.kv import KeyValue

from shared.bus.connection import Bus
from shared.state.triggering import Outcome

from .active import Active


class TriggerHost(Protocol):
    bus: Bus
    state_kv: KeyValue

    def count(self, active: Active, outcome: Outcome) -> None: ...

    async def record(
        self,
        active: Active,
        outcome: Outcome,
        reason: str,
        *,
        key: str = "",
        run_id: str | None = None,
        window: float | None = None,
    ) -> None: ...

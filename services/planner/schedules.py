"""Cron triggers at run time: one loop per active schedule, each time fired once across replicas.

Every replica computes the same times (:mod:`shared.workflow.schedules`); the run id comes from
the time, so replicas send identical requests that JetStream de-duplicates, and the schedule's
last time (KV ``fy_trigger_state``) moves by compare-and-set, so only one replica counts the fire
and a restarted planner knows what it missed (``catchup_window``).
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

import msgspec
import nats.js.errors
import structlog

from shared.api import runs
from shared.contract.envelope import now_rfc3339
from shared.contract.errors import ValidationFailed
from shared.workflow.schedules import catchup, jitter_s, last_time, next_time

from .triggers.active import Active
from .triggers.host import TriggerHost
from .triggers.start import request_for, run_id_for

log = structlog.get_logger("flowyard.planner.triggers")
_enc = msgspec.json.Encoder()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class _CronState(msgspec.Struct, kw_only=True):
    last_scheduled: float = 0.0  # epoch seconds of the last time fired (or skipped)
    last_run_id: str | None = None


_dec_cron = msgspec.json.Decoder(_CronState)


class Schedules:
    def __init__(self, triggers: TriggerHost) -> None:
        self.triggers = triggers
        self._tasks: dict[str, tuple[Active, asyncio.Task[None]]] = {}

    async def stop(self) -> None:
        for _, task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in self._tasks.values()), return_exceptions=True)
        self._tasks.clear()

    def sync(self, active: list[Active]) -> None:
        """Run a loop per active cron trigger; stop those no longer active (or of an older version)."""
        wanted = {a.id: a for a in active if a.trigger.cron is not None}
        for tid, (active, task) in list(self._tasks.items()):
            if tid not in wanted or wanted[tid].version != active.version:
                task.cancel()
                del self._tasks[tid]
        for tid, active in wanted.items():
            if tid not in self._tasks:
                task = asyncio.create_task(self._loop(active), name=f"planner:cron:{tid}")
                self._tasks[tid] = (active, task)

    async def _cron_state(self, active: Active) -> tuple[_CronState | None, int | None]:
        try:
            entry = await self.triggers.state_kv.get(f"cron.{_hash(active.id)}")
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, None
        return (_dec_cron.decode(entry.value) if entry.value else None), entry.revision

    async def _loop(self, active: Active) -> None:
        cron = active.trigger.cron
        assert cron is not None
        while True:
            try:
                state, _ = await self._cron_state(active)
                now = datetime.now(UTC)
                last = datetime.fromtimestamp(state.last_scheduled, UTC) if state else None
                missed = catchup(cron, last, now)
                if missed is not None:
                    await self._fire(active, missed, caught_up=True)
                elif state is None:
                    # A new schedule starts from now; nothing before it is "missed".
                    await self._advance(active, last_time(cron, now), None)
                # While this loop lives, each time follows the one before it: a loop woken late
                # (a busy machine) fires the times it is late for instead of skipping them; after a
                # restart, what was missed is catch-up's business (above), not this loop's.
                previous = datetime.now(UTC)
                while True:
                    state, _ = await self._cron_state(active)
                    stored = datetime.fromtimestamp(state.last_scheduled, UTC) if state else previous
                    due = next_time(cron, max(previous, stored))
                    wait = (due - datetime.now(UTC)).total_seconds() + jitter_s(cron, active.id, due)
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._fire_until_sent(active, due)
                    previous = due
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("schedule interrupted; resuming", trigger=active.id, error=repr(exc))
                await asyncio.sleep(1)

    async def _fire_until_sent(self, active: Active, due: datetime) -> None:
        """A time that could not be fired (NATS away past the publish retries) is tried again, late,
        rather than lost."""
        while True:
            try:
                await self._fire(active, due)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "scheduled time not fired yet; trying again", trigger=active.id, due=str(due), error=repr(exc)
                )
                await asyncio.sleep(1)

    async def _advance(self, active: Active, scheduled: datetime, run_id: str | None) -> bool:
        """Move the schedule's last time to ``scheduled``; False when another replica got there first."""
        key = f"cron.{_hash(active.id)}"
        for _ in range(50):
            state, revision = await self._cron_state(active)
            if state is not None and state.last_scheduled >= scheduled.timestamp():
                return False
            new = _CronState(last_scheduled=scheduled.timestamp(), last_run_id=run_id or (state and state.last_run_id))
            try:
                if revision is None:
                    await self.triggers.state_kv.create(key, _enc.encode(new))
                else:
                    await self.triggers.state_kv.update(key, _enc.encode(new), last=revision)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        return False

    async def _fire(self, active: Active, scheduled: datetime, *, caught_up: bool = False) -> None:
        cron = active.trigger.cron
        assert cron is not None
        state, _ = await self._cron_state(active)
        if state is not None and state.last_scheduled >= scheduled.timestamp():
            return  # another replica fired (or skipped) this time
        iso = scheduled.isoformat().replace("+00:00", "Z")
        key = f"{active.id}@{iso}"
        if state is not None and state.last_run_id and cron.overlap != "allow":
            view = await runs.get_view(self.triggers.bus, state.last_run_id)
            if view is not None and view.status not in ("succeeded", "failed", "cancelled"):
                if cron.overlap == "skip":
                    if await self._advance(active, scheduled, state.last_run_id):
                        await self.triggers.record(
                            active,
                            "skipped",
                            f"{iso}: run {state.last_run_id} of the previous time still goes",
                            key=key,
                            run_id=state.last_run_id,
                        )
                    return
                await runs.request_cancel(
                    self.triggers.bus,
                    state.last_run_id,
                    user="trigger:cron",
                    reason=f"the schedule's next time ({iso}) came",
                )
        run_id = run_id_for(int(scheduled.timestamp() * 1000), key)
        trigger = {"type": "cron", "scheduled_at": iso, "fired_at": now_rfc3339()}
        try:
            request = request_for(active, trigger, run_id, now_rfc3339())
        except ValidationFailed as exc:
            if await self._advance(active, scheduled, None):
                await self.triggers.record(active, "refused", "; ".join(exc.problems), key=key)
            return
        # Every replica sends the same run with the same de-dup id; one run starts.
        await runs.publish_request(self.triggers.bus, request)
        if await self._advance(active, scheduled, run_id):
            self.triggers.count(active, "fired")
            log.info("schedule fired", trigger=active.id, scheduled_at=iso, run_id=run_id, caught_up=caught_up)

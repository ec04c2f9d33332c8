"""The planner's triggers at run time: the registry watched, events captured, schedules kept.

* Active triggers follow the registry: a watch on ``fy_workflows`` switches a workflow's triggers
  on (or off) within a second of an apply (or delete), with a full reload every 30 s as a net.
* NATS triggers: the workflows' subjects are captured in ``FY_TRIGGERS`` (kept in step here), so
  events published while every planner is down wait in the stream. Alerts arrive there from the
  gateway (``fy.alert.alertmanager``). One durable consumer, shared by the replicas, reads both.
* One event starts at most one run per trigger: its de-duplication key (the event's id, the
  alert's fingerprint and start, the scheduled time) is claimed in ``fy_trigger_runs`` with the run
  id; a redelivered event (the planner died before it acked) publishes that same run again, which
  JetStream and the scheduler drop if it was already sent.
* Schedules: every replica computes the same times; the run id comes from the time, the request's
  de-dup id from the run id, and the schedule's last time moves by compare-and-set, so each time
  fires once however many planners run or restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
import uuid
from collections import defaultdict
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog

from shared.api import runs
from shared.bus import capture
from shared.bus.connection import Bus
from shared.bus.consumer import Consumer
from shared.bus.delivery import Delivery
from shared.contract import subjects
from shared.contract.envelope import MSG_ID, now_rfc3339
from shared.contract.errors import ValidationFailed
from shared.formats.durations import parse_duration
from shared.state import registry
from shared.state.triggering import Outcome, PlannerCounts, TriggerCounts, TriggerOutcome
from shared.telemetry import metrics

from .schedules import Schedules
from .triggers import events, storm
from .triggers.active import Active, from_version, nats_subjects
from .triggers.start import plan_for, plan_id_for, request_for, run_id_for

log = structlog.get_logger("flowyard.planner.triggers")

_METRICS = metrics.TRIGGERS
_enc = msgspec.json.Encoder()
_SUPPRESSED = "-"  # a claim that started no run: the event was suppressed by max_runs


_dec_window = msgspec.json.Decoder(storm.Window)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class Triggers:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.active: dict[str, list[Active]] = {}  # workflow -> its triggers
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.counts: dict[str, TriggerCounts] = defaultdict(TriggerCounts)
        self.schedules = Schedules(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._synced: list[str] | None = None
        self._ready = asyncio.Event()  # the active set is loaded: events may be matched
        self._built_seq = -1  # the registry's stream sequence the active set was read at

    # --- lifecycle ------------------------------------------------------------------------------

    def consumer(self) -> Consumer:
        return Consumer(
            self.bus,
            durable="planner-triggers",
            stream=subjects.TRIGGERS_STREAM,
            filters=[],
            decode=lambda data: data,
            handler=self.handle,
            concurrency=16,
        )

    async def start(self) -> None:
        self.runs_kv = await self.bus.kv(subjects.TRIGGER_RUNS_BUCKET)
        self.state_kv = await self.bus.kv(subjects.TRIGGER_STATE_BUCKET)
        await self.reload()
        self._ready.set()
        self._tasks.append(asyncio.create_task(self._watch(), name="planner:registry-watch"))
        self._tasks.append(asyncio.create_task(self._flush_counts(), name="planner:trigger-counts"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, self.schedules.stop(), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.state_kv.delete(f"counts.{self.instance}")

    # --- following the registry ---------------------------------------------------------------

    async def _registry_seq(self) -> int:
        info = await self.bus.js.stream_info(f"KV_{subjects.WORKFLOWS_BUCKET}")
        return info.state.last_seq

    async def reload_if_stale(self) -> None:
        """Before letting an event go unmatched: reload if the registry moved since we last read it
        (a replica's watch can lag the apply that another process just did)."""
        if await self._registry_seq() != self._built_seq:
            await self.reload()

    async def reload(self) -> None:
        self._built_seq = await self._registry_seq()
        heads = await registry.listing(self.bus)
        found: dict[str, list[Active]] = {}
        for head in heads:
            version = await registry.get_version(self.bus, head.name, head.version)
            if version is None:
                continue
            try:
                triggers = from_version(version)
            except Exception as exc:  # validated at apply; a bad stored version must not stop the rest
                log.error("workflow's triggers cannot be read", workflow=head.name, error=str(exc))
                continue
            if triggers:
                found[head.name] = triggers
        if {k: [a.id + str(a.version) for a in v] for k, v in found.items()} != {
            k: [a.id + str(a.version) for a in v] for k, v in self.active.items()
        }:
            log.info("triggers active", triggers=sorted(a.id for v in found.values() for a in v))
        self.active = found
        await self._sync_capture()
        self.schedules.sync(self.all())

    async def _watch(self) -> None:
        while True:
            try:
                kv = await self.bus.kv(subjects.WORKFLOWS_BUCKET)
                watcher = await kv.watchall(include_history=False)
                try:
                    while True:
                        try:
                            entry = await watcher.updates(timeout=30)
                        except nats.errors.TimeoutError:
                            entry = None
                        if entry is None or "." not in entry.key:
                            await self.reload()  # a head moved (or every 30 s, as a net)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("registry watch lost; watching again", error=repr(exc))
                await asyncio.sleep(1)

    async def _sync_capture(self) -> None:
        """FY_TRIGGERS captures exactly the active NATS subjects (plus alerts)."""
        wanted = sorted(nats_subjects(self.all()))
        if wanted == self._synced:
            return
        try:
            await capture.sync(self.bus, wanted)
            self._synced = wanted
        except nats.js.errors.BadRequestError as exc:
            log.error("cannot capture trigger subjects", subjects=wanted, error=str(exc))

    def all(self) -> list[Active]:
        return [a for v in self.active.values() for a in v]

    # --- events ----------------------------------------------------------------------------------

    async def handle(self, data: bytes, delivery: Delivery) -> None:
        await self._ready.wait()
        if delivery.subject == subjects.ALERTMANAGER:
            await self._alerts(data, delivery)
            return
        matching = [a for a in self.all() if events.nats_matches(a, delivery.subject)]
        if not matching:
            # Another replica may have captured a subject of a workflow applied a moment ago,
            # before our own watch told us: look once more before letting the event go.
            await self.reload_if_stale()
            matching = [a for a in self.all() if events.nats_matches(a, delivery.subject)]
        if not matching:
            return  # no workflow listens to this subject (any more)
        try:
            trigger, key = events.nats_event(delivery.subject, data, delivery.headers, delivery.stream_seq)
        except events.Refused as exc:
            for active in matching:
                await self.record(active, "refused", str(exc), key=f"seq:{delivery.stream_seq}")
            return
        for active in matching:
            try:
                if not events.condition(active, trigger):
                    continue
            except events.Refused as exc:
                await self.record(active, "refused", str(exc), key=key)
                continue
            await self._start(active, trigger, key, delivery)

    async def _alerts(self, data: bytes, delivery: Delivery) -> None:
        try:
            note = events.decode_notification(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("alert notification cannot be read", error=str(exc))
            return  # the gateway validated it; nothing else publishes here
        alerts = events.alert_triggers(note)
        if not any(events.alert_matches(a, t) for a in self.all() for t in alerts):
            await self.reload_if_stale()  # a workflow applied a moment ago may be the one
        for trigger in alerts:
            for active in self.all():
                if not events.alert_matches(active, trigger):
                    continue
                assert active.trigger.alertmanager is not None
                firing_key = events.alert_key(trigger)
                if trigger["status"] == "firing":
                    await self._start(active, trigger, firing_key, delivery)
                elif active.trigger.alertmanager.on_resolved == "cancel":
                    await self._cancel_for(active, firing_key)
                elif active.trigger.alertmanager.on_resolved == "run":
                    await self._start(active, trigger, firing_key + "@resolved", delivery)

    async def _cancel_for(self, active: Active, firing_key: str) -> None:
        run_id = await self._claimed(active, firing_key)
        if run_id is None or run_id == _SUPPRESSED:
            return
        view = await runs.get_view(self.bus, run_id)
        if view is None or view.status in ("succeeded", "failed", "cancelled"):
            return
        await runs.request_cancel(self.bus, run_id, user=f"trigger:{active.kind}", reason="alert resolved")
        log.info("alert resolved; run cancelled", workflow=active.workflow, run_id=run_id)

    async def _claimed(self, active: Active, key: str) -> str | None:
        try:
            entry = await self.runs_kv.get("k" + _hash(f"{active.id}\0{key}"))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.value.decode() if entry.value else None

    async def _start(self, active: Active, trigger: dict[str, Any], key: str, delivery: Delivery | None) -> None:
        claim = "k" + _hash(f"{active.id}\0{key}")
        earlier = await self._claimed(active, key)
        if earlier == _SUPPRESSED:
            await self.record(active, "deduplicated", "the same event was suppressed before", key=key)
            return
        if earlier is not None:
            if delivery is not None and delivery.num_delivered > 1:
                # We may have died between claiming and publishing: send the same run (or plan)
                # again (dropped by JetStream, the scheduler or the planner if it went out before).
                with contextlib.suppress(ValidationFailed):
                    await self._send(active, trigger, earlier)
                return
            await self.record(active, "deduplicated", f"already started run {earlier}", key=key, run_id=earlier)
            return
        window = await self._admit(active) if active.trigger.max_runs is not None else None
        if window is not None and window[0] is False:
            limit = active.trigger.max_runs
            assert limit is not None
            # Remembered like a run, so the same event repeated (Alertmanager's repeat_interval)
            # is a duplicate, not one more suppression.
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await self.runs_kv.create(claim, _SUPPRESSED.encode())
            await self.record(
                active, "suppressed", f"over max_runs ({limit.count} per {limit.per})", key=key, window=window[1]
            )
            return
        at_ms = int(time.time() * 1000)
        run_id = plan_id_for(at_ms, claim) if active.trigger.plan is not None else run_id_for(at_ms, claim)
        try:
            # Built before the claim: an event that cannot make a valid request claims nothing.
            if active.trigger.plan is not None:
                plan_for(active, trigger, run_id, now_rfc3339())
            else:
                request_for(active, trigger, run_id, now_rfc3339())
        except ValidationFailed as exc:
            await self.record(active, "refused", "; ".join(exc.problems), key=key)
            return
        try:
            await self.runs_kv.create(claim, run_id.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            earlier = await self._claimed(active, key)
            await self.record(active, "deduplicated", f"already started run {earlier}", key=key, run_id=earlier)
            return
        await self._send(active, trigger, run_id)
        self.count(active, "fired")
        log.info("trigger fired", trigger=active.id, kind=active.kind, run_id=run_id, key=key)

    async def _send(self, active: Active, trigger: dict[str, Any], run_id: str) -> None:
        """The run request, or with ``plan:`` the plan request, for a claimed event."""
        now = now_rfc3339()
        if active.trigger.plan is None:
            await runs.publish_request(self.bus, request_for(active, trigger, run_id, now))
            return
        plan = plan_for(active, trigger, run_id, now)
        await self.bus.publish(subjects.plan_requested(run_id), plan, msg_id=f"{run_id}:requested")

    async def _admit(self, active: Active) -> tuple[bool, float]:
        """Whether the event may start a run, and when its storm window opened."""
        limit = active.trigger.max_runs
        assert limit is not None
        key = f"storm.{_hash(active.id)}"
        per = parse_duration(limit.per)
        for _ in range(50):
            try:
                entry = await self.state_kv.get(key)
                window, revision = (_dec_window.decode(entry.value) if entry.value else None), entry.revision
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                window, revision = None, None
            after, allowed = storm.admit(window, time.time(), limit.count, per)
            if not allowed:
                return False, after.start
            try:
                if revision is None:
                    await self.state_kv.create(key, _enc.encode(after))
                else:
                    await self.state_kv.update(key, _enc.encode(after), last=revision)
                return True, after.start
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        return False, time.time()

    def count(self, active: Active, outcome: Outcome) -> None:
        counts = self.counts[active.id]
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        _METRICS[outcome].labels(active.workflow, active.kind).inc()

    async def record(
        self,
        active: Active,
        outcome: Outcome,
        reason: str,
        *,
        key: str = "",
        run_id: str | None = None,
        window: float | None = None,
    ) -> None:
        """Count it and publish it as an event of its own (people can be told about storms)."""
        self.count(active, outcome)
        log.info("trigger event not run", trigger=active.id, outcome=outcome, reason=reason[:300], key=key)
        event = TriggerOutcome(
            workflow=active.workflow,
            trigger=active.index,
            kind=active.kind,
            outcome=outcome,
            reason=reason[:1000],
            key=key[:300],
            run_id=run_id,
            at=now_rfc3339(),
            window_start=window,
        )
        headers = {MSG_ID: f"trigger:{active.id}:{outcome}:{_hash(key)}", "content-type": "application/json"}
        await self.bus.publish_raw(subjects.trigger_event(active.workflow, outcome), _enc.encode(event), headers)

    # --- counts --------------------------------------------------------------------------------------

    async def _flush_counts(self) -> None:
        key = f"counts.{self.instance}"
        while True:
            await asyncio.sleep(1.0)
            snapshot = PlannerCounts(instance=self.instance, updated_at=time.time(), triggers=dict(self.counts))
            try:
                await self.state_kv.put(key, _enc.encode(snapshot))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("trigger counts not written", error=repr(exc))

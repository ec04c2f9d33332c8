"""Wires ``fy.task.dispatch.<pool>`` to :func:`handlers.execute` on the configured runtime."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping

import msgspec
import nats.js.errors
import structlog
from nats.aio.msg import Msg

from shared.bus.delivery import Delivery, is_outage
from shared.config.secrets import SecretSource
from shared.config.settings import Config, seconds
from shared.contract import subjects
from shared.contract.errors import FlowyardError, PermanentError, RetryableError
from shared.contract.messages import (
    AgentSnapshot,
    AnyEvent,
    Event,
    NodeRecord,
    RunRecord,
    TaskBatch,
    TaskDispatched,
    TaskFailed,
    TaskLog,
    TaskStarted,
    TaskSucceeded,
    decode_record,
)
from shared.service.host import Service
from shared.state import executors
from shared.state import workspace as ws
from shared.state.ratelimits import Limits
from shared.state.runstate import item_state
from shared.state.values import ValueMissing, Values
from shared.telemetry import metrics

from . import handlers
from .breaker import Breaker
from .gates import Gates
from .logstream import LogStream
from .reporting import Reporter
from .runtimes import DockerRuntime, KubernetesRuntime, Runtime, make_runtime
from .runtimes.base import MAYBE_STARTED

log = structlog.get_logger("flowyard.executor")
_REPORTED_KEPT = 10_000  # attempts (and ended runs) remembered, for redelivered batches


class ExecutorService(Service):
    name = "executor"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        cfg = config.executor
        # Refuse to start on an unknown runtime before touching NATS.
        self.runtime: Runtime = make_runtime(
            cfg.runtime,
            max_output_bytes=cfg.max_output_bytes,
            log_tail_bytes=cfg.log_tail_bytes,
            state_dir=cfg.state_dir,
            spool_retention=seconds(cfg.spool_retention),
            concurrency=cfg.concurrency,
            kubernetes=cfg.kubernetes,
            workspace_max_bytes=config.bus.workspace_max_bytes,
            egress_image=cfg.egress_image,
            egress_network=cfg.egress_network,
        )
        self.executor_id = f"{socket.gethostname()}:{os.getpid()}:{cfg.pool}"
        self._dedup_window = seconds(config.bus.duplicate_window)
        self.secrets = SecretSource(config.executor.secrets_dir)
        self.breaker = Breaker(threshold=cfg.breaker_threshold, cooldown=seconds(cfg.breaker_cooldown))
        self.gates = Gates(config, self.secrets, self.breaker, None)  # limits: once connected (setup)
        self._running: dict[str, set[asyncio.Task[handlers.Judgement]]] = {}
        self._cleanups: set[asyncio.Task[int]] = set()
        self._ended: set[asyncio.Task[handlers.Judgement]] = set()
        # Attempts whose result is on its way: the run ending does not stop them, or an attempt
        # that has finished would be logged and counted as stopped (ADR 4: its result stands).
        self._reporting: set[asyncio.Task[object]] = set()
        # Every attempt, alone or from a batch, holds one of these while it runs.
        self._slots = asyncio.Semaphore(cfg.concurrency)
        self._reported: OrderedDict[str, None] = OrderedDict()  # attempts this process reported
        self._ended_runs: OrderedDict[str, None] = OrderedDict()  # runs heard to have ended

        self._slots_busy = 0
        metrics.EXECUTOR_SLOTS.labels("busy").set(0)
        metrics.EXECUTOR_SLOTS.labels("free").set(cfg.concurrency)
        metrics.BREAKERS_OPEN.set_function(self.breaker.open_count)

    def _busy(self, change: int) -> None:
        self._slots_busy += change
        metrics.EXECUTOR_SLOTS.labels("busy").set(self._slots_busy)
        metrics.EXECUTOR_SLOTS.labels("free").set(max(self.config.executor.concurrency - self._slots_busy, 0))

    @property
    def shutdown_grace(self) -> float:
        return seconds(self.config.executor.shutdown_grace)

    async def setup(self) -> None:
        pool = self.config.executor.pool
        subjects.check_token(pool, "executor pool")
        self.records = await self.bus.kv(subjects.RUNS_BUCKET)
        self.values = Values(self.bus, self.config.bus.inline_limit)
        self.workspaces = ws.WorkspaceStore(self.bus, max_bytes=self.config.bus.workspace_max_bytes)
        self.gates.limits = Limits(self.bus)

        async def publish(subject: str, ev: Event, msg_id: str) -> None:
            await self.bus.publish(subject, ev, msg_id=msg_id)

        self.reporter = Reporter(publish, max_bytes=self.config.bus.max_payload)
        if isinstance(self.runtime, DockerRuntime | KubernetesRuntime):
            # The stack's identity: when its run stream was created (the same for every replica,
            # different for every stack sharing a Docker daemon or a namespace).
            info = await self.bus.js.stream_info(subjects.RUNS_STREAM)
            created = info.created.isoformat() if info.created else info.config.name or ""
            self.runtime.stack_id = hashlib.sha256(created.encode()).hexdigest()[:16]
            self.runtime.run_status = self._run_status
            # Not on the first attempt: leftovers of an earlier life go even if no work comes.
            self.runtime.start_sweeping()
        self.consume(
            f"executor-{pool}",
            subjects.TASKS_STREAM,
            subjects.executor_filters(pool),
            self.handle,
            concurrency=self.config.executor.concurrency,
        )

    async def stop(self) -> None:
        # Attempts still running after the grace period are left running and handed back: the
        # executor that gets them next adopts them rather than starting them again.
        advertising = getattr(self, "_advertising", None)
        if advertising is not None:
            advertising.cancel()
            await asyncio.gather(advertising, return_exceptions=True)
        self.runtime.detach = True
        await super().stop()
        reporter = getattr(self, "reporter", None)
        if reporter is not None:
            await reporter.close()
        if self._cleanups:  # a run that just ended: let its containers go before we do
            await asyncio.wait(self._cleanups, timeout=5)
        await self.runtime.close()

    async def start(self) -> None:
        await super().start()
        info = executors.ExecutorInfo(
            pool=self.config.executor.pool, runtime=self.config.executor.runtime, instance=self.executor_id
        )
        await executors.announce(self.bus, info)
        self._advertising = asyncio.create_task(executors.advertise(self.bus, info), name="executor:advertise")
        assert self.bus.nc is not None
        for subject in subjects.RUN_ENDED:
            await self.bus.nc.subscribe(subject, cb=self._on_run_ended)
        await self.bus.nc.subscribe(subjects.run_finished("*", "succeeded"), cb=self._on_run_ended)

    async def _on_run_ended(self, msg: Msg) -> None:
        # A run that failed or was cancelled while its attempts still run: stop them, the
        # scheduler will not use their results. Core NATS is enough: a missed notice only means
        # the attempt runs to its timeout.
        run_id = msg.subject.split(".")[2]
        _remember(self._ended_runs, run_id)
        stopped = [a for a in self._running.get(run_id, ()) if a not in self._reporting]
        for attempt in stopped:
            self._ended.add(attempt)
            attempt.cancel()
        cleanup = asyncio.create_task(self._forget(run_id, wait=bool(stopped)))
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)

    async def _forget(self, run_id: str, *, wait: bool) -> int:
        # Every executor of the pool hears this; each removes what its daemon holds. Attempts
        # cancelled just now get a moment to stop, or their containers would still be in use.
        if wait:
            await asyncio.sleep(0.5)
        try:
            return await self.runtime.forget_run(run_id)
        except Exception as exc:  # the sweeper removes them later by age
            log.warning("could not remove the containers of an ended run", run=run_id, error=repr(exc))
            return 0

    async def handle(self, event: AnyEvent, delivery: Delivery) -> None:
        if not isinstance(event, TaskDispatched | TaskBatch):
            raise PermanentError(f"the executor runs task dispatches only, got {type(event).__name__}")
        try:
            subjects.check_token(event.run_id, "run id")
            subjects.check_token(event.node_id, "node id")
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        if isinstance(event, TaskBatch):
            await self._batch(event, delivery)
            return
        # A redelivery, or a dispatch re-sent after the de-dup window, may already have run.
        stale = event.dispatched_at and time.time() - event.dispatched_at > self._dedup_window / 2
        if (delivery.num_delivered > 1 or stale) and await self._already_done(event):
            log.info("attempt already reported; not running it again", task=event.key)
            return
        async with self._slots:
            await self._attempt(event, delivery)

    async def _batch(self, batch: TaskBatch, delivery: Delivery) -> None:
        """A group of foreach items in one message: each runs as its own attempt, as many at once
        as the executor has free slots. The message is acked once every item is reported; when
        one is handed back (an outage), the whole message is, and its next delivery skips the
        items already reported (here, in the record, or adopted from their spool)."""
        tasks = batch.tasks()
        stale = batch.dispatched_at and time.time() - batch.dispatched_at > self._dedup_window / 2
        if delivery.num_delivered > 1 or stale:
            done = await self._done_in_record(tasks)
            tasks = [t for t in tasks if t.key not in done and t.key not in self._reported]
        metrics.BATCH_ITEMS.observe(len(batch.items))

        async def one(task: TaskDispatched) -> None:
            async with self._slots:
                if batch.run_id in self._ended_runs:
                    return  # the run ended while this item waited for a slot: it never starts
                await self._attempt(task, delivery)
                _remember(self._reported, task.key)

        outcomes = await asyncio.gather(*(one(t) for t in tasks), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # handed back; the items reported stay reported

    async def _attempt(self, event: TaskDispatched, delivery: Delivery) -> None:
        bound = log.bind(task=event.key, agent=event.agent.name)
        bound.info("attempt starting", delivery=delivery.num_delivered)

        async def publish(ev: Event, kind: str) -> None:
            subject = subjects.task_event(event.run_id, event.unit, kind)
            if isinstance(ev, TaskSucceeded):  # too large for a message: by reference (ADR 11)
                ev = msgspec.structs.replace(ev, output=await self.values.offload(event.run_id, ev.output))
            # Success and failure share one id: one attempt can never be reported both ways.
            suffix = "started" if kind == "started" else "result"
            current = asyncio.current_task()
            if kind != "started" and current in self._running.get(event.run_id, ()):
                self._reporting.add(current)  # the attempt's own task (not fail_fast's caller)
            assert isinstance(ev, TaskStarted | TaskSucceeded | TaskFailed)
            await self.reporter.send(subject, ev, f"{event.key}:{suffix}")

        try:
            event = msgspec.structs.replace(event, input=await self.values.resolve(event.input))
        except ValueMissing as exc:
            await handlers.fail_fast(event, publish=publish, executor_id=self.executor_id, error=f"its input: {exc}")
            return
        image = event.agent.image or event.agent.name
        # A capability's candidates are each checked in turn (gates.py): a closed one is skipped.
        refusal = self.breaker.refusal(image) if not event.candidates else None
        if refusal is not None:
            bound.warning("refused: circuit open", image=image)
            await handlers.fail_fast(event, publish=publish, executor_id=self.executor_id, error=refusal)
            metrics.ATTEMPTS.labels(event.agent.name, "refused").inc()
            return
        began = time.monotonic()
        stale = event.dispatched_at and time.time() - event.dispatched_at > self._dedup_window / 2
        token = MAYBE_STARTED.set(delivery.num_delivered > 1 or bool(stale))
        attempt = asyncio.create_task(
            handlers.execute(
                event,
                runtime=self.runtime,
                publish=publish,
                executor_id=self.executor_id,
                log_tail_bytes=self.config.executor.log_tail_bytes,
                secrets=self.secrets,
                workspaces=self.workspaces,
                logs=self._log_stream,
                # The last delivery reports the outage as the attempt's failure instead.
                hand_back_outages=delivery.num_delivered < self.config.bus.max_deliver,
                prepare=self.gates.prepare,
                on_route=self._routed,
                after=self._after,
            )
        )
        MAYBE_STARTED.reset(token)  # the attempt's task took a copy
        running = self._running.setdefault(event.run_id, set())
        running.add(attempt)
        self._busy(+1)
        try:
            verdict = await asyncio.shield(attempt)
        except Exception as exc:
            if delivery.num_delivered < self.config.bus.max_deliver or is_outage(exc):
                if isinstance(exc, RetryableError):
                    bound.warning("handed back: the runtime cannot be reached", error=str(exc))
                raise  # handed back; another delivery tries again
            # The last delivery: report the attempt failed rather than let the run wait forever
            # on a dispatch that went to the dead-letter stream.
            bound.error("attempt could not be run", error=repr(exc))
            await handlers.fail_fast(
                event,
                publish=publish,
                executor_id=self.executor_id,
                # Our own errors are sentences already; anything else is shown as what it is.
                error=f"the executor could not run the attempt: {exc if isinstance(exc, FlowyardError) else repr(exc)}",
            )
            metrics.ATTEMPTS.labels(event.agent.name, "runtime").inc()
            return
        except asyncio.CancelledError:
            if attempt in self._ended:
                bound.info("attempt stopped: the run ended")
                return  # the agent is gone; the message is done with
            attempt.cancel()  # shutting down: stop the agent, hand the message back
            with contextlib.suppress(BaseException):
                await attempt
            raise
        finally:
            self._busy(-1)
            running.discard(attempt)
            self._ended.discard(attempt)
            self._reporting.discard(attempt)
            if not running:
                self._running.pop(event.run_id, None)
        if verdict.unroutable:
            metrics.CAPABILITY_UNROUTABLE.labels(event.capability or "").inc()
        metrics.ATTEMPTS.labels(event.agent.name, "succeeded" if verdict.ok else verdict.reason).inc()
        metrics.ATTEMPT_SECONDS.labels(event.agent.name).observe(time.monotonic() - began)
        bound.info(
            "attempt finished",
            ok=verdict.ok,
            error=verdict.error or None,
            reason=verdict.reason if not verdict.ok else None,
        )

    @staticmethod
    def _routed(capability: str, from_agent: str, reason: str) -> None:
        metrics.AGENT_FALLBACKS.labels(capability, from_agent, reason).inc()

    async def _after(self, agent: AgentSnapshot, verdict: handlers.Judgement) -> None:
        image = agent.image or agent.name
        if self.breaker.record(image, infrastructure_failure=verdict.infrastructure, error=verdict.error):
            metrics.BREAKER_TRIPS.labels(image).inc()
        await self.gates.after(agent.name, verdict)

    def _log_stream(self, task: TaskDispatched, secrets: Mapping[str, str]) -> LogStream:
        subject = subjects.task_log(task.run_id, task.unit)

        async def publish(event: TaskLog) -> None:
            await self.bus.publish(subject, event, msg_id=f"{task.key}:log:{event.seq}")

        return LogStream(task, publish, secrets=secrets, max_bytes=self.config.executor.log_max_bytes)

    async def _run_status(self, run_id: str) -> str | None:
        try:
            entry = await self.records.get(run_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        return decode_record(entry.value).status if entry.value else None

    async def _already_done(self, task: TaskDispatched) -> bool:
        """After a redelivery: has the scheduler already recorded a result for this attempt?"""
        return task.key in await self._done_in_record([task])

    async def _done_in_record(self, tasks: list[TaskDispatched]) -> set[str]:
        """The keys of the attempts (of one run) the run record has moved past: one KV read."""
        if not tasks:
            return set()
        try:
            entry = await self.records.get(tasks[0].run_id)
        except nats.js.errors.KeyNotFoundError:
            return set()
        if not entry.value:
            return set()
        record = decode_record(entry.value)
        if record.status != "running":
            return {t.key for t in tasks}
        return {t.key for t in tasks if _moved_past(record, t)}


def _remember(seen: OrderedDict[str, None], key: str) -> None:
    """Keep ``key`` among the last ``_REPORTED_KEPT`` seen."""
    seen[key] = None
    seen.move_to_end(key)
    while len(seen) > _REPORTED_KEPT:
        seen.popitem(last=False)


def _moved_past(record: RunRecord, task: TaskDispatched) -> bool:
    if task.item is None:
        node = record.nodes.get(task.node_id)
        return node is not None and (node.attempts != task.attempt or node.status != "running")
    item = item_state(record, task.node_id, task.item)
    return item == "ended" or (
        isinstance(item, NodeRecord) and (item.attempts != task.attempt or item.status != "running")
    )

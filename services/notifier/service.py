"""Wires run, node and approval events to the configured sinks, with retries and de-duplication.

A notice goes to each sink its rules name. Delivery is retried with exponential back-off and
jitter up to ``notifier.attempts`` times; then it is given up, and the failure is published as a
``notification.failed`` event and logged. A KV entry per (sink, event) records delivered and
given-up notices, so a redelivered event is never sent twice to the same sink.
"""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from shared.bus.consumer import Consumer
from shared.bus.delivery import Delivery
from shared.config.secrets import SecretSource
from shared.config.settings import seconds
from shared.contract import subjects
from shared.contract.envelope import header
from shared.contract.messages import AnyEvent, NotificationFailed
from shared.service.host import Service
from shared.state.triggering import TriggerOutcome
from shared.telemetry import metrics

from .messages import Notice, notice, sinks_for, trigger_notice
from .sinks import DeliveryError, Sinks

log = structlog.get_logger("flowyard.notifier")


class NotifierService(Service):
    name = "notifier"

    async def setup(self) -> None:
        cfg = self.config.notifier
        self.sinks = Sinks(cfg.sinks, SecretSource(cfg.secrets_dir))
        self.marks: KeyValue = await self.bus.kv(subjects.NOTIFY_BUCKET)
        for sink in cfg.sinks:  # exported as 0 from the start, so the first failure is an increase
            for outcome in ("sent", "failed"):
                metrics.NOTIFICATIONS.labels(sink, outcome)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, handlers using it)
        if not cfg.rules:
            log.info("no notification rules configured; events are read and dropped")
        self.consume(
            "notifier", subjects.RUNS_STREAM, subjects.NOTIFIER_FILTERS, self.handle, concurrency=cfg.concurrency
        )
        self.consumers.append(
            Consumer(
                self.bus,
                durable="notifier-triggers",
                stream=subjects.TRIGGER_EVENTS_STREAM,
                filters=subjects.NOTIFIER_TRIGGER_FILTERS,
                decode=msgspec.json.Decoder(TriggerOutcome).decode,
                handler=self.handle_trigger,
                concurrency=cfg.concurrency,
            )
        )

    async def stop(self) -> None:
        await super().stop()
        await self.sinks.close()

    async def handle(self, event: AnyEvent, delivery: Delivery) -> None:
        n = notice(event, trace_url=self.config.telemetry.trace_url)
        if n is None:
            return
        targets = sinks_for(self.config.notifier, n)
        if not targets:
            return
        event_id = header(delivery.headers, "Nats-Msg-Id") or f"{delivery.subject}:{delivery.stream_seq}"
        await asyncio.gather(*(self._once(sink, n, event_id) for sink in targets))

    async def handle_trigger(self, event: TriggerOutcome, delivery: Delivery) -> None:
        found = trigger_notice(event)
        if found is None:
            return
        n, event_id = found
        targets = sinks_for(self.config.notifier, n)
        if targets:
            # All suppressions of one storm window share an id: the first is delivered, the rest
            # find it marked delivered.
            await asyncio.gather(*(self._once(sink, n, event_id) for sink in targets))

    async def _once(self, sink: str, n: Notice, event_id: str) -> None:
        key = f"{sink}.{hashlib.sha256(event_id.encode()).hexdigest()[:32]}"
        # Notices that share an id (every suppression of one storm window) arrive at once: one
        # at a time per key here, so the first delivers and the others find it marked.
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                await self._deliver_once(sink, n, key, event_id)
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _deliver_once(self, sink: str, n: Notice, key: str, event_id: str) -> None:
        try:
            await self.marks.get(key)
            return  # delivered (or given up) before
        except nats.js.errors.KeyNotFoundError:
            pass
        cfg = self.config.notifier
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(cfg.attempts),
                wait=wait_exponential_jitter(initial=seconds(cfg.backoff), max=seconds(cfg.max_backoff)),
                retry=retry_if_exception_type(DeliveryError),
                reraise=True,
            ):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    await self.sinks.deliver(sink, n, event_id)
        except DeliveryError as exc:
            log.error(
                "notification given up", sink=sink, type=n.type, run_id=n.run_id, attempts=attempts, error=str(exc)
            )
            if n.run_id:  # a trigger notice has no run whose audit log could hold the failure
                failure = NotificationFailed(
                    run_id=n.run_id, sink=sink, event_type=n.type, error=str(exc), attempts=attempts
                )
                await self.bus.publish(subjects.notification_failed(n.run_id), failure, msg_id=f"{key}:failed")
            await self.marks.put(key, b"failed")
            metrics.NOTIFICATIONS.labels(sink, "failed").inc()
            return
        await self.marks.put(key, b"delivered")
        metrics.NOTIFICATIONS.labels(sink, "sent").inc()
        log.info("notification delivered", sink=sink, type=n.type, run_id=n.run_id, attempts=attempts)

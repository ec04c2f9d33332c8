"""The durable pull consumer: explicit ack, nak with delay, term + dead letter, poison ceiling.

Pull requests stay open for as many messages as there are free handler slots, so each message is
handled the moment it arrives; decode or validation failures and permanent errors are terminated
and copied to ``fy.dlq.<service>`` with the reason, and a run whose message was given up on is
told to end (``RunAbandoned``), never left waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.bus import giveup
from shared.bus.delivery import Decoder, Delivery, Handler, is_outage
from shared.bus.riding import raw
from shared.config.settings import seconds
from shared.contract.envelope import header, run_attributes
from shared.contract.errors import NotYet, PermanentError, RetryableError
from shared.telemetry.metrics import HANDLE_SECONDS, MESSAGES
from shared.telemetry.tracing import extract, in_run, tracer

if TYPE_CHECKING:
    from shared.bus.connection import Bus

log = structlog.get_logger("flowyard.bus")
_json = msgspec.json.Encoder()
_PULL_EXPIRES = 5.0  # seconds a pull request stays open on the server
_WAKE: Any = object()  # queued when a handler finishes, so the pull loop tops up at once


class Consumer:
    """A durable pull consumer with explicit ack, nak-with-delay, term + dead letter, max_deliver."""

    def __init__(
        self,
        bus: Bus,
        *,
        durable: str,
        stream: str,
        filters: Sequence[str],
        decode: Decoder,
        handler: Handler,
        concurrency: int = 8,
        max_deliver: int | None = None,
        ack_wait: float | None = None,
    ) -> None:
        self.bus = bus
        self.durable = durable
        self.stream = stream
        self.filters = list(filters)
        self.decode = decode
        self.handler = handler
        self.concurrency = concurrency
        self.max_deliver = max_deliver if max_deliver is not None else bus.cfg.max_deliver
        # How long a message stays with a handler that does not answer (or send in-progress) before
        # it is delivered again: what a crashed process costs its messages.
        self.ack_wait = ack_wait if ack_wait is not None else seconds(bus.cfg.ack_wait)
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        # Pull requests still open on the server: [expires_at (monotonic), messages not yet received].
        self._pulls: deque[list[float]] = deque()
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._ensured = False

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def ensure(self, *, ride: bool = True) -> None:
        """Create or update the durable consumer (idempotent; safe from every replica).

        At start it rides a NATS restart like every bus call; the pull loop re-ensures with
        ``ride=False``: it has its own outage handling and must keep noticing stop() meanwhile."""
        config = api.ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            # Unlimited on the server: giving up is decided here (handler failures are counted,
            # NATS being unreachable is not), and a given-up message is dead-lettered, never
            # left unacknowledged where nobody will deliver it again.
            max_deliver=-1,
            max_ack_pending=max(self.concurrency * 4, 64),
            filter_subjects=self.filters if len(self.filters) > 1 else None,
            filter_subject=self.filters[0] if len(self.filters) == 1 else None,
        )
        js = self.bus.js if ride else raw(self.bus.js)
        await js.add_consumer(self.stream, config)
        self._ensured = True

    async def run(self) -> None:
        """Pull and handle until :meth:`stop`; then wait for in-flight handlers.

        Pull requests stay open (``expires``) for as many messages as there are free handler
        slots, and each message is handled the moment it arrives. nats-py's ``fetch(batch=n)``
        would instead hold the first message until the batch fills or the request times out.
        """
        if not self._ensured:
            await self.ensure()
        nc = self.bus.nc
        assert nc is not None
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=self._queue.put)
        self.bus.on_reconnect(self._forget_pulls)
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        try:
            while not self._stopping.is_set():
                await self._top_up(next_subject, inbox)
                try:
                    msg = await asyncio.wait_for(self._queue.get(), timeout=0.5)
                except TimeoutError:
                    continue  # wake up to renew expired pulls and to notice stop()
                if msg is _WAKE:
                    continue  # a handler finished: there is room to pull more
                status = JetStreamContext.is_status_msg(msg)
                if status:
                    await self._on_status(status, msg)
                    continue
                self._received()
                await self._slots.acquire()
                task = asyncio.create_task(self._handle(msg))
                self._inflight.add(task)
                task.add_done_callback(self._done)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            # Delivered to us but never started: hand back at once rather than after ack_wait.
            while not self._queue.empty():
                msg = self._queue.get_nowait()
                if msg is not _WAKE and not JetStreamContext.is_status_msg(msg):
                    with contextlib.suppress(Exception):
                        await msg.nak()
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _top_up(self, subject: str, inbox: str) -> None:
        now = time.monotonic()
        if not self._ensured and self.bus.connected:
            with contextlib.suppress(Exception):
                await self.ensure(ride=False)  # a restarted server without file storage lost the consumer
        while self._pulls and self._pulls[0][0] < now:
            # Expired without the server saying so: the server restarted or the link dropped.
            self._pulls.popleft()
            with contextlib.suppress(Exception):
                await self.ensure(ride=False)
        outstanding = sum(int(p[1]) for p in self._pulls)
        want = self.concurrency - len(self._inflight) - outstanding
        if want <= 0 or not self.bus.connected:
            return
        request = {"batch": want, "expires": int(_PULL_EXPIRES * 1e9)}
        try:
            assert self.bus.nc is not None
            await self.bus.nc.publish(subject, _json.encode(request), reply=inbox)
        except Exception as exc:
            log.warning("pull request failed", consumer=self.durable, error=repr(exc))
            await asyncio.sleep(0.5)
            return
        self._pulls.append([now + _PULL_EXPIRES + 2.0, float(want)])

    def _forget_pulls(self) -> None:
        # Pull requests do not survive a reconnect (the server may have restarted): ask again now
        # rather than after they would have expired.
        self._pulls.clear()
        self._ensured = False
        self._queue.put_nowait(_WAKE)

    def _received(self) -> None:
        for pull in self._pulls:
            if pull[1] > 0:
                pull[1] -= 1
                break
        while self._pulls and self._pulls[0][1] <= 0:
            self._pulls.popleft()

    async def _on_status(self, status: str, msg: Msg) -> None:
        if status == "100":  # idle heartbeat
            return
        # 404/408/409: a pull request ended; the server says how many it did not deliver.
        pending = header(msg.headers, "Nats-Pending-Messages")
        if self._pulls:
            if pending is not None:
                self._pulls[0][1] -= int(pending)
            else:
                self._pulls[0][1] = 0
            while self._pulls and self._pulls[0][1] <= 0:
                self._pulls.popleft()
        description = header(msg.headers, "Description") or ""
        if status == "409" and "Deleted" in description:
            log.warning("consumer was deleted; recreating it", consumer=self.durable)
            with contextlib.suppress(Exception):
                await self.ensure(ride=False)
        elif status not in ("404", "408"):
            log.info("pull request ended", consumer=self.durable, status=status, description=description)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()
        self._queue.put_nowait(_WAKE)

    def stop(self) -> None:
        self._stopping.set()

    def cancel_inflight(self) -> None:
        for task in list(self._inflight):
            task.cancel()

    async def _handle(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        md = msg.metadata
        delivery = Delivery(
            subject=msg.subject,
            num_delivered=md.num_delivered or 1,
            stream_seq=md.sequence.stream if md.sequence else 0,
            headers=headers,
        )
        started = time.perf_counter()
        # A run's message published without trace context (by hand, an older client) still joins
        # the run's trace; ce-subject is the run id on every flowyard event.
        ctx = extract(headers)
        if header(headers, "ce-type") and (run_id := header(headers, "ce-subject")):
            ctx = in_run(run_id, ctx)
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        with tracer().start_as_current_span(
            f"process {msg.subject}",
            context=ctx,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.name": "process",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self.durable,
                "messaging.message.id": header(headers, "Nats-Msg-Id") or "",
            },
        ) as span:
            try:
                outcome = await self._dispatch(msg, delivery, span)
            finally:
                heartbeat.cancel()
        MESSAGES.labels(self.durable, outcome).inc()
        HANDLE_SECONDS.labels(self.durable).observe(time.perf_counter() - started)

    async def _dispatch(self, msg: Msg, delivery: Delivery, span: trace.Span) -> str:
        died, journal = await giveup.unanswered(self.bus, self.durable, delivery)
        if died + 1 >= self.bus.cfg.poison_deliveries:
            await giveup.answered(self.bus, journal)
            await self._dead_letter(
                msg,
                delivery,
                f"delivered {delivery.num_delivered} times and never answered: the process handling it "
                f"died every time (out of memory, a crash); given up after bus.poison_deliveries",
            )
            span.set_status(Status(StatusCode.ERROR, "poison"))
            return "poison"
        try:
            return await self._dispatch_decoded(msg, delivery, span)
        finally:
            await giveup.answered(self.bus, journal)

    async def _dispatch_decoded(self, msg: Msg, delivery: Delivery, span: trace.Span) -> str:
        try:
            event = self.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead_letter(msg, delivery, f"cannot decode message: {exc}")
            span.set_status(Status(StatusCode.ERROR, "poison"))
            return "poison"
        attributes = run_attributes(event)
        span.set_attributes(attributes)
        # Every log line written while handling this message says which run, node and trace.
        span_context = span.get_span_context()
        context_vars = {key.removeprefix("flowyard."): value for key, value in attributes.items()}
        if span_context.is_valid:
            context_vars |= {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}
        with structlog.contextvars.bound_contextvars(**context_vars):
            return await self._handle_decoded(msg, delivery, span, event)

    async def _handle_decoded(self, msg: Msg, delivery: Delivery, span: trace.Span, event: Any) -> str:
        try:
            await self.handler(event, delivery)
        except asyncio.CancelledError:
            # Shutting down mid-handler: hand the message back at once rather than after ack_wait.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except NotYet as exc:
            with contextlib.suppress(Exception):
                await msg.nak(delay=max(exc.delay, 0.001))
            return "not_due"
        except PermanentError as exc:
            await self._dead_letter(msg, delivery, str(exc))
            span.set_status(Status(StatusCode.ERROR, "permanent"))
            return "terminated"
        except Exception as exc:
            retryable = isinstance(exc, RetryableError)
            # NATS itself down or restarting (a KV read timing out, a publish with no responders)
            # says nothing about the message: wait it out rather than dead-letter a run's step.
            outage = is_outage(exc)
            if not retryable and not outage:
                log.exception("handler crashed", consumer=self.durable, subject=delivery.subject)
            if not outage and 0 < self.max_deliver <= delivery.num_delivered:
                await self._dead_letter(msg, delivery, f"gave up after {delivery.num_delivered} deliveries: {exc}")
                return "terminated"
            delay = getattr(exc, "delay", None) or min(0.5 * 2 ** (delivery.num_delivered - 1), 30.0)
            log.warning(
                "handler failed; will retry",
                consumer=self.durable,
                subject=delivery.subject,
                error=str(exc),
                delivery=delivery.num_delivered,
                retry_in_s=delay,
            )
            span.set_status(Status(StatusCode.ERROR, "retry"))
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
            return "retried"
        try:
            await msg.ack()
        except Exception as exc:  # the message will be redelivered; handlers are idempotent
            log.warning("ack failed", consumer=self.durable, error=repr(exc))
            return "ack_failed"
        return "ok"

    async def _keep_alive(self, msg: Msg) -> None:
        # Long handlers (an agent running for minutes) keep their message instead of having it
        # redelivered to another replica after ack_wait.
        try:
            while True:
                await asyncio.sleep(max(self.ack_wait / 3, 0.5))
                with contextlib.suppress(Exception):
                    await msg.in_progress()
        except asyncio.CancelledError:
            pass

    async def _dead_letter(self, msg: Msg, delivery: Delivery, reason: str) -> None:
        await giveup.dead_letter(self.bus, self.stream, self.durable, msg, delivery, reason)

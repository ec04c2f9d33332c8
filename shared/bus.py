"""The JetStream bus: connect, topology, publish with de-dup, durable pull-consumer loops.

Every service talks to every other through this module only. It owns the nats-py traps listed in
DESIGN.md: unlimited reconnects, a retried first connect, ``fetch()`` timeouts that mean "nothing
yet", and pull subscriptions re-bound after the server lost them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from shared import subjects
from shared.config import BusConfig, NatsConfig, seconds
from shared.contract import Event, RunAbandoned, decode_event, encode
from shared.envelope import build_headers, header
from shared.errors import ConfigurationError, NotYet, PermanentError, RetryableError
from shared.telemetry import extract, inject, tracer

log = structlog.get_logger("flowyard.bus")
_json = msgspec.json.Encoder()
_PULL_EXPIRES = 5.0  # seconds a pull request stays open on the server
_WAKE: Any = object()  # queued when a handler finishes, so the pull loop tops up at once

MESSAGES = Counter("flowyard_messages_total", "Messages handled by a consumer, by outcome", ["consumer", "outcome"])
HANDLE_SECONDS = Histogram(
    "flowyard_handle_seconds",
    "Time spent handling one message",
    ["consumer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 120),
)
PUBLISHED = Counter("flowyard_published_total", "Messages published", ["stream"])

_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a handler may want to know about the message besides its body."""

    subject: str
    num_delivered: int
    stream_seq: int
    headers: dict[str, str]


Handler = Callable[[Any, Delivery], Awaitable[None]]
Decoder = Callable[[bytes], Any]


class NatsUnavailable(RetryableError):
    """NATS could not be reached for longer than ``bus.publish_retry_for``."""


def is_outage(exc: BaseException) -> bool:
    """NATS down or restarting: nothing to do with the message being handled."""
    return isinstance(exc, (*_TRANSIENT, NatsUnavailable))


class Bus:
    def __init__(self, nats_cfg: NatsConfig, bus_cfg: BusConfig, *, name: str) -> None:
        self.nats_cfg = nats_cfg
        self.cfg = bus_cfg
        self.name = name
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._kv: dict[str, KeyValue] = {}
        self._closing = False
        self._reconnect_hooks: list[Callable[[], None]] = []

    # --- connection -------------------------------------------------------------------------

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus is not connected; call connect() first")
        return self._js

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def connect(self) -> None:
        """Connect, retrying the first connect for ``nats.connect_timeout``; reconnect forever after."""
        cfg = self.nats_cfg
        opts: dict[str, Any] = {
            "servers": [u.strip() for u in cfg.url.split(",")],
            "name": f"flowyard-{self.name}",
            "allow_reconnect": True,
            # A bounded first connect (nats-py would otherwise retry it forever); unlimited
            # reconnects are switched on below, once connected.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 2,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if cfg.user:
            opts["user"], opts["password"] = cfg.user, cfg.password
        if cfg.token:
            opts["token"] = cfg.token
        if cfg.creds:
            opts["user_credentials"] = cfg.creds
        deadline = seconds(cfg.connect_timeout)
        last: BaseException | None = None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(deadline),
                wait=wait_exponential(multiplier=0.1, max=2),
                retry=retry_if_exception_type((OSError, *_TRANSIENT, nats.errors.NoServersError)),
                reraise=True,
            ):
                with attempt:
                    self.nc = await nats.connect(**opts)
        except Exception as exc:
            last = exc
        if self.nc is not None:
            # nats-py reads this at each reconnect: never give up on a server that was reachable
            # (its default stops after about two minutes).
            self.nc.options["max_reconnect_attempts"] = -1
        if self.nc is None or not self.nc.is_connected:
            reason = str(last) or type(last).__name__
            if "Authorization" in reason or "authorization" in reason:
                raise ConfigurationError(
                    f"NATS at {cfg.url} refused the credentials: check FLOWYARD_NATS_USER/PASSWORD/CREDS"
                ) from None
            raise ConfigurationError(
                f"cannot reach NATS at {cfg.url} (tried for {cfg.connect_timeout}: {reason}). "
                "Start a stack with `flowyard up`, or point FLOWYARD_NATS_URL at a running nats-server "
                "with JetStream enabled."
            ) from None
        self._js = self.nc.jetstream(timeout=5)

    async def _on_error(self, exc: Exception) -> None:
        # While the first connect is still being retried, the final error says it all.
        level = log.debug if self.nc is None else log.warning
        level("nats error", service=self.name, error=str(exc) or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("nats disconnected; reconnecting", service=self.name)

    async def _on_reconnected(self) -> None:
        log.info("nats reconnected", service=self.name, url=str(self.nc.connected_url.netloc if self.nc else ""))
        for hook in self._reconnect_hooks:
            hook()

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        self._reconnect_hooks.append(hook)

    async def close(self) -> None:
        """Flush what is buffered (acks, publishes) and close. Consumers must be stopped first."""
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            # Not drain(): pull subscriptions keep status replies queued that nobody will read,
            # and drain would wait its whole timeout for them.
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self.nc.close()

    # --- topology ---------------------------------------------------------------------------

    async def ensure_topology(self) -> None:
        """Create or update every stream and bucket; safe to call from every replica at once."""
        cfg = self.cfg
        storage = api.StorageType.FILE if cfg.storage == "file" else api.StorageType.MEMORY
        dup = seconds(cfg.duplicate_window)
        streams = [
            api.StreamConfig(
                name=subjects.RUNS_STREAM,
                description="Run and task events: the audit log of every run",
                subjects=[subjects.RUNS_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                max_age=seconds(cfg.retention),
                duplicate_window=dup,
                allow_direct=True,  # a run's request is read by subject (runs show, retry, the gateway)
            ),
            api.StreamConfig(
                name=subjects.TASKS_STREAM,
                description="Task dispatches, one work queue per executor pool",
                subjects=[subjects.TASKS_SUBJECTS],
                retention=api.RetentionPolicy.WORK_QUEUE,
                duplicate_window=dup,
            ),
            api.StreamConfig(
                name=subjects.TIMERS_STREAM,
                description="Durable timers (retry back-off, run deadlines), handed back until due",
                subjects=[subjects.TIMERS_SUBJECTS],
                retention=api.RetentionPolicy.WORK_QUEUE,
                duplicate_window=dup,
            ),
            api.StreamConfig(
                name=subjects.DLQ_STREAM,
                description="Dead letters: poison messages with the reason they were terminated",
                subjects=[subjects.DLQ_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                max_age=seconds(cfg.retention),
                duplicate_window=dup,
            ),
            api.StreamConfig(
                name=subjects.LOGS_STREAM,
                description="Agents' stderr while they run, for `flowyard logs`",
                subjects=[subjects.LOGS_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                max_age=seconds(cfg.logs_retention),
                max_bytes=cfg.logs_store_bytes,
                discard=api.DiscardPolicy.OLD,
            ),
            api.StreamConfig(
                name=subjects.AUDIT_STREAM,
                description="Who did what through the gateway and the CLI; never secrets or tokens",
                subjects=[subjects.AUDIT_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                max_age=seconds(cfg.audit_retention),
                duplicate_window=dup,
                allow_direct=True,
            ),
            api.StreamConfig(
                name=subjects.TRIGGER_EVENTS_STREAM,
                description="What triggers did besides starting a run: deduplicated, suppressed, refused, skipped",
                subjects=[subjects.TRIGGER_EVENT_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                max_age=seconds(cfg.retention),
                max_bytes=cfg.logs_store_bytes,
                discard=api.DiscardPolicy.OLD,
                duplicate_window=dup,
            ),
        ]
        # Trigger events: alerts from the gateway, plus the workflows' own NATS subjects, which
        # the planner keeps in step with the registry; so it is created here, never updated.
        captured = api.StreamConfig(
            name=subjects.TRIGGERS_STREAM,
            description="Trigger events for the planner: alerts and the registered workflows' NATS subjects",
            subjects=[subjects.ALERT_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            max_age=seconds(cfg.retention),
            duplicate_window=dup,
        )
        for sc in [*streams, captured]:
            sc.storage = storage
            sc.num_replicas = cfg.replicas
            sc.max_msg_size = cfg.max_payload
            await self._ensure_stream(sc, update=sc is not captured)
        await self._ensure_kv(subjects.RUNS_BUCKET, "Run records kept by the scheduler", history=5)
        await self._ensure_kv(subjects.AGENTS_BUCKET, "Registered agents", history=10)
        await self._ensure_kv(subjects.CONCURRENCY_BUCKET, "Runs admitted and queued per workflow", history=1)
        await self._ensure_kv(subjects.APPROVALS_BUCKET, "Approval requests and every decision on them", history=5)
        await self._ensure_kv(subjects.NOTIFY_BUCKET, "Notifications delivered, per sink and event", history=1)
        await self._ensure_kv(subjects.WORKFLOWS_BUCKET, "The workflow registry: heads and every version", history=1)
        await self._ensure_kv(
            subjects.TRIGGER_RUNS_BUCKET,
            "Trigger events' de-duplication keys -> the runs they started",
            history=1,
            ttl=seconds(cfg.retention),
        )
        await self._ensure_kv(
            subjects.INFLIGHT_BUCKET, "Redelivered messages in hand, for the poison ceiling", history=1, ttl=86400
        )
        await self._ensure_kv(subjects.EXECUTORS_BUCKET, "Live executors: pool and runtime", history=1, ttl=30)
        await self._ensure_kv(subjects.TRIGGER_STATE_BUCKET, "Schedules, storm windows, trigger counts", history=1)
        await self._ensure_kv(
            subjects.IDEMPOTENCY_BUCKET, "Idempotency-Key of a run request -> its run", history=1, ttl=24 * 3600
        )
        await self._ensure_object_store(subjects.WORKSPACES_BUCKET, storage)

    async def _ensure_object_store(self, bucket: str, storage: api.StorageType) -> None:
        config = api.ObjectStoreConfig(
            description="Run workspaces, one object per version",
            ttl=seconds(self.cfg.workspace_retention),
            max_bytes=self.cfg.workspace_store_bytes,
            storage=storage,
            replicas=self.cfg.replicas,
        )
        try:
            await self.js.create_object_store(bucket, config=config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # exists with other settings: keep it as the operator left it
                raise

    async def _ensure_stream(self, sc: api.StreamConfig, *, update: bool = True) -> None:
        try:
            await self.js.add_stream(sc)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # name in use with a different configuration
                raise
            if update:
                await self.js.update_stream(sc)

    async def _ensure_kv(self, bucket: str, description: str, *, history: int, ttl: float | None = None) -> None:
        storage = api.StorageType.FILE if self.cfg.storage == "file" else api.StorageType.MEMORY
        try:
            kv = await self.js.create_key_value(
                bucket=bucket,
                description=description,
                history=history,
                storage=storage,
                replicas=self.cfg.replicas,
                max_value_size=self.cfg.max_payload,
                ttl=ttl,
                # Reads go straight to the stream (no JetStream API round trip through the meta
                # layer, no header re-parsing): the scheduler, the CLI and the gateway read often.
                direct=True,
            )
        except nats.js.errors.BadRequestError:
            kv = await self.js.key_value(bucket)
        self._kv[bucket] = kv

    async def kv(self, bucket: str) -> KeyValue:
        if bucket not in self._kv:
            try:
                self._kv[bucket] = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                raise ConfigurationError(
                    f"KV bucket {bucket!r} does not exist: start the services once (they create it) "
                    "or run `flowyard up`"
                ) from None
        return self._kv[bucket]

    async def kv_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys of a bucket (those starting with ``prefix``), from the stream's subject counts.

        One JetStream API request, no consumer: nats-py's ``KeyValue.keys()`` watches the bucket
        with an ordered consumer and can come back empty right after a write. Keys whose latest
        entry is a delete or purge marker are listed too; reading them says so.
        """
        root = f"$KV.{bucket}."
        try:
            info = await self.js.stream_info(
                f"KV_{bucket}", subjects_filter=f"{root}{prefix}>" if prefix else f"{root}>"
            )
        except nats.js.errors.NotFoundError:
            raise ConfigurationError(
                f"KV bucket {bucket!r} does not exist: start the services once (they create it) or run `flowyard up`"
            ) from None
        return sorted(subject[len(root) :] for subject in (info.state.subjects or {}))

    async def topology_present(self) -> bool:
        try:
            for name in (subjects.RUNS_STREAM, subjects.TASKS_STREAM, subjects.TIMERS_STREAM, subjects.DLQ_STREAM):
                await self.js.stream_info(name)
        except Exception:
            return False
        return True

    # --- publishing -------------------------------------------------------------------------

    async def publish(self, subject: str, event: Event, *, msg_id: str) -> api.PubAck:
        """Publish with CloudEvents headers, trace context and a de-dup id; wait for the ack.

        Retries while NATS is unreachable; a repeat of the same ``msg_id`` within the duplicate
        window is dropped by JetStream, so retrying is always safe.
        """
        payload = encode(event)
        if len(payload) > self.cfg.max_payload:
            raise PermanentError(
                f"{event_type_name(event)} for run {event.run_id} is {len(payload)} bytes, over the "
                f"{self.cfg.max_payload}-byte limit (bus.max_payload): make the agent return less data"
            )
        headers = build_headers(event, source=self.name, msg_id=msg_id)
        with tracer().start_as_current_span(
            f"send {subject}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.message.id": msg_id,
            },
        ):
            inject(headers)
            try:
                ack = await self.js.publish(subject, payload, headers=headers)
            except _TRANSIENT:
                # NATS is restarting or the link dropped: keep trying (the de-dup id makes it safe).
                ack = await self._publish_retrying(subject, payload, headers)
        PUBLISHED.labels(ack.stream).inc()
        return ack

    async def _publish_retrying(self, subject: str, payload: bytes, headers: dict[str, str]) -> api.PubAck:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(seconds(self.cfg.publish_retry_for)),
                wait=wait_exponential(multiplier=0.05, max=1),
                retry=retry_if_exception_type(_TRANSIENT),
                reraise=True,
            ):
                with attempt:
                    return await self.js.publish(subject, payload, headers=headers)
        except _TRANSIENT as exc:
            raise NatsUnavailable(f"publish to {subject} failed: NATS unreachable ({exc!r})") from exc
        raise AssertionError("unreachable")

    async def publish_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        await self.js.publish(subject, data, headers=headers)

    # --- consuming --------------------------------------------------------------------------

    def consumer(
        self,
        *,
        durable: str,
        stream: str,
        filters: Sequence[str],
        decode: Decoder,
        handler: Handler,
        concurrency: int = 8,
        max_deliver: int | None = None,
        ack_wait: float | None = None,
    ) -> Consumer:
        return Consumer(
            self,
            durable=durable,
            stream=stream,
            filters=list(filters),
            decode=decode,
            handler=handler,
            concurrency=concurrency,
            max_deliver=max_deliver if max_deliver is not None else self.cfg.max_deliver,
            ack_wait=ack_wait,
        )


def event_type_name(event: Event) -> str:
    return type(event).__name__


class Consumer:
    """A durable pull consumer with explicit ack, nak-with-delay, term + dead letter, max_deliver."""

    def __init__(
        self,
        bus: Bus,
        *,
        durable: str,
        stream: str,
        filters: list[str],
        decode: Decoder,
        handler: Handler,
        concurrency: int,
        max_deliver: int,
        ack_wait: float | None = None,
    ) -> None:
        self.bus = bus
        self.durable = durable
        self.stream = stream
        self.filters = filters
        self.decode = decode
        self.handler = handler
        self.concurrency = concurrency
        self.max_deliver = max_deliver
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

    async def ensure(self) -> None:
        """Create or update the durable consumer (idempotent; safe from every replica)."""
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
        await self.bus.js.add_consumer(self.stream, config)
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
                await self.ensure()  # a restarted server without file storage lost the consumer
        while self._pulls and self._pulls[0][0] < now:
            # Expired without the server saying so: the server restarted or the link dropped.
            self._pulls.popleft()
            with contextlib.suppress(Exception):
                await self.ensure()
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
                await self.ensure()
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
        ctx = extract(headers)
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        with tracer().start_as_current_span(
            f"process {msg.subject}",
            context=ctx,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
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

    async def _unanswered(self, delivery: Delivery) -> tuple[int, str | None]:
        """How many deliveries of this message ended with no answer (the handler's process died).

        Only redeliveries are journalled (a KV entry while the message is in hand, removed when it
        is answered), so the first delivery of every message costs nothing extra.
        """
        if delivery.num_delivered <= 1:
            return 0, None
        key = f"{self.durable}.{delivery.stream_seq}"
        try:
            kv = await self.bus.kv(subjects.INFLIGHT_BUCKET)
            try:
                entry = await kv.get(key)
                died = int(entry.value or b"0") if entry.value else 0
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                died = 0
            await kv.put(key, str(died + 1).encode())
        except Exception as exc:  # the journal is a safety net; NATS trouble must not stop work
            log.debug("poison journal unavailable", consumer=self.durable, error=repr(exc))
            return 0, None
        # A delivery ago the count was written and never cleared: that delivery died too.
        return died, key

    async def _answered(self, key: str | None) -> None:
        if key is None:
            return
        with contextlib.suppress(Exception):
            kv = await self.bus.kv(subjects.INFLIGHT_BUCKET)
            await kv.delete(key)

    async def _dispatch(self, msg: Msg, delivery: Delivery, span: trace.Span) -> str:
        died, journal = await self._unanswered(delivery)
        if died + 1 >= self.bus.cfg.poison_deliveries:
            await self._answered(journal)
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
            await self._answered(journal)

    async def _dispatch_decoded(self, msg: Msg, delivery: Delivery, span: trace.Span) -> str:
        try:
            event = self.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead_letter(msg, delivery, f"cannot decode message: {exc}")
            span.set_status(Status(StatusCode.ERROR, "poison"))
            return "poison"
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
        """Copy the message to ``fy.dlq.<service>`` with the reason, then terminate it."""
        log.error(
            "message terminated",
            consumer=self.durable,
            subject=delivery.subject,
            stream_seq=delivery.stream_seq,
            reason=reason[:2000],
        )
        headers = {k: v for k, v in delivery.headers.items() if k.lower() != "nats-msg-id"} | {
            "Nats-Msg-Id": f"dlq:{self.stream}:{delivery.stream_seq}",
            "fy-dlq-reason": reason[:2000].replace("\n", " "),
            "fy-dlq-subject": delivery.subject,
            "fy-dlq-consumer": self.durable,
            "fy-dlq-stream-seq": str(delivery.stream_seq),
            "fy-dlq-deliveries": str(delivery.num_delivered),
        }
        try:
            await self.bus.publish_raw(subjects.dead_letter(self.bus.name), msg.data, headers)
        except Exception as exc:
            # Never terminate a message we could not keep: try again later.
            log.error("dead-letter publish failed; nak", consumer=self.durable, error=repr(exc))
            with contextlib.suppress(Exception):
                await msg.nak(delay=5)
            return
        with contextlib.suppress(Exception):
            await msg.term()
        await self._abandon_run(msg, delivery, reason)

    async def _abandon_run(self, msg: Msg, delivery: Delivery, reason: str) -> None:
        """A message of a run was given up on: tell the scheduler, so the run ends saying why
        instead of waiting for something that will never come."""
        run_id, workflow = "", ""
        try:
            event = decode_event(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            event = None
        if isinstance(event, RunAbandoned):
            return  # the scheduler itself could not end the run: the dead letter says why
        if event is not None:
            run_id, workflow = event.run_id, str(getattr(event, "workflow", "") or "")
        else:
            parts = delivery.subject.split(".")
            if parts[:2] == ["fy", "run"] and len(parts) > 2:
                run_id = parts[2]
            elif parts[:3] == ["fy", "timer", "run"] and len(parts) > 3:
                run_id = parts[3]
        if not run_id or not subjects.TOKEN.match(run_id):
            return
        abandoned = RunAbandoned(
            run_id=run_id, service=self.bus.name, subject=delivery.subject, reason=reason[:1000], workflow=workflow
        )
        try:
            await self.bus.publish(
                subjects.run_abandoned(run_id),
                abandoned,
                msg_id=f"{run_id}:abandoned:{self.stream}:{delivery.stream_seq}",
            )
        except Exception as exc:
            log.error("could not end the run of a dead-lettered message", run_id=run_id, error=repr(exc))

"""The JetStream bus: connect, publish with de-dup, KV, and the consumers it hands out.

Every service talks to every other through this module only (streams and buckets are declared in
:mod:`shared.bus.topology`, the consumer loop is :mod:`shared.bus.consumer`). It owns the nats-py traps listed in
DESIGN.md: unlimited reconnects, a retried first connect, ``fetch()`` timeouts that mean "nothing
yet", and pull subscriptions re-bound after the server lost them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind
from tenacity import AsyncRetrying, retry_if_exception, retry_if_exception_type, stop_after_delay, wait_exponential

from shared.bus.delivery import TRANSIENT, NatsUnavailable
from shared.bus.riding import raw, riding
from shared.config.secrets import SecretSource
from shared.config.settings import BusConfig, NatsConfig, NatsTls, seconds
from shared.contract import permissions as natsperms
from shared.contract import subjects
from shared.contract.envelope import build_headers, run_attributes
from shared.contract.errors import ConfigurationError, PermanentError
from shared.contract.messages import Event, encode
from shared.telemetry.metrics import PUBLISHED
from shared.telemetry.tracing import in_run, inject, tracer

log = structlog.get_logger("flowyard.bus")
T = TypeVar("T")
_json = msgspec.json.Encoder()


class Bus:
    def __init__(self, nats_cfg: NatsConfig, bus_cfg: BusConfig, *, name: str) -> None:
        self.nats_cfg = nats_cfg
        self.cfg = bus_cfg
        self.name = name
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._raw_js: JetStreamContext | None = None
        self._kv: dict[str, KeyValue] = {}
        self._closing = False
        self._reconnect_hooks: list[Callable[[], None]] = []
        self._refusals: list[str] = []
        self._refused_count = 0  # refusals ever heard: a call that was refused stops riding
        self._errors: list[str] = []  # the last few errors nats-py reported, for the first connect's message

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
            opts["user"], opts["password"] = cfg.user, await _password(cfg)
            # Replies come to the user's own inbox: its permissions name no one else's.
            opts["inbox_prefix"] = natsperms.inbox(cfg.user)
        if cfg.token:
            opts["token"] = cfg.token
        if cfg.creds_path:
            opts["user_credentials"] = cfg.creds_path
        if cfg.tls is not None or cfg.url.startswith("tls://"):
            opts["tls"] = _tls_context(cfg.tls or NatsTls())
        deadline = seconds(cfg.connect_timeout)
        last: BaseException | None = None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(deadline),
                wait=wait_exponential(multiplier=0.1, max=2),
                retry=retry_if_exception_type((OSError, *TRANSIENT, nats.errors.NoServersError)),
                reraise=True,
            ):
                with attempt:
                    # Bounded: nats-py keeps retrying a TLS handshake the server's certificate fails.
                    self.nc = await asyncio.wait_for(nats.connect(**opts), timeout=max(deadline, 1.0))
        except Exception as exc:
            last = exc
        if self.nc is not None:
            # nats-py reads this at each reconnect: never give up on a server that was reachable
            # (its default stops after about two minutes).
            self.nc.options["max_reconnect_attempts"] = -1
        if self.nc is None or not self.nc.is_connected:
            reason = str(last) or type(last).__name__
            if any("CERTIFICATE_VERIFY_FAILED" in e for e in self._errors):
                raise ConfigurationError(
                    f"NATS at {cfg.url}: its TLS certificate is not trusted ({self._errors[-1]}); set nats.tls.ca "
                    "to the CA that signed it"
                ) from None
            if "Authorization" in reason or "authorization" in reason or any("uthorization" in e for e in self._errors):
                raise ConfigurationError(
                    f"NATS at {cfg.url} refused the credentials: check FLOWYARD_NATS_USER/PASSWORD/CREDS"
                ) from None
            raise ConfigurationError(
                f"cannot reach NATS at {cfg.url} (tried for {cfg.connect_timeout}: {reason}). "
                "Start a stack with `flowyard up`, or point FLOWYARD_NATS_URL at a running nats-server "
                "with JetStream enabled."
            ) from None
        self._raw_js = self.nc.jetstream(timeout=5)
        # Every JetStream API call made through this bus rides a NATS restart (shared.bus.riding).
        self._js = riding(self._raw_js, self.through_outage, "JetStream")

    async def _on_error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        self._errors.append(text)
        del self._errors[:-5]
        if "permissions violation" in text.lower():
            # The server refused something this user may not do: remembered, so the call waiting
            # for an answer that will never come fails at once, naming it (see _refused).
            self._refusals.append(text)
            del self._refusals[:-20]
            self._refused_count += 1
            log.error(
                "NATS refused an operation: permissions violation",
                service=self.name,
                user=self.nats_cfg.user,
                error=text,
            )
            return
        # While the first connect is still being retried, the final error says it all.
        level = log.debug if self.nc is None else log.warning
        level("nats error", service=self.name, error=text)

    def _refused(self, subject: str) -> str | None:
        wanted = f'"{subject.lower()}"'  # nats-py reports the server's error in lower case
        for text in reversed(self._refusals):
            if wanted in text.lower():
                return text
        return None

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

    def remember_kv(self, bucket: str, kv: KeyValue) -> None:
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

    # --- the index of what is in progress (FY_ACTIVE) ------------------------------------------

    async def mark_active(self, subject: str) -> None:
        await self.js.publish(subject, b"")

    async def clear_active(self, subject: str) -> None:
        # A purge by subject leaves no marker behind (a KV delete would), so counting stays exact.
        await self.js.purge_stream(subjects.ACTIVE_STREAM, subject=subject)

    async def active(self, filter_subject: str) -> list[str]:
        """The subjects present under ``filter_subject``: one API request however many there are."""
        info = await self.js.stream_info(subjects.ACTIVE_STREAM, subjects_filter=filter_subject)
        return list((info.state.subjects or {}).keys())

    async def topology_present(self) -> bool:
        # Only "no such stream" means missing; NATS being away (or a cluster still electing) is
        # said as such by the caller, not mistaken for a missing bootstrap.
        try:
            for name in (subjects.RUNS_STREAM, subjects.TASKS_STREAM, subjects.TIMERS_STREAM, subjects.DLQ_STREAM):
                await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
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
        # Whatever this process is doing, a message of a run goes into the run's trace.
        with tracer().start_as_current_span(
            f"send {subject}",
            context=in_run(event.run_id),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.name": "send",
                "messaging.destination.name": subject,
                "messaging.message.id": msg_id,
                **run_attributes(event),
            },
        ):
            inject(headers)
            try:
                ack = await raw(self.js).publish(subject, payload, headers=headers)
            except TRANSIENT:
                if (refusal := self._refused(subject)) is not None:
                    raise PermanentError(
                        f"NATS refused to let {self.nats_cfg.user!r} publish {subject}: {refusal}"
                    ) from None
                # NATS is restarting or the link dropped: keep trying (the de-dup id makes it safe).
                ack = await self._publish_retrying(subject, payload, headers)
        PUBLISHED.labels(ack.stream).inc()
        return ack

    async def _publish_retrying(self, subject: str, payload: bytes, headers: dict[str, str]) -> api.PubAck:
        return await self.through_outage(
            lambda: raw(self.js).publish(subject, payload, headers=headers), f"publish to {subject}"
        )

    async def through_outage(self, step: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``step`` again while NATS is away, for up to ``bus.publish_retry_for``.

        Every JetStream API call made through the bus comes here (``shared.bus.riding``), and a
        client's multi-step idempotent work may too. Not retried: a bus being closed on purpose
        (shutting down never waits on NATS) and a call the server refused for permissions (its
        answer will never come; waiting would only hide the misconfiguration)."""
        refused_before = self._refused_count

        def outage(exc: BaseException) -> bool:
            return isinstance(exc, TRANSIENT) and not self._closing and self._refused_count == refused_before

        # The first try outside the retry machinery: every JetStream call comes here, and NATS is
        # almost always there (no per-call retry state on the scheduler's hot path).
        try:
            return await step()
        except TRANSIENT as exc:
            if not outage(exc):
                raise
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(seconds(self.cfg.publish_retry_for)),
                wait=wait_exponential(multiplier=0.05, max=1),
                retry=retry_if_exception(outage),
                reraise=True,
            ):
                with attempt:
                    return await step()
        except TRANSIENT as exc:
            if self._closing or self._refused_count != refused_before:
                raise  # as it came: the caller's own handling (e.g. naming the refusal) applies
            raise NatsUnavailable(
                f"{what} failed: NATS unreachable for {self.cfg.publish_retry_for} ({exc!r})"
            ) from exc
        raise AssertionError("unreachable")

    async def publish_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        # Audit entries, dead letters, alerts, trigger events: they ride an outage like every call.
        await self.js.publish(subject, data, headers=headers)


def event_type_name(event: Event) -> str:
    return type(event).__name__


async def _password(cfg: NatsConfig) -> str | None:
    if cfg.password_secret is None:
        return cfg.password
    source = SecretSource(cfg.secrets_dir)
    found, missing = await source.resolve([cfg.password_secret])
    if missing:
        raise ConfigurationError(
            f"NATS password secret {cfg.password_secret} (nats.password_secret) is not set: "
            f"set {source.where(cfg.password_secret)}"
        )
    return found[cfg.password_secret]


def _tls_context(tls: NatsTls) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=tls.ca)
        if tls.cert and tls.key:
            ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"nats.tls: cannot load the certificates ({exc}); check tls.ca, tls.cert, tls.key"
        ) from None
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx

"""The service base: lifecycle, signals, and the /healthz, /readyz and /metrics endpoints.

A :class:`Service` owns one NATS connection and some durable consumers. A :class:`ServiceHost`
runs one service (``flowyard serve``) or several in one process (``flowyard up``), serves the HTTP
endpoints for all of them, and shuts them down gracefully on SIGTERM: consumers stop fetching,
in-flight messages finish or are handed back (nak), then the connection drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable

import msgspec
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.bus.connection import Bus
from shared.bus.consumer import Consumer
from shared.bus.delivery import Handler
from shared.bus.topology import ensure_topology
from shared.config.settings import Config, seconds
from shared.contract.messages import decode_event
from shared.telemetry.metrics import (
    CONSUMER_ACK_PENDING,
    CONSUMER_PENDING,
    CONSUMER_REDELIVERED,
    CONSUMER_WAITING,
    DEAD_LETTERS,
    SERVICE_UP,
    STREAM_BYTES,
    STREAM_MESSAGES,
)

log = structlog.get_logger("flowyard.service")


class Service(ABC):
    name: str = "service"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bus = Bus(config.nats, config.bus, name=self.name)
        self.consumers: list[Consumer] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def shutdown_grace(self) -> float:
        return 10.0

    def consume(
        self,
        durable: str,
        stream: str,
        filters: list[str],
        handler: Handler,
        *,
        concurrency: int,
        max_deliver: int | None = None,
        ack_wait: float | None = None,
    ) -> None:
        """Add a durable consumer of events (decoded with the contract's union decoder)."""
        self.consumers.append(
            Consumer(
                self.bus,
                durable=durable,
                stream=stream,
                filters=filters,
                decode=decode_event,
                handler=handler,
                concurrency=concurrency,
                max_deliver=max_deliver,
                ack_wait=ack_wait,
            )
        )

    @abstractmethod
    async def setup(self) -> None:
        """Create consumers (append to ``self.consumers``) and anything else the service needs."""

    async def start(self) -> None:
        await self.bus.connect()
        # A cluster still electing its leader answers slowly at first: each call rides it out.
        await ensure_topology(self.bus)
        await self.setup()
        for consumer in self.consumers:
            await consumer.ensure()
            self._tasks.append(asyncio.create_task(consumer.run(), name=f"{self.name}:{consumer.durable}"))
        self._gauges = asyncio.create_task(self._refresh_gauges_forever(), name=f"{self.name}:gauges")
        SERVICE_UP.labels(self.name).set(1)
        DEAD_LETTERS.labels(self.name)  # exported as 0 from the start: rate() and alerts see the first one
        log.info("service started", service=self.name, consumers=[c.durable for c in self.consumers])

    async def refresh_gauges(self) -> None:
        """Set the gauges read from JetStream: this service's consumers and their streams.

        Services add their own (active runs, pending approvals) by extending this.
        """
        streams = set()
        for consumer in self.consumers:
            info = await self.bus.js.consumer_info(consumer.stream, consumer.durable)
            CONSUMER_PENDING.labels(consumer.durable).set(info.num_pending or 0)
            CONSUMER_ACK_PENDING.labels(consumer.durable).set(info.num_ack_pending or 0)
            CONSUMER_REDELIVERED.labels(consumer.durable).set(info.num_redelivered or 0)
            CONSUMER_WAITING.labels(consumer.durable).set(info.num_waiting or 0)
            streams.add(consumer.stream)
        for stream in sorted(streams):
            state = (await self.bus.js.stream_info(stream)).state
            STREAM_MESSAGES.labels(stream).set(state.messages)
            STREAM_BYTES.labels(stream).set(state.bytes)

    async def _refresh_gauges_forever(self) -> None:
        every = seconds(self.config.telemetry.gauge_interval)
        while True:
            try:
                await self.refresh_gauges()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away for a moment: the gauges keep their last values
                log.debug("gauges not refreshed", service=self.name, error=repr(exc))
            await asyncio.sleep(every)

    async def stop(self) -> None:
        gauges = getattr(self, "_gauges", None)
        if gauges is not None:
            gauges.cancel()
        for consumer in self.consumers:
            consumer.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.shutdown_grace)
            if pending:
                # In-flight work past the grace period is handed back (nak) so another replica takes it.
                for consumer in self.consumers:
                    consumer.cancel_inflight()
                await asyncio.wait(pending, timeout=5)
        await self.bus.close()
        SERVICE_UP.labels(self.name).set(0)
        log.info("service stopped", service=self.name)

    async def ready(self) -> tuple[bool, str]:
        if not self.bus.connected:
            return False, "not connected to NATS"
        if not await self.bus.topology_present():
            return False, "streams missing"
        return True, "ok"


class ServiceHost:
    def __init__(self, config: Config, services: list[Service]) -> None:
        self.config = config
        self.services = services
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.stopping = asyncio.Event()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "services": [s.name for s in self.services]})

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = {s.name: await s.ready() for s in self.services}
        ok = all(v[0] for v in checks.values())
        body = {"status": "ready" if ok else "not ready", "services": {k: v[1] for k, v in checks.items()}}
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start_http(self) -> None:
        if self.config.http.port < 0:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http.host, self.config.http.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.http.port
        log.info("http endpoints", url=f"http://{self.config.http.host}:{self.port}", paths="/healthz /readyz /metrics")

    async def start(self) -> None:
        await self.start_http()
        started: list[Service] = []
        try:
            for service in self.services:
                await service.start()
                started.append(service)
        except BaseException:
            for service in reversed(started):
                await service.stop()
            await self.stop_http()
            raise

    async def stop(self) -> None:
        # Stop in parallel: the executor's grace period must not delay the others' hand-back.
        await asyncio.gather(*(s.stop() for s in self.services), return_exceptions=True)
        await self.stop_http()

    async def stop_http(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)

    async def serve_forever(self) -> None:
        self.install_signal_handlers()
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            log.info("shutting down")
            await self.stop()


def configure_process(config: Config, service: str, *, quiet: bool = False) -> None:
    """Logging and tracing for this process, as every service and the CLI set them up."""
    from shared.telemetry.logging import configure_logging
    from shared.telemetry.tracing import configure_tracing

    log_cfg = config.log
    if quiet:
        log_cfg = msgspec.structs.replace(log_cfg, level="error")
    configure_logging(log_cfg)
    configure_tracing(config.telemetry, service)


async def serve(config: Config, services: list[Service]) -> None:
    """Run services until SIGTERM/SIGINT, with the HTTP endpoints."""
    host = ServiceHost(config, services)
    with contextlib.suppress(asyncio.CancelledError):
        await host.serve_forever()


def main(name: str, factory: Callable[[Config], Service]) -> None:
    """``python -m services.<name>``: one service, configured from ``--config``/``FLOWYARD_*``.

    The same as ``flowyard serve <name>`` without depending on the CLI: containers and
    Kubernetes start services this way. Exit 2 on a bad configuration, 3 when the service cannot
    start (NATS unreachable).
    """
    import argparse
    import sys

    from shared.config.settings import load_config
    from shared.contract.errors import ConfigurationError

    parser = argparse.ArgumentParser(prog=f"python -m services.{name}", description=f"Run the {name} service.")
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML configuration file (or FLOWYARD_CONFIG)")
    parser.add_argument("--http-port", type=int, default=None, help="port for /healthz, /readyz, /metrics")
    args = parser.parse_args()
    try:
        config = load_config(args.config)
    except ConfigurationError as exc:
        print(f"flowyard: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.http_port is not None:
        config = msgspec.structs.replace(config, http=msgspec.structs.replace(config.http, port=args.http_port))
    configure_process(config, name)
    try:
        service = factory(config)
        asyncio.run(serve(config, [service]))
    except ConfigurationError as exc:
        print(f"flowyard: {exc}", file=sys.stderr)
        sys.exit(2 if str(exc).startswith("invalid configuration") else 3)
    except KeyboardInterrupt:
        sys.exit(130)

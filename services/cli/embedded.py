"""The embedded default: a private nats-server plus every service in this one process."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgspec

from services.approver.service import ApproverService
from services.executor.service import ExecutorService
from services.gateway.service import GatewayService
from services.notifier.service import NotifierService
from services.planner.service import PlannerService
from services.scheduler.service import SchedulerService
from shared.bus.server import NatsServer
from shared.config.settings import Config
from shared.service.host import Service, ServiceHost

# The CLI is the composition root: the one place that knows every service.
SERVICE_KINDS: dict[str, Callable[[Config], Service]] = {
    "planner": PlannerService,
    "scheduler": SchedulerService,
    "executor": ExecutorService,
    "approver": ApproverService,
    "notifier": NotifierService,
    "gateway": GatewayService,
}


class EmbeddedStack:
    def __init__(
        self, config: Config, *, data_dir: Path | None = None, nats_port: int = -1, gateway: bool = False
    ) -> None:
        self._temp = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="flowyard-"))
        self.server = NatsServer(self.data_dir / "nats", port=nats_port)
        self.base_config = config
        self.config = config
        self.host: ServiceHost | None = None
        self.with_gateway = gateway
        self.gateway: GatewayService | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        try:
            base = self.base_config
            gateway_cfg = base.gateway
            if not gateway_cfg.data_dir:  # the generated admin token lives with the stack's data
                gateway_cfg = msgspec.structs.replace(gateway_cfg, data_dir=str(self.data_dir))
            self.config = msgspec.structs.replace(
                base, nats=msgspec.structs.replace(base.nats, url=self.server.url), gateway=gateway_cfg
            )
            services: list[Service] = [
                PlannerService(self.config),
                SchedulerService(self.config),
                ExecutorService(self.config),
                ApproverService(self.config),
                NotifierService(self.config),
            ]
            if self.with_gateway:
                self.gateway = GatewayService(self.config)
                services.append(self.gateway)
            self.host = ServiceHost(self.config, services)
            await self.host.start()
        except BaseException:
            # Never leave a private nats-server behind when the stack cannot come up.
            await asyncio.to_thread(self.server.stop)
            self.host = None
            raise

    async def stop(self) -> None:
        if self.host is not None:
            await self.host.stop()
        await asyncio.to_thread(self.server.stop)
        if self._temp:
            await asyncio.to_thread(shutil.rmtree, self.data_dir, True)

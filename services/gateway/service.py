"""The gateway service: the HTTP API on ``gateway.host:gateway.port``, a NATS client like the CLI.

It has no consumers. It reads records and streams, publishes run requests, cancels and audit
entries, and asks the approver to decide — never calling another service directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog
from aiohttp import web

from shared.config.settings import Config
from shared.contract.errors import ConfigurationError
from shared.service.host import Service

from .app import build_app
from .auth import Users, default_data_dir, load_users
from .context import Gateway

log = structlog.get_logger("flowyard.gateway")


class GatewayService(Service):
    name = "gateway"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.url: str = ""
        self.token_file: Path | None = None
        self.gateway: Gateway | None = None

    @property
    def shutdown_grace(self) -> float:
        return 5.0

    async def setup(self) -> None:
        pass

    async def start(self) -> None:
        data_dir = Path(self.config.gateway.data_dir) if self.config.gateway.data_dir else default_data_dir()
        users, self.token_file = await load_users(self.config.gateway, data_dir)
        await super().start()
        await self._serve(users)

    async def _serve(self, users: Users) -> None:
        cfg = self.config.gateway
        self.gateway = Gateway(self.config, self.bus, users)
        # Streams (events, followed logs) end when the gateway stops rather than holding it up.
        self._runner = web.AppRunner(build_app(self.gateway), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            await super().stop()
            raise ConfigurationError(
                f"gateway cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); "
                "set gateway.port (FLOWYARD_GATEWAY_PORT) to a free port, or 0 for any"
            ) from None
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else cfg.port
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.url = f"http://{host}:{self.port}"
        log.info(
            "gateway listening",
            url=self.url,
            users=len(users),
            token_file=str(self.token_file) if self.token_file else None,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cleanup(), timeout=5)
            self._runner = None
        await super().stop()

    async def ready(self) -> tuple[bool, str]:
        if self._runner is None:
            return False, "not listening"
        return await super().ready()

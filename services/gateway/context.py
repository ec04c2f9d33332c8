"""What every handler shares: the bus, the configuration, the users, and the audit trail."""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import Literal

import structlog
from aiohttp import web

from shared.api.openapi import OPERATIONS, Operation
from shared.bus.connection import Bus
from shared.config.settings import Config
from shared.state import audit, registry
from shared.state.registry import WorkflowVersion
from shared.workflow.model import WorkflowDoc

from .auth import User, Users
from .ratelimit import SharedLimiter

log = structlog.get_logger("flowyard.gateway")


class Gateway:
    def __init__(self, config: Config, bus: Bus, users: Users) -> None:
        self.config = config
        self.cfg = config.gateway
        self.bus = bus
        self.users = users
        self.limiter = SharedLimiter(bus, self.cfg.rate_limit.per_minute, self.cfg.rate_limit.burst)
        self.operations: dict[str, Operation] = {op.operation_id: op for op in OPERATIONS}
        # Workflow versions, parsed: a version number never names two documents, so this never
        # goes stale (whether the workflow still exists is read from its head every time).
        self._parsed: OrderedDict[tuple[str, int], tuple[WorkflowVersion, WorkflowDoc]] = OrderedDict()
        self.host = socket.gethostname()

    async def version(self, name: str, number: int) -> tuple[WorkflowVersion, WorkflowDoc] | None:
        key = (name, number)
        found = self._parsed.get(key)
        if found is not None:
            self._parsed.move_to_end(key)
            return found
        version = await registry.get_version(self.bus, name, number)
        if version is None:
            return None
        found = (version, registry.parse_version(version))
        self._parsed[key] = found
        while len(self._parsed) > 256:
            self._parsed.popitem(last=False)
        return found

    async def audit(
        self,
        request: web.Request,
        user: User,
        action: audit.Action,
        *,
        target: str,
        outcome: Literal["ok", "refused", "failed"],
        status: int,
        detail: str = "",
    ) -> None:
        entry = audit.entry(
            user=user.name,
            action=action,
            target=target,
            outcome=outcome,
            via="gateway",
            client=request.remote or "",
            status=status,
            detail=detail,
            request_id=request.get("request_id", ""),
        )
        try:
            await audit.record(self.bus, entry)
        except Exception as exc:  # the action happened; losing its audit line must be loud
            log.error("audit entry not recorded", action=action, target=target, user=user.name, error=repr(exc))


GATEWAY = web.AppKey("gateway", Gateway)

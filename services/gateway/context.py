"""What every handler shares: the bus, the configuration, the users, and the audit trail."""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import Literal

import structlog
from aiohttp import web

from shared import audit
from shared.bus import Bus
from shared.config import Config
from shared.openapi import OPERATIONS, Operation
from shared.workflow.model import WorkflowDoc

from .auth import User, Users
from .ratelimit import RateLimiter

log = structlog.get_logger("flowyard.gateway")


class Gateway:
    def __init__(self, config: Config, bus: Bus, users: Users) -> None:
        self.config = config
        self.cfg = config.gateway
        self.bus = bus
        self.users = users
        self.limiter = RateLimiter(self.cfg.rate_limit.per_minute, self.cfg.rate_limit.burst)
        self.operations: dict[str, Operation] = {op.operation_id: op for op in OPERATIONS}
        # Parsed workflow versions: a version never changes, so this never goes stale.
        self._parsed: OrderedDict[tuple[str, int], WorkflowDoc] = OrderedDict()
        self.host = socket.gethostname()

    def parsed(self, key: tuple[str, int]) -> WorkflowDoc | None:
        found = self._parsed.get(key)
        if found is not None:
            self._parsed.move_to_end(key)
        return found

    def remember(self, key: tuple[str, int], doc: WorkflowDoc) -> None:
        self._parsed[key] = doc
        while len(self._parsed) > 256:
            self._parsed.popitem(last=False)

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

"""The REST API's section: users and their roles, the rate limit, CORS."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from .base import Section, duration

# alerts: may only deliver alerts (Alertmanager's webhook), nothing else.
Role = Literal["viewer", "operator", "approver", "admin", "alerts"]


class GatewayUser(Section, kw_only=True):
    # The token is a secret like any other: the file names it, the secret source holds it.
    token_secret: str
    roles: list[Role]

    def __post_init__(self) -> None:
        if not self.roles:
            raise ValueError("a user needs at least one role: viewer, operator, approver, admin or alerts")


class RateLimit(Section, kw_only=True):
    # Per user (per client address for requests without a valid token); 0 switches it off.
    per_minute: int = 600
    burst: int = 60

    def __post_init__(self) -> None:
        if self.per_minute < 0 or self.burst < 1:
            raise ValueError("rate_limit: per_minute must be 0 (off) or more, burst at least 1")


class GatewayConfig(Section, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8470  # 0 picks a free port
    users: dict[str, GatewayUser] = {}
    max_body: int | str = "1MiB"  # bytes, or 512KiB, 1MiB …
    rate_limit: RateLimit = msgspec.field(default_factory=RateLimit)
    cors_origins: list[str] = []  # origins allowed to call the API from a browser; none by default
    # Where token secrets are read (a mounted Kubernetes Secret), else FLOWYARD_SECRET_<NAME>.
    secrets_dir: str | None = None
    # Where the admin token made when no users are configured is kept (default: the data dir).
    data_dir: str | None = None
    # How long a web UI sign-in lasts (the session store keeps none longer than 24h).
    session_ttl: str = "12h"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0 (any free port) or 1-65535")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body must be at least 1KiB")
        for name in self.users:
            if not USER_RE.match(name):
                raise ValueError(f"user name {name!r}: use letters, digits, '.', '-', '_' and '@' only")
        if not 60 <= duration(self.session_ttl, "session_ttl") <= 24 * 3600:
            raise ValueError(f"session_ttl: {self.session_ttl!r} must be between 1m and 24h")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"cors_origins: {origin!r} must be an origin like https://ops.example.com")

    @property
    def max_body_bytes(self) -> int:
        if isinstance(self.max_body, int):
            return self.max_body
        from shared.workflow.model import memory_bytes

        try:
            return memory_bytes(self.max_body)
        except ValueError:
            raise ValueError(
                f"max_body: {self.max_body!r} is not a size; write it like 1MiB, 512KiB or bytes"
            ) from None


USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")

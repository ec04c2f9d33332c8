"""How services reach NATS (``nats``) and what the bus allows (``bus``)."""

from __future__ import annotations

from typing import Literal

from .base import Section, duration


class NatsTls(Section, kw_only=True):
    ca: str | None = None  # PEM file of the CA that signed the server's certificate
    cert: str | None = None  # this client's certificate (when the server verifies clients)
    key: str | None = None
    verify: bool = True  # check the server's certificate and name; never switch off in production

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together: give both or neither")


class NatsConfig(Section, kw_only=True):
    url: str = "nats://127.0.0.1:4222"
    # How long the first connect keeps trying before giving up with a clear error.
    connect_timeout: str = "10s"
    # Each service connects as its own user (see `flowyard nats-config`): planner, scheduler,
    # executor, approver, notifier, gateway, cli; admin creates the streams (nats-bootstrap).
    user: str | None = None
    password: str | None = None
    # The secret holding the password (FLOWYARD_SECRET_<NAME>, or the file NAME in secrets_dir),
    # e.g. NATS_PASSWORD_EXECUTOR: keeps the password out of the configuration.
    password_secret: str | None = None
    secrets_dir: str | None = None
    token: str | None = None
    creds: str | None = None  # path to a .creds file (JWT + nkey seed)
    creds_file: str | None = None  # the same, by its documented name
    tls: NatsTls | None = None

    def __post_init__(self) -> None:
        duration(self.connect_timeout, "connect_timeout")
        if not self.url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError(f"url {self.url!r} must start with nats://, tls://, ws:// or wss://")
        if self.password is not None and self.password_secret is not None:
            raise ValueError("give password or password_secret, not both")
        if (self.password is not None or self.password_secret is not None) and not self.user:
            raise ValueError("a password needs a user (nats.user)")

    @property
    def creds_path(self) -> str | None:
        return self.creds_file or self.creds

    @property
    def creates_topology(self) -> bool:
        """Whether this connection creates streams and buckets: yes without users (a laptop, the
        embedded stack) and as admin; a service on its own user binds to what bootstrap made."""
        return (not self.user or self.user == "admin") and not self.creds_path

    def __repr__(self) -> str:  # never print credentials
        return f"NatsConfig(url={self.url!r}, user={self.user!r})"


class BusConfig(Section, kw_only=True):
    storage: Literal["file", "memory"] = "file"
    replicas: int = 1
    ack_wait: str = "30s"
    max_deliver: int = 5
    # A message delivered this many times without ever being answered (the process handling it
    # died each time: the OOM killer, a crash in a library) is dead-lettered so the queue moves.
    poison_deliveries: int = 25
    duplicate_window: str = "2m"
    retention: str = "30d"  # how long run events (the audit log) are kept
    max_payload: int = 1024 * 1024
    # How long a publish keeps retrying while NATS is unreachable before the handler gives up.
    publish_retry_for: str = "30s"
    # Workspaces (`flowyard run --workspace DIR`): the largest version, packed (gzipped tar); how
    # long versions are kept; and the most the whole store holds.
    workspace_max_bytes: int = 64 * 1024 * 1024
    workspace_retention: str = "7d"
    workspace_store_bytes: int = 4 * 1024 * 1024 * 1024
    # Agents' stderr, for `flowyard logs`: how long it is kept, and the most the stream holds.
    logs_retention: str = "7d"
    logs_store_bytes: int = 1024 * 1024 * 1024
    # Who did what through the gateway and the CLI (FY_AUDIT): kept this long.
    audit_retention: str = "365d"
    # A value (an agent's output, a node's input, a run output) larger than this travels through
    # the object store fy_values, by reference (ADR 11); the store holds at most value_store_bytes.
    inline_bytes: int = 64 * 1024
    value_store_bytes: int = 4 * 1024 * 1024 * 1024

    @property
    def inline_limit(self) -> int:
        """Where offloading starts: inline_bytes, but never more than a quarter of a message."""
        return min(self.inline_bytes, self.max_payload // 4)

    def __post_init__(self) -> None:
        for name in (
            "audit_retention",
            "ack_wait",
            "duplicate_window",
            "retention",
            "publish_retry_for",
            "workspace_retention",
            "logs_retention",
        ):
            duration(getattr(self, name), name)
        if not 1 <= self.replicas <= 5:
            raise ValueError("replicas must be between 1 and 5")
        if self.workspace_max_bytes < 1024 or self.workspace_store_bytes < self.workspace_max_bytes:
            raise ValueError(
                "workspace_max_bytes must be at least 1024, and workspace_store_bytes at least workspace_max_bytes"
            )
        if self.max_deliver < 1:
            raise ValueError("max_deliver must be at least 1")
        if self.inline_bytes < 1024:
            raise ValueError(f"inline_bytes must be at least 1024, got {self.inline_bytes}")
        if self.value_store_bytes < 1024 * 1024:
            raise ValueError("value_store_bytes must be at least 1 MiB (1048576)")
        if self.poison_deliveries < 2:
            raise ValueError("poison_deliveries must be at least 2")

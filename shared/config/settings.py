"""Configuration: one YAML file plus ``FLOWYARD_*`` environment variables, validated at start-up.

The file is named by ``--config FILE`` on any command, or by ``FLOWYARD_CONFIG``. Environment
variables override the file: ``FLOWYARD_<SECTION>_<FIELD>`` (``FLOWYARD_NATS_URL``,
``FLOWYARD_EXECUTOR_CONCURRENCY``, ``FLOWYARD_LOG_FORMAT`` …). Every bad value is reported with
its name and how to fix it; configuration types forbid unknown fields so typos are caught.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from shared.contract.errors import ConfigurationError
from shared.formats import yamlio
from shared.formats.durations import parse_duration

from .llm import AgentsConfig, LlmConfig

ENV_PREFIX = "FLOWYARD_"
# FLOWYARD_* names that are not settings.
_NOT_SETTINGS = ("CONFIG", "SECRET_", "REQUIRE_SERVERS", "TEST_")


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


def _duration(value: str | float, name: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


class NatsTls(_Section, kw_only=True):
    ca: str | None = None  # PEM file of the CA that signed the server's certificate
    cert: str | None = None  # this client's certificate (when the server verifies clients)
    key: str | None = None
    verify: bool = True  # check the server's certificate and name; never switch off in production

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together: give both or neither")


class NatsConfig(_Section, kw_only=True):
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
        _duration(self.connect_timeout, "connect_timeout")
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


class BusConfig(_Section, kw_only=True):
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
            _duration(getattr(self, name), name)
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


class LogConfig(_Section, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: readable on a terminal, JSON otherwise (containers, CI, files).
    format: Literal["auto", "json", "console"] = "auto"


class HttpConfig(_Section, kw_only=True):
    host: str = "127.0.0.1"
    # Port for /healthz, /readyz and /metrics; 0 picks a free port, -1 disables the endpoint.
    port: int = 0

    def __post_init__(self) -> None:
        if not -1 <= self.port <= 65535:
            raise ValueError("port must be -1 (off), 0 (any free port) or 1-65535")


class KubernetesRuntimeConfig(_Section, kw_only=True):
    """executor.runtime: kubernetes — one Pod per attempt (docs/adr/0012)."""

    # Where agents' Pods (and the Secret holding each one's input) are made.
    namespace: str = "flowyard-agents"
    # A kubeconfig file; empty: the executor's own service account (in the cluster), else ~/.kube/config.
    kubeconfig: str | None = None
    # Runs the init container that copies a workspace in and the one that reads an `rw` one back:
    # flowyard's own image, which the cluster already has.
    helper_image: str = "flowyard/flowyard:0.1.0"
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    # A Pod not running within this long of its creation (unschedulable, image not pulled) is
    # given up as an infrastructure failure, retried per the node's policy.
    start_timeout: str = "5m"

    def __post_init__(self) -> None:
        _duration(self.start_timeout, "start_timeout")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a Kubernetes namespace name (lowercase, digits, -)")


class ExecutorConfig(_Section, kw_only=True):
    # docker: every attempt in a locked-down container. kubernetes: every attempt a locked-down
    # Pod. process: the agent's `command` as a child process of the executor, NOT a sandbox
    # (development and tests only).
    runtime: Literal["process", "docker", "kubernetes"] = "docker"
    kubernetes: KubernetesRuntimeConfig = msgspec.field(default_factory=KubernetesRuntimeConfig)
    pool: str = "default"
    concurrency: int = 8
    # On SIGTERM, in-flight attempts get this long to finish before they are handed back.
    shutdown_grace: str = "20s"
    max_output_bytes: int = 1024 * 1024
    log_tail_bytes: int = 4096
    # Secrets: one file per name in this directory (e.g. a mounted Kubernetes Secret), else
    # FLOWYARD_SECRET_<NAME> variables of the executor.
    secrets_dir: str | None = None
    # Where each attempt's spool lives (default: $XDG_RUNTIME_DIR or /dev/shm, else
    # ~/.local/state), so that an executor restarted after a crash adopts the agents it started
    # rather than running them twice.
    state_dir: str | None = None
    spool_retention: str = "15m"
    # Docker runtime: after this many failures in a row to start an image, refuse its work
    # (failing nodes fast, with the reason) for the cool-down.
    breaker_threshold: int = 3
    breaker_cooldown: str = "60s"
    # An attempt's stderr streamed to `flowyard logs`: at most this much per attempt (the rest is
    # dropped with a note); the tail kept in the task event is log_tail_bytes.
    log_max_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        _duration(self.shutdown_grace, "shutdown_grace")
        _duration(self.spool_retention, "spool_retention")
        _duration(self.breaker_cooldown, "breaker_cooldown")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.log_max_bytes < 0:
            raise ValueError("log_max_bytes must not be negative")


class SchedulerConfig(_Section, kw_only=True):
    concurrency: int = 16
    pool: str = "default"
    # The scheduler's handlers take milliseconds (and keep a slow message with in-progress beats),
    # so a message held by a scheduler that died is delivered again after this, not bus.ack_wait:
    # a restarted scheduler carries the run on within about this long.
    ack_wait: str = "1500ms"

    def __post_init__(self) -> None:
        if _duration(self.ack_wait, "ack_wait") < 0.5:
            raise ValueError("ack_wait must be at least 500ms")


class PlannerConfig(_Section, kw_only=True):
    concurrency: int = 8


class ApproverConfig(_Section, kw_only=True):
    concurrency: int = 8
    # group name -> user names, for approvers written as group:NAME
    groups: dict[str, list[str]] = {}


class SinkConfig(_Section, kw_only=True):
    type: Literal["webhook", "slack", "smtp", "log"]
    url: str | None = None  # webhook / slack; or url_secret
    url_secret: str | None = None  # a secret name holding the URL (secrets never in config files)
    signing_secret: str | None = None  # webhook: secret name for the HMAC-SHA256 signature header
    host: str | None = None  # smtp
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password_secret: str | None = None
    sender: str | None = None
    to: list[str] = []
    timeout: str = "10s"


class NotifyRule(_Section, kw_only=True):
    on: list[
        Literal[
            "run.succeeded",
            "run.failed",
            "run.cancelled",
            "node.failed",
            "approval.requested",
            "approval.granted",
            "approval.rejected",
            "approval.expired",
            "trigger.suppressed",
            "trigger.refused",
        ]
    ]
    workflows: list[str] = msgspec.field(default_factory=lambda: ["*"])  # glob patterns
    labels: dict[str, str] = {}  # every one must match the workflow's metadata.labels
    sinks: list[str]


class NotifierConfig(_Section, kw_only=True):
    sinks: dict[str, SinkConfig] = {}
    rules: list[NotifyRule] = []
    attempts: int = 5  # deliveries tried per event and sink before giving up
    backoff: str = "500ms"
    max_backoff: str = "30s"
    concurrency: int = 8
    secrets_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("backoff", "max_backoff"):
            _duration(getattr(self, name), name)
        for rule in self.rules:
            for sink in rule.sinks:
                if sink not in self.sinks:
                    known = ", ".join(self.sinks) or "none"
                    raise ValueError(f"rule sends to unknown sink {sink!r}; defined sinks: {known}")
        for name, sink in self.sinks.items():
            if sink.type in ("webhook", "slack") and not (sink.url or sink.url_secret):
                raise ValueError(f"sink {name!r}: a {sink.type} sink needs url or url_secret")
            if sink.type == "smtp" and not (sink.host and sink.to and sink.sender):
                raise ValueError(f"sink {name!r}: an smtp sink needs host, sender and to")


# alerts: may only deliver alerts (Alertmanager's webhook), nothing else.
Role = Literal["viewer", "operator", "approver", "admin", "alerts"]


class GatewayUser(_Section, kw_only=True):
    # The token is a secret like any other: the file names it, the secret source holds it.
    token_secret: str
    roles: list[Role]

    def __post_init__(self) -> None:
        if not self.roles:
            raise ValueError("a user needs at least one role: viewer, operator, approver, admin or alerts")


class RateLimit(_Section, kw_only=True):
    # Per user (per client address for requests without a valid token); 0 switches it off.
    per_minute: int = 600
    burst: int = 60

    def __post_init__(self) -> None:
        if self.per_minute < 0 or self.burst < 1:
            raise ValueError("rate_limit: per_minute must be 0 (off) or more, burst at least 1")


class GatewayConfig(_Section, kw_only=True):
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
        if not 60 <= _duration(self.session_ttl, "session_ttl") <= 24 * 3600:
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


class TelemetryConfig(_Section, kw_only=True):
    # none: spans are created (trace context still flows through NATS headers) but not exported.
    exporter: Literal["none", "console", "otlp"] = "none"
    # OTLP over HTTP/protobuf, the collector's base URL (http://tempo:4318); empty: the standard
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318.
    endpoint: str = ""
    # A link to one trace in the user's tracing UI, e.g. https://grafana.example.com/explore?...{trace_id}
    trace_url: str = ""
    # Spans wait here for the background exporter; when it is full (a slow or dead collector)
    # new spans are dropped and counted (flowyard_spans_dropped_total), never waited for.
    queue_size: int = 4096
    export_timeout: str = "5s"
    # How often gauges read from JetStream (consumer lag, active runs, pending approvals) refresh.
    gauge_interval: str = "5s"

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint: {self.endpoint!r} must be an http(s) URL like http://tempo:4318")
        if self.trace_url and "{trace_id}" not in self.trace_url:
            raise ValueError(
                f"trace_url: {self.trace_url!r} must contain {{trace_id}} where the trace id goes, "
                "e.g. http://jaeger:16686/trace/{trace_id}"
            )
        if self.queue_size < 1:
            raise ValueError(f"queue_size: {self.queue_size} is too small; at least 1 (the default is 4096)")
        for name in ("export_timeout", "gauge_interval"):
            if _duration(getattr(self, name), name) <= 0:
                raise ValueError(f"{name}: must be more than 0, e.g. 5s")

    def link(self, trace_id: str) -> str | None:
        """The trace's address in the user's tracing UI, when ``trace_url`` is set."""
        return self.trace_url.replace("{trace_id}", trace_id) if self.trace_url and trace_id else None


class Config(_Section, kw_only=True):
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    executor: ExecutorConfig = msgspec.field(default_factory=ExecutorConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    planner: PlannerConfig = msgspec.field(default_factory=PlannerConfig)
    approver: ApproverConfig = msgspec.field(default_factory=ApproverConfig)
    notifier: NotifierConfig = msgspec.field(default_factory=NotifierConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    llm: LlmConfig = msgspec.field(default_factory=LlmConfig)
    agents: AgentsConfig = msgspec.field(default_factory=AgentsConfig)


SECTIONS: dict[str, type[_Section]] = {f.name: f.type for f in msgspec.structs.fields(Config)}


def _env_overrides(
    env: Mapping[str, str], problems: list[str], origin: dict[tuple[str, str], str]
) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX) :]
        if rest.startswith(_NOT_SETTINGS):
            continue
        section, _, field = rest.lower().partition("_")
        if section not in SECTIONS or not field:
            continue  # not ours to judge: other tools share the prefix
        fields = [f.name for f in msgspec.structs.fields(SECTIONS[section])]
        if field not in fields:
            hint = difflib.get_close_matches(field, fields, n=1)
            did = f" Did you mean {ENV_PREFIX}{section.upper()}_{hint[0].upper()}?" if hint else ""
            problems.append(f"{key}: {section} has no setting {field!r}; known: {', '.join(fields)}.{did}")
            continue
        out.setdefault(section, {})[field] = value
        origin[(section, field)] = key
    return out


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the file (if any) and the environment; raise ConfigurationError naming every bad value."""
    env = os.environ if env is None else env
    path = path or env.get("FLOWYARD_CONFIG") or None
    raw: dict[str, Any] = {}
    problems: list[str] = []
    origin: dict[tuple[str, str], str] = {}
    where = "defaults"
    if path:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigurationError(f"config file {path}: cannot read it ({exc.strerror})") from None
        try:
            loaded = yamlio.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigurationError(f"config file {path}{line}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigurationError(f"config file {path}: must be a mapping of sections ({', '.join(SECTIONS)})")
        raw = loaded
    for section, values in _env_overrides(env, problems, origin).items():
        current = raw.get(section)
        raw[section] = {**(current if isinstance(current, dict) else {}), **values}
    # Validate section by section so that one bad value does not hide the others.
    config_kwargs: dict[str, Any] = {}
    for section, value in raw.items():
        if section not in SECTIONS:
            hint = difflib.get_close_matches(str(section), list(SECTIONS), n=1)
            did = f" Did you mean {hint[0]!r}?" if hint else ""
            problems.append(f"{where}: unknown section {section!r}; known: {', '.join(SECTIONS)}.{did}")
            continue
        try:
            config_kwargs[section] = msgspec.convert(value or {}, SECTIONS[section], strict=False)
        except msgspec.ValidationError as exc:
            problems.append(_explain(exc, section, where, origin))
    if problems:
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(problems))
    return Config(**config_kwargs)


def _explain(exc: msgspec.ValidationError, section: str, where: str, origin: dict[tuple[str, str], str]) -> str:
    text = str(exc)
    fields = [f.name for f in msgspec.structs.fields(SECTIONS[section])]
    if "unknown field" in text:
        name = text.split("`")[1] if "`" in text else ""
        hint = difflib.get_close_matches(name, fields, n=1)
        did = f" Did you mean {hint[0]!r}?" if hint else ""
        return f"{where}: {section}: unknown setting {name!r}; known: {', '.join(fields)}.{did}"
    message, _, at = text.partition(" - at `$.")
    field = at.rstrip("`").split(".")[0].split("[")[0] if at else message.split(":")[0]
    source = origin.get((section, field), where)
    return f"{source}: {section}.{field}: {message.removeprefix(field + ': ')}"


def seconds(value: str) -> float:
    """A validated duration setting in seconds."""
    return parse_duration(value)

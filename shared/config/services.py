"""The sections of the services that do the work: executor, scheduler, planner, approver, notifier."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from .base import Section, duration


class KubernetesRuntimeConfig(Section, kw_only=True):
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
        duration(self.start_timeout, "start_timeout")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a Kubernetes namespace name (lowercase, digits, -)")


class ExecutorConfig(Section, kw_only=True):
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
    # Agents with `network: {allow: [...]}`: the egress proxy's image (default
    # flowyard/egress:<version>, built by `flowyard agents build`) and, on Docker, the network
    # through which the proxy reaches the allowed hosts.
    egress_image: str = ""
    egress_network: str = "bridge"

    def __post_init__(self) -> None:
        duration(self.shutdown_grace, "shutdown_grace")
        duration(self.spool_retention, "spool_retention")
        duration(self.breaker_cooldown, "breaker_cooldown")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.log_max_bytes < 0:
            raise ValueError("log_max_bytes must not be negative")


class SchedulerConfig(Section, kw_only=True):
    concurrency: int = 16
    pool: str = "default"
    # The scheduler's handlers take milliseconds (and keep a slow message with in-progress beats),
    # so a message held by a scheduler that died is delivered again after this, not bus.ack_wait:
    # a restarted scheduler carries the run on within about this long.
    ack_wait: str = "1500ms"

    def __post_init__(self) -> None:
        if duration(self.ack_wait, "ack_wait") < 0.5:
            raise ValueError("ack_wait must be at least 500ms")


class PlannerLlm(Section, kw_only=True):
    """planner.llm: the model that drafts workflows from goals (docs/planning.md)."""

    provider: str  # a name under llm.providers
    model: str | None = None  # default: the provider's default_model
    max_rounds: int = 3  # answers asked for, the first included; the validator's messages go back each time
    max_tokens: int = 8192  # one answer's
    # The whole draft's tokens; a draft that reaches it stops asking and falls back.
    budget_tokens: int | None = None
    timeout: str = "5m"  # the whole draft, every round and retry included

    def __post_init__(self) -> None:
        if not 1 <= self.max_rounds <= 10:
            raise ValueError("max_rounds: from 1 to 10 answers per plan")
        if self.max_tokens < 256:
            raise ValueError("max_tokens: at least 256 (a workflow does not fit in less)")
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise ValueError("budget_tokens: at least 1, or leave it out for no budget")
        if duration(self.timeout, "timeout") <= 0:
            raise ValueError("timeout: must be more than 0")


class PlanTemplate(Section, kw_only=True):
    """A registered workflow proposed when the model cannot give a valid plan and ``match`` finds the goal."""

    workflow: str
    match: str  # a regular expression searched in the goal (case-insensitive)

    def __post_init__(self) -> None:
        try:
            re.compile(self.match)
        except re.error as exc:
            raise ValueError(f"templates: match {self.match!r} is not a regular expression: {exc}") from None


class PlanApproval(Section, kw_only=True):
    """Who approves a proposed plan; the approver applies these as it does a step's rules."""

    approvers: list[str] = []  # user names or group:NAME; empty: anyone with the approver role but the requester
    min_approvals: int = 1
    expires_in: str = "24h"  # a plan nobody decides on expires (never approved by default)
    allow_self_approval: bool = False

    def __post_init__(self) -> None:
        if self.min_approvals < 1:
            raise ValueError("min_approvals: at least 1")
        if duration(self.expires_in, "expires_in") <= 0:
            raise ValueError("expires_in: must be more than 0")


class PlannerConfig(Section, kw_only=True):
    concurrency: int = 8
    llm: PlannerLlm | None = None  # no model: goals get a template, or fail saying so
    templates: list[PlanTemplate] = []
    approval: PlanApproval = msgspec.field(default_factory=PlanApproval)
    drafts: int = 2  # plans drafted at once (each waits on a model)
    # The model provider's key: a file per name in this directory, else FLOWYARD_SECRET_<NAME>.
    secrets_dir: str | None = None

    def __post_init__(self) -> None:
        if self.drafts < 1:
            raise ValueError("drafts: at least 1")


class ApproverConfig(Section, kw_only=True):
    concurrency: int = 8
    # group name -> user names, for approvers written as group:NAME
    groups: dict[str, list[str]] = {}


class SinkConfig(Section, kw_only=True):
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


class NotifyRule(Section, kw_only=True):
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
            "plan.proposed",
            "plan.approved",
            "plan.rejected",
            "plan.failed",
            "plan.expired",
        ]
    ]
    workflows: list[str] = msgspec.field(default_factory=lambda: ["*"])  # glob patterns
    labels: dict[str, str] = {}  # every one must match the workflow's metadata.labels
    sinks: list[str]


class NotifierConfig(Section, kw_only=True):
    sinks: dict[str, SinkConfig] = {}
    rules: list[NotifyRule] = []
    attempts: int = 5  # deliveries tried per event and sink before giving up
    backoff: str = "500ms"
    max_backoff: str = "30s"
    concurrency: int = 8
    secrets_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("backoff", "max_backoff"):
            duration(getattr(self, name), name)
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

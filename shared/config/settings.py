"""Configuration: one YAML file plus ``FLOWYARD_*`` environment variables, validated at start-up.

The file is named by ``--config FILE`` on any command, or by ``FLOWYARD_CONFIG``. Environment
variables override the file: ``FLOWYARD_<SECTION>_<FIELD>`` (``FLOWYARD_NATS_URL``,
``FLOWYARD_EXECUTOR_CONCURRENCY``, ``FLOWYARD_LOG_FORMAT`` …). Every bad value is reported with
its name and how to fix it; configuration types forbid unknown fields so typos are caught.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from shared.contract.errors import ConfigurationError
from shared.formats import yamlio

# The sections live in modules by what they configure; this module is the one to import from.
from .base import Section, duration, seconds
from .gateway import USER_RE, GatewayConfig, GatewayUser, RateLimit, Role
from .llm import AgentsConfig, LlmConfig
from .observability import HttpConfig, LogConfig, TelemetryConfig
from .services import (
    ApproverConfig,
    ExecutorConfig,
    KubernetesRuntimeConfig,
    NotifierConfig,
    NotifyRule,
    PlannerConfig,
    SchedulerConfig,
    SinkConfig,
)
from .transport import BusConfig, NatsConfig, NatsTls

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "USER_RE",
    "AgentsConfig",
    "ApproverConfig",
    "BusConfig",
    "Config",
    "ExecutorConfig",
    "GatewayConfig",
    "GatewayUser",
    "HttpConfig",
    "KubernetesRuntimeConfig",
    "LlmConfig",
    "LogConfig",
    "NatsConfig",
    "NatsTls",
    "NotifierConfig",
    "NotifyRule",
    "PlannerConfig",
    "RateLimit",
    "Role",
    "SchedulerConfig",
    "Section",
    "SinkConfig",
    "TelemetryConfig",
    "duration",
    "load_config",
    "seconds",
]

ENV_PREFIX = "FLOWYARD_"
# FLOWYARD_* names that are not settings.
_NOT_SETTINGS = ("CONFIG", "SECRET_", "REQUIRE_SERVERS", "TEST_")


class Config(Section, kw_only=True):
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


SECTIONS: dict[str, type[Section]] = {f.name: f.type for f in msgspec.structs.fields(Config)}


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
    planner, llm = config_kwargs.get("planner"), config_kwargs.get("llm")
    if planner is not None and planner.llm is not None:
        offered = llm.providers if llm is not None else {}
        if planner.llm.provider not in offered:
            known = ", ".join(sorted(offered)) or "none"
            problems.append(
                f"{where}: planner.llm.provider: {planner.llm.provider!r} is not in llm.providers (defined: {known})"
            )
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

"""One attempt, start to finish: check the input, run the agent, judge what it printed, report.

No NATS here: ``publish`` and ``prepare`` are passed in, so the logic is tested without servers.
A `capability:` node's attempt tries its candidates in order (docs/agents.md, "Routing"): one
that is unusable is skipped, one that fails for a routable reason hands over to the next, and
the one result reported says which agent ran and what happened to each.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
from opentelemetry.trace import Status, StatusCode

from shared.config.secrets import SecretSource
from shared.contract.errors import PermanentError, RetryableError
from shared.contract.messages import (
    AgentSnapshot,
    Event,
    RouteStep,
    TaskDispatched,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    Usage,
)
from shared.state import workspace as ws
from shared.telemetry import tracing as telemetry

from .judging import (  # noqa: F401  (re-exported: the attempt's vocabulary)
    Judgement,
    check_input,
    failure_report,
    judge,
    redact,
    resolve_overrides,
    tail,
    usage_of,
)
from .logstream import LogStream
from .runtimes.base import Runtime, WorkspaceCopy

# How soon a dispatch handed back for a runtime outage is tried again: with the bus's
# max_deliver (5), about 20 s of waiting out a Docker daemon restart before the node fails.
OUTAGE_RETRY_S = 5.0

Publish = Callable[[Event, str], Awaitable[None]]  # (event, "started" | "succeeded" | "failed")


class Workspaces(Protocol):
    """Where workspace versions live (the object store; a dict in unit tests)."""

    max_bytes: int

    async def fetch(self, name: str) -> bytes: ...

    async def store(self, name: str, data: bytes) -> str: ...


# Makes the stream for one attempt's stderr (see logstream); None: logs are not streamed.
LogFactory = Callable[[TaskDispatched, Mapping[str, str]], LogStream]


async def _workspace_copy(
    task: TaskDispatched, workspaces: Workspaces | None
) -> tuple[WorkspaceCopy | None, Judgement | None]:
    if workspaces is None:
        return None, Judgement(False, error="this executor has no workspace store", reason="runtime")
    try:
        data = await workspaces.fetch(task.workspace) if task.workspace else None
    except ws.WorkspaceError as exc:
        return None, Judgement(False, error=str(exc), reason="runtime", retryable=False)
    return WorkspaceCopy(data, writable=task.agent.workspace == "rw", max_bytes=workspaces.max_bytes), None


async def _keep_workspace(task: TaskDispatched, copy: WorkspaceCopy, data: bytes, workspaces: Workspaces) -> str | None:
    """Store what an `rw` agent left as the run's next version; None when it changed nothing."""
    before, after = await asyncio.gather(asyncio.to_thread(ws.digest, copy.data), asyncio.to_thread(ws.digest, data))
    if before == after:
        return None
    return await workspaces.store(ws.version_name(task.run_id, task.unit, task.attempt), data)


async def fail_fast(task: TaskDispatched, *, publish: Publish, executor_id: str, error: str) -> None:
    """Report the attempt failed without running it (the executor refuses its image for now)."""
    await publish(
        TaskFailed(
            run_id=task.run_id,
            node_id=task.node_id,
            item=task.item,
            attempt=task.attempt,
            error=error,
            reason="runtime",
            retryable=False,
            executor=executor_id,
        ),
        "failed",
    )


# Reasons another candidate may well succeed where this one did not (docs/agents.md). An
# agent's own answer — a failing check, a refusal, a bad request — is never routed.
ROUTABLE = frozenset(
    {
        "rate_limited",
        "provider_unavailable",
        "auth_refused",
        "no_provider",
        "image_missing",
        "unstartable",
        "breaker_open",
        "secrets_missing",
        "cooling_down",
        "limited",
    }
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a candidate cannot be used for this attempt (it is not started)."""

    cause: str
    message: str


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the executor adds for one candidate: its provider's env and key (a secret), and the
    provider's host:port for an agent whose egress allowlist includes its provider."""

    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    egress: tuple[str, ...] = ()


# The service's per-candidate checks and provider: breaker, cooldown, limits, llm.providers.
Prepare = Callable[[TaskDispatched], Awaitable[Prepared | Refusal]]
# Told about each hand-over: (capability, from agent, cause).
OnRoute = Callable[[str, str, str], None]
# Told after each candidate ran (breaker, token counts, cool-downs).
AfterRun = Callable[[AgentSnapshot, Judgement], Awaitable[None]]


@dataclass(slots=True)
class _Tried:
    verdict: Judgement
    duration: float = 0.0
    log: str = ""
    new_version: str | None = None


async def execute(
    task: TaskDispatched,
    *,
    runtime: Runtime,
    publish: Publish,
    executor_id: str,
    log_tail_bytes: int,
    secrets: SecretSource | None = None,
    workspaces: Workspaces | None = None,
    logs: LogFactory | None = None,
    hand_back_outages: bool = False,
    prepare: Prepare | None = None,
    on_route: OnRoute | None = None,
    after: AfterRun | None = None,
) -> Judgement:
    """Run one attempt and report it. With ``hand_back_outages``, a runtime that cannot be reached
    (the Docker daemon restarting) raises :class:`RetryableError` instead of reporting a failure:
    the dispatch is handed back and tried again shortly. Nothing runs twice: an agent that had
    started keeps its container, which the next delivery adopts and reads."""
    # One span per attempt, inside the dispatch's `process` span: in the run's trace, the time
    # the agent itself took and how it ended sit between the dispatch and the result.
    attributes: dict[str, str | int] = {
        "flowyard.run_id": task.run_id,
        "flowyard.workflow": task.workflow,
        "flowyard.node": task.node_id,
        "flowyard.attempt": task.attempt,
        "flowyard.agent": task.agent.name,
        "flowyard.runtime": runtime.name,
    }
    if task.item is not None:
        attributes["flowyard.item"] = task.item
    if task.capability:
        attributes["flowyard.capability"] = task.capability
    if task.agent.image:
        attributes["container.image.name"] = task.agent.image
    with telemetry.tracer().start_as_current_span(f"agent {task.agent.name}", attributes=attributes) as span:
        # "started" travels while the agent starts; it is confirmed before the result is sent,
        # so the two are stored in order. Cancelling the attempt cancels it too.
        started = asyncio.ensure_future(
            publish(
                TaskStarted(
                    run_id=task.run_id, node_id=task.node_id, item=task.item, attempt=task.attempt, executor=executor_id
                ),
                "started",
            )
        )
        try:
            ran, tried, routing, usage = await _route(
                task,
                runtime,
                log_tail_bytes,
                secrets or SecretSource(),
                workspaces,
                logs,
                hand_back_outages,
                prepare,
                on_route,
                after,
            )
            verdict = await _report(task, ran, tried, routing, usage, publish, executor_id, started)
        finally:
            if not started.done():
                started.cancel()
        span.set_attribute("flowyard.outcome", "succeeded" if verdict.ok else verdict.reason)
        if ran != task.agent.name:
            span.set_attribute("flowyard.agent.chosen", ran)
        if verdict.exit_code is not None:
            span.set_attribute("process.exit.code", verdict.exit_code)
        if usage is not None:  # the OpenTelemetry GenAI conventions' names
            if verdict.model:
                span.set_attribute("gen_ai.request.model", verdict.model)
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if (provider := _provider_name(verdict)) is not None:
            span.set_attribute("gen_ai.provider.name", provider)
        if not verdict.ok:
            span.set_status(Status(StatusCode.ERROR, verdict.error))  # already redacted
        return verdict


def _provider_name(verdict: Judgement) -> str | None:
    output = verdict.output
    if isinstance(output, dict) and isinstance(output.get("provider"), str):
        return output["provider"]
    return None


async def _route(
    task: TaskDispatched,
    runtime: Runtime,
    log_tail_bytes: int,
    source: SecretSource,
    workspaces: Workspaces | None,
    logs: LogFactory | None,
    hand_back_outages: bool,
    prepare: Prepare | None,
    on_route: OnRoute | None,
    after: AfterRun | None,
) -> tuple[str, _Tried, list[RouteStep], Usage | None]:
    """Try the candidates in order; (the agent whose result stands, that result, routing, usage)."""
    routed = bool(task.candidates)
    candidates = task.candidates or [task.agent]
    routing: list[RouteStep] = []
    usage: Usage | None = None
    tried: _Tried | None = None
    ran = task.agent.name
    for index, agent in enumerate(candidates):
        candidate = msgspec.structs.replace(task, agent=agent, route=index) if routed else task
        gate = await _gate(candidate, source, prepare)
        last = index == len(candidates) - 1
        if isinstance(gate, Refusal):
            if not routed:
                # A limit passes with time: the node's retry policy may try again; the rest needs a fix.
                retry = gate.cause == "limited"
                verdict = Judgement(False, error=gate.message, reason="runtime", retryable=retry, cause=gate.cause)
                return ran, _Tried(verdict), routing, usage
            routing.append(RouteStep(agent=agent.name, outcome="skipped", reason=f"{gate.cause}: {gate.message}"))
            continue
        tried = await _try(candidate, runtime, log_tail_bytes, gate, workspaces, logs, hand_back_outages)
        if after is not None:
            await after(agent, tried.verdict)
        ran = agent.name
        if tried.verdict.usage is not None:
            usage = tried.verdict.usage if usage is None else usage + tried.verdict.usage
        cause = tried.verdict.cause
        if routed and not tried.verdict.ok and cause in ROUTABLE:
            routing.append(RouteStep(agent=agent.name, outcome="failed", reason=f"{cause}: {tried.verdict.error}"))
            if not last and on_route is not None:
                on_route(task.capability or "", agent.name, cause or "")
            continue
        if routed:
            routing.append(RouteStep(agent=agent.name, outcome="chosen"))
        return ran, tried, routing, usage
    # Every candidate was passed over or failed for a routable reason: say each one's reason.
    steps = "; ".join(f"{s.agent} {s.outcome} ({s.reason})" for s in routing)
    error = f"no agent offering capability {task.capability!r} could do it: {steps}"
    last_verdict = tried.verdict if tried is not None else None
    verdict = Judgement(
        False,
        error=error,
        reason=last_verdict.reason if last_verdict is not None else "runtime",
        retryable=True,  # a breaker closes, a cooldown ends, a provider comes back: the retry policy decides
        exit_code=last_verdict.exit_code if last_verdict is not None else None,
        cause=last_verdict.cause if last_verdict is not None else "no_candidate",
        usage=last_verdict.usage if last_verdict is not None else None,
        model=last_verdict.model if last_verdict is not None else "",
        unroutable=True,
    )
    base = tried or _Tried(verdict)
    return ran, dataclasses.replace(base, verdict=verdict, new_version=None), routing, usage


async def _gate(task: TaskDispatched, source: SecretSource, prepare: Prepare | None) -> Prepared | Refusal:
    """The candidate's secrets and what the service adds, or why it cannot be used now."""
    found, missing = await source.resolve(task.agent.secrets)
    if missing:
        names = ", ".join(missing)
        env_names = "; ".join(source.where(m) for m in missing)
        return Refusal("secrets_missing", f"secret(s) {names} not available to the executor; set {env_names}")
    extra = await prepare(task) if prepare is not None else Prepared()
    if isinstance(extra, Refusal):
        return extra
    return Prepared(env=dict(extra.env), secrets={**found, **extra.secrets}, egress=extra.egress)


async def _try(
    task: TaskDispatched,
    runtime: Runtime,
    log_tail_bytes: int,
    gate: Prepared,
    workspaces: Workspaces | None,
    logs: LogFactory | None,
    hand_back_outages: bool,
) -> _Tried:
    """Run one candidate and judge it; nothing is published here."""
    secrets = dict(gate.secrets)
    resolved = resolve_overrides(task)
    copy: WorkspaceCopy | None = None
    if (problem := check_input(task)) is not None:
        return _Tried(Judgement(False, error=problem, reason="input_schema", retryable=False))
    if isinstance(resolved, str):
        return _Tried(Judgement(False, error=resolved, reason="input_schema", retryable=False))
    if gate.egress:  # the runtime enforces one list: the agent's hosts and its provider's
        allow = sorted({*resolved.agent.egress_allow, *gate.egress})
        resolved = msgspec.structs.replace(resolved, agent=msgspec.structs.replace(resolved.agent, egress_allow=allow))
    if task.agent.workspace != "none":
        copy, refused = await _workspace_copy(task, workspaces)
        if refused is not None:
            return _Tried(refused)
    env = {
        **task.agent.env,
        **gate.env,
        **secrets,
        "FLOWYARD_RUN_ID": task.run_id,
        "FLOWYARD_NODE_ID": task.node_id,
        "FLOWYARD_ATTEMPT": str(task.attempt),
        "FLOWYARD_TIMEOUT_S": f"{task.timeout_s:g}",
        # Built-in CLI agents pass their skip-permission flags only when this says so.
        **({"FLOWYARD_AUTONOMOUS": "1"} if task.agent.autonomous else {}),
    }
    stdin = msgspec.json.encode(task.input)
    stream = logs(task, secrets) if logs is not None else None
    try:
        outcome = await runtime.run(
            resolved,
            stdin=stdin,
            env=env,
            timeout_s=task.timeout_s,
            workspace=copy,
            on_log=stream.feed if stream is not None else None,
        )
    finally:
        if stream is not None:
            await asyncio.shield(stream.close())
    if outcome.start_retryable and hand_back_outages:
        raise RetryableError(outcome.start_error or "the runtime cannot be reached", delay=OUTAGE_RETRY_S)
    if secrets:
        # A secret the agent prints must not reach an event: not its output, not its log.
        outcome = dataclasses.replace(
            outcome, stdout=redact(outcome.stdout.decode("utf-8", "replace"), secrets).encode()
        )
    verdict = judge(resolved, outcome, log_tail_bytes=log_tail_bytes)
    new_version: str | None = None
    if verdict.ok and outcome.workspace_error:
        verdict = Judgement(False, error=outcome.workspace_error, reason="bad_output", retryable=False)
    elif verdict.ok and workspaces is not None and outcome.workspace is not None and copy is not None:
        try:
            new_version = await _keep_workspace(task, copy, outcome.workspace, workspaces)
        except (ws.WorkspaceError, PermanentError) as exc:  # too large, or the store is full
            verdict = Judgement(
                False, error=f"its workspace could not be kept: {exc}", reason="bad_output", retryable=False
            )
    verdict = dataclasses.replace(verdict, error=redact(verdict.error, secrets))
    log = redact(tail(outcome.stderr_tail, log_tail_bytes), secrets)
    return _Tried(verdict, duration=outcome.duration_s, log=log, new_version=new_version)


async def _report(
    task: TaskDispatched,
    ran: str,
    tried: _Tried,
    routing: list[RouteStep],
    usage: Usage | None,
    publish: Publish,
    executor_id: str,
    started: asyncio.Future[None],
) -> Judgement:
    await started
    verdict = tried.verdict
    common = {
        "run_id": task.run_id,
        "node_id": task.node_id,
        "item": task.item,
        "attempt": task.attempt,
        "executor": executor_id,
        "agent": ran if task.candidates else None,
        "routing": routing,
        "usage": usage,
    }
    if verdict.ok:
        try:
            await publish(
                TaskSucceeded(
                    **common,
                    output=verdict.output,
                    duration_s=tried.duration,
                    log=tried.log,
                    workspace=tried.new_version,
                ),
                "succeeded",
            )
            return verdict
        except PermanentError as exc:  # the output is too large to travel: say so, do not drop it
            verdict = Judgement(
                False, error=f"its output could not be reported: {exc}", reason="bad_output", retryable=False
            )
    await publish(
        TaskFailed(
            **common,
            error=verdict.error,
            reason=verdict.reason,  # type: ignore[arg-type]
            retryable=verdict.retryable,
            exit_code=verdict.exit_code,
            duration_s=tried.duration,
            log=tried.log[-1024:] if verdict.reason == "bad_output" else tried.log,
            cause=verdict.cause,
        ),
        "failed",
    )
    return verdict

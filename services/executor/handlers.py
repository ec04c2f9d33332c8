"""One attempt, start to finish: check the input, run the agent, judge what it printed, report.

No NATS here: ``publish`` and ``already_done`` are passed in, so the logic is tested without
servers. Every failure is turned into one plain sentence an on-call engineer can act on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import msgspec
from opentelemetry.trace import Status, StatusCode

from shared.config.secrets import SecretSource
from shared.contract.errors import PermanentError, RetryableError
from shared.contract.messages import Event, TaskDispatched, TaskFailed, TaskStarted, TaskSucceeded
from shared.formats.durations import format_duration
from shared.formats.schemas import first_error
from shared.state import workspace as ws
from shared.state.values import REF, is_ref
from shared.telemetry import tracing as telemetry

from .logstream import LogStream
from .runtimes.base import Outcome, Runtime, WorkspaceCopy

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


@dataclass(frozen=True, slots=True)
class Judgement:
    ok: bool
    output: object = None
    error: str = ""
    reason: str = "exit"
    retryable: bool = True
    exit_code: int | None = None
    # The runtime could not start the agent for reasons of its own (image missing, daemon
    # errors): what the executor's circuit breaker counts.
    infrastructure: bool = False


def redact(text: str, secrets: Mapping[str, str]) -> str:
    for value in secrets.values():
        if len(value) >= 4:
            text = text.replace(value, "[redacted]")
    return text


def tail(data: bytes, limit: int) -> str:
    text = data[-limit:].decode("utf-8", errors="replace")
    return text.strip()


def _last_lines(text: str, n: int = 5) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def check_input(task: TaskDispatched) -> str | None:
    if not task.agent.inputs:
        return None
    error = first_error(task.agent.inputs, task.input)
    if error is None:
        return None
    where, message = error
    return f"input does not match agent {task.agent.name!r}'s input schema at {where or 'the input'}: {message}"


def resolve_overrides(task: TaskDispatched) -> TaskDispatched | str:
    """The task with the command and image its input chose (`command_input`, `image_input`), or why not."""
    agent = task.agent
    if not (agent.command_input or agent.image_input):
        return task
    given = task.input if isinstance(task.input, dict) else {}
    changes: dict[str, object] = {}
    if agent.command_input and (command := given.get(agent.command_input)) is not None:
        if isinstance(command, str) and command.strip():
            changes["command"] = ["sh", "-c", command]
        elif isinstance(command, list) and command and all(isinstance(c, str) for c in command):
            changes["command"] = command
        else:
            return (
                f"input {agent.command_input!r} must be a command line (a string, run by sh -c) or a "
                f"non-empty list of strings, got {command!r}"
            )
    if agent.image_input and (image := given.get(agent.image_input)) is not None:
        if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
            return f"input {agent.image_input!r} must be an image name like flowyard/base:bookworm, got {image!r}"
        changes["image"] = image
    if not changes:
        return task
    return msgspec.structs.replace(task, agent=msgspec.structs.replace(agent, **changes))


def judge(task: TaskDispatched, outcome: Outcome, *, log_tail_bytes: int) -> Judgement:
    """Turn a raw outcome into success or a one-sentence failure, with the agent's last words."""
    if outcome.start_error:
        return Judgement(
            False,
            error=outcome.start_error,
            reason="runtime",
            retryable=outcome.start_retryable,
            infrastructure=not outcome.start_refused,
        )
    detail = _last_lines(tail(outcome.stderr_tail, log_tail_bytes))
    verdict = _judge(task, outcome, detail)
    if verdict.ok or not detail or (verdict.reason == "exit" and not outcome.oom):
        return verdict  # an exit's message already ends with what the agent said last
    # Why it timed out, ran out of memory or printed garbage is usually in what it said last.
    return dataclasses.replace(verdict, error=f"{verdict.error}; last on stderr: {detail}")


def _judge(task: TaskDispatched, outcome: Outcome, detail: str) -> Judgement:
    if outcome.lost:
        return Judgement(
            False,
            error="the agent's process ended without an exit status (killed from outside the executor?)",
            reason="lost",
        )
    if outcome.oom:
        limit = f" of {outcome.memory_limit // (1024 * 1024)} MiB" if outcome.memory_limit else ""
        return Judgement(
            False,
            error=f"ran out of memory (its limit{limit}) and was killed; raise "
            "resources.memory or make the agent use less",
            reason="exit",
            exit_code=outcome.exit_code,
        )
    if outcome.timed_out:
        return Judgement(
            False, error=f"timed out after {format_duration(task.timeout_s)} and was killed", reason="timeout"
        )
    if outcome.exit_code != 0:
        code = outcome.exit_code
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        message = how + (f": {detail}" if detail else " (no output on stderr)")
        return Judgement(False, error=message, reason="exit", exit_code=code)
    if outcome.stdout_overflow:
        return Judgement(
            False,
            error="printed more on stdout than the executor keeps (executor.max_output_bytes); "
            "leave large results in the workspace (workspace: rw) and print a summary",
            reason="bad_output",
            retryable=False,
        )
    text = outcome.stdout.decode("utf-8", errors="replace").strip()
    if task.agent.stdout == "text":
        return Judgement(True, output={"stdout": text, "exit_code": outcome.exit_code})
    if not text:
        return Judgement(
            False,
            error="printed nothing on stdout; an agent must print one JSON object",
            reason="bad_output",
            retryable=False,
        )
    try:
        output = json.loads(text)
    except json.JSONDecodeError as exc:
        shown = text[:120] + ("…" if len(text) > 120 else "")
        return Judgement(
            False,
            error=f"printed output that is not JSON ({exc.msg} at line {exc.lineno}): {shown!r}",
            reason="bad_output",
            retryable=False,
        )
    if not isinstance(output, dict):
        return Judgement(
            False,
            error=f"printed JSON {type(output).__name__}, but an agent must print one JSON object",
            reason="bad_output",
            retryable=False,
        )
    if is_ref(output):  # only flowyard makes references; an agent's would read another value (ADR 11)
        return Judgement(
            False,
            error=f"printed an object with the key {REF!r}, which flowyard reserves; use another key",
            reason="bad_output",
            retryable=False,
        )
    if task.agent.outputs:
        error = first_error(task.agent.outputs, output)
        if error is not None:
            where, message = error
            return Judgement(
                False,
                error=f"output does not match agent {task.agent.name!r}'s output schema at {where or 'the output'}: "
                f"{message}",
                reason="output_schema",
                retryable=False,
            )
    return Judgement(True, output=output)


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
            verdict = await _attempt(
                task,
                runtime,
                publish,
                executor_id,
                log_tail_bytes,
                secrets or SecretSource(),
                started,
                workspaces,
                logs,
                hand_back_outages,
            )
        finally:
            if not started.done():
                started.cancel()
        span.set_attribute("flowyard.outcome", "succeeded" if verdict.ok else verdict.reason)
        if verdict.exit_code is not None:
            span.set_attribute("process.exit.code", verdict.exit_code)
        if not verdict.ok:
            span.set_status(Status(StatusCode.ERROR, verdict.error))  # already redacted
        return verdict


async def _attempt(
    task: TaskDispatched,
    runtime: Runtime,
    publish: Publish,
    executor_id: str,
    log_tail_bytes: int,
    source: SecretSource,
    started: asyncio.Future[None],
    workspaces: Workspaces | None,
    logs: LogFactory | None,
    hand_back_outages: bool,
) -> Judgement:
    secrets, missing = await source.resolve(task.agent.secrets)
    log = ""
    duration = 0.0
    new_version: str | None = None
    resolved = resolve_overrides(task)
    copy: WorkspaceCopy | None = None
    verdict: Judgement | None = None
    if missing:
        names = ", ".join(missing)
        env_names = "; ".join(source.where(m) for m in missing)
        verdict = Judgement(
            False,
            error=f"secret(s) {names} not available to the executor; set {env_names}",
            reason="runtime",
            retryable=False,
        )
    elif (problem := check_input(task)) is not None:
        verdict = Judgement(False, error=problem, reason="input_schema", retryable=False)
    elif isinstance(resolved, str):
        verdict = Judgement(False, error=resolved, reason="input_schema", retryable=False)
    elif task.agent.workspace != "none":
        copy, verdict = await _workspace_copy(task, workspaces)
    if verdict is None:  # nothing refused it: run it
        env = {
            **task.agent.env,
            **secrets,
            "FLOWYARD_RUN_ID": task.run_id,
            "FLOWYARD_NODE_ID": task.node_id,
            "FLOWYARD_ATTEMPT": str(task.attempt),
        }
        stdin = msgspec.json.encode(task.input)
        assert not isinstance(resolved, str)  # refused above
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
        duration = outcome.duration_s
    await started
    common = {
        "run_id": task.run_id,
        "node_id": task.node_id,
        "item": task.item,
        "attempt": task.attempt,
        "executor": executor_id,
    }
    if verdict.ok:
        try:
            await publish(
                TaskSucceeded(**common, output=verdict.output, duration_s=duration, log=log, workspace=new_version),
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
            duration_s=duration,
            log=log[-1024:] if verdict.reason == "bad_output" else log,
        ),
        "failed",
    )
    return verdict

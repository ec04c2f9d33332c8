"""Judging an attempt: is the input right for the agent, and did what it printed make a result?

Pure functions over an :class:`Outcome`; every failure becomes one plain sentence an on-call
engineer can act on, and an agent's own machine-readable failure (docs/workflows.md, "When an
agent fails") is read into a ``cause`` that routing decides on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.contract.messages import TaskDispatched, Usage
from shared.formats.durations import format_duration
from shared.formats.schemas import first_error
from shared.state.values import REF, is_ref

from .runtimes.base import Outcome


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
    # Why, in a word routing decides on: the agent's own `error.reason` (rate_limited, ...) or
    # the executor's (image_missing, unstartable, breaker_open, secrets_missing, ...).
    cause: str | None = None
    usage: Usage | None = None  # what the attempt's model calls cost (agents with spec.llm)
    model: str = ""  # the model that answered, for the token metrics
    unroutable: bool = False  # a `capability:` node: no candidate could be used or all failed routably


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
            cause="unstartable" if outcome.start_refused else "image_missing",
        )
    detail = _last_lines(tail(outcome.stderr_tail, log_tail_bytes))
    verdict = _judge(task, outcome, detail)
    if verdict.ok or not detail or (verdict.reason == "exit" and not outcome.oom):
        return verdict  # an exit's message already ends with what the agent said last
    # Why it timed out, ran out of memory or printed garbage is usually in what it said last.
    return dataclasses.replace(verdict, error=f"{verdict.error}; last on stderr: {detail}")


def _reported(task: TaskDispatched, said: tuple[str, str, dict[str, Any]], how: str, code: int | None) -> Judgement:
    """A failure the agent reported in the documented shape: its reason is the attempt's cause."""
    cause, words, report = said
    usage, model = usage_of(report) if task.agent.llm is not None else (None, "")
    return Judgement(
        False, error=f"{how}: {cause}: {words}", reason="exit", exit_code=code, cause=cause, usage=usage, model=model
    )


def _judge(task: TaskDispatched, outcome: Outcome, detail: str) -> Judgement:
    if task.agent.warm is not None and outcome.exit_code == 0 and not outcome.timed_out:
        # A warm worker fails one attempt and goes on serving by answering the failure shape.
        said = failure_report(outcome.stdout)
        if said is not None:
            return _reported(task, said, "answered a failure", 1)
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
        said = failure_report(outcome.stdout)
        if said is not None:  # the agent said why, in the documented shape: that is the message
            return _reported(task, said, how, code)
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
    if task.agent.llm is not None:
        usage, model = usage_of(output)
        return Judgement(True, output=output, usage=usage, model=model)
    return Judgement(True, output=output)


def failure_report(stdout: bytes) -> tuple[str, str, dict[str, Any]] | None:
    """(reason, message, the whole object) when a failed agent printed
    ``{"error": {"reason": "...", "message": "..."}}``; None when it printed anything else."""
    text = stdout.strip()
    if not text.startswith(b"{") or len(text) > 1_000_000:
        return None
    try:
        report = json.loads(text)
    except ValueError:
        return None
    error = report.get("error") if isinstance(report, dict) else None
    if not isinstance(error, dict):
        return None
    reason, message = error.get("reason"), error.get("message")
    if not isinstance(reason, str) or not reason or len(reason) > 64 or not reason.replace("_", "").isalnum():
        return None
    return reason, str(message or "no message")[:2000], report


def usage_of(report: Any) -> tuple[Usage | None, str]:
    """``usage: {input_tokens, output_tokens}`` and ``cost_usd`` of an agent's output or failure."""
    if not isinstance(report, dict) or not isinstance(report.get("usage"), dict):
        return None, ""
    raw = report["usage"]

    def count(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    cost = report.get("cost_usd")
    known = isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0
    model = report.get("model")
    return (
        Usage(
            input_tokens=count("input_tokens"),
            output_tokens=count("output_tokens"),
            cost_usd=float(cost) if known else None,
        ),
        model if isinstance(model, str) else "",
    )

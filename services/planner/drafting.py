"""Drafting a workflow for a goal: ask the model, check its answer, send the validator's messages
back, at most ``max_rounds`` times; then, when no answer was valid, pick a template.

No NATS here: the model call (``ask``) and the check (``check``, the same validator as
``flowyard validate`` plus what only a plan may not do) come in as functions, so the loop is
tested against scripted answers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.contract.drafts import PlanRound
from shared.contract.plans import Usage
from shared.llm.agent import decode_json
from shared.llm.errors import LlmError
from shared.llm.protocol import Answer, Request, Turn
from shared.workflow.schema import answer_schema

from .catalogue import SYSTEM, repair_text

Ask = Callable[[Request], Awaitable[Answer]]
# A workflow document (JSON) -> its YAML text and the validator's messages (none: it is valid).
Check = Callable[[Any], Awaitable[tuple[str, list[str]]]]
Price = Callable[[Answer], float | None]


@dataclass
class Drafted:
    valid: bool  # false: no answer was a valid plan (see ``rounds``, ``unreachable``)
    rounds: list[PlanRound] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    workflow: dict[str, Any] | None = None
    text: str = ""
    explanation: str = ""
    model: str = ""
    # Why the model gave no valid plan when it was not its answers' fault: unreachable, over its
    # budget or its time (the words go into the plan's error).
    stopped: str | None = None


async def draft(
    prompt: str,
    *,
    model: str,
    ask: Ask,
    check: Check,
    max_rounds: int,
    max_tokens: int,
    budget_tokens: int | None = None,
    deadline: float | None = None,
    price: Price | None = None,
    on_round: Callable[[PlanRound, int], Awaitable[None]] | None = None,
) -> Drafted:
    out = Drafted(valid=False, model=model)
    turns = [Turn("user", prompt)]
    schema = answer_schema()
    for number in range(1, max_rounds + 1):
        if budget_tokens is not None and out.usage.tokens >= budget_tokens:
            out.stopped = f"the plan's token budget ({budget_tokens}) was spent after {number - 1} round(s)"
            break
        if deadline is not None and time.monotonic() >= deadline:
            out.stopped = f"the plan ran out of time (planner.llm.timeout) after {number - 1} round(s)"
            break
        started = time.monotonic()
        request = Request(model=model, turns=turns, system=SYSTEM, max_tokens=max_tokens, schema=schema)
        try:
            answer = await ask(request)
        except LlmError as exc:
            spent = Usage(**exc.usage) if exc.usage else None
            out.rounds.append(PlanRound(error=f"{exc.reason}: {exc.message}", usage=spent, seconds=_since(started)))
            out.stopped = f"the model could not be asked ({exc.reason}: {exc.message})"
            if on_round is not None:
                await on_round(out.rounds[-1], number)
            break
        spent = Usage(
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            cost_usd=price(answer) if price is not None else None,
        )
        out.usage = out.usage + spent
        out.model = answer.model or model
        workflow, explanation, errors = _read(answer)
        text = ""
        if not errors:
            text, errors = await check(workflow)
        out.rounds.append(PlanRound(errors=errors, usage=spent, seconds=_since(started)))
        if on_round is not None:
            await on_round(out.rounds[-1], number)
        if not errors:
            out.valid, out.workflow, out.text, out.explanation = True, workflow, text, explanation
            return out
        turns = _repair(turns, answer, errors)
    return out


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _read(answer: Answer) -> tuple[Any, str, list[str]]:
    """The answer's workflow and explanation, or why the answer is not the object asked for."""
    try:
        data = decode_json(answer)
    except ValueError as exc:
        return None, "", [f'answer: {exc}; answer with one JSON object {{"workflow": ..., "explanation": ...}}']
    if not isinstance(data, dict) or not isinstance(data.get("workflow"), dict):
        return None, "", ['answer: must be a JSON object whose "workflow" is an object (the Workflow document)']
    explanation = data.get("explanation")
    return data["workflow"], explanation if isinstance(explanation, str) else "", []


def _repair(turns: list[Turn], answer: Answer, errors: list[str]) -> list[Turn]:
    say = repair_text(errors)
    if answer.tool_use is not None:  # Anthropic: the messages go back as the answer tool's result
        tool_id = str(answer.tool_use.get("id") or "answer")
        return [*turns, Turn("assistant", tool_use=answer.tool_use), Turn("user", tool_error=(tool_id, say))]
    return [*turns, Turn("assistant", text=answer.text or "(no text)"), Turn("user", text=say)]


def matching(goal: str, templates: Sequence[tuple[str, str]]) -> list[str]:
    """The templates' workflows whose ``match`` finds the goal (case-insensitive), in their order."""
    return [workflow for workflow, pattern in templates if re.search(pattern, goal, re.IGNORECASE)]

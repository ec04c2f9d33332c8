"""The three wire protocols as pure functions: a request's path and body, an answer's parts.

Structured output uses what each protocol has: Anthropic a forced tool whose input schema is the
requested one; OpenAI (both APIs) ``json_schema`` response formats. A provider configured without
structured output is asked in words for one JSON object, which is then validated the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import LlmError

ANTHROPIC_VERSION = "2023-06-01"
ANSWER_TOOL = "answer"  # the forced tool carrying a structured answer (Anthropic)


@dataclass(slots=True)
class Turn:
    role: str  # user | assistant
    text: str = ""
    tool_use: dict[str, Any] | None = None  # Anthropic: the assistant's tool_use block, replayed
    tool_error: tuple[str, str] | None = None  # Anthropic: (tool_use_id, error) fed back


@dataclass(slots=True)
class Request:
    model: str
    turns: list[Turn]
    system: str | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    schema: dict[str, Any] | None = None
    structured: bool = True  # use the provider's structured output for `schema`
    stream: bool = False


@dataclass(slots=True)
class Answer:
    text: str = ""
    data: Any = None  # a structured answer, already decoded (Anthropic tool input)
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    tool_use: dict[str, Any] | None = None
    raw_parts: list[str] = field(default_factory=list)


def json_instruction(schema: dict[str, Any]) -> str:
    return (
        "Answer with one JSON object and nothing else (no prose, no code fence). It must be valid against "
        f"this JSON Schema:\n{json.dumps(schema, sort_keys=True)}"
    )


def _system(req: Request) -> str | None:
    if req.schema is not None and not req.structured:
        return "\n\n".join(p for p in (req.system, json_instruction(req.schema)) if p)
    return req.system


# --- Anthropic Messages ---------------------------------------------------------------------------


def anthropic_request(req: Request) -> tuple[str, dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for t in req.turns:
        if t.tool_use is not None:
            messages.append({"role": "assistant", "content": [t.tool_use]})
        elif t.tool_error is not None:
            tool_id, error = t.tool_error
            messages.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": tool_id, "is_error": True, "content": error}],
                }
            )
        else:
            messages.append({"role": t.role, "content": t.text})
    body: dict[str, Any] = {"model": req.model, "max_tokens": req.max_tokens, "messages": messages}
    if (system := _system(req)) is not None:
        body["system"] = system
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.schema is not None and req.structured:
        body["tools"] = [
            {"name": ANSWER_TOOL, "description": "Give the answer in the required shape.", "input_schema": req.schema}
        ]
        body["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
    if req.stream:
        body["stream"] = True
    return "/v1/messages", body


def anthropic_answer(body: Any) -> Answer:
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise LlmError("bad_answer", "the provider's answer is not an Anthropic message (no `content` list)")
    answer = Answer(model=str(body.get("model") or ""), stop_reason=body.get("stop_reason"))
    for block in body["content"]:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            answer.raw_parts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use" and block.get("name") == ANSWER_TOOL:
            answer.data = block.get("input")
            answer.tool_use = {k: block.get(k) for k in ("type", "id", "name", "input")}
    answer.text = "".join(answer.raw_parts)
    usage = body.get("usage") or {}
    answer.input_tokens = _int(usage.get("input_tokens"))
    answer.output_tokens = _int(usage.get("output_tokens"))
    return answer


def anthropic_stream(events: list[tuple[str, Any]]) -> Answer:
    """Fold a Messages event stream (``message_start`` … ``message_stop``) into one answer."""
    message: dict[str, Any] = {"content": [], "usage": {}}
    partial: dict[int, str] = {}
    for name, data in events:
        kind = data.get("type", name) if isinstance(data, dict) else name
        if kind == "error":
            err = (data or {}).get("error") or {}
            reason = "rate_limited" if err.get("type") == "rate_limit_error" else "provider_unavailable"
            raise LlmError(reason, f"the provider's stream ended with an error: {err.get('message') or err}")
        if not isinstance(data, dict):
            continue
        if kind == "message_start":
            start = data.get("message") or {}
            message["model"] = start.get("model")
            message["usage"].update(start.get("usage") or {})
        elif kind == "content_block_start":
            message["content"].append(dict(data.get("content_block") or {}))
            partial[int(data.get("index", len(message["content"]) - 1))] = ""
        elif kind == "content_block_delta":
            index = int(data.get("index", 0))
            delta = data.get("delta") or {}
            if index >= len(message["content"]):
                continue
            block = message["content"][index]
            if delta.get("type") == "text_delta":
                block["text"] = block.get("text", "") + str(delta.get("text", ""))
            elif delta.get("type") == "input_json_delta":
                partial[index] = partial.get(index, "") + str(delta.get("partial_json", ""))
        elif kind == "message_delta":
            message["stop_reason"] = (data.get("delta") or {}).get("stop_reason")
            message["usage"].update(data.get("usage") or {})
    for index, text in partial.items():
        if text and index < len(message["content"]):
            try:
                message["content"][index]["input"] = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LlmError("bad_answer", f"the streamed tool input is not JSON ({exc.msg})") from None
    return anthropic_answer(message)


# --- OpenAI Chat Completions -------------------------------------------------------------------------


def _openai_messages(req: Request) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if (system := _system(req)) is not None:
        messages.append({"role": "system", "content": system})
    messages.extend({"role": t.role, "content": t.text} for t in req.turns)
    return messages


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    # strict: false — strict mode accepts only a subset of JSON Schema; the answer is validated here.
    return {"name": "output", "schema": schema, "strict": False}


def chat_request(req: Request, *, vendor: bool) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"model": req.model, "messages": _openai_messages(req)}
    # OpenAI's own API renamed the field; compatible servers (Ollama, vLLM, LiteLLM) know the old one.
    body["max_completion_tokens" if vendor else "max_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.schema is not None and req.structured:
        body["response_format"] = {"type": "json_schema", "json_schema": _schema_format(req.schema)}
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return "/chat/completions", body


def chat_answer(body: Any) -> Answer:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LlmError("bad_answer", "the provider's answer is not a chat completion (no `choices`)")
    message = choices[0].get("message") or {}
    usage = body.get("usage") or {}
    return Answer(
        text=str(message.get("content") or ""),
        model=str(body.get("model") or ""),
        stop_reason=choices[0].get("finish_reason"),
        input_tokens=_int(usage.get("prompt_tokens")),
        output_tokens=_int(usage.get("completion_tokens")),
    )


def chat_stream(events: list[tuple[str, Any]]) -> Answer:
    answer = Answer()
    for _name, data in events:
        if not isinstance(data, dict):
            continue
        if "error" in data:
            raise LlmError("provider_unavailable", f"the provider's stream ended with an error: {data['error']}")
        answer.model = str(data.get("model") or answer.model)
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            answer.raw_parts.append(str(delta.get("content") or ""))
            if choice.get("finish_reason"):
                answer.stop_reason = choice["finish_reason"]
        if usage := data.get("usage"):
            answer.input_tokens = _int(usage.get("prompt_tokens"))
            answer.output_tokens = _int(usage.get("completion_tokens"))
    answer.text = "".join(answer.raw_parts)
    return answer


# --- OpenAI Responses ------------------------------------------------------------------------------


def responses_request(req: Request) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {
        "model": req.model,
        "input": [{"role": t.role, "content": t.text} for t in req.turns],
        "max_output_tokens": req.max_tokens,
    }
    if (system := _system(req)) is not None:
        body["instructions"] = system
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.schema is not None and req.structured:
        body["text"] = {"format": {"type": "json_schema", **_schema_format(req.schema)}}
    if req.stream:
        body["stream"] = True
    return "/responses", body


def responses_answer(body: Any) -> Answer:
    if not isinstance(body, dict) or not isinstance(body.get("output"), list):
        raise LlmError("bad_answer", "the provider's answer is not a Responses object (no `output` list)")
    if body.get("status") == "failed":
        err = body.get("error") or {}
        raise LlmError("provider_unavailable", f"the provider reports the response failed: {err.get('message') or err}")
    parts = [
        str(c.get("text", ""))
        for item in body["output"]
        if isinstance(item, dict) and item.get("type") == "message"
        for c in item.get("content") or []
        if isinstance(c, dict) and c.get("type") == "output_text"
    ]
    usage = body.get("usage") or {}
    incomplete = (body.get("incomplete_details") or {}).get("reason")
    return Answer(
        text="".join(parts),
        model=str(body.get("model") or ""),
        stop_reason=incomplete or body.get("status"),
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
    )


def responses_stream(events: list[tuple[str, Any]]) -> Answer:
    for name, data in events:
        kind = data.get("type", name) if isinstance(data, dict) else name
        if kind in ("response.completed", "response.incomplete", "response.failed") and isinstance(data, dict):
            return responses_answer(data.get("response") or {})
        if kind == "error":
            raise LlmError("provider_unavailable", f"the provider's stream ended with an error: {data}")
    raise LlmError("provider_unavailable", "the provider's stream ended before response.completed")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

"""The ``llm`` built-in agent: one model call per attempt (plus one repair round for a schema).

It reads its input as JSON on stdin and the provider from its environment, which the executor
sets: ``FLOWYARD_LLM_PROVIDER`` (the chosen ``llm.providers`` entry as JSON, with its ``name``;
never the key), ``FLOWYARD_LLM_API_KEY`` (the key, redacted from everything the agent prints) and
``FLOWYARD_TIMEOUT_S`` (the attempt's timeout: retries never wait past it). It prints one JSON
object. On failure it prints ``{"error": {"reason", "message"}, "usage": ...}`` and exits 1: the
machine-readable failure contract of docs/workflows.md, which routing reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from shared.config.llm import ProviderConfig

from .client import Endpoint, call, new_client
from .errors import LlmError
from .protocol import Answer, Request, Turn

EXIT_FAILED = 1
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)
_KNOWN = {"prompt", "system", "model", "provider", "max_tokens", "temperature", "schema"}


class Spent:
    """Tokens over every call of the attempt (a repair round is a second call)."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0

    def add(self, answer: Answer) -> None:
        self.input_tokens += answer.input_tokens
        self.output_tokens += answer.output_tokens

    def json(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


def cost(config: ProviderConfig, model: str, spent: Spent) -> float | None:
    price = config.price(model)
    if price is None:
        return None
    return round((spent.input_tokens * price.input + spent.output_tokens * price.output) / 1_000_000, 6)


def check_input(given: Any) -> dict[str, Any]:
    """The input, or LlmError(bad_request) naming what is wrong with it."""
    if not isinstance(given, dict):
        raise LlmError("bad_request", f"the input must be a JSON object with a `prompt`, got {type(given).__name__}")
    unknown = sorted(set(given) - _KNOWN)
    if unknown:
        takes = ", ".join(sorted(_KNOWN))
        raise LlmError("bad_request", f"unknown input field(s) {', '.join(unknown)}; it takes {takes}")
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise LlmError("bad_request", "input `prompt` must be non-empty text")
    for key in ("system", "model", "provider"):
        if given.get(key) is not None and not isinstance(given[key], str):
            raise LlmError("bad_request", f"input `{key}` must be text")
    max_tokens = given.get("max_tokens", 1024)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise LlmError("bad_request", f"input `max_tokens` must be a whole number of at least 1, got {max_tokens!r}")
    temperature = given.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or not 0 <= temperature <= 2):
        raise LlmError("bad_request", f"input `temperature` must be a number from 0 to 2, got {temperature!r}")
    schema = given.get("schema")
    if schema is not None:
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise LlmError("bad_request", "input `schema` must be a JSON Schema of an object (type: object)")
        # jsonschema costs ~60 ms of start-up: imported only for a step that has a schema.
        from shared.formats.schemas import schema_problem

        if (problem := schema_problem(schema)) is not None:
            raise LlmError("bad_request", f"input `schema` is not a valid JSON Schema: {problem}")
    return given


def decode_json(answer: Answer) -> Any:
    """The structured answer: a tool's input (Anthropic), else the text as JSON (fences allowed)."""
    if answer.data is not None:
        return answer.data
    text = answer.text.strip()
    if fenced := _FENCE.match(text):
        text = fenced.group(1)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the answer is not JSON ({exc.msg} at line {exc.lineno})") from None


def mismatch(answer: Answer, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """(the decoded answer, None) when it matches ``schema``, else (whatever it was, why not)."""
    try:
        data = decode_json(answer)
    except ValueError as exc:
        return None, str(exc)
    if not isinstance(data, dict):
        return data, f"the answer is a JSON {type(data).__name__}, not an object"
    from shared.formats.schemas import first_error  # see check_input

    error = first_error(schema, data)
    if error is None:
        return data, None
    where, message = error
    return data, f"at {where or 'the top level'}: {message}"


def repair_turns(request: Request, answer: Answer, why: str) -> list[Turn]:
    """The conversation for the repair round: the answer, and the validation error sent back."""
    say = (
        f"That answer is not valid against the required JSON Schema: {why}. "
        "Answer again with one JSON object that is valid against it."
    )
    if answer.tool_use is not None:  # Anthropic: the error goes back as the tool's result
        tool_id = str(answer.tool_use.get("id") or "answer")
        return [*request.turns, Turn("assistant", tool_use=answer.tool_use), Turn("user", tool_error=(tool_id, say))]
    return [*request.turns, Turn("assistant", text=answer.text or "(no text)"), Turn("user", text=say)]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run(
    given: Any,
    endpoint: Endpoint,
    *,
    deadline: float,
    spent: Spent,
    http: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """The agent's output for one attempt; raises LlmError (``spent`` says what it cost so far)."""
    given = check_input(given)
    config = endpoint.config
    if given.get("provider") not in (None, endpoint.name):
        raise LlmError(
            "no_provider", f"input asks for provider {given['provider']!r}, but the executor gave {endpoint.name!r}"
        )
    model = given.get("model") or config.default_model
    if not model:
        raise LlmError(
            "bad_request",
            f"no model: give input `model`, or set llm.providers.{endpoint.name}.default_model in the config",
        )
    schema = given.get("schema")
    request = Request(
        model=model,
        turns=[Turn("user", given["prompt"])],
        system=given.get("system"),
        max_tokens=given.get("max_tokens", 1024),
        temperature=given.get("temperature"),
        schema=schema,
        stream=config.stream,
    )

    def retrying(exc: LlmError, wait: float) -> None:
        log(f"{exc.message}; trying again in {wait:.1f}s")

    log(f"asking {endpoint.name} ({config.kind}) model {model}")
    answer = await call(endpoint, request, deadline=deadline, http=http, on_retry=retrying)
    spent.add(answer)
    out: dict[str, Any] = {}
    if schema is None:
        out["text"] = answer.text
    else:
        data, why = mismatch(answer, schema)
        if why is not None:
            log(f"the answer does not match the schema ({why}); asking once more with the error")
            request.turns = repair_turns(request, answer, why)
            answer = await call(endpoint, request, deadline=deadline, http=http, on_retry=retrying)
            spent.add(answer)
            data, why = mismatch(answer, schema)
            if why is not None:
                raise LlmError("bad_answer", f"the model's answer did not match `schema` after one repair round: {why}")
        out["json"] = data
    out.update(
        model=answer.model or model,
        usage=spent.json(),
        stop_reason=answer.stop_reason,
        cost_usd=cost(config, answer.model or model, spent),
        provider=endpoint.name,
    )
    return out


def endpoint_from_env(environ: Mapping[str, str]) -> Endpoint:
    raw = environ.get("FLOWYARD_LLM_PROVIDER")
    if not raw:
        raise LlmError(
            "no_provider",
            "no provider was given to the agent (FLOWYARD_LLM_PROVIDER is unset); configure llm.providers",
        )
    try:
        doc = json.loads(raw)
        name = str(doc.pop("name"))
        config = msgspec.convert(doc, ProviderConfig)
    except (ValueError, KeyError, msgspec.ValidationError) as exc:
        raise LlmError("no_provider", f"FLOWYARD_LLM_PROVIDER is not a provider's config: {exc}") from None
    return Endpoint(name=name, config=config, api_key=environ.get("FLOWYARD_LLM_API_KEY") or None)


async def amain(
    stdin: str, environ: Mapping[str, str], http: httpx.AsyncClient | None = None
) -> tuple[dict[str, Any], int]:
    spent = Spent()
    timeout = float(environ.get("FLOWYARD_TIMEOUT_S") or 300)
    # A second in hand: the answer must be printed before the executor's timeout kills us.
    deadline = time.monotonic() + max(timeout - 1.0, 0.5)
    try:
        try:
            given = json.loads(stdin or "null")
        except json.JSONDecodeError as exc:
            raise LlmError("bad_request", f"the input is not JSON ({exc.msg})") from None
        endpoint = endpoint_from_env(environ)
        return await run(given, endpoint, deadline=deadline, spent=spent, http=http), 0
    except LlmError as exc:
        log(f"failed ({exc.reason}): {exc.message}")
        failure = {"error": {"reason": exc.reason, "message": exc.message}, "usage": spent.json()}
        return failure, EXIT_FAILED


async def serve(environ: Mapping[str, str]) -> None:
    """Warm (spec.warm): one JSON input per line, one answer per line, until stdin ends. A failed
    call is answered in the failure shape and the worker goes on (docs/agents.md, "Warm agents")."""
    loop = asyncio.get_running_loop()
    # One client for the worker's life: its connections to the provider are kept between calls.
    # The provider is fixed by the environment, which does not change while the worker runs.
    try:
        http: httpx.AsyncClient | None = new_client(endpoint_from_env(environ))
    except LlmError:
        http = None  # each call says what is wrong with the provider it was given
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if not line.strip():
                continue
            output, _ = await amain(line, environ, http)
            sys.stdout.write(json.dumps(output) + "\n")
            sys.stdout.flush()
    finally:
        if http is not None:
            await http.aclose()


def main() -> None:
    if os.environ.get("FLOWYARD_WARM") == "1":
        asyncio.run(serve(os.environ))
        return
    output, code = asyncio.run(amain(sys.stdin.read(), os.environ))
    sys.stdout.write(json.dumps(output) + "\n")
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()

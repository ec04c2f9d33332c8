"""The coding-CLI wrapper's driving of OpenCode: its command line and inline configuration, and
its ``run --format json`` events read into the agent's output or a failure with its routable
reason (events as opencode 1.18 prints them)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.config.llm import ProviderConfig
from shared.llm import cli, opencode
from shared.llm.client import Endpoint
from shared.llm.errors import LlmError

ASK = cli.Ask("fix it", 5, "qwen-test", autonomous=True)
SESSION = "ses_db1934a70ffecNcsvUsLPCCwEc"


def event(kind: str, **part: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": 1, "sessionID": SESSION, "part": {"sessionID": SESSION, **part}}


def step(i: int, o: int, reason: str = "stop", cost: float = 0.0, read: int = 0) -> list[dict[str, Any]]:
    tokens = {"total": i + o, "input": i, "output": o, "reasoning": 0, "cache": {"write": 0, "read": read}}
    return [event("step_start", type="step-start"), event("step_finish", reason=reason, tokens=tokens, cost=cost)]


def tool(name: str, status: str = "completed", error: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"status": status, "input": {"command": "sed -i ..."}}
    if error:
        state["error"] = error
    return event("tool_use", type="tool", tool=name, callID="call_1", state=state)


def api_error(status: int, message: str) -> dict[str, Any]:
    data = {"message": message, "statusCode": status, "isRetryable": False}
    return {"type": "error", "timestamp": 1, "sessionID": SESSION, "error": {"name": "APIError", "data": data}}


def test_an_opencode_run_becomes_the_output() -> None:
    first = step(600, 40, reason="tool-calls")
    events = [first[0], tool("bash"), first[1], *step(700, 10, read=100)[:1], event("text", text="Fixed it.")]
    events.append(step(700, 10, read=100)[1])
    assert opencode.opencode_result(events, ASK) == {
        "result": "Fixed it.",
        "usage": {"input_tokens": 1400, "output_tokens": 50},  # cache reads are input too
        "cost_usd": None,  # its own price list knows no flowyard model: the provider's table gives it
        "turns": 2,
        "session_id": SESSION,
    }


@pytest.mark.parametrize(
    ("status", "reason"),
    [(401, "auth_refused"), (403, "auth_refused"), (429, "rate_limited"), (503, "provider_unavailable"),
     (400, "bad_request")],
)  # fmt: skip
def test_api_errors_keep_their_routable_reason(status: int, reason: str) -> None:
    with pytest.raises(LlmError) as caught:
        opencode.opencode_result([api_error(status, f"scripted {status}")], ASK)
    assert caught.value.reason == reason and f"scripted {status}" in caught.value.message


def test_an_error_without_a_status_is_read_from_its_words() -> None:
    unreachable = {"type": "error", "sessionID": SESSION, "error": {"name": "UnknownError", "data": {"message":
                   "Unable to connect. Is the computer able to access the url? ECONNREFUSED"}}}  # fmt: skip
    with pytest.raises(LlmError) as caught:
        opencode.opencode_result([unreachable], ASK)
    assert caught.value.reason == "provider_unavailable"


def test_a_refused_permission_fails_a_non_autonomous_agent_saying_so() -> None:
    asked = cli.Ask("fix it", 5, "qwen-test", autonomous=False)
    rejected = tool("write", "error", "The user rejected permission to use this specific tool call.")
    with pytest.raises(LlmError) as caught:
        opencode.opencode_result([*step(10, 5, "tool-calls")[:1], rejected, step(10, 5, "tool-calls")[1]], asked)
    assert caught.value.reason == "needs_permission" and "write" in caught.value.message
    assert "autonomous: true" in caught.value.message


def test_past_max_turns_and_without_a_finished_step_it_fails() -> None:
    many = [e for _ in range(6) for e in step(1, 1, "tool-calls")]
    with pytest.raises(LlmError) as caught:
        opencode.opencode_result(many, ASK)
    assert caught.value.reason == "max_turns" and "max_turns 5" in caught.value.message
    assert opencode.opencode_turns(many) == 6
    with pytest.raises(LlmError) as caught:
        opencode.opencode_result([event("step_start", type="step-start")], ASK)
    assert caught.value.reason == "cli_failed"


@pytest.mark.parametrize(
    ("kind", "url", "package", "base"),
    [
        ("anthropic", "http://fake:1", "@ai-sdk/anthropic", "http://fake:1/v1"),
        ("openai", "http://fake:1/v1", "@ai-sdk/openai", "http://fake:1/v1"),
        ("openai-compatible", "http://ollama:11434/v1", "@ai-sdk/openai-compatible", "http://ollama:11434/v1"),
    ],
)
def test_the_provider_goes_in_as_inline_configuration_and_the_key_by_name(
    kind: str, url: str, package: str, base: str
) -> None:
    endpoint = Endpoint("p", ProviderConfig(kind=kind, base_url=url, default_model="m"), "sk-secret-123")  # type: ignore[arg-type]
    argv, env = opencode.opencode_command(ASK, endpoint, "/tmp/h")
    assert argv[:4] == ["opencode", "run", "--format", "json"] and argv[-2:] == ["--", "fix it"]
    assert "--title" in argv and argv[argv.index("--model") + 1] == "flowyard/qwen-test"
    config = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    provider = config["provider"]["flowyard"]
    assert provider["npm"] == package and provider["options"]["baseURL"] == base
    assert "sk-secret-123" not in env["OPENCODE_CONFIG_CONTENT"] and "sk-secret-123" not in argv
    assert provider["options"]["apiKey"] == "{env:FLOWYARD_OPENCODE_API_KEY}"
    assert env["FLOWYARD_OPENCODE_API_KEY"] == "sk-secret-123"
    assert env["OPENCODE_DISABLE_PROJECT_CONFIG"] == "1" and env["OPENCODE_DISABLE_AUTOUPDATE"] == "1"
    assert config["autoupdate"] is False and config["share"] == "disabled"
    assert config["permission"] == {"edit": "allow", "bash": "allow", "webfetch": "deny"}
    assert env["HOME"] == "/tmp/h" and env["XDG_CONFIG_HOME"].startswith("/tmp/h/")


def test_a_non_autonomous_agent_is_asked_and_so_refused() -> None:
    endpoint = Endpoint("p", ProviderConfig(kind="anthropic", default_model="m"), None)
    _, env = opencode.opencode_command(cli.Ask("look", 5, "m", autonomous=False), endpoint, "/tmp/h")
    config = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    assert config["permission"]["edit"] == "ask" and config["permission"]["bash"] == "ask"
    assert config["provider"]["flowyard"]["options"]["baseURL"] == "https://api.anthropic.com/v1"
    with pytest.raises(LlmError) as caught:
        opencode.opencode_command(cli.Ask("look", 5, None, autonomous=True), endpoint, "/tmp/h")
    assert caught.value.reason == "bad_request" and "model" in caught.value.message


# Lines OpenCode 1.18 logs with --print-logs --log-level ERROR while it retries an HTTP 500.
STREAM_ERROR = (
    'timestamp=2026-12-07T09:36:11.588Z level=ERROR run=830ae9e2 message="stream error" providerID=flowyard '
    'modelID=m session.id=ses_db02 small=false agent=build mode=primary error.error="AI_APICallError: boom"\n'
)


def test_a_second_retried_provider_error_stops_it_as_routable() -> None:
    watch = opencode.opencode_watch()
    assert watch('timestamp=... level=ERROR message="Failed to fetch models.dev" cause=...\n') is None
    assert watch(STREAM_ERROR) is None  # the first may pass: it retries once at 2 s
    stopped = watch(STREAM_ERROR)
    assert stopped is not None and stopped.reason == "provider_unavailable"
    assert "AI_APICallError: boom" in stopped.message and "retried once" in stopped.message


def test_it_is_asked_for_its_error_log() -> None:
    endpoint = Endpoint("p", ProviderConfig(kind="openai-compatible", base_url="http://x/v1", default_model="m"), None)
    argv, _ = opencode.opencode_command(ASK, endpoint, "/tmp/h")
    assert argv[argv.index("--log-level") + 1] == "ERROR" and "--print-logs" in argv

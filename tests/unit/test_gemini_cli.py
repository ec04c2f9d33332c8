"""The coding-CLI wrapper's driving of Gemini CLI: its command line and settings, its
``stream-json`` events read into the agent's output or a failure with its routable reason, and
its log read for the provider errors it would retry for too long (as gemini-cli 0.61 prints them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.config.llm import ProviderConfig
from shared.llm import cli, gemini
from shared.llm.client import Endpoint
from shared.llm.errors import LlmError

ASK = cli.Ask("fix it", 5, "gemini-test", autonomous=True)


def init() -> dict[str, Any]:
    return {"type": "init", "session_id": "6cf0a587", "model": "gemini-test"}


def result(status: str = "success", i: int = 0, o: int = 0, error: dict[str, Any] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "result", "status": status, "stats": {"input_tokens": i, "output_tokens": o}}
    if error is not None:
        event["error"] = error
    return event


def say(text: str, delta: bool = True) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": text, "delta": delta}


def test_a_gemini_run_becomes_the_output() -> None:
    events = [
        init(),
        {"type": "message", "role": "user", "content": "fix it"},
        say("Let me look."),
        {"type": "tool_use", "tool_name": "run_shell_command", "tool_id": "run_shell_command__1", "parameters": {}},
        {"type": "tool_result", "tool_id": "run_shell_command__1", "status": "success"},
        say("Fixed "),
        say("it."),
        result(i=1150, o=45),
    ]
    assert gemini.gemini_result(events, ASK) == {
        "result": "Fixed it.",  # the answer after its last tool, not the words before it
        "usage": {"input_tokens": 1150, "output_tokens": 45},
        "cost_usd": None,
        "turns": 1,
        "session_id": "6cf0a587",
    }


@pytest.mark.parametrize(
    ("code", "reason"), [(401, "auth_refused"), (429, "rate_limited"), (503, "provider_unavailable")]
)
def test_an_api_error_in_the_result_keeps_its_reason(code: int, reason: str) -> None:
    message = f'[API Error: {{"error":{{"code":{code},"message":"scripted","status":"X"}}}}]'
    with pytest.raises(LlmError) as caught:
        gemini.gemini_result([init(), result("error", error={"type": "unknown", "message": message})], ASK)
    assert caught.value.reason == reason


def test_the_turn_limit_and_a_missing_result_fail_saying_so() -> None:
    limited = result("error", 10, 5, {"type": "FatalTurnLimitedError", "message": "Reached max session turns"})
    with pytest.raises(LlmError) as caught:
        gemini.gemini_result([init(), limited], ASK)
    assert caught.value.reason == "max_turns" and caught.value.usage == {"input_tokens": 10, "output_tokens": 5}
    with pytest.raises(LlmError) as caught:
        gemini.gemini_result([init()], ASK)
    assert caught.value.reason == "cli_failed"


def test_without_yolo_a_tool_it_does_not_offer_is_a_permission_failure() -> None:
    asked = cli.Ask("fix it", 5, "gemini-test", autonomous=False)
    missing = {"type": "tool_result", "tool_id": "write_file__write_file_1_0", "status": "error",
               "error": {"type": "tool_not_registered", "message": 'Tool "write_file" not found.'}}  # fmt: skip
    with pytest.raises(LlmError) as caught:
        gemini.gemini_result([init(), missing, say("ok"), result()], asked)
    assert caught.value.reason == "needs_permission" and "write_file" in caught.value.message


def test_the_second_retried_provider_error_in_its_log_stops_it() -> None:
    watch = gemini.gemini_watch()
    line = '_ApiError: {"error":{"code":429,"message":"scripted 429","status":"RESOURCE_EXHAUSTED"}}\n'
    assert watch("    at throwErrorIfNotOK (file:///opt/gemini-cli/bundle/chunk.js:1:2)\n") is None
    assert watch(line) is None  # the first: it retries, and that may well work
    stop = watch(line)
    assert stop is not None and stop.reason == "rate_limited"
    other = gemini.gemini_watch()
    unauthorised = '_ApiError: {"error":{"code":401,"message":"no","status":"UNAUTHENTICATED"}}\n'
    assert other(unauthorised) is None and other(unauthorised) is None  # not retried: its result says so


def test_settings_and_command_line(tmp_path: Path) -> None:
    endpoint = Endpoint("g", ProviderConfig(kind="gemini", base_url="http://fake:9", default_model="m"), "gm-secret")
    argv, env = gemini.gemini_command(ASK, endpoint, str(tmp_path))
    assert argv[:3] == ["gemini", "-p", "fix it"] and "--yolo" in argv and "--skip-trust" in argv
    assert argv[argv.index("--output-format") + 1] == "stream-json" and argv[argv.index("-m") + 1] == "gemini-test"
    assert env["GOOGLE_GEMINI_BASE_URL"] == "http://fake:9" and env["GEMINI_API_KEY"] == "gm-secret"
    assert "gm-secret" not in argv and env["GEMINI_CLI_NO_RELAUNCH"] == "1"
    settings = json.loads((tmp_path / ".gemini/settings.json").read_text())
    assert settings["model"]["maxSessionTurns"] == 5 and settings["privacy"]["usageStatisticsEnabled"] is False
    assert settings["general"]["enableAutoUpdate"] is False and settings["telemetry"]["enabled"] is False
    argv, _ = gemini.gemini_command(cli.Ask("look", 3, "m", autonomous=False), endpoint, str(tmp_path))
    assert "--yolo" not in argv and argv[argv.index("--approval-mode") + 1] == "default"
    default = Endpoint("g", ProviderConfig(kind="gemini", default_model="m"), None)
    _, env = gemini.gemini_command(ASK, default, str(tmp_path))
    assert env["GOOGLE_GEMINI_BASE_URL"] == "https://generativelanguage.googleapis.com" and "GEMINI_API_KEY" not in env

"""The coding-CLI wrapper's driving of Codex: its command line, and its ``exec --json`` events read
into the agent's output or a failure with its routable reason (events as codex 0.171 prints them)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config.llm import ProviderConfig
from shared.llm import cli
from shared.llm.client import Endpoint
from shared.llm.errors import LlmError

ASK = cli.Ask("fix it", 5, "gpt-test", autonomous=True)
STARTED = {"type": "thread.started", "thread_id": "019a-thread"}


def message(text: str) -> dict[str, Any]:
    return {"type": "item.completed", "item": {"id": "item_3", "type": "agent_message", "text": text}}


def command(n: int) -> dict[str, Any]:
    item = {"id": f"item_{n}", "type": "command_execution", "command": "sed -i ...", "exit_code": 0}
    return {"type": "item.completed", "item": item}


def completed(i: int, o: int) -> dict[str, Any]:
    usage = {"input_tokens": i, "cached_input_tokens": 0, "output_tokens": o, "reasoning_output_tokens": 0}
    return {"type": "turn.completed", "usage": usage}


def test_a_codex_run_becomes_the_output() -> None:
    events = [STARTED, {"type": "turn.started"}, command(1), command(2), message("Fixed it."), completed(900, 40)]
    assert cli.codex_result(events, ASK) == {
        "result": "Fixed it.",
        "usage": {"input_tokens": 900, "output_tokens": 40},
        "cost_usd": None,  # codex reports no price: the provider's table gives it
        "turns": 2,
        "session_id": "019a-thread",
    }


@pytest.mark.parametrize(
    ("message_text", "reason"),
    [
        ("unexpected status 401 Unauthorized: Incorrect API key provided", "auth_refused"),
        ("exceeded retry limit, last status: 429 Too Many Requests", "rate_limited"),
        ("stream disconnected before completion: error sending request for url", "provider_unavailable"),
        ("We're currently experiencing high demand, which may cause temporary errors.", "provider_unavailable"),
        ("the model refused the tool schema", "cli_failed"),
    ],
)
def test_codex_failures_have_their_reasons(message_text: str, reason: str) -> None:
    events = [STARTED, {"type": "turn.started"}, {"type": "turn.failed", "error": {"message": message_text}}]
    with pytest.raises(LlmError) as caught:
        cli.codex_result(events, ASK)
    assert caught.value.reason == reason and message_text[:40] in caught.value.message


def test_past_max_turns_is_max_turns_and_no_completed_turn_is_a_failure() -> None:
    with pytest.raises(LlmError) as caught:
        cli.codex_result([STARTED, *(command(n) for n in range(6))], ASK)
    assert caught.value.reason == "max_turns" and "max_turns 5" in caught.value.message
    assert cli.codex_turns([STARTED, command(1), message("x"), command(2)]) == 2
    with pytest.raises(LlmError) as caught:
        cli.codex_result([STARTED, message("half")], ASK)
    assert caught.value.reason == "cli_failed"


def test_the_command_line_names_the_provider_and_never_the_key() -> None:
    endpoint = Endpoint("openai", ProviderConfig(kind="openai", base_url="http://10.0.0.1:9/v1"), "sk-secret")
    argv, env = cli.codex_command(ASK, endpoint, "/tmp/home")
    assert argv[:3] == ["codex", "exec", "--json"] and argv[-1] == "fix it"
    assert 'model_providers.flowyard.base_url="http://10.0.0.1:9/v1"' in argv
    assert 'model_providers.flowyard.wire_api="responses"' in argv
    assert "--dangerously-bypass-approvals-and-sandbox" in argv and argv[argv.index("-m") :][:2] == ["-m", "gpt-test"]
    assert all("sk-secret" not in a for a in argv) and env["OPENAI_API_KEY"] == "sk-secret"
    assert 'shell_environment_policy.inherit="core"' in argv  # the commands it runs never see the key
    assert env["CODEX_HOME"] == env["HOME"] == "/tmp/home"
    # Not autonomous: read-only, never the bypass.
    argv, _ = cli.codex_command(cli.Ask("look", 5, None, autonomous=False), endpoint, "/tmp/home")
    assert "--dangerously-bypass-approvals-and-sandbox" not in argv and argv[-3:-1] == ["--sandbox", "read-only"]

"""Codex (``codex exec --json``) as a coding-CLI agent: its command line and its event lines."""

from __future__ import annotations

import json
import re
from typing import Any

from .clibase import UNREACHABLE, Ask, out_of_turns
from .client import Endpoint
from .errors import LlmError

_CODEX_TOOLS = {"command_execution", "file_change", "mcp_tool_call", "web_search"}
_CODEX_RATE = re.compile(r"\b429\b|rate.?limit|too many requests|quota", re.I)
_CODEX_AUTH = re.compile(r"\b401\b|\b403\b|unauthori[sz]ed|invalid api key|incorrect api key", re.I)
_CODEX_DOWN = re.compile(r"stream disconnected|reconnecting|high demand|\b5\d\d\b|error sending request", re.I)


def codex_command(ask: Ask, endpoint: Endpoint, home: str) -> tuple[list[str], dict[str, str]]:
    # The provider is configured on the command line (no config file is read: --ignore-user-config);
    # the key comes from the environment variable it names, never from an argument.
    provider = {
        "name": '"flowyard"',
        "base_url": json.dumps(endpoint.config.url),
        "env_key": '"OPENAI_API_KEY"',
        "wire_api": '"responses"',
    }
    argv = ["codex", "exec", "--json", "--ephemeral", "--skip-git-repo-check", "--ignore-user-config"]
    argv += ["-c", 'model_provider="flowyard"']
    for key, value in provider.items():
        argv += ["-c", f"model_providers.flowyard.{key}={value}"]
    argv += ["-c", "analytics.enabled=false", "-c", "check_for_update_on_startup=false"]
    # The commands it runs get the core variables only (PATH, HOME, …): never OPENAI_API_KEY.
    argv += ["-c", 'shell_environment_policy.inherit="core"']
    if ask.model:
        argv += ["-m", ask.model]
    # Autonomous: no approvals and no sandbox of its own (the container is the sandbox). Otherwise
    # read-only: it may look, and whatever would change something is refused, never asked.
    argv += ["--dangerously-bypass-approvals-and-sandbox"] if ask.autonomous else ["--sandbox", "read-only"]
    argv.append(ask.prompt)
    # CODEX_HOME must exist: the fresh temporary home itself (its sessions go nowhere: --ephemeral).
    env = {"HOME": home, "CODEX_HOME": home}
    if endpoint.api_key:
        env["OPENAI_API_KEY"] = endpoint.api_key
    return argv, env


def codex_turns(events: list[Any]) -> int:
    """Codex's steps so far: each tool it used (a command, a file change) is one."""
    done = (e.get("item") or {} for e in events if isinstance(e, dict) and e.get("type") == "item.completed")
    return sum(1 for item in done if item.get("type") in _CODEX_TOOLS)


def codex_result(events: list[Any], ask: Ask) -> dict[str, Any]:
    """``codex exec --json``'s event lines as the agent's output, or LlmError."""
    spent = {"input_tokens": 0, "output_tokens": 0}
    session, text, failure = None, "", None
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "thread.started":
            session = event.get("thread_id")
        elif kind == "item.completed" and (event.get("item") or {}).get("type") == "agent_message":
            text = str(event["item"].get("text") or "")
        elif kind == "turn.completed":
            usage = event.get("usage") or {}
            spent["input_tokens"] += int(usage.get("input_tokens") or 0)
            spent["output_tokens"] += int(usage.get("output_tokens") or 0)
        elif kind == "turn.failed":
            failure = str((event.get("error") or {}).get("message") or "the turn failed")
    if codex_turns(events) > ask.max_turns:
        raise out_of_turns(ask, spent)
    if failure is not None:
        if _CODEX_AUTH.search(failure):
            reason = "auth_refused"
        elif _CODEX_RATE.search(failure):
            reason = "rate_limited"
        elif _CODEX_DOWN.search(failure) or UNREACHABLE.search(failure):
            reason = "provider_unavailable"
        else:
            reason = "cli_failed"
        raise LlmError(reason, f"codex ended with an error: {failure[:500]}", usage=spent)
    if not any(isinstance(e, dict) and e.get("type") == "turn.completed" for e in events):
        raise LlmError("cli_failed", "codex printed no completed turn", usage=spent)
    # Codex reports no price; the provider's price table (if any) gives cost_usd.
    return {"result": text, "usage": spent, "cost_usd": None, "turns": codex_turns(events), "session_id": session}

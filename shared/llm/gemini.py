"""Gemini CLI (``gemini -p … --output-format stream-json``) as a coding-CLI agent.

Its settings go in a fresh ``$HOME/.gemini/settings.json``: API-key authentication, no auto-update,
no usage statistics, no telemetry, and ``model.maxSessionTurns`` from the node's ``max_turns``
(past it the CLI stops with exit code 53). The provider is a ``gemini`` provider of
``llm.providers`` (``GOOGLE_GEMINI_BASE_URL``, the key in ``GEMINI_API_KEY``). ``--yolo`` only for
an autonomous agent; without it the CLI in headless mode does not offer the tools that would need
approval, so a task that needs them fails as ``needs_permission``. ``--skip-trust``: the workspace
is a copy made for this attempt.

The CLI retries a rate limit or a server error on its own with a long backoff; routing wants to
hear of it soon, so :func:`gemini_watch` reads its log and gives up on the second such error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .clibase import UNREACHABLE, Ask, needs_permission, out_of_turns
from .client import Endpoint
from .errors import LlmError, classify

_API_ERROR = re.compile(r'ApiError: \{"error":\{"code":(\d{3})')
_CODE = re.compile(r'"code":\s*(\d{3})')
_NEEDS_APPROVAL = {"tool_not_registered"}


def settings(ask: Ask) -> dict[str, Any]:
    return {
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "model": {"maxSessionTurns": ask.max_turns},
    }


def gemini_command(ask: Ask, endpoint: Endpoint, home: str) -> tuple[list[str], dict[str, str]]:
    if not ask.model:
        raise LlmError("bad_request", "no model: give the input `model` or the provider a default_model")
    config = Path(home) / ".gemini"
    config.mkdir(parents=True, exist_ok=True)
    (config / "settings.json").write_text(json.dumps(settings(ask)))
    argv = ["gemini", "-p", ask.prompt, "--output-format", "stream-json", "--skip-trust", "-m", ask.model]
    argv += ["--yolo"] if ask.autonomous else ["--approval-mode", "default"]
    # No relaunch of itself in a child process (for a larger heap): one process, so stopping it
    # stops it all.
    env = {"HOME": home, "GOOGLE_GEMINI_BASE_URL": endpoint.config.url, "NO_COLOR": "1", "GEMINI_CLI_NO_RELAUNCH": "1"}
    if endpoint.api_key:
        env["GEMINI_API_KEY"] = endpoint.api_key
    return argv, env


def gemini_turns(events: list[Any]) -> int:
    """Its tools used so far (a backstop: ``maxSessionTurns`` stops it first)."""
    return sum(1 for e in events if isinstance(e, dict) and e.get("type") == "tool_use")


class GeminiWatch:
    """Reads the CLI's log: the second API error it would retry ends the attempt with its reason."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, line: str) -> LlmError | None:
        match = _API_ERROR.search(line)
        if match is None:
            return None
        status = int(match.group(1))
        reason = classify(status)
        if reason not in ("rate_limited", "provider_unavailable"):
            return None  # it does not retry those: its result says so
        self.seen += 1
        if self.seen < 2:
            return None
        return LlmError(reason, f"gemini kept getting HTTP {status} from the provider (retried once); gave up")


def gemini_watch() -> GeminiWatch:
    return GeminiWatch()


def gemini_result(events: list[Any], ask: Ask) -> dict[str, Any]:
    """``stream-json`` events as the agent's output, or LlmError."""
    session, text, result, unoffered = None, "", None, []
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "init":
            session = event.get("session_id")
        elif kind == "message" and event.get("role") == "assistant":
            # Streamed in pieces (delta); a tool turn in between starts the answer afresh.
            text = text + str(event.get("content") or "") if event.get("delta") else str(event.get("content") or "")
        elif kind == "tool_use":
            text = ""
        elif kind == "tool_result" and ((event.get("error") or {}).get("type") in _NEEDS_APPROVAL):
            unoffered.append(str(event.get("tool_id", "?")).split("__")[0])
        elif kind == "result":
            result = event
    stats = (result or {}).get("stats") or {}
    spent = {"input_tokens": int(stats.get("input_tokens") or 0), "output_tokens": int(stats.get("output_tokens") or 0)}
    if result is None:
        raise LlmError("cli_failed", "gemini printed no result", usage=spent)
    error = result.get("error") or {}
    if error.get("type") == "FatalTurnLimitedError" or gemini_turns(events) > ask.max_turns:
        raise out_of_turns(ask, spent)
    if unoffered and not ask.autonomous:
        raise needs_permission("gemini", f"{', '.join(sorted(set(unoffered)))} (offered only with approval)", spent)
    if result.get("status") != "success":
        message = str(error.get("message") or "an error")
        code = _CODE.search(message)
        if code is not None:
            reason = classify(int(code.group(1)))
        elif UNREACHABLE.search(message):
            reason = "provider_unavailable"
        else:
            reason = "cli_failed"
        raise LlmError(reason, f"gemini ended with an error: {message[:500]}", usage=spent)
    return {
        "result": text,
        "usage": spent,
        "cost_usd": None,  # the provider's price table gives it
        "turns": gemini_turns(events),
        "session_id": session,
    }

"""OpenCode (``opencode run --format json``) as a coding-CLI agent: its command line and events.

The provider goes in as inline configuration (``OPENCODE_CONFIG_CONTENT``), one provider named
``flowyard`` through the AI SDK package of its kind, its key read from an environment variable
the configuration names (``{env:…}``). The workspace's own ``opencode.json`` is not read
(``OPENCODE_DISABLE_PROJECT_CONFIG``): a repository cannot widen the agent's permissions or swap
its provider. Permissions: edits and commands allowed for an autonomous agent, otherwise asked —
and ``opencode run`` refuses whatever it would ask, which fails as ``needs_permission``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .clibase import UNREACHABLE, Ask, needs_permission, out_of_turns
from .client import Endpoint
from .errors import LlmError, classify

KEY_ENV = "FLOWYARD_OPENCODE_API_KEY"
_PACKAGES = {
    "anthropic": "@ai-sdk/anthropic",
    "openai": "@ai-sdk/openai",
    "openai-compatible": "@ai-sdk/openai-compatible",
}
_RATE = re.compile(r"\b429\b|rate.?limit|too many requests|quota", re.I)
_AUTH = re.compile(r"\b401\b|\b403\b|unauthori[sz]ed|invalid (x-)?api.?key|authentication", re.I)
_DOWN = re.compile(r"\b5\d\d\b|overloaded|service unavailable|internal server error|cannot connect", re.I)
_REJECTED = re.compile(r"rejected permission", re.I)
_QUIET = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",  # no models.dev: the one model configured here
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_PROJECT_CONFIG": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",  # nothing read from ~/.claude or CLAUDE.md files
    "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
}


def _base_url(endpoint: Endpoint) -> str:
    url = endpoint.config.url
    # The Anthropic SDK package wants the API's root with /v1; flowyard's base_url is the host's.
    return url + "/v1" if endpoint.config.kind == "anthropic" and not url.endswith("/v1") else url


def config(ask: Ask, endpoint: Endpoint) -> dict[str, Any]:
    if not ask.model:
        raise LlmError("bad_request", "no model: give the input `model` or the provider a default_model")
    allowed = "allow" if ask.autonomous else "ask"
    return {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "model": f"flowyard/{ask.model}",
        "small_model": f"flowyard/{ask.model}",
        "provider": {
            "flowyard": {
                "npm": _PACKAGES[endpoint.config.kind],
                "name": endpoint.name,
                "options": {"baseURL": _base_url(endpoint), "apiKey": "{env:" + KEY_ENV + "}"},
                "models": {ask.model: {"name": ask.model}},
            }
        },
        # The egress allowlist reaches the provider only: fetching pages could not work anyway.
        "permission": {"edit": allowed, "bash": allowed, "webfetch": "deny"},
    }


def opencode_command(ask: Ask, endpoint: Endpoint, home: str) -> tuple[list[str], dict[str, str]]:
    # --title: otherwise its first model call would be a title for the session.
    argv = ["opencode", "run", "--format", "json", "--title", "flowyard", "--model", f"flowyard/{ask.model}"]
    # Its log on stderr, errors only: a provider call that failed and will be retried is there
    # (OpencodeWatch), and nowhere else until it gives up (about 70 s of back-off later).
    argv += ["--print-logs", "--log-level", "ERROR"]
    argv += ["--", ask.prompt]
    env = {
        "HOME": home,
        "XDG_CONFIG_HOME": f"{home}/.config",
        "XDG_DATA_HOME": f"{home}/.local/share",
        "XDG_CACHE_HOME": f"{home}/.cache",
        "XDG_STATE_HOME": f"{home}/.local/state",
        "OPENCODE_CONFIG_CONTENT": json.dumps(config(ask, endpoint)),
        **_QUIET,
        KEY_ENV: endpoint.api_key or "none",  # the SDK packages insist on a key; a local server takes any
    }
    return argv, env


class OpencodeWatch:
    """Reads OpenCode's log: the second failed provider call it would retry ends the attempt.

    It retries a 429, a 5xx or a connection error with a growing back-off (2, 5, 8, 18, 40 s ...)
    before it reports the error; a routable failure must not wait for that, or for the timeout.
    The log line does not carry the status, so the reason is `provider_unavailable` (routable,
    like `rate_limited`); an error it does not retry is reported at once in its JSON output.
    """

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, line: str) -> LlmError | None:
        if 'message="stream error"' not in line:
            return None
        self.seen += 1
        if self.seen < 2:
            return None
        said = _STREAM_ERROR.search(line)
        detail = f" ({said.group(1)})" if said else ""
        return LlmError(
            "provider_unavailable", f"opencode's calls to the provider kept failing{detail}; retried once, gave up"
        )


_STREAM_ERROR = re.compile(r'error\.error="([^"]{1,300})"')


def opencode_watch() -> OpencodeWatch:
    return OpencodeWatch()


def opencode_turns(events: list[Any]) -> int:
    """OpenCode's steps so far: each model call of the session is one."""
    return sum(1 for e in events if isinstance(e, dict) and e.get("type") == "step_start")


def _failure(event: dict[str, Any]) -> tuple[str, int | None]:
    """An error event's message and, for an API error, the provider's HTTP status."""
    error = event.get("error") or (event.get("part") or {}).get("error") or event
    if isinstance(error, dict):
        data = error.get("data") if isinstance(error.get("data"), dict) else {}
        status = data.get("statusCode")
        text = str(data.get("message") or error.get("message") or error.get("name") or json.dumps(error)[:300])
        return text, status if isinstance(status, int) and not isinstance(status, bool) else None
    return str(error), None


def opencode_result(events: list[Any], ask: Ask) -> dict[str, Any]:
    """``opencode run --format json``'s event lines as the agent's output, or LlmError."""
    spent = {"input_tokens": 0, "output_tokens": 0}
    session, text, cost, rejected = None, "", 0.0, []
    failure: tuple[str, int | None] | None = None
    finished = False
    for event in events:
        if not isinstance(event, dict):
            continue
        session = session or event.get("sessionID")
        kind, part = event.get("type"), event.get("part") or {}
        if kind == "text":
            text = str(part.get("text") or "")
        elif kind == "step_finish":
            finished = True
            tokens = part.get("tokens") or {}
            cache = tokens.get("cache") or {}
            spent["input_tokens"] += int(tokens.get("input") or 0) + int(cache.get("read") or 0)
            spent["input_tokens"] += int(cache.get("write") or 0)
            spent["output_tokens"] += int(tokens.get("output") or 0)
            cost += float(part.get("cost") or 0)
        elif kind == "tool_use":
            state = part.get("state") or {}
            if state.get("status") == "error" and _REJECTED.search(str(state.get("error") or "")):
                rejected.append(str(part.get("tool") or "?"))
        elif kind == "error":
            failure = _failure(event)
    if opencode_turns(events) > ask.max_turns:
        raise out_of_turns(ask, spent)
    if rejected and not ask.autonomous:
        raise needs_permission("opencode", ", ".join(sorted(set(rejected))), spent)
    if failure is not None:
        failure, status = failure
        if status is not None:
            reason = classify(status)
        elif _AUTH.search(failure):
            reason = "auth_refused"
        elif _RATE.search(failure):
            reason = "rate_limited"
        elif _DOWN.search(failure) or UNREACHABLE.search(failure):
            reason = "provider_unavailable"
        else:
            reason = "cli_failed"
        raise LlmError(reason, f"opencode ended with an error: {failure[:500]}", usage=spent)
    if not finished:
        raise LlmError("cli_failed", "opencode printed no finished step", usage=spent)
    return {
        "result": text,
        "usage": spent,
        "cost_usd": cost or None,  # its own price list knows no flowyard model; the provider's prices do
        "turns": opencode_turns(events),
        "session_id": session,
    }

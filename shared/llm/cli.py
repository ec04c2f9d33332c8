"""The coding-CLI built-in agents: a CLI run headless on the run's workspace, against a provider.

``flowyard-agent-cli claude-code`` reads the node's input (``prompt``, ``max_turns``, ``model``,
``provider``) on stdin and the provider from the environment as the ``llm`` agent does, runs the
CLI non-interactively in the workspace (no TTY, ``$HOME`` in a fresh temporary directory, auto-
update, telemetry and error reporting off), and prints one JSON object: ``result`` (the CLI's
final text), ``changed_files``, ``usage``, ``cost_usd``, ``turns``, ``session_id``. The CLI's
skip-permission mode is used only for an agent marked ``autonomous`` (the executor says so in
``FLOWYARD_AUTONOMOUS``); without it, a CLI that stops to ask fails saying so. Failures use the
llm agent's machine-readable shape, so routing can tell "rate-limited" from "could not do it".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .agent import cost as priced
from .agent import endpoint_from_env, log
from .client import Endpoint
from .errors import LlmError, classify

DEFAULT_MAX_TURNS = 20
_NO_KEY = re.compile(r"Not logged in|Invalid API key|/login", re.I)
_UNREACHABLE = re.compile(
    r"ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|Connection refused|timed? ?out|fetch failed", re.I
)
_KNOWN = {"prompt", "max_turns", "model", "provider"}
_QUIET = {
    # Nothing but the model calls: no updates, no telemetry, no error reports, no other traffic.
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
_PASS = ("PATH", "LANG", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy", "TZ")


@dataclass(frozen=True, slots=True)
class Ask:
    prompt: str
    max_turns: int
    model: str | None
    autonomous: bool


def check_input(given: Any) -> Ask:
    if not isinstance(given, dict):
        raise LlmError("bad_request", f"the input must be a JSON object with a `prompt`, got {type(given).__name__}")
    unknown = sorted(set(given) - _KNOWN)
    if unknown:
        raise LlmError(
            "bad_request", f"unknown input field(s) {', '.join(unknown)}; it takes {', '.join(sorted(_KNOWN))}"
        )
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise LlmError("bad_request", "input `prompt` must be non-empty text")
    turns = given.get("max_turns", DEFAULT_MAX_TURNS)
    if not isinstance(turns, int) or isinstance(turns, bool) or not 1 <= turns <= 500:
        raise LlmError("bad_request", f"input `max_turns` must be a whole number from 1 to 500, got {turns!r}")
    model = given.get("model")
    if model is not None and not isinstance(model, str):
        raise LlmError("bad_request", "input `model` must be text")
    return Ask(prompt, turns, model, autonomous=False)


# --- the workspace before and after ----------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content digest of every file (symlinks by their target), .git left out."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] == ".git":
            continue
        if path.is_symlink():
            found[str(rel)] = "link:" + os.readlink(path)
        elif path.is_file():
            found[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def changed(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


# --- Claude Code -------------------------------------------------------------------------------


def claude_command(ask: Ask, endpoint: Endpoint, home: str) -> tuple[list[str], dict[str, str]]:
    argv = ["claude", "-p", ask.prompt, "--output-format", "json", "--max-turns", str(ask.max_turns)]
    if ask.model:
        argv += ["--model", ask.model]
    if ask.autonomous:
        argv.append("--dangerously-skip-permissions")
    env = {"HOME": home, "CLAUDE_CONFIG_DIR": str(Path(home) / ".claude")}
    env["ANTHROPIC_BASE_URL"] = endpoint.config.url
    if endpoint.api_key:
        env["ANTHROPIC_API_KEY"] = endpoint.api_key
    return argv, env


def claude_result(report: Any, ask: Ask) -> dict[str, Any]:
    """Claude Code's ``--output-format json`` result as the agent's output, or LlmError."""
    if not isinstance(report, dict) or report.get("type") != "result":
        raise LlmError("cli_failed", "claude printed no result object")
    usage = report.get("usage") or {}
    spent = {
        "input_tokens": sum(
            int(usage.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        ),
        "output_tokens": int(usage.get("output_tokens") or 0),
    }
    subtype = str(report.get("subtype") or "")
    denied = report.get("permission_denials") or []
    if subtype == "error_max_turns":
        raise LlmError(
            "max_turns",
            f"ran out of turns (max_turns {ask.max_turns}) before it finished; raise max_turns or narrow the prompt",
            usage=spent,
        )
    if report.get("is_error") or subtype != "success":
        status = report.get("api_error_status")
        text = str(report.get("result") or subtype or "an error")[:500]
        if isinstance(status, int):
            reason = classify(status)
        elif _UNREACHABLE.search(text):  # it retried on its own and never got through
            reason = "provider_unavailable"
        elif _NO_KEY.search(text):
            reason = "auth_refused"
        else:
            reason = "cli_failed"
        raise LlmError(reason, f"claude ended with an error: {text}", usage=spent)
    if denied and not ask.autonomous:
        tools = sorted({str(d.get("tool_name", "?")) for d in denied if isinstance(d, dict)})
        raise LlmError(
            "needs_permission",
            f"claude stopped to ask permission for {', '.join(tools)}, and nobody can answer in a sandboxed run; "
            "mark the agent `autonomous: true` (it then runs only in a container or pod)",
            usage=spent,
        )
    return {
        "result": str(report.get("result") or ""),
        "usage": spent,
        "cost_usd": report.get("total_cost_usd"),
        "turns": report.get("num_turns"),
        "session_id": report.get("session_id"),
    }


# --- Codex ---------------------------------------------------------------------------------------

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
        raise LlmError(
            "max_turns",
            f"ran out of turns (max_turns {ask.max_turns}) before it finished; raise max_turns or narrow the prompt",
            usage=spent,
        )
    if failure is not None:
        if _CODEX_AUTH.search(failure):
            reason = "auth_refused"
        elif _CODEX_RATE.search(failure):
            reason = "rate_limited"
        elif _CODEX_DOWN.search(failure) or _UNREACHABLE.search(failure):
            reason = "provider_unavailable"
        else:
            reason = "cli_failed"
        raise LlmError(reason, f"codex ended with an error: {failure[:500]}", usage=spent)
    if not any(isinstance(e, dict) and e.get("type") == "turn.completed" for e in events):
        raise LlmError("cli_failed", "codex printed no completed turn", usage=spent)
    # Codex reports no price; the provider's price table (if any) gives cost_usd.
    return {"result": text, "usage": spent, "cost_usd": None, "turns": codex_turns(events), "session_id": session}


@dataclass(frozen=True, slots=True)
class Driver:
    command: Any  # (Ask, Endpoint, home) -> (argv, env)
    result: Any  # (events, Ask) -> output
    # The CLI's steps so far, where it has no max-turns flag of its own: stopped past the limit.
    turns: Any = None


DRIVERS = {
    # Claude Code prints one result object, its last line.
    "claude-code": Driver(claude_command, lambda events, ask: claude_result(events[-1], ask)),
    "codex": Driver(codex_command, codex_result, codex_turns),
}


async def run(
    name: str, given: Any, endpoint: Endpoint, *, timeout: float, workspace: Path, environ: Mapping[str, str]
) -> dict[str, Any]:
    if name not in DRIVERS:
        raise LlmError("bad_request", f"no coding CLI {name!r}; there are {', '.join(sorted(DRIVERS))}")
    ask = check_input(given)
    ask = Ask(
        ask.prompt, ask.max_turns, ask.model or endpoint.config.default_model, environ.get("FLOWYARD_AUTONOMOUS") == "1"
    )
    driver = DRIVERS[name]
    home = tempfile.mkdtemp(prefix="flowyard-cli-home-")  # on the container's tmpfs (/tmp)
    try:
        argv, extra = driver.command(ask, endpoint, home)
        program = shutil.which(argv[0], path=environ.get("PATH"))
        if program is None:
            raise LlmError("unstartable", f"the {argv[0]!r} CLI is not installed here (build the {name} agent's image)")
        env = {k: environ[k] for k in _PASS if k in environ} | _QUIET | extra
        before = await asyncio.to_thread(snapshot, workspace)
        log(f"running {name} on {workspace} (max_turns {ask.max_turns}{', autonomous' if ask.autonomous else ''})")
        proc = await asyncio.create_subprocess_exec(
            program,
            *argv[1:],
            cwd=workspace,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            limit=16 * 1024 * 1024,  # one JSON line may be a long transcript
        )
        try:
            events = await asyncio.wait_for(_read_events(proc, driver, ask), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise LlmError("timeout", f"{name} did not finish within {timeout:.0f}s") from None
        if not events:
            raise LlmError("cli_failed", f"{name} exited with code {proc.returncode} and printed no JSON result")
        report = events[-1]
        out = driver.result(events, ask)
        after = await asyncio.to_thread(snapshot, workspace)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    model = ask.model or _model_of(report) or ""
    ours = priced(endpoint.config, model, _Spent(out["usage"])) if model else None
    return {
        **out,
        "cost_usd": ours if ours is not None else out.get("cost_usd"),
        "changed_files": changed(before, after),
        "model": model,
        "provider": endpoint.name,
    }


async def _read_events(proc: asyncio.subprocess.Process, driver: Driver, ask: Ask) -> list[Any]:
    """The JSON lines the CLI prints; stopped once it is past ``max_turns`` where it cannot stop itself."""
    assert proc.stdout is not None
    events: list[Any] = []
    while True:
        try:
            raw = await proc.stdout.readline()
        except ValueError:  # one line over the reader's limit: not a result anyone could read
            proc.kill()
            await proc.wait()
            raise LlmError("cli_failed", "the CLI printed a line over 16 MiB; narrow the prompt") from None
        if not raw:
            break
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # not ours to read (a CLI's stray output); its JSON lines are what count
        if driver.turns is not None and driver.turns(events) > ask.max_turns:
            proc.kill()
            break
    await proc.wait()
    return events


def _model_of(report: dict[str, Any]) -> str | None:
    models = report.get("modelUsage")
    return next(iter(models), None) if isinstance(models, dict) and models else None


class _Spent:
    def __init__(self, usage: Mapping[str, int]) -> None:
        self.input_tokens = int(usage.get("input_tokens", 0))
        self.output_tokens = int(usage.get("output_tokens", 0))


async def amain(name: str, stdin: str, environ: Mapping[str, str], workspace: Path) -> tuple[dict[str, Any], int]:
    timeout = float(environ.get("FLOWYARD_TIMEOUT_S") or 900)
    try:
        try:
            given = json.loads(stdin or "null")
        except json.JSONDecodeError as exc:
            raise LlmError("bad_request", f"the input is not JSON ({exc.msg})") from None
        endpoint = endpoint_from_env(environ)
        # Seconds in hand: the result must be printed before the executor's timeout kills us.
        return await run(name, given, endpoint, timeout=max(timeout - 3, 1), workspace=workspace, environ=environ), 0
    except LlmError as exc:
        log(f"failed ({exc.reason}): {exc.message}")
        return {
            "error": {"reason": exc.reason, "message": exc.message},
            "usage": exc.usage or {"input_tokens": 0, "output_tokens": 0},
        }, 1


def main() -> None:
    if len(sys.argv) != 2:
        print(f"usage: flowyard-agent-cli {{{'|'.join(sorted(DRIVERS))}}} < input.json", file=sys.stderr)
        sys.exit(2)
    workspace = Path(os.environ.get("FLOWYARD_WORKSPACE") or os.getcwd())
    output, code = asyncio.run(amain(sys.argv[1], sys.stdin.read(), os.environ, workspace))
    sys.stdout.write(json.dumps(output) + "\n")
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()

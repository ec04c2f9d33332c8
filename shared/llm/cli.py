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
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .agent import cost as priced
from .agent import endpoint_from_env, log
from .clibase import UNREACHABLE, Ask, Driver, changed, check_input, needs_permission, out_of_turns, snapshot
from .client import Endpoint
from .codex import codex_command, codex_result, codex_turns
from .errors import LlmError, classify
from .gemini import gemini_command, gemini_result, gemini_turns, gemini_watch
from .opencode import opencode_command, opencode_result, opencode_turns, opencode_watch

_NO_KEY = re.compile(r"Not logged in|Invalid API key|/login", re.I)
_QUIET = {
    # Nothing but the model calls: no updates, no telemetry, no error reports, no other traffic.
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
_PASS = ("PATH", "LANG", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy", "TZ")


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
        raise out_of_turns(ask, spent)
    if report.get("is_error") or subtype != "success":
        status = report.get("api_error_status")
        text = str(report.get("result") or subtype or "an error")[:500]
        if isinstance(status, int):
            reason = classify(status)
        elif UNREACHABLE.search(text):  # it retried on its own and never got through
            reason = "provider_unavailable"
        elif _NO_KEY.search(text):
            reason = "auth_refused"
        else:
            reason = "cli_failed"
        raise LlmError(reason, f"claude ended with an error: {text}", usage=spent)
    if denied and not ask.autonomous:
        tools = sorted({str(d.get("tool_name", "?")) for d in denied if isinstance(d, dict)})
        raise needs_permission("claude", ", ".join(tools), spent)
    return {
        "result": str(report.get("result") or ""),
        "usage": spent,
        "cost_usd": report.get("total_cost_usd"),
        "turns": report.get("num_turns"),
        "session_id": report.get("session_id"),
    }


DRIVERS = {
    # Claude Code prints one result object, its last line.
    "claude-code": Driver(claude_command, lambda events, ask: claude_result(events[-1], ask)),
    "codex": Driver(codex_command, codex_result, codex_turns),
    "opencode": Driver(opencode_command, opencode_result, opencode_turns, opencode_watch),
    "gemini-cli": Driver(gemini_command, gemini_result, gemini_turns, gemini_watch),
}
__all__ = [
    "DRIVERS",
    "Ask",
    "check_input",
    "codex_command",
    "codex_result",
    "opencode_command",
    "opencode_result",
    "run",
]


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
            stderr=asyncio.subprocess.PIPE if driver.watch is not None else None,
            limit=16 * 1024 * 1024,  # one JSON line may be a long transcript
        )
        stopped: list[LlmError] = []
        watcher = asyncio.create_task(_watch(proc, driver.watch(), stopped)) if driver.watch is not None else None
        try:
            events = await asyncio.wait_for(_read_events(proc, driver, ask), timeout)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            raise LlmError("timeout", f"{name} did not finish within {timeout:.0f}s") from None
        finally:
            if watcher is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(watcher, 1.0)
        if stopped:
            raise stopped[0]
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


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _watch(proc: asyncio.subprocess.Process, reader: Any, stopped: list[LlmError]) -> None:
    """Pass the CLI's log on (it is the agent's log) and stop the CLI when ``reader`` says so."""
    assert proc.stderr is not None
    while raw := await proc.stderr.readline():
        line = raw.decode("utf-8", "replace")
        sys.stderr.write(line)
        if not stopped and (why := reader(line)) is not None:
            stopped.append(why)
            log(f"stopping it: {why.message}")
            _kill(proc)


async def _read_events(proc: asyncio.subprocess.Process, driver: Driver, ask: Ask) -> list[Any]:
    """The JSON lines the CLI prints; stopped once it is past ``max_turns`` where it cannot stop itself."""
    assert proc.stdout is not None
    events: list[Any] = []
    while True:
        try:
            raw = await proc.stdout.readline()
        except ValueError:  # one line over the reader's limit: not a result anyone could read
            _kill(proc)
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
            _kill(proc)
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

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
    env = {"HOME": home, "CLAUDE_CONFIG_DIR": str(Path(home) / ".claude"), **_QUIET}
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


DRIVERS = {"claude-code": (claude_command, claude_result)}


async def run(
    name: str, given: Any, endpoint: Endpoint, *, timeout: float, workspace: Path, environ: Mapping[str, str]
) -> dict[str, Any]:
    if name not in DRIVERS:
        raise LlmError("bad_request", f"no coding CLI {name!r}; there are {', '.join(sorted(DRIVERS))}")
    ask = check_input(given)
    ask = Ask(
        ask.prompt, ask.max_turns, ask.model or endpoint.config.default_model, environ.get("FLOWYARD_AUTONOMOUS") == "1"
    )
    command, parse = DRIVERS[name]
    home = tempfile.mkdtemp(prefix="flowyard-cli-home-")  # on the container's tmpfs (/tmp)
    try:
        argv, extra = command(ask, endpoint, home)
        program = shutil.which(argv[0], path=environ.get("PATH"))
        if program is None:
            raise LlmError("unstartable", f"the {argv[0]!r} CLI is not installed here (build the {name} agent's image)")
        env = {k: environ[k] for k in _PASS if k in environ} | extra
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
        )
        try:
            stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise LlmError("timeout", f"{name} did not finish within {timeout:.0f}s") from None
        text = stdout.decode("utf-8", "replace").strip()
        try:
            report = json.loads(text.splitlines()[-1]) if text else None
        except (json.JSONDecodeError, IndexError):
            report = None
        if report is None:
            raise LlmError("cli_failed", f"{name} exited with code {proc.returncode} and printed no JSON result")
        out = parse(report, ask)
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

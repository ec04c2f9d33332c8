"""What every coding-CLI driver shares: the node's input, the workspace before and after, and
the shape of a driver (:mod:`shared.llm.cli` runs them)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LlmError

DEFAULT_MAX_TURNS = 20
UNREACHABLE = re.compile(
    r"ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|Connection refused|timed? ?out|fetch failed", re.I
)
_KNOWN = {"prompt", "max_turns", "model", "provider"}


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


@dataclass(frozen=True, slots=True)
class Driver:
    command: Any  # (Ask, Endpoint, home) -> (argv, env)
    result: Any  # (events, Ask) -> output
    # The CLI's steps so far, where it has no max-turns flag of its own: stopped past the limit.
    turns: Any = None
    # () -> a reader of the CLI's log lines (stderr) that returns an LlmError to stop it with:
    # for a CLI that would retry a provider's errors for longer than routing should wait.
    watch: Any = None


def out_of_turns(ask: Ask, usage: Mapping[str, int]) -> LlmError:
    """The failure every CLI driver reports past ``max_turns``."""
    return LlmError(
        "max_turns",
        f"ran out of turns (max_turns {ask.max_turns}) before it finished; raise max_turns or narrow the prompt",
        usage=dict(usage),
    )


def needs_permission(cli: str, what: str, usage: Mapping[str, int]) -> LlmError:
    """The failure of a CLI not marked autonomous that stopped at (or was refused) ``what``."""
    return LlmError(
        "needs_permission",
        f"{cli} stopped to ask permission for {what}, and nobody can answer in a sandboxed run; "
        "mark the agent `autonomous: true` (it then runs only in a container or pod)",
        usage=dict(usage),
    )

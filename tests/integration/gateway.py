"""A gateway under test: the services and the gateway as separate processes, real HTTP on loopback."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from shared.bus.server import NatsServer

from .stack import Stack

TOKENS = {
    "admin": "admin-token-0123456789abcdef",
    "olga": "olga-token-0123456789abcdef",  # operator
    "vic": "vic-token-0123456789abcdef",  # viewer
    "amy": "amy-token-0123456789abcdef",  # approver
    "ops": "ops-token-0123456789abcdef",  # operator and approver
    "am": "am-token-0123456789abcdef",  # alerts only (Alertmanager)
}
ROLES = {
    "admin": ["admin"],
    "olga": ["operator"],
    "vic": ["viewer"],
    "amy": ["approver"],
    "ops": ["operator", "approver"],
    "am": ["alerts"],
}
API_YAML = Path(__file__).parent / "workflows" / "api.yaml"


def gateway_config(workdir: Path, extra: str = "") -> dict[str, str]:
    """A config file with the test users; the environment that holds their tokens."""
    users = "".join(
        f"    {name}:\n      token_secret: {name.upper()}_TOKEN\n      roles: {json.dumps(ROLES[name])}\n"
        for name in TOKENS
    )
    path = workdir / "flowyard.yaml"
    path.write_text(f"gateway:\n  port: 0\n  max_body: 64KiB\n  data_dir: {workdir}\n  users:\n{users}{extra}")
    env = {f"FLOWYARD_SECRET_{name.upper()}_TOKEN": token for name, token in TOKENS.items()}
    return {"FLOWYARD_CONFIG": str(path), **env}


def start_gateway(stack: Stack, name: str = "gateway") -> str:
    stack.start(name)
    content = stack.wait_for_log(name, "gateway listening")
    return re.findall(r'"url": "(http://127\.0\.0\.1:\d+)", "users"', content)[-1]


@contextlib.contextmanager
def gateway_stack(workdir: Path, extra: str = "") -> Iterator[tuple[Stack, str]]:
    """A nats-server, the planner, scheduler, executor and approver, and the gateway with the test
    users, each its own process; (the stack, the gateway's base URL)."""
    server = NatsServer(workdir / "nats").start()
    stack = Stack(server, workdir, **gateway_config(workdir, extra))
    try:
        for name in ("planner", "scheduler", "executor", "approver"):
            stack.start(name)
        yield stack, start_gateway(stack)
    finally:
        stack.stop_all()
        server.stop()


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


async def sse(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events as dicts {id, event, data}, comments skipped."""
    event: dict[str, Any] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "event" in event or "data" in event:
                if "data" in event:
                    event["data"] = json.loads(event["data"])
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        event[field] = value.lstrip(" ")

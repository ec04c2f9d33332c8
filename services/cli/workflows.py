"""``flowyard workflows apply|list|show|delete``: the workflow registry, over NATS like every command."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from shared.api.views import to_json
from shared.bus.connection import Bus
from shared.config.settings import Config
from shared.contract.errors import ValidationFailed
from shared.state import audit, registry
from shared.workflow.check import agent_names
from shared.workflow.loader import load_file

from .client import connected
from .inputs import load_and_check
from .output import EXIT_INVALID, EXIT_OK, echo_json


async def record(bus: Bus, user: str, action: audit.Action, target: str, detail: str = "", ok: bool = True) -> None:
    """An audit entry for something done through the CLI."""
    entry = audit.entry(
        user=user,
        action=action,
        target=target,
        outcome="ok" if ok else "refused",
        via="cli",
        client=socket.gethostname(),
        detail=detail,
    )
    await audit.record(bus, entry)


async def apply_file(config: Config, path: Path, *, user: str, as_json: bool) -> int:
    loaded = await asyncio.to_thread(load_file, path)  # malformed or unreadable: exit 2 before connecting
    async with connected(config) as bus:
        from shared.state import agents as agent_registry

        registered = await agent_registry.lookup(bus, agent_names(loaded), but=loaded.agents)
        bundle = await asyncio.to_thread(load_and_check, path, registered, config.agents.priorities)
        if not bundle.workflows:
            raise ValidationFailed([f"{path}: holds no `kind: Workflow` document; a workflow is what gets applied"])
        text = await asyncio.to_thread(path.read_text, "utf-8")
        applied = await registry.apply(bus, bundle, text, user=user)
        for a in applied:
            detail = f"{a.name} version {a.version}" + ("" if a.changed else " (unchanged)")
            await record(bus, user, "apply", f"workflow/{a.name}", detail)
    if as_json:
        echo_json(to_json(applied))
    else:
        for a in applied:
            note = "" if a.changed else " (unchanged: identical to the latest version)"
            print(f"{a.name} version {a.version}{note}")
    return EXIT_OK


async def list_workflows(config: Config, *, as_json: bool) -> int:
    async with connected(config) as bus:
        heads = await registry.listing(bus)
    if as_json:
        echo_json(to_json(heads))
    elif not heads:
        print("no workflows registered; `flowyard workflows apply FILE` adds one")
    else:
        width = max(len(h.name) for h in heads)
        for h in heads:
            print(f"{h.name:<{width}}  v{h.version:<4} {h.applied_at}  by {h.applied_by}  {h.description}")
    return EXIT_OK


async def show_workflow(config: Config, name: str, *, version: int | None, as_json: bool) -> int:
    async with connected(config) as bus:
        found = await registry.get(bus, name, version)
        latest = await registry.head(bus, name) if found is None else None
    if found is None:
        if latest is None:
            print(f"flowyard: no workflow {name!r}; `flowyard workflows list` shows them", file=sys.stderr)
        else:
            print(
                f"flowyard: workflow {name!r} has no version {version}; its latest is {latest.version}", file=sys.stderr
            )
        return EXIT_INVALID
    if as_json:
        echo_json(to_json(found))
        return EXIT_OK
    print(f"# {found.name} version {found.version}, applied {found.applied_at} by {found.applied_by} ({found.digest})")
    print(found.source, end="" if found.source.endswith("\n") else "\n")
    return EXIT_OK


async def delete_workflow(config: Config, name: str, *, user: str) -> int:
    async with connected(config) as bus:
        removed = await registry.delete(bus, name)
        if removed is not None:
            await record(bus, user, "delete", f"workflow/{name}", f"deleted with {removed.version} version(s)")
    if removed is None:
        print(f"flowyard: no workflow {name!r}; `flowyard workflows list` shows them", file=sys.stderr)
        return EXIT_INVALID
    print(f"{name} deleted ({removed.version} version(s))")
    return EXIT_OK

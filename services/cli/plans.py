"""``flowyard plan`` and ``flowyard plans``: ask the planner for a plan, follow it, read and decide plans."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from shared.api.plans import StartPlan, get_view, plan_view, request_plan
from shared.api.views import to_json
from shared.bus.connection import Bus
from shared.config.settings import Config
from shared.contract.drafts import PLAN_NODE, PlanRecord
from shared.state import plans

from .approvals import decide
from .client import connected
from .inputs import parse_inputs
from .output import EXIT_FAILED, EXIT_INVALID, EXIT_OK, echo_json
from .workflows import record as record_audit

# A plan past drafting: what `flowyard plan` stops waiting at.
_SETTLED = ("proposed", "approved", "rejected", "failed", "expired")


def plan_json(record: PlanRecord) -> dict[str, Any]:
    return to_json(plan_view(record))


def graph_lines(document: dict[str, Any] | None) -> list[str]:
    """The workflow's steps in the order they can run, each with its agent and what it waits for."""
    spec = (document or {}).get("spec") or {}
    nodes = [n for n in spec.get("nodes") or [] if isinstance(n, dict)]
    placed: dict[str, int] = {}
    level_of: dict[str, int] = {}
    pending = list(nodes)
    while pending:  # levels: a node sits one below the deepest node it needs
        progressed = False
        for node in list(pending):
            needs = [str(x) for x in node.get("needs") or []]
            if all(x in level_of for x in needs):
                level_of[str(node.get("id"))] = 1 + max((level_of[x] for x in needs), default=-1)
                placed[str(node.get("id"))] = len(placed)
                pending.remove(node)
                progressed = True
        if not progressed:  # a cycle: the validator refuses it; show the rest as it is
            for node in pending:
                level_of[str(node.get("id"))] = 0
            break
    width = max((len(str(n.get("id"))) for n in nodes), default=4)
    lines = []
    for node in sorted(nodes, key=lambda n: (level_of.get(str(n.get("id")), 0), placed.get(str(n.get("id")), 0))):
        nid = str(node.get("id"))
        runs = f"agent {node['agent']}" if node.get("agent") else f"capability {node.get('capability')}"
        extra = []
        if node.get("foreach") is not None:
            extra.append("for each item")
        if node.get("approval") is not None:
            extra.append("asks for approval")
        if node.get("needs"):
            extra.append("after " + ", ".join(str(x) for x in node["needs"]))
        indent = "  " * level_of.get(nid, 0)
        lines.append(f"  {indent}{nid:<{width}}  {runs}" + (f"  ({'; '.join(extra)})" if extra else ""))
    return lines


def print_plan(p: dict[str, Any]) -> None:
    """A plan's JSON (``plans show --json``) as people read it."""
    print(f"plan      {p['id']}  ({p['status']})")
    print(f"goal      {p['goal']}")
    made = f"the template {p['fallback']} (fallback)" if p["fallback"] else (p["model"] or "-")
    print(f"by        {made}, asked for by {p['requested_by'] or 'unknown'}")
    usage = p["usage"]
    if p["rounds"]:
        tokens = usage["input_tokens"] + usage["output_tokens"]
        print(f"rounds    {len(p['rounds'])} ({tokens} tokens)")
        for number, r in enumerate(p["rounds"], 1):
            if r["error"]:
                print(f"  round {number}: {r['error']}")
            elif r["errors"]:
                print(f"  round {number}: {len(r['errors'])} error(s)")
                for e in r["errors"]:
                    print(f"    - {e}")
            else:
                print(f"  round {number}: valid")
    if p["error"]:
        print(f"note      {p['error']}" if p["status"] != "failed" else f"error     {p['error']}")
    if p["decided_by"]:
        print(f"decided   by {', '.join(p['decided_by'])} at {p['decided_at']}")
    if p["reason"]:
        print(f"reason    {p['reason']}")
    if p["workflow_version"] is not None:
        print(f"workflow  registered as version {p['workflow_version']}")
    if p["run_id"]:
        print(f"run       {p['run_id']} (`flowyard runs show {p['run_id']}`)")
    workflow = p["workflow"]
    if workflow:
        if p["explanation"]:
            print(f"why       {p['explanation']}")
        print("graph:")
        for line in graph_lines(workflow["document"]):
            print(line)
        print("workflow:")
        print(workflow["yaml"].rstrip())
    if p["status"] == "proposed":
        print(
            f"\nIt runs only once approved: flowyard plans approve {p['id']} --as USER "
            f"(or reject {p['id']} --as USER --reason TEXT)"
        )


async def _wait(bus: Bus, plan_id: str, timeout: float) -> PlanRecord | None:
    started = time.monotonic()
    deadline = started + timeout
    pause = 0.05
    hinted = False
    while time.monotonic() < deadline:
        record = await plans.get(bus, plan_id)
        if record is not None and record.status in _SETTLED:
            return record
        if record is None and not hinted and time.monotonic() - started > 10:
            hinted = True  # as `flowyard run` says when nothing answers its request
            print(
                f"flowyard: plan {plan_id} was asked for but no planner has taken it for 10s; is a planner "
                "running for this NATS (`flowyard serve planner`, or `flowyard up`)?",
                file=sys.stderr,
                flush=True,
            )
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)
    return await plans.get(bus, plan_id)


async def make_plan(
    config: Config,
    goal: str,
    pairs: tuple[str, ...],
    *,
    name: str | None,
    run: bool,
    as_json: bool,
    user: str,
    timeout: float,
) -> int:
    body = StartPlan(goal=goal, inputs=parse_inputs(pairs), workflow_name=name, run=run)  # bad -i: exit 2
    async with connected(config) as bus:
        request = await request_plan(bus, body, user=user, source="cli")  # ValidationFailed -> exit 2
        await record_audit(bus, user, "plan", f"plan/{request.run_id}", request.goal[:200])
        if not as_json:
            print(f"plan {request.run_id}: drafting…", file=sys.stderr, flush=True)
        record = await _wait(bus, request.run_id, timeout)
    if record is None or record.status == "drafting":
        print(
            f"flowyard: plan {request.run_id} is still being drafted after {timeout:g}s; "
            f"`flowyard plans show {request.run_id}` follows it (is a planner running?)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if as_json:
        echo_json(plan_json(record))
    else:
        print_plan(plan_json(record))
    return EXIT_OK if record.status in ("proposed", "approved") else EXIT_FAILED


async def list_plans(config: Config, *, status: str | None, as_json: bool) -> int:
    async with connected(config) as bus:
        records = [r for r in await plans.records(bus) if status is None or r.status == status]
    if as_json:
        echo_json([plan_json(r) for r in records])
    elif not records:
        print("no plans yet" if status is None else f"no {status} plans")
    else:
        for r in records:
            made = f"template {r.fallback}" if r.fallback else (r.model or "-")
            name = r.proposed_name or "-"
            print(f"{r.id}  {r.status:<9} {name:<24} {made:<20} {r.goal[:60]}")
    return EXIT_OK


async def show_plan(config: Config, plan_id: str, *, as_json: bool) -> int:
    async with connected(config) as bus:
        view = await get_view(bus, plan_id)
    if view is None:
        print(f"flowyard: no plan {plan_id!r}; `flowyard plans list` shows them", file=sys.stderr)
        return EXIT_INVALID
    if as_json:
        echo_json(to_json(view))
    else:
        print_plan(to_json(view))
    return EXIT_OK


async def decide_plan(config: Config, plan_id: str, decision: str, *, user: str, text: str, as_json: bool) -> int:
    async with connected(config) as bus:
        record = await plans.get(bus, plan_id)
        asked = record is not None or await get_view(bus, plan_id) is not None
    if not asked:
        print(f"flowyard: no plan {plan_id!r}; `flowyard plans list` shows them", file=sys.stderr)
        return EXIT_INVALID
    status = record.status if record is not None else "drafting"
    if status != "proposed":
        print(
            f"flowyard: refused: plan {plan_id} is {status}; only a proposed plan can be decided",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return await decide(config, f"{plan_id}.{PLAN_NODE}", decision, user=user, text=text, as_json=as_json)

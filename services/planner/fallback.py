"""When the model gives no valid plan: the first template that fits, or a failure in words."""

from __future__ import annotations

import msgspec
import yaml

from shared.bus.connection import Bus
from shared.contract.drafts import PlanRecord, PlanRequested
from shared.contract.errors import ValidationFailed
from shared.state import registry
from shared.workflow.model import AgentDoc
from shared.workflow.validate import check_inputs

from . import drafting
from .planning import runtime_problems


async def fallback(
    bus: Bus,
    req: PlanRequested,
    record: PlanRecord,
    stopped: str | None,
    drafted: drafting.Drafted | None,
    agents: dict[str, AgentDoc],
    runtimes: set[str],
    templates: list[tuple[str, str]],
) -> PlanRecord:
    """The first template whose pattern finds the goal and that can run; else the plan fails, in words."""
    why = stopped or f"no valid workflow in {len(drafted.rounds) if drafted else 0} round(s)"
    notes: list[str] = []
    candidates = [req.template] if req.template else []
    candidates += [n for n in drafting.matching(req.goal, templates) if n != req.template]
    for name in candidates:
        version = await registry.get(bus, name)
        if version is None:
            notes.append(f"template {name!r} matches but is not a registered workflow")
            continue
        try:
            wf = registry.parse_version(version)
            problems = runtime_problems(wf, agents, runtimes, f"template {name!r}")
            check_inputs(wf, req.inputs, file=f"template {name!r}")
        except ValidationFailed as exc:
            problems = exc.problems
        if problems:
            notes.append("; ".join(problems))
            continue
        text = yaml.safe_dump(version.definition, sort_keys=False, allow_unicode=True, width=100)
        return msgspec.structs.replace(
            record,
            status="proposed",
            workflow=version.definition,
            workflow_yaml=text,
            fallback=name,
            template_version=version.version,
            error=f"proposed the template {name!r} instead: {why}",
        )
    words = [why]
    for number, r in enumerate(drafted.rounds if drafted else [], 1):
        if r.error:
            words.append(f"round {number}: {r.error}")
        elif r.errors:
            words.append(f"round {number}: " + "; ".join(r.errors))
    words.extend(notes)
    if not templates and not req.template:
        words.append("no planner.templates are configured to fall back on")
    elif not candidates:
        words.append("no template in planner.templates matches the goal")
    return msgspec.structs.replace(record, status="failed", error=". ".join(words))

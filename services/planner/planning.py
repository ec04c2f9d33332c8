"""Planning a run: parse the workflow, resolve its agents, validate everything, freeze the plan."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from shared.contract import RunPlanned, RunRejected, RunRequested
from shared.errors import ValidationFailed
from shared.workflow.loader import parse_workflow
from shared.workflow.model import AgentDoc
from shared.workflow.validate import check_inputs, plan_workflow, validate_agent, validate_workflow

AgentLoader = Callable[[Iterable[str]], Awaitable[dict[str, AgentDoc]]]


async def plan_run(request: RunRequested, load_agents: AgentLoader) -> RunPlanned | RunRejected:
    where = request.source or f"workflow {request.workflow!r}"
    try:
        workflow = parse_workflow(request.definition, where)
        agents = await load_agents({n.agent for n in workflow.spec.nodes})
        problems = validate_workflow(workflow, agents, file=where)
        for agent in agents.values():
            problems.extend(validate_agent(agent, f"registered agent {agent.metadata.name!r}"))
        if problems:
            raise ValidationFailed(problems)
        inputs = check_inputs(workflow, request.inputs, file=where)
    except ValidationFailed as exc:
        return RunRejected(run_id=request.run_id, workflow=request.workflow, errors=exc.problems)
    return RunPlanned(
        run_id=request.run_id,
        workflow=workflow.metadata.name,
        plan=plan_workflow(workflow, agents),
        inputs=inputs,
        trigger=request.trigger,
        retry_of=request.retry_of,
        requested_by=request.requested_by,
        labels=dict(workflow.metadata.labels),
        workspace=request.workspace,
        workflow_version=request.workflow_version,
        reuse={k: v for k, v in request.reuse.items() if k in {n.id for n in workflow.spec.nodes}},
    )

"""Planning a run: parse the workflow, resolve its agents, validate everything, freeze the plan."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from shared.contract.errors import ValidationFailed
from shared.contract.messages import RunPlanned, RunRejected, RunRequested
from shared.workflow.loader import parse_workflow
from shared.workflow.model import AgentDoc, WorkflowDoc
from shared.workflow.validate import check_inputs, plan_workflow, validate_agent, validate_workflow

AgentLoader = Callable[[Iterable[str]], Awaitable[dict[str, AgentDoc]]]


def runtime_problems(
    workflow: WorkflowDoc, agents: Mapping[str, AgentDoc], runtimes: set[str], where: str
) -> list[str]:
    """Agents the stack's executors cannot run: in containers or pods an agent needs an image, and
    in pods its command too (the executor cannot read an image's ENTRYPOINT there)."""
    if not runtimes or not runtimes <= {"docker", "kubernetes"}:
        return []  # no executor seen yet, or one that runs commands too: nothing to refuse here
    used = {n.agent for n in workflow.spec.nodes if n.agent in agents}
    problems = []
    imageless = sorted(used - {name for name, a in agents.items() if a.spec.image or a.spec.image_input})
    if imageless:
        names = ", ".join(repr(n) for n in imageless)
        how = "Docker containers" if runtimes == {"docker"} else "containers (Kubernetes pods)"
        problems.append(
            f"{where}: agent(s) {names} have no `image`, and this stack's executors run agents in {how}; "
            "give each an image (e.g. `image: flowyard/base:bookworm` for a Python command), "
            "or run the executors with `--runtime process` (development only: not a sandbox)"
        )
    if "kubernetes" in runtimes:
        commandless = sorted(
            used - set(imageless) - {name for name, a in agents.items() if a.spec.command or a.spec.command_input}
        )
        if commandless:
            names = ", ".join(repr(n) for n in commandless)
            problems.append(
                f"{where}: agent(s) {names} have no `command`, and this stack's executors run agents as "
                "Kubernetes pods, where an image's ENTRYPOINT cannot be read; set `command:` to what the "
                "image runs (its ENTRYPOINT and CMD)"
            )
    return problems


async def plan_run(
    request: RunRequested, load_agents: AgentLoader, runtimes: set[str] | None = None
) -> RunPlanned | RunRejected:
    where = request.source or f"workflow {request.workflow!r}"
    try:
        workflow = parse_workflow(request.definition, where)
        agents = await load_agents({n.agent for n in workflow.spec.nodes})
        problems = validate_workflow(workflow, agents, file=where)
        problems.extend(runtime_problems(workflow, agents, runtimes or set(), where))
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
        requested_at=request.requested_at,
        labels=dict(workflow.metadata.labels),
        workspace=request.workspace,
        workflow_version=request.workflow_version,
        reuse={k: v for k, v in request.reuse.items() if k in {n.id for n in workflow.spec.nodes}},
    )

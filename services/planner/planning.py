"""Planning a run: parse the workflow, resolve its agents, validate everything, freeze the plan."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from shared.contract.errors import ValidationFailed
from shared.contract.messages import RunPlanned, RunRejected, RunRequested
from shared.workflow.loader import parse_workflow
from shared.workflow.model import AgentDoc, WorkflowDoc
from shared.workflow.plan import node_agents
from shared.workflow.validate import check_inputs, plan_workflow, validate_agent, validate_workflow

# Names -> agents; None asks for every agent known (a `capability:` node chooses among them).
AgentLoader = Callable[[Iterable[str] | None], Awaitable[dict[str, AgentDoc]]]
SANDBOXES = ("docker", "kubernetes")


def runtime_problems(
    workflow: WorkflowDoc,
    agents: Mapping[str, AgentDoc],
    runtimes: set[str],
    where: str,
    priorities: Mapping[str, list[str]] | None = None,
) -> list[str]:
    """Agents the stack's executors cannot run: in containers or pods an agent needs an image, and
    in pods its command too (the executor cannot read an image's ENTRYPOINT there)."""
    used = {name for n in workflow.spec.nodes for name in node_agents(n, agents, priorities)}
    problems = []
    # An agent that acts without asking runs only where a container or pod holds it in. With no
    # executor seen yet the planner cannot know where it would run, so it refuses then too.
    unsandboxed = runtimes - set(SANDBOXES)
    if unsandboxed or not runtimes:
        autonomous = sorted(name for name in used if agents[name].spec.autonomous)
        if autonomous:
            names = ", ".join(repr(n) for n in autonomous)
            seen = f"this stack's executors run {', '.join(sorted(unsandboxed))}" if runtimes else "no executor is live"
            problems.append(
                f"{where}: agent(s) {names} are autonomous (spec.autonomous: true: they act without asking), and "
                f"{seen}; autonomous agents run only in a sandbox, on executors with runtime "
                f"{' or '.join(SANDBOXES)} (`flowyard up --runtime docker`)"
            )
    if not runtimes or not runtimes <= set(SANDBOXES):
        return problems  # no executor seen yet, or one that runs commands too: nothing more to refuse
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
    request: RunRequested,
    load_agents: AgentLoader,
    runtimes: set[str] | None = None,
    priorities: Mapping[str, list[str]] | None = None,
) -> RunPlanned | RunRejected:
    where = request.source or f"workflow {request.workflow!r}"
    try:
        workflow = parse_workflow(request.definition, where)
        nodes = workflow.spec.nodes
        wanted = None if any(n.capability for n in nodes) else {n.agent for n in nodes if n.agent}
        agents = await load_agents(wanted)
        problems = validate_workflow(workflow, agents, file=where, priorities=priorities)
        if not problems:
            problems.extend(runtime_problems(workflow, agents, runtimes or set(), where, priorities))
        used = {name for n in nodes for name in node_agents(n, agents, priorities)}
        for name in sorted(used):
            problems.extend(validate_agent(agents[name], f"registered agent {name!r}"))
        if problems:
            raise ValidationFailed(problems)
        inputs = check_inputs(workflow, request.inputs, file=where)
    except ValidationFailed as exc:
        return RunRejected(run_id=request.run_id, workflow=request.workflow, errors=exc.problems)
    return RunPlanned(
        run_id=request.run_id,
        workflow=workflow.metadata.name,
        plan=plan_workflow(workflow, agents, priorities),
        inputs=inputs,
        trigger=request.trigger,
        retry_of=request.retry_of,
        requested_by=request.requested_by,
        requested_at=request.requested_at,
        labels=dict(workflow.metadata.labels),
        workspace=request.workspace,
        workflow_version=request.workflow_version,
        plan_id=request.plan_id,
        reuse={k: v for k, v in request.reuse.items() if k in {n.id for n in workflow.spec.nodes}},
    )

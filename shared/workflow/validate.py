"""Everything checked before a run starts, and the plan a valid workflow turns into.

Each check names the file, line, node and field, and says how to fix the problem. All problems
are collected, not just the first, so one edit-validate cycle fixes them all.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from shared.contract.errors import ValidationFailed
from shared.formats.durations import parse_duration
from shared.formats.schemas import first_error, schema_problem
from shared.workflow import routing
from shared.workflow.expressions import ExpressionError, parse, references
from shared.workflow.loader import Located, line_of
from shared.workflow.model import (
    MIN_MEMORY,
    NAME_RE,
    NODE_ID_RE,
    RESERVED_NODE_KEYS,
    RESERVED_SPEC_KEYS,
    AgentDoc,
    ApprovalSpec,
    InputDef,
    RetrySpec,
    WorkflowDoc,
    memory_bytes,
)
from shared.workflow.plan import approval_policy, node_agents, plan_workflow, retry_policy, snapshot  # noqa: F401
from shared.workflow.templates import FOREACH_ROOTS, Ref, TemplateError, find_refs
from shared.workflow.triggers import validate_triggers

SECRET_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_BATCH = 1000  # foreach items per dispatch message: a batch is one message, run by one executor

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _hint(word: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean {match[0]!r}?" if match else ""


def type_matches(value: Any, type_name: str) -> bool:
    if isinstance(value, bool) and type_name in ("number", "integer"):
        return False
    return isinstance(value, _PY_TYPES[type_name])


def validate_agent(agent: AgentDoc, file: str = "<agent>") -> list[str]:
    name = agent.metadata.name
    where = f"{file}: agent {name!r}"
    spec = agent.spec
    problems: list[str] = []
    if not NAME_RE.match(name):
        problems.append(f"{where}: metadata.name must be lower-case letters, digits and '-' (at most 63)")
    if spec.command is not None and (not spec.command or not all(isinstance(c, str) and c for c in spec.command)):
        problems.append(f"{where}: spec.command must be a non-empty list of strings, e.g. [python3, /app/main.py]")
    if spec.command is None and spec.image is None and spec.command_input is None:
        problems.append(f"{where}: spec needs `image` (Docker runtime) or `command` (process runtime), or both")
    try:
        if parse_duration(spec.timeout) <= 0:
            problems.append(f"{where}: spec.timeout must be more than zero")
    except ValueError as exc:
        problems.append(f"{where}: spec.timeout: {exc}")
    for key in ("inputs", "outputs"):
        problem = schema_problem(getattr(spec, key))
        if problem:
            problems.append(f"{where}: spec.{key} is not a valid JSON Schema: {problem}")
    if spec.resources.memory is not None:
        try:
            if memory_bytes(spec.resources.memory) < MIN_MEMORY:
                problems.append(
                    f"{where}: spec.resources.memory {spec.resources.memory!r} is below 6Mi, the least Docker allows"
                )
        except ValueError as exc:
            problems.append(f"{where}: spec.resources.memory {exc}")
    if spec.resources.cpus is not None and spec.resources.cpus <= 0:
        problems.append(f"{where}: spec.resources.cpus must be more than zero")
    if spec.resources.pids is not None and spec.resources.pids < 1:
        problems.append(f"{where}: spec.resources.pids must be at least 1")
    for secret in spec.secrets:
        if not SECRET_RE.match(secret):
            problems.append(f"{where}: spec.secrets: {secret!r} must be UPPER_SNAKE_CASE (it becomes an env var)")
    for key in spec.env:
        if not ENV_RE.match(key):
            problems.append(f"{where}: spec.env: {key!r} is not a valid environment variable name")
    for key in ("command_input", "image_input"):
        field = getattr(spec, key)
        declared = (spec.inputs.get("properties") or {}) if isinstance(spec.inputs, dict) else {}
        if field is not None and field not in declared:
            problems.append(
                f"{where}: spec.{key} names input {field!r}, which spec.inputs does not declare; "
                f"add it under spec.inputs.properties"
            )
    problems.extend(routing.agent_problems(agent, where))
    return problems


def _upstream(needs: Mapping[str, list[str]], node: str) -> set[str]:
    seen: set[str] = set()
    stack = list(needs.get(node, []))
    while stack:
        n = stack.pop()
        if n not in seen and n in needs:
            seen.add(n)
            stack.extend(needs[n])
    return seen


def find_cycle(needs: Mapping[str, list[str]]) -> list[str] | None:
    """A cycle as a path ``[a, b, c, a]``, or None."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(needs, white)
    parent: dict[str, str] = {}
    for start in needs:
        if color[start] != white:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        color[start] = grey
        while stack:
            node, i = stack[-1]
            deps = [d for d in needs[node] if d in needs]
            if i < len(deps):
                stack[-1] = (node, i + 1)
                dep = deps[i]
                if color[dep] == grey:
                    cycle = [dep]
                    cur = node
                    while cur != dep:
                        cycle.append(cur)
                        cur = parent[cur]
                    cycle.append(dep)
                    return cycle[::-1]
                if color[dep] == white:
                    color[dep] = grey
                    parent[dep] = node
                    stack.append((dep, 0))
            else:
                color[node] = black
                stack.pop()
    return None


def validate_workflow(
    wf: WorkflowDoc,
    agents: Mapping[str, AgentDoc],
    *,
    raw: Located | None = None,
    file: str = "<workflow>",
    priorities: Mapping[str, list[str]] | None = None,
) -> list[str]:
    """Structure-level problems of a workflow whose documents already parsed."""
    problems: list[str] = []
    spec = wf.spec
    raw_spec = raw.get("spec") if raw else None
    raw_nodes = raw_spec.get("nodes") if isinstance(raw_spec, dict) else None

    def at(index: int | None = None, key: str | None = None) -> str:
        if index is None:
            line = line_of(raw_spec, key) if raw_spec is not None and key else line_of(raw)
        else:
            node_raw = raw_nodes[index] if raw_nodes and index < len(raw_nodes) else None
            line = (line_of(node_raw, key) if key else 0) or line_of(raw_nodes, index) if raw_nodes else 0
        return f"{file}:{line}" if line else file

    if not NAME_RE.match(wf.metadata.name):
        problems.append(f"{at()}: metadata.name {wf.metadata.name!r} must be lower-case letters, digits and '-'")
    for key in RESERVED_SPEC_KEYS:
        if getattr(spec, key) is not None:
            problems.append(
                f"{at(key=key)}: spec.{key} is reserved for a later release of flowyard and not "
                "supported yet; remove it"
            )
    if spec.timeout is not None:
        problems.extend(f"{at(key='timeout')}: spec.timeout: {p}" for p in _duration_problems(spec.timeout))
    raw_triggers = raw_spec.get("triggers") if isinstance(raw_spec, dict) else None

    def trigger_at(index: int) -> str:
        line = line_of(raw_triggers, index) if isinstance(raw_triggers, list) else 0
        return f"{file}:{line}" if line else at(key="triggers")

    problems.extend(validate_triggers(wf, trigger_at))
    if spec.budget is not None:
        if spec.budget.tokens is None and spec.budget.usd is None:
            problems.append(f"{at(key='budget')}: spec.budget: give tokens, usd or both (what the run may spend)")
        if spec.budget.tokens is not None and spec.budget.tokens < 1:
            problems.append(f"{at(key='budget')}: spec.budget.tokens must be at least 1")
        if spec.budget.usd is not None and spec.budget.usd <= 0:
            problems.append(f"{at(key='budget')}: spec.budget.usd must be more than zero")
    if spec.concurrency is not None and spec.concurrency < 1:
        problems.append(f"{at(key='concurrency')}: spec.concurrency must be at least 1 (runs at once)")
    if spec.defaults is not None:
        if spec.defaults.timeout is not None:
            problems.extend(
                f"{at(key='defaults')}: spec.defaults.timeout: {p}" for p in _duration_problems(spec.defaults.timeout)
            )
        if spec.defaults.retry is not None:
            problems.extend(
                f"{at(key='defaults')}: spec.defaults.retry: {p}" for p in _retry_problems(spec.defaults.retry)
            )
    for name, idef in spec.inputs.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", name):
            problems.append(f"{at(key='inputs')}: input {name!r}: names are letters, digits, '_' and '-'")
        if idef.default is not msgspec.UNSET and idef.default is not None and not type_matches(idef.default, idef.type):
            problems.append(
                f"{at(key='inputs')}: input {name!r}: default {idef.default!r} is not of type "
                f"{idef.type}; change the default or the type"
            )
    if not spec.nodes:
        problems.append(f"{at(key='nodes')}: spec.nodes is empty; a workflow needs at least one node")

    ids = [n.id for n in spec.nodes]
    seen: dict[str, int] = {}
    for i, node in enumerate(spec.nodes):
        if not NODE_ID_RE.match(node.id):
            problems.append(
                f"{at(i, 'id')}: node {node.id!r}: ids start with a letter and hold letters, digits, "
                "'_' and '-' (at most 63)"
            )
        if node.id in seen:
            problems.append(
                f"{at(i, 'id')}: node {node.id!r}: duplicate id (first used by node #{seen[node.id] + 1}); "
                "give every node its own id"
            )
        else:
            seen[node.id] = i
    needs = {n.id: list(n.needs) for n in spec.nodes}

    def upstream_of(node_id: str) -> set[str]:
        return _upstream(needs, node_id)

    for i, node in enumerate(spec.nodes):
        label = f"node {node.id!r}"
        for key in RESERVED_NODE_KEYS:
            if getattr(node, key) is not None:
                problems.append(
                    f"{at(i, key)}: {label}: `{key}` is reserved for a later release of flowyard and "
                    "not supported yet; remove it"
                )
        for dep in node.needs:
            if dep == node.id:
                problems.append(f"{at(i, 'needs')}: {label}: needs itself; remove {dep!r} from its needs")
            elif dep not in needs:
                problems.append(
                    f"{at(i, 'needs')}: {label}: needs unknown node {dep!r}.{_hint(dep, ids)} "
                    f"Known nodes: {', '.join(dict.fromkeys(ids))}"
                )
        if len(set(node.needs)) != len(node.needs):
            problems.append(f"{at(i, 'needs')}: {label}: lists the same node twice in needs")
        if node.timeout is not None:
            problems.extend(f"{at(i, 'timeout')}: {label}: timeout: {p}" for p in _duration_problems(node.timeout))
        if node.retry is not None:
            problems.extend(f"{at(i, 'retry')}: {label}: retry: {p}" for p in _retry_problems(node.retry))
        if node.approval is not None:
            problems.extend(f"{at(i, 'approval')}: {label}: approval: {p}" for p in _approval_problems(node.approval))
        if node.parallelism is not None:
            if node.foreach is None:
                problems.append(f"{at(i, 'parallelism')}: {label}: parallelism only applies with foreach")
            elif node.parallelism < 1:
                problems.append(f"{at(i, 'parallelism')}: {label}: parallelism must be at least 1")
        if node.batch is not None:
            if node.foreach is None:
                problems.append(f"{at(i, 'batch')}: {label}: batch only applies with foreach")
            elif not 1 <= node.batch <= MAX_BATCH:
                problems.append(
                    f"{at(i, 'batch')}: {label}: batch must be between 1 and {MAX_BATCH} items per message, "
                    f"got {node.batch}"
                )
        if node.foreach is not None:
            problems.extend(_check_foreach(node.foreach, f"{at(i, 'foreach')}: {label}: foreach"))
            problems.extend(
                _check_refs(
                    node.foreach, spec.inputs, ids, upstream_of(node.id), f"{at(i, 'foreach')}: {label}: foreach"
                )
            )
        if node.when is not None:
            where = f"{at(i, 'when')}: {label}: when"
            try:
                tree = parse(node.when)
            except ExpressionError as exc:
                problems.append(f"{where}: {exc}")
            else:
                problems.extend(
                    _check_ref_list(list(references(tree, node.when)), spec.inputs, ids, upstream_of(node.id), where)
                )
        runners: list[AgentDoc] = []
        if (node.agent is None) == (node.capability is None):
            problems.append(
                f"{at(i)}: {label}: name exactly one of `agent:` (the agent to run) or `capability:` "
                "(any agent offering it, e.g. capability: code_fixes)"
            )
        elif node.capability is not None:
            found = routing.problems(node.capability, agents, priorities, f"{at(i, 'capability')}: {label}")
            problems.extend(found)
            if not found:
                runners = [agents[n] for n in routing.candidates(node.capability, agents, priorities)]
        elif (agent := agents.get(node.agent or "")) is None:
            known = sorted(agents)
            listing = f" Registered agents: {', '.join(known)}." if known else " No agents are registered."
            problems.append(
                f"{at(i, 'agent')}: {label}: unknown agent {node.agent!r}.{_hint(node.agent or '', known)}"
                f"{listing} Define it with `kind: Agent` in this file or register it first"
            )
        else:
            runners = [agent]
        upstream = _upstream(needs, node.id)
        problems.extend(
            _check_refs(
                node.with_,
                spec.inputs,
                ids,
                upstream,
                f"{at(i, 'with')}: {label}: with",
                foreach=node.foreach is not None,
            )
        )
        for runner in runners:  # a capability's every candidate must accept the input
            problems.extend(_check_with_schema(node.with_, runner, f"{at(i, 'with')}: {label}: with"))
    cycle = find_cycle(needs)
    if cycle:
        problems.append(
            f"{at(key='nodes')}: the nodes form a cycle: {' -> '.join(cycle)} (each needs the next); "
            "remove one of these needs to break it"
        )
    problems.extend(_check_refs(spec.outputs, spec.inputs, ids, set(ids), f"{at(key='outputs')}: spec.outputs"))
    return problems


def _check_refs(
    value: Any,
    inputs: Mapping[str, InputDef],
    ids: list[str],
    upstream: set[str],
    where: str,
    *,
    foreach: bool = False,
) -> list[str]:
    problems: list[str] = []
    refs: list[Ref] = []
    for leaf in _strings(value):
        try:
            refs.extend(find_refs(leaf))
        except TemplateError as exc:
            problems.append(f"{where}: {exc}")
    return problems + _check_ref_list(refs, inputs, ids, upstream, where, foreach=foreach)


def _check_ref_list(
    refs: list[Ref],
    inputs: Mapping[str, InputDef],
    ids: list[str],
    upstream: set[str],
    where: str,
    *,
    foreach: bool = False,
) -> list[str]:
    problems: list[str] = []
    for ref in refs:
        if ref.root in FOREACH_ROOTS and not foreach:
            problems.append(f"{where}: {ref.text}: `{ref.root}` only exists in a node with foreach")
        elif ref.root == "inputs":
            if not ref.path:
                problems.append(f"{where}: {ref.text}: name the input, e.g. {{{{ inputs.NAME }}}}")
            elif ref.path[0] not in inputs:
                known = list(inputs)
                problems.append(
                    f"{where}: {ref.text}: unknown input {ref.path[0]!r}.{_hint(str(ref.path[0]), known)} "
                    f"Declare it under spec.inputs (declared: {', '.join(known) or 'none'})"
                )
        elif ref.root == "nodes":
            node = ref.node
            if node is None:
                problems.append(f"{where}: {ref.text}: name the node, e.g. {{{{ nodes.ID.output.FIELD }}}}")
            elif node not in ids:
                problems.append(f"{where}: {ref.text}: unknown node {node!r}.{_hint(node, ids)}")
            elif node not in upstream:
                problems.append(
                    f"{where}: {ref.text}: node {node!r} is not upstream of this node, so its output "
                    f"is not ready yet; add {node!r} to needs"
                )
            elif (
                len(ref.path) < 2
                or ref.path[1] not in ("output", "status")
                or (ref.path[1] == "status" and len(ref.path) > 2)
            ):
                problems.append(
                    f"{where}: {ref.text}: use nodes.{node}.output (and fields below it) or nodes.{node}.status"
                )
    return problems


def _check_foreach(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        return []
    text = value.strip()
    if not (text.startswith("{{") and text.endswith("}}") and text.count("{{") == 1):
        return [
            f'{where}: write one template that yields a list, e.g. "{{{{ nodes.ID.output.items }}}}", or a YAML list'
        ]
    return []


def _duration_problems(value: str) -> list[str]:
    try:
        if parse_duration(value) <= 0:
            return ["must be more than zero"]
    except ValueError as exc:
        return [str(exc)]
    return []


def _approval_problems(spec: ApprovalSpec) -> list[str]:
    problems = _duration_problems(spec.expires_in)
    if spec.min_approvals < 1:
        problems.append("min_approvals must be at least 1")
    people = [a for a in spec.approvers if not a.startswith("group:")]
    if spec.approvers and len(people) == len(spec.approvers) and spec.min_approvals > len(people):
        problems.append(f"min_approvals is {spec.min_approvals} but only {len(people)} approver(s) are named")
    for a in spec.approvers:
        if not a or (a.startswith("group:") and len(a) == len("group:")):
            problems.append(f"approver {a!r}: write a user name or group:NAME")
    return problems


def _retry_problems(retry: RetrySpec) -> list[str]:
    problems = []
    if not 1 <= retry.attempts <= 100:
        problems.append(f"attempts is {retry.attempts}; it counts every try, from 1 (no retry) to 100")
    for name in ("backoff", "max_backoff"):
        try:
            parse_duration(getattr(retry, name))
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    if retry.factor < 1:
        problems.append("factor must be at least 1 (each wait at least as long as the one before)")
    return problems


def _check_with_schema(with_: Mapping[str, Any], agent: AgentDoc, where: str) -> list[str]:
    schema = agent.spec.inputs
    if not schema or schema_problem(schema):
        return []  # an invalid schema is reported with the agent itself
    problems: list[str] = []
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    for req in (r for r in required if isinstance(r, str)):
        if req not in with_:
            problems.append(f"{where}: agent {agent.metadata.name!r} requires input {req!r}; add `{req}:` under with")
    if schema.get("additionalProperties") is False:
        for key in with_:
            if key not in props:
                problems.append(
                    f"{where}: agent {agent.metadata.name!r} takes no input {key!r}.{_hint(key, list(props))}"
                    f" It takes: {', '.join(props) or 'nothing'}"
                )
    for key, value in with_.items():
        if key not in props or _has_template(value) or not isinstance(props[key], dict):
            continue
        error = first_error(props[key], value)
        if error:
            problems.append(f"{where}.{key}: {error[1]} (agent {agent.metadata.name!r} input schema)")
    return problems


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    return False


def check_inputs(wf: WorkflowDoc, given: Mapping[str, Any], *, file: str = "<workflow>") -> dict[str, Any]:
    """The run's inputs with defaults applied; raises ValidationFailed naming every bad one."""
    problems: list[str] = []
    declared = wf.spec.inputs
    resolved: dict[str, Any] = {}
    for name in given:
        if name not in declared:
            problems.append(
                f"{file}: input {name!r} is not declared by workflow {wf.metadata.name!r}."
                f"{_hint(name, list(declared))} Declared inputs: {', '.join(declared) or 'none'}"
            )
    for name, idef in declared.items():
        if name in given:
            value = given[name]
            if value is not None and not type_matches(value, idef.type):
                problems.append(
                    f"{file}: input {name!r} must be of type {idef.type}, got {value!r}; "
                    f"pass it as -i {name}=<{idef.type}>"
                )
            resolved[name] = value
        elif idef.default is not msgspec.UNSET:
            resolved[name] = idef.default
        elif idef.is_required:
            problems.append(
                f"{file}: input {name!r} is required; pass it with -i {name}=VALUE"
                + (f" ({idef.description})" if idef.description else "")
            )
        else:
            resolved[name] = None
    if problems:
        raise ValidationFailed(problems)
    return resolved

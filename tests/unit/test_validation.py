"""Validation: every bad workflow is caught before it runs, with the file, line, node and fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from services.cli.inputs import load_and_check, parse_inputs
from shared.contract.errors import ValidationFailed
from shared.workflow import check_inputs, load_file, plan_workflow

AGENTS = """\
apiVersion: flowyard/v1
kind: Agent
metadata: {name: echo}
spec:
  command: [cat]
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: strict}
spec:
  command: [cat]
  inputs:
    type: object
    required: [count]
    additionalProperties: false
    properties:
      count: {type: integer, minimum: 1}
      label: {type: string}
---
"""


def write(tmp_path: Path, body: str, agents: bool = True) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text((AGENTS if agents else "") + textwrap.dedent(body))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        load_and_check(path)
    return info.value.problems


def workflow(nodes: str, extra: str = "") -> str:
    return (
        "apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {name: wf}\nspec:\n"
        + textwrap.indent(textwrap.dedent(extra), "  ")
        + "  nodes:\n"
        + textwrap.indent(textwrap.dedent(nodes), "    ")
    )


def test_a_valid_workflow_plans(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        workflow(
            """\
            - id: a
              agent: echo
              with: {x: "{{ inputs.name }}"}
            - id: b
              agent: strict
              needs: [a]
              with: {count: "{{ nodes.a.output.n }}"}
            """,
            "inputs:\n  name: {type: string, default: world}\noutputs:\n  final: '{{ nodes.b.output }}'\n",
        ),
    )
    bundle = load_and_check(path)
    wf = bundle.workflow()
    plan = plan_workflow(wf, bundle.agents)
    assert [n.id for n in plan.nodes] == ["a", "b"]
    assert plan.nodes[1].needs == ["a"]
    assert plan.nodes[0].agent.command == ["cat"]
    assert check_inputs(wf, {}) == {"name": "world"}


def test_duplicate_ids(tmp_path: Path) -> None:
    found = problems(write(tmp_path, workflow("- {id: a, agent: echo}\n- {id: a, agent: echo}\n")))
    assert any("node 'a': duplicate id" in p and "wf.yaml:" in p for p in found)


def test_unknown_needs_with_did_you_mean(tmp_path: Path) -> None:
    found = problems(
        write(tmp_path, workflow("- {id: build, agent: echo}\n- {id: test, agent: echo, needs: [biuld]}\n"))
    )
    assert any("node 'test'" in p and "unknown node 'biuld'" in p and "Did you mean 'build'" in p for p in found)


def test_cycles_are_named(tmp_path: Path) -> None:
    nodes = (
        "- {id: a, agent: echo, needs: [c]}\n- {id: b, agent: echo, needs: [a]}\n- {id: c, agent: echo, needs: [b]}\n"
    )
    found = problems(write(tmp_path, workflow(nodes)))
    cycle = [p for p in found if "cycle" in p]
    assert cycle and "a -> c -> b -> a (each needs the next)" in cycle[0]


def test_self_need(tmp_path: Path) -> None:
    found = problems(write(tmp_path, workflow("- {id: a, agent: echo, needs: [a]}\n")))
    assert any("needs itself" in p for p in found)


def test_unknown_agent(tmp_path: Path) -> None:
    found = problems(write(tmp_path, workflow("- {id: a, agent: ecko}\n")))
    assert any("unknown agent 'ecko'" in p and "Did you mean 'echo'" in p and "node 'a'" in p for p in found)


def test_template_to_unknown_input(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        workflow("- {id: a, agent: echo, with: {x: '{{ inputs.nmae }}'}}\n", "inputs:\n  name: {type: string}\n"),
    )
    found = problems(path)
    assert any("unknown input 'nmae'" in p and "Did you mean 'name'" in p for p in found)


def test_template_to_node_that_is_not_upstream(tmp_path: Path) -> None:
    nodes = "- {id: a, agent: echo}\n- {id: b, agent: echo, with: {x: '{{ nodes.a.output.v }}'}}\n"
    found = problems(write(tmp_path, workflow(nodes)))
    assert any("node 'a' is not upstream" in p and "add 'a' to needs" in p for p in found)


def test_template_to_unknown_node_and_bad_syntax(tmp_path: Path) -> None:
    nodes = "- {id: a, agent: echo, with: {x: '{{ nodes.zz.output }}', y: '{{ inputs.q + 1 }}'}}\n"
    found = problems(write(tmp_path, workflow(nodes, "inputs:\n  q: {type: integer}\n")))
    assert any("unknown node 'zz'" in p for p in found)
    assert any("no expressions" in p for p in found)


def test_outputs_may_reference_any_node_but_not_unknown_ones(tmp_path: Path) -> None:
    path = write(tmp_path, workflow("- {id: a, agent: echo}\n", "outputs:\n  x: '{{ nodes.b.output }}'\n"))
    assert any("spec.outputs" in p and "unknown node 'b'" in p for p in problems(path))


def test_unknown_keys_with_line_and_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, workflow("- id: a\n  agent: echo\n  nedds: []\n"))
    found = problems(path)
    line = (AGENTS + workflow("- id: a\n  agent: echo\n  nedds: []\n")).splitlines().index("      nedds: []") + 1
    assert found == [
        f"{path}:{line}: node 'a': unknown key 'nedds'. Did you mean 'needs'? " + found[0].split("? ", 1)[1]
    ]


def test_unknown_spec_key(tmp_path: Path) -> None:
    path = write(tmp_path, workflow("- {id: a, agent: echo}\n", "inptus: {}\n"))
    assert any("unknown key 'inptus'" in p and "Did you mean 'inputs'" in p for p in problems(path))


def test_wrong_types_in_the_document(tmp_path: Path) -> None:
    path = write(tmp_path, workflow("- {id: a, agent: echo, needs: b}\n"))
    assert any("node 'a'.needs" in p and "expected `array`" in p for p in problems(path))


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: flowyard/v1\nkind: Workflow\nmetadata:\n  name: x\n spec: [\n")
    with pytest.raises(ValidationFailed) as info:
        load_file(path)
    assert info.value.problems[0].startswith(f"{path}:5: malformed YAML")


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("apiVersion: flowyard/v1\nkind: Workflow\nkind: Agent\n")
    with pytest.raises(ValidationFailed, match="duplicate key 'kind'"):
        load_file(path)


def test_wrong_api_version_and_kind(tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text("apiVersion: flowyard/v2\nkind: Workflow\n---\napiVersion: flowyard/v1\nkind: Workflo\n")
    with pytest.raises(ValidationFailed) as info:
        load_file(path)
    text = "\n".join(info.value.problems)
    assert "write `apiVersion: flowyard/v1`" in text
    assert "did you mean 'Workflow'" in text


def test_missing_file_and_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="no such file"):
        load_file(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValidationFailed, match="not a mapping"):
        load_file(tmp_path / "list.yaml")


def test_triggers_on_flowyard_subjects_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, workflow("- {id: a, agent: echo}\n", "triggers: [{nats: {subject: fy.alerts}}]\n"))
    assert any("trigger #1 (nats)" in p and "belong to flowyard" in p for p in problems(path))


def test_agent_input_schema_is_checked_before_the_run(tmp_path: Path) -> None:
    nodes = "- {id: a, agent: strict, with: {count: 0, colour: red}}\n- {id: b, agent: strict, with: {label: x}}\n"
    found = problems(write(tmp_path, workflow(nodes)))
    assert any("node 'a'" in p and "with.count" in p and "minimum" in p for p in found)
    assert any("node 'a'" in p and "takes no input 'colour'" in p for p in found)
    assert any("node 'b'" in p and "requires input 'count'" in p for p in found)


def test_bad_agent_definitions(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: Bad_Name}\nspec:\n  command: []\n  timeout: soon\n"
        "  inputs: {type: 12}\n  secrets: [lower]\n  resources: {memory: lots}\n"
    )
    found = problems(path)
    text = "\n".join(found)
    for expected in (
        "metadata.name",
        "spec.command",
        "spec.timeout",
        "not a valid JSON Schema",
        "UPPER_SNAKE_CASE",
        "memory",
    ):
        assert expected in text


def test_required_inputs_and_types() -> None:
    from shared.workflow.loader import load_bundle

    bundle = load_bundle(
        AGENTS
        + workflow(
            "- {id: a, agent: echo}\n",
            "inputs:\n  n: {type: integer}\n  s: {type: string, default: x}\n  o: {type: string, required: false}\n",
        )
    )
    wf = bundle.workflow()
    with pytest.raises(ValidationFailed, match="input 'n' is required"):
        check_inputs(wf, {})
    with pytest.raises(ValidationFailed, match="must be of type integer"):
        check_inputs(wf, {"n": "three"})
    with pytest.raises(ValidationFailed, match="must be of type integer"):
        check_inputs(wf, {"n": True})
    with pytest.raises(ValidationFailed, match="not declared.*Did you mean 'n'"):
        check_inputs(wf, {"n": 1, "nn": 2})
    assert check_inputs(wf, {"n": 1}) == {"n": 1, "s": "x", "o": None}


def test_cli_inputs_parse_as_json_else_string() -> None:
    assert parse_inputs(["a=1", "b=true", 'c={"x": [1]}', "d=hello world", "e=", "f=a=b"]) == {
        "a": 1,
        "b": True,
        "c": {"x": [1]},
        "d": "hello world",
        "e": "",
        "f": "a=b",
    }
    with pytest.raises(ValidationFailed, match="KEY=VALUE"):
        parse_inputs(["novalue"])


def test_string_inputs_keep_the_text_as_typed() -> None:
    from shared.workflow.loader import load_bundle

    wf = load_bundle(AGENTS + workflow("- {id: a, agent: echo}\n", "inputs:\n  version: {type: string}\n")).workflow()
    assert parse_inputs(["version=1.10"], wf) == {"version": "1.10"}


def test_conditions_fan_out_and_retry_are_checked(tmp_path: Path) -> None:
    nodes = """\
        - {id: a, agent: echo}
        - {id: b, agent: echo, needs: [a], when: "nodes.a.output.n + 1 > 2"}
        - {id: c, agent: echo, needs: [a], when: "nodes.zz.output.ok"}
        - {id: d, agent: echo, foreach: "not a template"}
        - {id: e, agent: echo, parallelism: 2}
        - {id: f, agent: echo, with: {h: "{{ item }}"}}
        - {id: g, agent: echo, retry: {attempts: 0, backoff: soon, factor: 0.5}}
        - {id: h, agent: echo, when: "nodes.a.output.ok"}
        - {id: i, agent: echo, batch: 4}
        - {id: j, agent: echo, foreach: [1, 2], batch: 0}
        """
    found = "\n".join(problems(write(tmp_path, workflow(nodes, "timeout: forever\nconcurrency: 0\n"))))
    assert "node 'b': when: 'nodes.a.output.n + 1 > 2': BinOp is not allowed" in found
    assert "node 'c': when: nodes.zz.output.ok: unknown node 'zz'" in found
    assert "node 'd': foreach: write one template that yields a list" in found
    assert "node 'e': parallelism only applies with foreach" in found
    assert "node 'i': batch only applies with foreach" in found
    assert "node 'j': batch must be between 1 and 1000 items per message, got 0" in found
    assert "node 'f': with: {{ item }}: `item` only exists in a node with foreach" in found
    assert "node 'g': retry: attempts is 0" in found and "backoff: invalid duration 'soon'" in found
    assert "factor must be at least 1" in found
    assert "node 'h': when: nodes.a.output.ok: node 'a' is not upstream" in found
    assert "spec.timeout: invalid duration 'forever'" in found
    assert "spec.concurrency must be at least 1" in found


def test_a_valid_fan_out_with_retries_and_defaults_plans(tmp_path: Path) -> None:
    nodes = """\
        - {id: a, agent: echo}
        - id: b
          agent: echo
          needs: [a]
          when: "nodes.a.status == 'succeeded' and len(nodes.a.output.hosts) > 0"
          foreach: "{{ nodes.a.output.hosts }}"
          parallelism: 3
          continue_on_failure: true
          with: {host: "{{ item.name }}", n: "{{ index }}"}
        - {id: c, agent: echo, needs: [b], with: {seen: "{{ nodes.b.status }}"}, retry: {attempts: 4, backoff: 1s}}
        """
    extra = "defaults:\n  retry: {attempts: 2, backoff: 500ms, jitter: false}\n  timeout: 45s\ntimeout: 10m\nconcurrency: 2\n"
    bundle = load_and_check(write(tmp_path, workflow(nodes, extra)))
    plan = plan_workflow(bundle.workflow(), bundle.agents)
    a, b, c = plan.nodes
    assert (a.retry.attempts, a.retry.backoff_s, a.retry.jitter, a.timeout_s) == (2, 0.5, False, 45)
    assert (b.foreach, b.parallelism, b.continue_on_failure) == ("{{ nodes.a.output.hosts }}", 3, True)
    assert (c.retry.attempts, c.retry.backoff_s) == (4, 1)
    assert (plan.timeout_s, plan.concurrency) == (600, 2)


def test_every_shipped_example_and_agent_validates() -> None:
    """examples/*.yaml against the built-in agents, and agents/*/agent.yaml themselves."""
    from pathlib import Path

    from services.cli.inputs import load_and_check
    from shared.workflow.builtin import agents_dir, builtin_agents
    from shared.workflow.validate import validate_agent

    root = Path(__file__).resolve().parents[2]
    for example in sorted((root / "examples").glob("*.yaml")):
        load_and_check(example)  # raises ValidationFailed naming the problem
    shipped = builtin_agents()
    assert set(shipped) == {
        "compliance-checker",
        "code-reviewer",
        "patcher",
        "shell",
        "llm",
        "claude-code",
        "codex",
        "opencode",
        "gemini-cli",
        "security-scanner",
    }
    for name, agent in shipped.items():
        assert validate_agent(agent, str(agents_dir() / name)) == []
        # Agents written in flowyard's own code (llm) run in the service image, built by `images build`.
        own = (agent.spec.image or "").startswith("flowyard/flowyard:")
        assert own or (agents_dir() / name / "Dockerfile").is_file()
        if own:  # the service image of this version, or the agent would run on a stale one
            from services.cli.agentbuild import service_tag

            assert agent.spec.image == service_tag(), name
    assert {a.metadata.name for a in shipped.values() if a.spec.risk == "approval_required"} == {"patcher", "shell"}


@pytest.mark.parametrize(
    ("memory", "problem"),
    [
        ("lots", "spec.resources.memory 'lots': write it like 256Mi, 512m or 1g"),
        ("1k", "spec.resources.memory '1k' is below 6Mi, the least Docker allows"),
        ("256Mi", None),
        ("1.5GiB", None),
        ("8388608", None),
    ],
)
def test_memory_limits(tmp_path: Path, memory: str, problem: str | None) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"apiVersion: flowyard/v1\nkind: Agent\nmetadata: {{name: a}}\nspec:\n  image: x\n  resources: {{memory: {memory!r}}}\n"
    )
    if problem is None:
        load_and_check(path)
    else:
        assert any(problem in p for p in problems(path)), problems(path)


def test_runtime_problems_name_what_each_runtime_needs(tmp_path: Path) -> None:
    from services.planner.planning import runtime_problems

    body = AGENTS + (
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: boxed}\nspec:\n  image: x/boxed:1\n---\n"
        + workflow("- {id: a, agent: echo}\n- {id: b, agent: boxed}\n")
    )
    path = tmp_path / "wf.yaml"
    path.write_text(body)
    bundle = load_file(path)
    wf = bundle.workflow(None)
    agents = bundle.agents
    assert runtime_problems(wf, agents, {"process"}, "wf.yaml") == []
    assert runtime_problems(wf, agents, {"docker", "process"}, "wf.yaml") == []
    (docker,) = runtime_problems(wf, agents, {"docker"}, "wf.yaml")
    assert "'echo' have no `image`" in docker and "'boxed'" not in docker
    imageless, commandless = runtime_problems(wf, agents, {"kubernetes"}, "wf.yaml")
    assert "'echo'" in imageless and "Kubernetes pods" in imageless
    assert "'boxed' have no `command`" in commandless and "ENTRYPOINT" in commandless

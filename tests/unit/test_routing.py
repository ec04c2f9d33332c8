"""Capability routing: which candidates a node gets (validation, planning) and how an attempt
goes through them (the executor's handlers, real child processes, no servers)."""

from __future__ import annotations

import sys
import tempfile
import textwrap

from services.executor import gates, handlers
from services.executor.breaker import Breaker
from services.executor.runtimes import ProcessRuntime
from services.planner.planning import plan_run
from shared.config.llm import LlmConfig
from shared.config.secrets import SecretSource
from shared.contract.errors import ValidationFailed
from shared.contract.messages import (
    AgentSnapshot,
    Event,
    LlmUse,
    RunPlanned,
    RunRejected,
    RunRequested,
    TaskDispatched,
    TaskFailed,
    TaskSucceeded,
)
from shared.workflow import routing
from shared.workflow.check import check_bundle
from shared.workflow.loader import load_bundle

AGENTS = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: fixer-a}
spec: {command: ['true'], capabilities: [code_fixes], inputs: {type: object, required: [prompt], properties: {prompt: {type: string}}}}
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: fixer-b}
spec: {command: ['true'], capabilities: [code_fixes, pr_review], risk: approval_required}
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: roamer}
spec: {command: ['true'], capabilities: [code_fixes], autonomous: true}
"""


def workflow(nodes: str, extra: str = "") -> str:
    return (
        AGENTS + f"---\napiVersion: flowyard/v1\nkind: Workflow\nmetadata: {{name: w}}\nspec:\n{extra}  nodes:\n{nodes}"
    )


def problems(text: str, priorities: dict[str, list[str]] | None = None) -> list[str]:
    try:
        check_bundle(load_bundle(text, "w.yaml"), {}, priorities)
    except ValidationFailed as exc:
        return exc.problems
    return []


def test_candidates_follow_priorities_else_names() -> None:
    agents = load_bundle(workflow("    - {id: a, agent: fixer-a}\n"), "w.yaml").agents
    assert routing.candidates("code_fixes", agents) == ["fixer-a", "fixer-b", "roamer"]
    assert routing.candidates("code_fixes", agents, {"code_fixes": ["roamer", "ghost", "fixer-a"]}) == [
        "roamer",
        "fixer-a",
    ]
    assert routing.on_offer(agents)["pr_review"] == ["fixer-b"]


def test_an_unknown_capability_names_it_and_lists_those_on_offer() -> None:
    found = problems(workflow("    - {id: a, capability: code_fix, with: {prompt: x}}\n"))
    assert len(found) == 1
    assert "no agent offers capability 'code_fix'. Did you mean 'code_fixes'?" in found[0]
    assert "Capabilities on offer: classify, code_fixes, pr_review, security_scan, summarise, triage." in found[0]


def test_exactly_one_of_agent_and_capability() -> None:
    both = problems(workflow("    - {id: a, agent: fixer-a, capability: code_fixes}\n"))
    neither = problems(workflow("    - {id: a}\n"))
    assert any("name exactly one of `agent:`" in p for p in both)
    assert any("name exactly one of `agent:`" in p for p in neither)


def test_every_candidate_must_accept_the_input() -> None:
    found = problems(workflow("    - {id: a, capability: code_fixes, with: {task: x}}\n"))
    assert any("agent 'fixer-a' requires input 'prompt'" in p for p in found)


def test_priorities_naming_no_offering_agent_are_an_error() -> None:
    found = problems(workflow("    - {id: a, capability: pr_review}\n"), {"pr_review": ["fixer-a"]})
    assert any("agents.priorities.pr_review lists fixer-a, but none of them offers 'pr_review'" in p for p in found)


def test_bad_agent_routing_keys() -> None:
    text = (
        "apiVersion: flowyard/v1\nkind: Agent\nmetadata: {name: x}\nspec:\n  command: ['true']\n"
        "  capabilities: [Code-Fixes]\n  llm: {kinds: [bard]}\n  network: {allow: ['api.example.com', 'ok.example.com:443']}\n"
    )
    found = problems(text)
    assert any("'Code-Fixes' must be lower-case" in p for p in found)
    assert any("'bard' is not a provider kind" in p for p in found)
    assert any("'api.example.com' must be host:port" in p for p in found)
    assert not any("ok.example.com" in p for p in found)


async def _plan(
    text: str, runtimes: set[str], priorities: dict[str, list[str]] | None = None
) -> RunPlanned | RunRejected:
    bundle = load_bundle(text, "w.yaml")

    async def load(names: object) -> dict:
        return dict(bundle.agents)

    request = RunRequested(run_id="r1", workflow="w", definition=_doc(text))
    return await plan_run(request, load, runtimes, priorities)


def _doc(text: str) -> dict:
    import yaml

    return next(d for d in yaml.safe_load_all(text) if d["kind"] == "Workflow")


async def test_the_plan_carries_candidates_and_the_approval_any_one_needs() -> None:
    planned = await _plan(
        workflow("    - {id: a, capability: code_fixes, with: {prompt: x}}\n"),
        {"process"},
        {"code_fixes": ["fixer-a", "fixer-b"]},
    )
    assert isinstance(planned, RunPlanned), planned
    node = planned.plan.nodes[0]
    assert node.capability == "code_fixes" and [c.name for c in node.candidates] == ["fixer-a", "fixer-b"]
    assert node.agent.name == "fixer-a"
    assert node.approval is not None and "fixer-b" in node.approval.reason  # risk of any candidate


async def test_autonomous_agents_are_refused_off_a_sandbox() -> None:
    text = workflow("    - {id: a, agent: roamer}\n")
    refused = await _plan(text, {"process"})
    assert isinstance(refused, RunRejected)
    assert "agent(s) 'roamer' are autonomous" in refused.errors[0] and "docker or kubernetes" in refused.errors[0]
    assert isinstance(
        await _plan(
            text.replace(
                "command: ['true'], capabilities: [code_fixes], autonomous",
                "image: x, command: ['true'], capabilities: [code_fixes], autonomous",
            ),
            {"docker"},
        ),
        RunPlanned,
    )


# --- the executor: an attempt through its candidates ----------------------------------------


def agent(name: str, code: str, **kw: object) -> AgentSnapshot:
    return AgentSnapshot(name=name, command=[sys.executable, "-c", textwrap.dedent(code)], **kw)  # type: ignore[arg-type]


RATE_LIMITED = """
import json, sys
print(json.dumps({"error": {"reason": "rate_limited", "message": "429 from the provider"}, "usage": {"input_tokens": 3, "output_tokens": 0}}))
sys.exit(1)
"""
REFUSES = """
import json, sys
print(json.dumps({"error": {"reason": "bad_answer", "message": "the model refused"}}))
sys.exit(1)
"""
WORKS = 'import json; print(json.dumps({"done": True, "model": "m", "usage": {"input_tokens": 5, "output_tokens": 2}, "cost_usd": 0.01}))'


async def attempt(
    *candidates: AgentSnapshot, prepare: handlers.Prepare | None = None
) -> tuple[handlers.Judgement, Event]:
    sent: list[Event] = []

    async def publish(event: Event, kind: str) -> None:
        sent.append(event)

    task = TaskDispatched(
        run_id="r1",
        workflow="w",
        node_id="n",
        attempt=1,
        agent=candidates[0],
        candidates=list(candidates),
        capability="code_fixes",
        timeout_s=20,
    )
    runtime = ProcessRuntime(max_output_bytes=4096, log_tail_bytes=512, state_dir=tempfile.mkdtemp(prefix="fy-spool-"))
    verdict = await handlers.execute(
        task,
        runtime=runtime,
        publish=publish,
        executor_id="x",
        log_tail_bytes=512,
        secrets=SecretSource(None, {}),
        prepare=prepare,
    )
    await runtime.close()
    return verdict, sent[-1]


async def test_a_routable_failure_hands_over_to_the_next_candidate() -> None:
    llm = LlmUse()
    verdict, event = await attempt(agent("a", RATE_LIMITED, llm=llm), agent("b", WORKS, llm=llm))
    assert verdict.ok and isinstance(event, TaskSucceeded)
    assert event.agent == "b"
    assert [(r.agent, r.outcome) for r in event.routing] == [("a", "failed"), ("b", "chosen")]
    assert event.routing[0].reason.startswith("rate_limited: exited with code 1: rate_limited: 429")
    assert event.usage is not None and (event.usage.input_tokens, event.usage.output_tokens) == (8, 2)


async def test_an_agents_own_answer_is_not_routed() -> None:
    verdict, event = await attempt(agent("a", REFUSES), agent("b", WORKS))
    assert not verdict.ok and isinstance(event, TaskFailed)
    assert event.agent == "a" and event.cause == "bad_answer"
    assert [(r.agent, r.outcome) for r in event.routing] == [("a", "chosen")]


async def test_an_open_breaker_is_skipped() -> None:
    from shared.config.settings import Config

    breaker = Breaker(threshold=1, cooldown=60)
    breaker.record("img-a", infrastructure_failure=True, error="no such image")
    gate = gates.Gates(Config(), SecretSource(None, {}), breaker, None)
    verdict, event = await attempt(
        agent("a", WORKS, image="img-a"), agent("b", WORKS, image="img-b"), prepare=gate.prepare
    )
    assert verdict.ok and isinstance(event, TaskSucceeded) and event.agent == "b"
    assert event.routing[0].outcome == "skipped" and event.routing[0].reason.startswith("breaker_open: ")


async def test_every_candidate_unusable_names_each() -> None:
    verdict, event = await attempt(
        agent("a", WORKS, secrets=["NOPE_TOKEN"]), agent("b", RATE_LIMITED), agent("c", "raise SystemExit(0)")
    )
    assert not verdict.ok and isinstance(event, TaskFailed)
    # c's exit without output is its own failure (not routable): it was chosen and it failed.
    assert [(r.agent, r.outcome) for r in event.routing] == [("a", "skipped"), ("b", "failed"), ("c", "chosen")]
    verdict, event = await attempt(agent("a", WORKS, secrets=["NOPE_TOKEN"]), agent("b", RATE_LIMITED))
    assert isinstance(event, TaskFailed) and verdict.unroutable
    assert (
        "no agent offering capability 'code_fixes' could do it: a skipped (secrets_missing: secret(s) NOPE_TOKEN"
        in event.error
    )
    assert "b failed (rate_limited:" in event.error


def test_the_provider_is_chosen_by_input_agent_and_default() -> None:
    import msgspec

    llm = msgspec.convert(
        {
            "default_provider": "a",
            "providers": {"a": {"kind": "anthropic"}, "b": {"kind": "openai", "api_key_secret": "B_KEY"}},
        },
        LlmConfig,
    )
    snap = AgentSnapshot(name="x", llm=LlmUse())
    chosen = gates.provider_for(llm, snap, {"prompt": "p"})
    assert not isinstance(chosen, str) and chosen[0] == "a" and chosen[2] is None
    chosen = gates.provider_for(llm, snap, {"provider": "b"})
    assert not isinstance(chosen, str) and chosen[0] == "b" and chosen[2] == "B_KEY" and "api_key" not in chosen[1]
    assert "not configured" in str(gates.provider_for(llm, snap, {"provider": "zz"}))
    only = AgentSnapshot(name="claude-code", llm=LlmUse(kinds=["anthropic"]))
    assert "speaks only anthropic" in str(gates.provider_for(llm, only, {"provider": "b"}))


def test_each_candidate_of_an_attempt_has_its_own_container_and_pod_name() -> None:
    from services.executor.runtimes.docker import container_name
    from services.executor.runtimes.podspec import pod_name

    snap = AgentSnapshot(name="a", command=["true"])
    first = TaskDispatched(run_id="r1", workflow="w", node_id="n", attempt=1, agent=snap, candidates=[snap, snap])
    second = TaskDispatched(run_id="r1", workflow="w", node_id="n", attempt=1, agent=snap, route=1)
    lookalike = TaskDispatched(run_id="r1", workflow="w", node_id="n_1", attempt=1, agent=snap)
    keys = [first.key, second.key, lookalike.key]
    assert len({container_name(k) for k in keys}) == 3 and len({pod_name(k) for k in keys}) == 3

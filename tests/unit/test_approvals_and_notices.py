"""The approver's rules and the notifier's words, without servers."""

from __future__ import annotations

import pytest

from services.approver import decisions
from services.approver.decisions import DecisionRequest, Refused
from services.notifier.messages import notice, sinks_for, slack_text
from services.scheduler import engine
from shared.config.settings import NotifierConfig, NotifyRule, SinkConfig
from shared.contract.messages import (
    AgentSnapshot,
    ApprovalDecided,
    ApprovalPolicy,
    ApprovalRecord,
    ApprovalRequested,
    NodeFailed,
    NodeResult,
    Plan,
    PlannedNode,
    RunFinished,
    RunPlanned,
    TaskDispatched,
)

GROUPS = {"sre": ["sam"]}


def record(**policy: object) -> ApprovalRecord:
    req = ApprovalRequested(
        run_id="r",
        approval_id="r.deploy",
        workflow="w",
        node_id="deploy",
        agent="deploy",
        policy=ApprovalPolicy(**policy),
        expires_at=1000.0,
        requested_by="carol",
    )
    return ApprovalRecord(request=req)


def decide(rec: ApprovalRecord, decision: str, user: str, *, at: float = 10.0, reason: str = "") -> ApprovalRecord:
    req = DecisionRequest(approval_id="r.deploy", decision=decision, user=user, reason=reason)  # type: ignore[arg-type]
    return decisions.apply(rec, req, now="t", epoch=at, groups=GROUPS)


def test_n_of_m_with_groups() -> None:
    rec = record(approvers=["ann", "group:sre"], min_approvals=2)
    rec = decide(rec, "approve", "ann")
    assert rec.status == "pending" and rec.summary == "1 of 2 approvals"
    rec = decide(rec, "approve", "sam")
    assert rec.status == "granted" and rec.summary == "approved by ann, sam"


@pytest.mark.parametrize(
    ("policy", "decision", "user", "message"),
    [
        ({}, "approve", "carol", "carol started this run and may not approve"),
        ({"approvers": ["ann"]}, "approve", "bob", "bob may not decide"),
        ({}, "approve", " ", "say who decides"),
        ({}, "reject", "dave", "needs a reason"),
    ],
)
def test_refusals(policy: dict, decision: str, user: str, message: str) -> None:
    with pytest.raises(Refused, match=message):
        decide(record(**policy), decision, user)


def test_self_approval_when_allowed_and_self_rejection_always() -> None:
    assert decide(record(allow_self_approval=True), "approve", "carol").status == "granted"
    assert decide(record(), "reject", "carol", reason="not today").status == "rejected"


def test_no_second_approval_by_the_same_person_and_no_decision_after_expiry_or_end() -> None:
    rec = decide(record(min_approvals=2), "approve", "ann")
    with pytest.raises(Refused, match="already approved"):
        decide(rec, "approve", "ann")
    with pytest.raises(Refused, match="has expired"):
        decide(record(), "approve", "ann", at=1000.0)
    done = decide(record(), "reject", "ann", reason="no")
    with pytest.raises(Refused, match="already rejected"):
        decide(done, "approve", "bob")


def test_expiry_rejects_by_default_and_approves_only_when_asked() -> None:
    expired = decisions.expire(record(expires_in_s=90), now="t")
    assert expired is not None and expired.status == "expired" and "expired after 1m30s" in expired.summary
    auto = decisions.expire(record(on_expiry="approve"), now="t")
    assert auto is not None and auto.status == "granted"
    assert decisions.expire(decide(record(), "approve", "ann"), now="t") is None


def test_the_gate_holds_the_node_and_runs_exactly_the_approved_input() -> None:
    policy = ApprovalPolicy(reason="risky")
    plan = Plan(
        nodes=[
            PlannedNode(
                id="deploy",
                agent=AgentSnapshot(name="d", risk="approval_required"),
                with_={"password": "x", "host": "h1"},
                approval=policy,
            )
        ]
    )
    clock = engine.Clock(now="t", epoch=0.0)
    rec = engine.start_run(RunPlanned(run_id="r", workflow="w", plan=plan, requested_by="carol"), clock)
    (out,) = [o for o in rec.outbox if isinstance(o.event, ApprovalRequested)]
    request = out.event
    assert out.subject == "fy.run.r.approval.deploy.requested"
    assert request.inputs == {"password": "[masked]", "host": "h1"} and request.requested_by == "carol"
    assert rec.nodes["deploy"].status == "pending" and not [
        o for o in rec.outbox if isinstance(o.event, TaskDispatched)
    ]
    forged = ApprovalDecided(
        run_id="r",
        approval_id="r.deploy",
        workflow="w",
        node_id="deploy",
        outcome="granted",
        inputs_hash="sha256:other",
    )
    refused = engine.decide(rec, forged, clock)
    assert refused is not None and refused.nodes["deploy"].status == "rejected"
    good = ApprovalDecided(
        run_id="r",
        approval_id="r.deploy",
        workflow="w",
        node_id="deploy",
        outcome="granted",
        inputs_hash=request.inputs_hash,
    )
    ran = engine.decide(rec, good, clock)
    assert ran is not None and [o.event.input for o in ran.outbox if isinstance(o.event, TaskDispatched)] == [
        {"password": "x", "host": "h1"}
    ]
    assert engine.decide(ran, good, clock) is None


def test_notices_and_routing() -> None:
    finished = RunFinished(
        run_id="r1",
        workflow="deploy-api",
        status="failed",
        error="node 'b' failed: boom",
        nodes={"b": NodeResult(status="failed")},
    )
    n = notice(finished)
    assert n is not None and n.type == "run.failed" and n.details["failed_nodes"] == ["b"]
    body = n.payload("id-1")
    assert {"type", "run_id", "workflow", "status", "summary"} <= set(body)
    failed = notice(NodeFailed(run_id="r1", workflow="deploy-api", node_id="b", error="boom", attempts=3))
    assert (
        failed is not None and failed.summary == "Node b of workflow deploy-api (run r1) failed after 3 attempts: boom"
    )
    cfg = NotifierConfig(
        sinks={"a": SinkConfig(type="log"), "b": SinkConfig(type="log")},
        rules=[
            NotifyRule(on=["run.failed"], workflows=["deploy-*"], sinks=["a", "b"]),
            NotifyRule(on=["run.failed", "node.failed"], sinks=["a"]),
        ],
    )
    assert sinks_for(cfg, n) == ["a", "b"] and sinks_for(cfg, failed) == ["a"]
    other = notice(RunFinished(run_id="r2", workflow="nightly", status="succeeded"))
    assert other is not None and sinks_for(cfg, other) == []
    labelled = NotifierConfig(
        sinks={"a": SinkConfig(type="log")},
        rules=[NotifyRule(on=["run.failed"], labels={"team": "payments"}, sinks=["a"])],
    )
    theirs = notice(RunFinished(run_id="r3", workflow="x", status="failed", labels={"team": "payments", "tier": "1"}))
    ours = notice(RunFinished(run_id="r4", workflow="x", status="failed", labels={"team": "search"}))
    assert theirs is not None and ours is not None
    assert sinks_for(labelled, theirs) == ["a"] and sinks_for(labelled, ours) == []
    assert theirs.payload("e")["labels"] == {"team": "payments", "tier": "1"}
    assert ":x: *deploy-api*" in slack_text(n)


def test_notices_carry_the_runs_trace_and_a_link_when_configured() -> None:
    from shared.telemetry.tracing import run_trace_id

    event = RunFinished(run_id="r9", workflow="deploy-api", status="failed", error="boom")
    plain = notice(event)
    assert plain is not None and plain.payload("e1")["trace_id"] == run_trace_id("r9")
    assert "trace_url" not in plain.payload("e1") and "Trace:" not in plain.summary
    linked = notice(event, trace_url="https://jaeger.example/trace/{trace_id}")
    assert linked is not None
    url = f"https://jaeger.example/trace/{run_trace_id('r9')}"
    assert linked.payload("e1")["trace_url"] == url
    assert linked.summary.endswith(f"Trace: {url}")


def test_a_plans_notices_speak_of_the_plan() -> None:
    from shared.contract.messages import ApprovalDecided, ApprovalRequested, PlanUpdated

    pid = "p0000000000100000000"
    asked = notice(
        ApprovalRequested(
            run_id=pid,
            approval_id=f"{pid}.plan",
            workflow="fix",
            node_id="plan",
            agent="planner",
            kind="plan",
            reason="r",
        )
    )
    assert asked is not None and asked.type == "approval.requested" and f"flowyard plans approve {pid}" in asked.summary
    decided = notice(
        ApprovalDecided(
            run_id=pid,
            approval_id=f"{pid}.plan",
            workflow="fix",
            node_id="plan",
            outcome="rejected",
            summary="rejected by amy: no",
            kind="plan",
        )
    )
    assert decided is not None and decided.summary.startswith(f"Plan {pid} (workflow fix): rejected by amy")
    proposed = notice(PlanUpdated(run_id=pid, status="proposed", goal="fix it", workflow="fix", model="m"))
    assert proposed is not None and proposed.type == "plan.proposed" and "runs only once approved" in proposed.summary
    assert proposed.payload("id")["plan_id"] == pid
    approved = notice(
        PlanUpdated(
            run_id=pid,
            status="approved",
            goal="fix it",
            workflow="fix",
            decided_by=["amy"],
            workflow_version=2,
            started_run="r1",
        )
    )
    assert approved is not None and "version 2" in approved.summary and "run r1 started" in approved.summary

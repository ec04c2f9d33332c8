"""The scheduler's state machine, without servers."""

from __future__ import annotations

from services.scheduler import engine
from shared.contract.messages import (
    AgentSnapshot,
    Plan,
    PlannedNode,
    RunFinished,
    RunPlanned,
    RunRecord,
    RunRejected,
    RunStarted,
    TaskDispatched,
    TaskFailed,
    TaskSucceeded,
)

NOW = "2026-01-01T00:00:00Z"
CLOCK = engine.Clock(now=NOW, epoch=1_000_000.0, pool="default")
AGENT = AgentSnapshot(name="echo", command=["cat"], timeout_s=7)


def diamond() -> RunPlanned:
    def node(nid: str, needs: list[str], with_: dict | None = None) -> PlannedNode:
        return PlannedNode(id=nid, agent=AGENT, needs=needs, with_=with_ or {})

    plan = Plan(
        nodes=[
            node("a", [], {"n": "{{ inputs.n }}"}),
            node("b", ["a"], {"v": "{{ nodes.a.output.v }}"}),
            node("c", ["a"], {"v": "{{ nodes.a.output.v }}", "s": "c={{ nodes.a.output.v }}"}),
            node("d", ["b", "c"], {"bc": ["{{ nodes.b.output }}", "{{ nodes.c.output }}"]}),
        ],
        outputs={"final": "{{ nodes.d.output.total }}"},
    )
    return RunPlanned(run_id="r1", workflow="w", plan=plan, inputs={"n": 2})


def dispatched(record: RunRecord) -> list[TaskDispatched]:
    return [o.event for o in record.outbox if isinstance(o.event, TaskDispatched)]


def ok(rec: RunRecord, node: str, output: object, attempt: int = 1) -> RunRecord:
    out = engine.apply_result(rec, TaskSucceeded(run_id="r1", node_id=node, attempt=attempt, output=output), CLOCK)
    assert out is not None
    return out


def test_start_dispatches_roots_with_templates_resolved() -> None:
    rec = engine.start_run(diamond(), CLOCK)
    assert isinstance(rec.outbox[0].event, RunStarted)
    tasks = dispatched(rec)
    assert [(t.node_id, t.attempt, t.input) for t in tasks] == [("a", 1, {"n": 2})]
    assert rec.outbox[1].subject == "fy.task.dispatch.default"
    assert rec.outbox[1].msg_id == "r1:a:1"
    assert tasks[0].timeout_s == 7
    assert rec.nodes["a"].status == "running" and rec.nodes["b"].status == "pending"


def test_diamond_runs_to_success_passing_data() -> None:
    rec = engine.start_run(diamond(), CLOCK)
    rec = ok(rec, "a", {"v": 5})
    assert [(t.node_id, t.input) for t in dispatched(rec)] == [("b", {"v": 5}), ("c", {"v": 5, "s": "c=5"})]
    rec = ok(rec, "b", {"x": 1})
    assert dispatched(rec) == []  # d still waits for c
    rec = ok(rec, "c", {"y": 2})
    assert [t.input for t in dispatched(rec)] == [{"bc": [{"x": 1}, {"y": 2}]}]
    rec = ok(rec, "d", {"total": 3})
    assert rec.status == "succeeded" and rec.outputs == {"final": 3}
    finished = rec.outbox[-1].event
    assert isinstance(finished, RunFinished) and finished.status == "succeeded"
    assert rec.outbox[-1].subject == "fy.run.r1.succeeded"
    assert finished.nodes["d"].output == {"total": 3}


def test_a_failure_skips_dependants_and_fails_the_run_after_running_nodes_finish() -> None:
    rec = engine.start_run(diamond(), CLOCK)
    rec = ok(rec, "a", {"v": 1})
    failed = TaskFailed(run_id="r1", node_id="b", attempt=1, error="exited with code 3: boom")
    rec = engine.apply_result(rec, failed, CLOCK)
    assert rec is not None
    assert rec.nodes["d"].status == "skipped" and "upstream b" in (rec.nodes["d"].error or "")
    assert rec.status == "running"  # c is still running
    rec = ok(rec, "c", {"y": 1})
    assert rec.status == "failed"
    assert rec.error == "node 'b' failed: exited with code 3: boom"
    assert rec.nodes["b"].errors == ["attempt 1: exited with code 3: boom"]
    assert rec.outbox[-1].subject == "fy.run.r1.failed"


def test_stale_and_repeated_results_change_nothing() -> None:
    rec = engine.start_run(diamond(), CLOCK)
    rec = ok(rec, "a", {"v": 1})
    again = TaskSucceeded(run_id="r1", node_id="a", attempt=1, output={"v": 99})
    assert engine.apply_result(rec, again, CLOCK) is None
    wrong_attempt = TaskSucceeded(run_id="r1", node_id="b", attempt=2, output={})
    assert engine.apply_result(rec, wrong_attempt, CLOCK) is None
    unknown = TaskSucceeded(run_id="r1", node_id="zz", attempt=1, output={})
    assert engine.apply_result(rec, unknown, CLOCK) is None


def test_a_template_that_cannot_resolve_fails_the_node_in_plain_words() -> None:
    rec = engine.start_run(diamond(), CLOCK)
    rec = ok(rec, "a", {"w": 1})  # no field v
    assert rec.nodes["b"].status == "failed"
    assert "nodes.a.output has no field 'v' (it has: w)" in (rec.nodes["b"].error or "")
    assert rec.nodes["d"].status == "skipped"
    assert rec.status == "failed"


def test_rejected_runs_are_recorded_as_failed_with_the_reasons() -> None:
    rec = engine.reject_run(RunRejected(run_id="r2", workflow="w", errors=["x.yaml:3: bad"]), CLOCK)
    assert rec.status == "failed" and "x.yaml:3: bad" in (rec.error or "")
    assert rec.outbox[0].subject == "fy.run.r2.failed"


def test_workspace_versions_flow_to_later_nodes() -> None:
    """An rw agent's version is what nodes dispatched after it get; agents without one get none."""
    rw = AgentSnapshot(name="patch", command=["cat"], workspace="rw")
    ro = AgentSnapshot(name="scan", command=["cat"], workspace="ro")
    plan = Plan(
        nodes=[
            PlannedNode(id="fix", agent=rw),
            PlannedNode(id="scan", agent=ro, needs=["fix"]),
            PlannedNode(id="note", agent=AGENT, needs=["fix"]),
        ]
    )
    rec = engine.start_run(RunPlanned(run_id="r1", workflow="w", plan=plan, workspace="r1/v0"), CLOCK)
    assert rec.workspace == "r1/v0" and dispatched(rec)[0].workspace == "r1/v0"
    done = engine.apply_result(
        rec, TaskSucceeded(run_id="r1", node_id="fix", attempt=1, output={}, workspace="r1/fix-1"), CLOCK
    )
    assert done is not None and done.workspace == "r1/fix-1" and done.workspace_version == 1
    by_node = {t.node_id: t for t in dispatched(done)}
    assert by_node["scan"].workspace == "r1/fix-1"
    assert by_node["note"].workspace is None  # its agent asked for no workspace

"""when, foreach, retry, continue_on_failure, deadlines, cancel and queued runs, in the engine."""

from __future__ import annotations

from typing import Any

from services.scheduler import engine
from shared.contract.messages import (
    AgentSnapshot,
    Plan,
    PlannedNode,
    RetryPolicy,
    RunCancelRequested,
    RunFinished,
    RunPlanned,
    RunRecord,
    TaskDispatched,
    TaskFailed,
    TaskSucceeded,
    TimerDue,
)

AGENT = AgentSnapshot(name="x", command=["cat"], timeout_s=5)
T0 = 1_000_000.0


def clock(at: float = T0) -> engine.Clock:
    return engine.Clock(now=f"t+{at - T0:g}", epoch=at, pool="p")


def node(nid: str, needs: list[str] | None = None, **kw: Any) -> PlannedNode:
    return PlannedNode(id=nid, agent=AGENT, needs=needs or [], **kw)


def start(*nodes: PlannedNode, inputs: dict | None = None, **plan_kw: Any) -> RunRecord:
    plan = Plan(nodes=list(nodes), **plan_kw)
    return engine.start_run(RunPlanned(run_id="r", workflow="w", plan=plan, inputs=inputs or {}), clock())


def tasks(rec: RunRecord) -> list[TaskDispatched]:
    return [o.event for o in rec.outbox if isinstance(o.event, TaskDispatched)]


def timers(rec: RunRecord) -> list[TimerDue]:
    return [o.event for o in rec.outbox if isinstance(o.event, TimerDue)]


def ok(
    rec: RunRecord, nid: str, output: Any, *, item: int | None = None, attempt: int = 1, at: float = T0
) -> RunRecord:
    out = engine.apply_result(
        rec, TaskSucceeded(run_id="r", node_id=nid, item=item, attempt=attempt, output=output), clock(at)
    )
    assert out is not None, f"result for {nid}[{item}] attempt {attempt} was ignored"
    return out


def fail(
    rec: RunRecord, nid: str, *, item: int | None = None, attempt: int = 1, retryable: bool = True, at: float = T0
) -> RunRecord | None:
    event = TaskFailed(
        run_id="r", node_id=nid, item=item, attempt=attempt, error=f"boom {attempt}", retryable=retryable
    )
    return engine.apply_result(rec, event, clock(at))


def test_when_false_skips_the_node_and_its_dependants() -> None:
    rec = start(
        node("a"),
        node("b", ["a"], when="nodes.a.output.go and inputs.env == 'prod'"),
        node("c", ["b"]),
        node("d", ["a"], when="len(nodes.a.output.items) > 1"),
        inputs={"env": "prod"},
    )
    rec = ok(rec, "a", {"go": False, "items": [1, 2]})
    assert rec.nodes["b"].status == "skipped" and "`when` is false" in (rec.nodes["b"].error or "")
    assert rec.nodes["c"].status == "skipped"
    assert [t.node_id for t in tasks(rec)] == ["d"]


def test_a_when_that_cannot_be_evaluated_fails_the_node() -> None:
    rec = start(node("a"), node("b", ["a"], when="nodes.a.output.count > 3"))
    rec = ok(rec, "a", {"other": 1})
    assert rec.nodes["b"].status == "failed" and "has no field 'count'" in (rec.nodes["b"].error or "")
    assert rec.status == "failed"


def test_foreach_runs_items_with_parallelism_and_collects_outputs_in_order() -> None:
    rec = start(
        node("list"),
        node(
            "each",
            ["list"],
            foreach="{{ nodes.list.output.hosts }}",
            parallelism=2,
            with_={"host": "{{ item }}", "n": "{{ index }}"},
        ),
        node("after", ["each"], with_={"all": "{{ nodes.each.output }}"}),
    )
    rec = ok(rec, "list", {"hosts": ["a", "b", "c"]})
    sent = tasks(rec)
    assert [(t.node_id, t.item, t.input) for t in sent] == [
        ("each", 0, {"host": "a", "n": 0}),
        ("each", 1, {"host": "b", "n": 1}),
    ]
    assert sent[1].key == "r:each#1:1"
    rec = ok(rec, "each", "B", item=1)
    assert [(t.item, t.input) for t in tasks(rec)] == [(2, {"host": "c", "n": 2})]
    rec = ok(rec, "each", "C", item=2)
    assert rec.nodes["each"].status == "running" and tasks(rec) == []
    rec = ok(rec, "each", "A", item=0)
    assert rec.nodes["each"].status == "succeeded" and rec.nodes["each"].output == ["A", "B", "C"]
    assert [t.input for t in tasks(rec)] == [{"all": ["A", "B", "C"]}]


def test_foreach_over_nothing_succeeds_with_an_empty_list_and_non_lists_fail() -> None:
    rec = start(node("e", foreach=[]), node("bad", foreach="{{ inputs.n }}"), inputs={"n": 3})
    assert rec.nodes["e"].status == "succeeded" and rec.nodes["e"].output == []
    assert rec.nodes["bad"].status == "failed" and "must yield a list" in (rec.nodes["bad"].error or "")


def test_a_failed_item_fails_the_foreach_node_once_all_items_are_done() -> None:
    rec = start(node("each", foreach=[1, 2]))
    rec = fail(rec, "each", item=0, retryable=False)
    assert rec is not None and rec.nodes["each"].status == "running"
    rec = ok(rec, "each", "two", item=1)
    assert rec.nodes["each"].status == "failed"
    assert rec.nodes["each"].error == "1 of 2 items did not succeed; item 0: boom 1"


def test_retry_waits_on_a_timer_with_exponential_backoff_then_succeeds() -> None:
    policy = RetryPolicy(attempts=3, backoff_s=2, factor=3, max_backoff_s=5, jitter=False)
    rec = start(node("a", retry=policy))
    rec = fail(rec, "a", attempt=1)
    assert rec is not None
    (timer,) = timers(rec)
    assert (timer.kind, timer.attempt, timer.due_at) == ("retry", 2, T0 + 2)
    assert rec.nodes["a"].status == "running" and rec.nodes["a"].retry_at == T0 + 2
    assert fail(rec, "a", attempt=1) is None  # a repeat of the same failure changes nothing
    rec = engine.fire_timer(rec, timer, clock(T0 + 2))
    assert rec is not None and [(t.attempt, t.key) for t in tasks(rec)] == [(2, "r:a:2")]
    assert engine.fire_timer(rec, timer, clock(T0 + 3)) is None  # timers are idempotent
    rec = fail(rec, "a", attempt=2, at=T0 + 3)
    assert rec is not None and timers(rec)[0].due_at == T0 + 3 + 5  # 2 * 3 = 6, capped at 5
    rec = engine.fire_timer(rec, timers(rec)[0], clock(T0 + 8))
    rec = ok(rec, "a", {"v": 1}, attempt=3)
    assert rec.status == "succeeded" and rec.nodes["a"].attempts == 3
    assert rec.nodes["a"].errors == ["attempt 1: boom 1", "attempt 2: boom 2"]


def test_retries_run_out_and_non_retryable_failures_are_final() -> None:
    rec = start(node("a", retry=RetryPolicy(attempts=2, jitter=False)), node("b", retry=RetryPolicy(attempts=5)))
    rec = fail(rec, "b", retryable=False)
    assert rec is not None and rec.nodes["b"].status == "failed" and timers(rec) == []
    rec = fail(rec, "a")
    rec = engine.fire_timer(rec, timers(rec)[0], clock(T0 + 10))
    rec = fail(rec, "a", attempt=2)
    assert rec is not None and rec.nodes["a"].status == "failed" and rec.status == "failed"


def test_jitter_is_deterministic_and_within_half_to_full() -> None:
    policy = RetryPolicy(backoff_s=10, factor=2, max_backoff_s=100, jitter=True)
    first = engine.backoff(policy, 1, "r:a")
    assert first == engine.backoff(policy, 1, "r:a") and 5 <= first <= 10
    assert 10 <= engine.backoff(policy, 2, "r:a") <= 20


def test_continue_on_failure_lets_dependants_see_the_status() -> None:
    rec = start(
        node("flaky", continue_on_failure=True),
        node("report", ["flaky"], when="nodes.flaky.status == 'failed'", with_={"was": "{{ nodes.flaky.status }}"}),
    )
    rec = fail(rec, "flaky", retryable=False)
    assert rec is not None and [t.input for t in tasks(rec)] == [{"was": "failed"}]
    rec = ok(rec, "report", {})
    assert rec.status == "succeeded"


def test_run_deadline_cancels_running_nodes_and_fails_the_run() -> None:
    rec = start(node("a"), node("b", ["a"]), timeout_s=60)
    (deadline,) = timers(rec)
    assert deadline.kind == "deadline" and deadline.due_at == T0 + 60
    rec = engine.fire_timer(rec, deadline, clock(T0 + 60))
    assert rec is not None and rec.status == "failed" and "timeout of 1m" in (rec.error or "")
    assert rec.nodes["a"].status == "cancelled" and rec.nodes["b"].status == "cancelled"
    assert isinstance(rec.outbox[-1].event, RunFinished) and rec.outbox[-1].subject == "fy.run.r.failed"
    assert engine.fire_timer(rec, deadline, clock(T0 + 61)) is None


def test_cancel_stops_everything_once() -> None:
    rec = start(node("a"), node("b", ["a"]))
    stop = RunCancelRequested(run_id="r", requested_by="ann", reason="wrong host")
    rec = engine.cancel(rec, stop, clock())
    assert rec is not None and rec.status == "cancelled" and rec.error == "cancelled by ann: wrong host"
    assert {n.status for n in rec.nodes.values()} == {"cancelled"}
    assert rec.outbox[-1].subject == "fy.run.r.cancelled"
    assert engine.cancel(rec, stop, clock()) is None
    late = TaskSucceeded(run_id="r", node_id="a", attempt=1, output={})
    assert engine.apply_result(rec, late, clock()) is None


def test_queued_runs_dispatch_nothing_until_admitted() -> None:
    plan = Plan(nodes=[node("a")], concurrency=1, timeout_s=30)
    rec = engine.start_run(RunPlanned(run_id="r", workflow="w", plan=plan), clock(), queued=True)
    assert rec.queued and rec.outbox == [] and rec.nodes["a"].status == "pending"
    rec = engine.admit(rec, clock(T0 + 100))
    assert rec is not None and not rec.queued and [t.node_id for t in tasks(rec)] == ["a"]
    assert timers(rec)[0].due_at == T0 + 130  # the deadline counts from admission
    assert engine.admit(rec, clock()) is None


def test_retry_of_a_run_reuses_succeeded_outputs() -> None:
    plan = Plan(nodes=[node("a"), node("b", ["a"], with_={"v": "{{ nodes.a.output.v }}"})])
    event = RunPlanned(run_id="r", workflow="w", plan=plan, retry_of="old", reuse={"a": {"v": 7}})
    rec = engine.start_run(event, clock())
    assert rec.nodes["a"].status == "succeeded" and rec.nodes["a"].reused_from == "old"
    assert [(t.node_id, t.input) for t in tasks(rec)] == [("b", {"v": 7})]


def test_a_record_too_large_for_the_bus_ends_the_run_with_the_reason() -> None:
    rec = start(node("a"), node("b", ["a"]))
    rec = ok(rec, "a", {"blob": "x" * 1000})
    ended = engine.overflow(rec, clock(), size=2_000_000, limit=1_048_576)
    assert ended.status == "failed" and "over the 1048576-byte limit (bus.max_payload)" in (ended.error or "")
    assert ended.nodes["a"].output is None and ended.nodes["b"].status == "cancelled"
    assert isinstance(ended.outbox[-1].event, RunFinished)

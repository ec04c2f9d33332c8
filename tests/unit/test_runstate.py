"""The stored form of foreach items (ADR 11), without servers: item runs, item states, and the
fan-out's dispatches kept as ranges and rebuilt exactly."""

from __future__ import annotations

from services.scheduler import engine
from services.scheduler.persist import _ranges
from shared.contract.messages import (
    AgentSnapshot,
    NodeRecord,
    Plan,
    PlannedNode,
    RunPlanned,
    TaskDispatched,
    TaskFailed,
    TaskSucceeded,
)
from shared.state.runstate import item_runs, item_state
from shared.state.values import is_ref

CLOCK = engine.Clock(now="2026-01-01T00:00:00Z", epoch=1_000_000.0, pool="default")
AGENT = AgentSnapshot(name="echo", command=["cat"], timeout_s=7)


def fan(n: int, parallelism: int | None = None) -> engine.RunRecord:
    plan = Plan(
        nodes=[
            PlannedNode(
                id="each", agent=AGENT, foreach=list(range(n)), with_={"i": "{{ item }}"}, parallelism=parallelism
            )
        ]
    )
    return engine.start_run(RunPlanned(run_id="r1", workflow="w", plan=plan), CLOCK)


def test_open_items_that_share_a_state_are_one_run_and_ended_items_are_counted() -> None:
    record = fan(1000)
    items = record.nodes["each"].items
    assert items is not None
    runs = item_runs(items, set())
    assert [(r.count, r.slot.status if r.slot else None) for r in runs] == [(1000, "running")]
    assert runs[0].slot is not None and runs[0].slot.input is None  # inputs are kept once, elsewhere
    for i in (0, 1, 2, 500):
        out = engine.apply_result(
            record, TaskSucceeded(run_id="r1", node_id="each", item=i, attempt=1, output={}), CLOCK
        )
        assert out is not None
        record = out
    items = record.nodes["each"].items
    assert items is not None
    ended = {i for i, it in enumerate(items) if it.status == "succeeded"}
    runs = item_runs(items, ended)
    assert [(r.count, r.slot is None) for r in runs] == [(3, True), (497, False), (1, True), (499, False)]


def test_an_item_waiting_out_a_retry_has_a_run_of_its_own() -> None:
    record = fan(5)
    failed = TaskFailed(run_id="r1", node_id="each", item=2, attempt=1, error="boom", retryable=True)
    plan = record.plan
    assert plan is not None
    retrying = plan.nodes[0].retry
    record = engine.replace(
        record,
        plan=engine.replace(plan, nodes=[engine.replace(plan.nodes[0], retry=engine.replace(retrying, attempts=3))]),
    )
    out = engine.apply_result(record, failed, CLOCK)
    assert out is not None
    items = out.nodes["each"].items
    assert items is not None
    runs = item_runs(items, set())
    assert [r.count for r in runs] == [2, 1, 2]
    assert runs[1].slot is not None and runs[1].slot.retry_at is not None


def test_item_state_reads_stored_and_whole_records_alike() -> None:
    record = fan(4)
    out = engine.apply_result(record, TaskSucceeded(run_id="r1", node_id="each", item=1, attempt=1, output={}), CLOCK)
    assert out is not None
    items = out.nodes["each"].items
    assert items is not None
    stored = engine.replace(
        out,
        nodes={"each": engine.replace(out.nodes["each"], items=None, item_runs=item_runs(items, {1}))},
    )
    for rec in (out, stored):
        assert item_state(rec, "each", 1) == "ended"
        state = item_state(rec, "each", 3)
        assert isinstance(state, NodeRecord) and state.status == "running" and state.attempts == 1
        assert item_state(rec, "each", 4) is None and item_state(rec, "nope", 0) is None


def test_fan_out_dispatches_are_kept_as_ranges_and_rebuilt_exactly() -> None:
    record = fan(300, parallelism=100)
    sent = [o for o in record.outbox if isinstance(o.event, TaskDispatched)]
    assert len(sent) == 100
    explicit, spans = _ranges(record.outbox)
    assert [(s.start, s.stop) for s in spans] == [(0, 100)]
    assert not any(isinstance(o.event, TaskDispatched) for o in explicit)
    rebuilt = engine.item_dispatches(record, spans)
    assert rebuilt == sent  # same subjects, same de-dup ids, same inputs


def test_retries_stay_explicit_in_the_outbox() -> None:
    record = fan(3)
    retry = TaskDispatched(
        run_id="r1", workflow="w", node_id="each", item=1, attempt=2, agent=AGENT, input={"i": 1}, dispatched_at=1.0
    )
    outbox = [*record.outbox, engine.Outgoing(subject="fy.task.dispatch.default", msg_id=retry.key, event=retry)]
    explicit, spans = _ranges(outbox)
    assert [(s.start, s.stop) for s in spans] == [(0, 3)]
    assert [o.event for o in explicit if isinstance(o.event, TaskDispatched)] == [retry]


def test_only_flowyard_shaped_references_are_references() -> None:
    assert is_ref({"$flowyard.value": "r/abc", "bytes": 3})
    assert not is_ref({"$flowyard.value": "r/abc", "bytes": 3, "other": 1})
    assert not is_ref({"$flowyard.value": 5}) and not is_ref(["$flowyard.value"]) and not is_ref("x")


async def test_values_remembered_as_measured_stay_within_their_budget() -> None:
    from shared.state import values

    v = values.Values(None, 64 * 1024)  # type: ignore[arg-type]  # inline values never reach the bus
    kept = [[i] * 200 for i in range(20_000)]
    for value in kept:
        assert await v.offload("r1", value) is value
    assert v._seen_bytes <= values._SEEN_BYTES and len(v._seen) <= values._KNOWN
    assert await v.offload("r1", kept[-1]) is kept[-1]  # a remembered one answers without encoding


async def test_an_ended_item_gone_from_the_store_reads_as_failed_saying_so() -> None:
    import nats.js.errors

    from shared.state import runstate

    class Gone:
        async def get(self, key: str) -> None:
            raise nats.js.errors.KeyNotFoundError

    item = await runstate._get(Gone(), "r1.each.7")
    assert item.status == "failed" and "'r1.each.7' is missing in fy_items" in (item.error or "")

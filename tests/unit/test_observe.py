"""What one step of a run means for the metrics, the root span and the active-runs index."""

from __future__ import annotations

import msgspec

from services.scheduler import engine, observe
from shared.contract.envelope import epoch
from shared.contract.messages import AgentSnapshot, Plan, PlannedNode, RunPlanned, RunRejected
from shared.telemetry import metrics


def _value(metric, *labels: str) -> float:  # type: ignore[no-untyped-def]
    return metric.labels(*labels)._value.get()


def test_a_run_is_counted_started_then_finished_with_its_nodes_and_indexed_while_active() -> None:
    plan = Plan(nodes=[PlannedNode(id="a", agent=AgentSnapshot(name="echo", command=["cat"]))])
    planned = RunPlanned(
        run_id="obs1", workflow="wf-observe", plan=plan, trigger={"type": "api"},
        requested_at="2026-12-02T07:00:00.000Z",
    )  # fmt: skip
    clock = engine.Clock(now="2026-12-02T07:00:01.000Z", epoch=epoch("2026-12-02T07:00:01.000Z"), pool="default")
    started_before = _value(metrics.RUNS_STARTED, "wf-observe", "api")
    record = engine.start_run(planned, clock)
    add, remove = observe.step(None, record, now=clock.epoch)
    assert _value(metrics.RUNS_STARTED, "wf-observe", "api") == started_before + 1
    assert add == f"fy.active.run.wf-observe.{int(epoch(planned.requested_at))}.obs1" and remove is None

    finished_before = _value(metrics.RUNS_FINISHED, "wf-observe", "succeeded")
    nodes_before = _value(metrics.NODES_FINISHED, "wf-observe", "echo", "succeeded")
    done = msgspec.structs.replace(
        record,
        status="succeeded",
        nodes={"a": msgspec.structs.replace(record.nodes["a"], status="succeeded")},
    )
    add, remove = observe.step(record, done, now=clock.epoch + 9)
    assert add is None and remove == f"fy.active.run.wf-observe.{int(epoch(planned.requested_at))}.obs1"
    assert _value(metrics.RUNS_FINISHED, "wf-observe", "succeeded") == finished_before + 1
    assert _value(metrics.NODES_FINISHED, "wf-observe", "echo", "succeeded") == nodes_before + 1
    # The duration runs from the request, not from when the scheduler took the run.
    samples = {
        s.name: s.value for s in metrics.RUN_SECONDS.collect()[0].samples if s.labels.get("workflow") == "wf-observe"
    }
    assert samples["flowyard_run_duration_seconds_sum"] >= 10.0

    # A step that changes nothing about the end counts nothing again.
    observe.step(done, done, now=clock.epoch + 10)
    assert _value(metrics.RUNS_FINISHED, "wf-observe", "succeeded") == finished_before + 1


def test_a_rejected_run_is_counted_as_rejected_and_never_indexed() -> None:
    clock = engine.Clock(now="2026-12-02T07:00:01.000Z", epoch=0.0, pool="default")
    record = engine.reject_run(RunRejected(run_id="obs2", workflow="wf-bad", errors=["no nodes"]), clock)
    before = _value(metrics.RUNS_FINISHED, "wf-bad", "rejected")
    add, remove = observe.step(None, record, now=5.0)
    assert (add, remove) == (None, None)
    assert _value(metrics.RUNS_FINISHED, "wf-bad", "rejected") == before + 1


def test_what_started_a_run_is_a_closed_set() -> None:
    plan = Plan(nodes=[])
    base = engine.start_run(
        RunPlanned(run_id="obs3", workflow="w", plan=plan), engine.Clock(now="", epoch=0.0, pool="default")
    )
    label = observe.trigger_label
    assert label(msgspec.structs.replace(base, trigger={"type": "manual"})) == "cli"
    assert label(msgspec.structs.replace(base, trigger={"type": "api"})) == "api"
    assert label(msgspec.structs.replace(base, retry_of="r0")) == "retry"
    assert label(msgspec.structs.replace(base, requested_by="trigger:alert")) == "alert"
    assert label(msgspec.structs.replace(base, requested_by="trigger:whatever")) == "other"
    assert label(msgspec.structs.replace(base, trigger={"type": "<script>"})) == "other"


def test_in_progress_gauges_count_per_workflow_and_forget_what_ended() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    count = Gauge("t_count", "", ["workflow"], registry=registry)
    earliest = Gauge("t_earliest", "", ["workflow"], registry=registry)
    gauges = metrics.InProgress(count, earliest)
    gauges.update(["fy.active.run.a.100.r1", "fy.active.run.a.90.r2", "fy.active.approval.b.500.r3.deploy"])
    assert registry.get_sample_value("t_count", {"workflow": "a"}) == 2
    assert registry.get_sample_value("t_earliest", {"workflow": "a"}) == 90
    assert registry.get_sample_value("t_earliest", {"workflow": "b"}) == 500
    gauges.update(["fy.active.run.a.100.r1"])
    assert registry.get_sample_value("t_count", {"workflow": "b"}) == 0
    assert registry.get_sample_value("t_earliest", {"workflow": "b"}) is None  # absent, not stale
    assert registry.get_sample_value("t_earliest", {"workflow": "a"}) == 100

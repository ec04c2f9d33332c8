"""Property-based: random DAGs with random failures, retries and redeliveries keep the invariants."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scheduler import engine
from shared.contract.messages import (
    AgentSnapshot,
    Plan,
    PlannedNode,
    RetryPolicy,
    RunPlanned,
    RunRecord,
    TaskDispatched,
    TaskFailed,
    TaskSucceeded,
    TimerDue,
)

AGENT = AgentSnapshot(name="x", command=["cat"])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Plan, float, int]:
    count = draw(st.integers(1, 8))
    nodes = []
    for i in range(count):
        needs = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        foreach = draw(st.one_of(st.none(), st.lists(st.integers(), max_size=3)))
        nodes.append(
            PlannedNode(
                id=f"n{i}",
                agent=AGENT,
                needs=[f"n{j}" for j in needs],
                retry=RetryPolicy(attempts=draw(st.integers(1, 3)), jitter=False),
                continue_on_failure=draw(st.booleans()),
                foreach=foreach,
                parallelism=draw(st.one_of(st.none(), st.integers(1, 2))) if foreach is not None else None,
            )
        )
    failure_rate = draw(st.sampled_from([0.0, 0.3, 0.6]))
    return Plan(nodes=nodes), failure_rate, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_dags_keep_the_invariants(scenario: tuple[Plan, float, int]) -> None:
    plan, failure_rate, seed = scenario
    # The outcome of each attempt: True success, False retryable failure, None permanent failure.
    outcomes: dict[str, bool | None] = {}
    rng = random.Random(seed)
    clock = engine.Clock(now="t", epoch=0.0)
    record = engine.start_run(RunPlanned(run_id="r", workflow="w", plan=plan), clock)
    inbox: list = list(record.outbox)
    ran: dict[str, set[int]] = {}
    by_id = {n.id: n for n in plan.nodes}

    def check_dispatch(rec: RunRecord, task: TaskDispatched) -> None:
        for need in by_id[task.node_id].needs:
            assert rec.nodes[need].status in engine.DONE, f"{task.node_id} dispatched before {need} finished"
        ran.setdefault(task.unit, set()).add(task.attempt)

    for out in record.outbox:
        if isinstance(out.event, TaskDispatched):
            check_dispatch(record, out.event)
    steps = 0
    while inbox and steps < 2000:
        steps += 1
        out = inbox.pop(rng.randrange(len(inbox)))
        event = out.event
        if rng.random() < 0.2:
            inbox.append(out)  # a redelivery: the same message again, later
        if isinstance(event, TaskDispatched):
            if event.key not in outcomes:
                roll = rng.random()
                outcomes[event.key] = True if roll >= failure_rate else (False if roll < failure_rate * 0.7 else None)
            verdict = outcomes[event.key]
            result = (
                TaskSucceeded(run_id="r", node_id=event.node_id, item=event.item, attempt=event.attempt, output=1)
                if verdict
                else TaskFailed(
                    run_id="r",
                    node_id=event.node_id,
                    item=event.item,
                    attempt=event.attempt,
                    error="x",
                    retryable=verdict is False,
                )
            )
            new = engine.apply_result(record, result, clock)
        elif isinstance(event, TimerDue):
            new = engine.fire_timer(record, event, clock)
        else:
            continue
        if new is None:
            continue
        record = new
        for o in record.outbox:
            if isinstance(o.event, TaskDispatched):
                check_dispatch(record, o.event)
        inbox.extend(record.outbox)

    assert record.status != "running", "the run never finished"
    for unit, attempts in ran.items():
        node_id = unit.split("#")[0]
        assert max(attempts) <= by_id[node_id].retry.attempts
        assert attempts == set(range(1, max(attempts) + 1))
    for nid, state in record.nodes.items():
        if state.status == "skipped":
            assert not any(u.split("#")[0] == nid for u in ran), f"skipped node {nid} ran"
    hard_failures = [
        nid for nid, s in record.nodes.items() if s.status == "failed" and not by_id[nid].continue_on_failure
    ]
    assert (record.status == "failed") == bool(hard_failures)
    assert all(s.status in engine.DONE for s in record.nodes.values())

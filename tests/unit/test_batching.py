"""Batched fan-out (issue 23, item 3): how items travel, without servers.

The scheduler groups a fan-out's first dispatches into ``TaskBatch`` messages the same way
whether it sends them fresh or again from the stored record; results that come together are
applied in one step with the same outcome as one by one; the executor's reporter sends an event
alone when the line is free and together when not.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from services.executor.reporting import Reporter
from services.scheduler import batching, engine
from services.scheduler.persist import _ranges
from shared.contract.messages import (
    AgentSnapshot,
    Event,
    Plan,
    PlannedNode,
    RetryPolicy,
    RunPlanned,
    RunRecord,
    TaskBatch,
    TaskDispatched,
    TaskFailed,
    TaskResults,
    TaskStarted,
    TaskSucceeded,
    decode_event,
    encode,
    unpacked,
)

CLOCK = engine.Clock(now="2026-01-01T00:00:00Z", epoch=1_000_000.0, pool="default")
AGENT = AgentSnapshot(name="echo", command=["cat"], timeout_s=7)
LIMIT = 1024 * 1024


def fan_out(n: int, *, batch: int | None = None, parallelism: int | None = None, retry: int = 1) -> RunRecord:
    plan = Plan(
        nodes=[
            PlannedNode(
                id="each",
                agent=AGENT,
                foreach="{{ inputs.items }}",
                with_={"v": "{{ item }}"},
                batch=batch,
                parallelism=parallelism,
                retry=RetryPolicy(attempts=retry, backoff_s=1, jitter=False),
            ),
            PlannedNode(id="join", agent=AGENT, needs=["each"], with_={"all": "{{ nodes.each.output }}"}),
        ]
    )
    event = RunPlanned(run_id="r1", workflow="w", plan=plan, inputs={"items": list(range(n))})
    return engine.start_run(event, CLOCK)


def batches(outbox: list) -> list[TaskBatch | TaskDispatched]:
    return [o.event for o in outbox if isinstance(o.event, TaskBatch | TaskDispatched)]


def test_auto_size_follows_the_item_count() -> None:
    node = PlannedNode(id="n", agent=AGENT, foreach=[])
    assert batching.batch_size(node, 10) == 1  # small fan-outs stay one message per item
    assert batching.batch_size(node, 100) == 7
    assert batching.batch_size(node, 1000) == 32  # capped
    assert batching.batch_size(msgspec.structs.replace(node, parallelism=40), 1000) == 3
    assert batching.batch_size(msgspec.structs.replace(node, batch=5), 1000) == 5


def test_a_fan_out_goes_in_batches_that_cover_each_item_once() -> None:
    rec = fan_out(100)
    out = batches(batching.batched(rec, rec.outbox, LIMIT))
    assert all(isinstance(b, TaskBatch) for b in out) and len(out) == 15  # ceil(100 / 7)
    items = [it.item for b in out for it in b.items]  # type: ignore[union-attr]
    assert items == list(range(100))
    first = out[0]
    assert isinstance(first, TaskBatch)
    assert first.key == "r1:each#0-6:1"
    tasks = first.tasks()
    assert [t.key for t in tasks] == [f"r1:each#{i}:1" for i in range(7)]
    assert tasks[3].input == {"v": 3} and tasks[3].timeout_s == 7 and tasks[3].attempt == 1
    # Everything else keeps its place: the run's start first.
    assert type(batching.batched(rec, rec.outbox, LIMIT)[0].event).__name__ == "RunStarted"


def test_sent_again_from_the_stored_ranges_the_batches_are_the_same() -> None:
    rec = fan_out(1000, batch=24)
    fresh = batching.batched(rec, rec.outbox, LIMIT)
    _, spans = _ranges(rec.outbox)
    again = batching.batched(rec, engine.item_dispatches(rec, spans), LIMIT)
    ids = [o.msg_id for o in fresh if isinstance(o.event, TaskBatch | TaskDispatched)]
    assert ids == [o.msg_id for o in again]
    assert len(ids) == 42  # ceil(1000 / 24): the de-dup ids JetStream drops a re-send by


def test_a_batch_stays_under_half_a_message() -> None:
    plan_rec = fan_out(40, batch=40)
    big = [
        msgspec.structs.replace(o, event=msgspec.structs.replace(o.event, input={"blob": "x" * 3000}))
        if isinstance(o.event, TaskDispatched)
        else o
        for o in plan_rec.outbox
    ]
    out = batches(batching.batched(plan_rec, big, 32 * 1024))
    assert len(out) > 1
    assert all(len(encode(b)) < 32 * 1024 for b in out)
    assert sum(len(b.items) if isinstance(b, TaskBatch) else 1 for b in out) == 40


def test_retries_and_single_nodes_stay_single_dispatches() -> None:
    rec = fan_out(50, retry=2)
    failed = engine.apply_result(
        rec, TaskFailed(run_id="r1", node_id="each", item=4, attempt=1, error="boom", retryable=True), CLOCK
    )
    assert failed is not None
    timer = failed.outbox[0].event
    retried = engine.fire_timer(failed, timer, engine.Clock(now=CLOCK.now, epoch=CLOCK.epoch + 5))  # type: ignore[arg-type]
    assert retried is not None
    out = batches(batching.batched(retried, retried.outbox, LIMIT))
    assert [(t.item, t.attempt) for t in out if isinstance(t, TaskDispatched)] == [(4, 2)]


def results(n: int, *, failing: int | None = None) -> list[TaskStarted | TaskSucceeded | TaskFailed]:
    events: list[TaskStarted | TaskSucceeded | TaskFailed] = []
    for i in range(n):
        events.append(TaskStarted(run_id="r1", node_id="each", item=i, attempt=1))
        if i == failing:
            events.append(TaskFailed(run_id="r1", node_id="each", item=i, attempt=1, error="no", retryable=False))
        else:
            events.append(TaskSucceeded(run_id="r1", node_id="each", item=i, attempt=1, output=i * 10))
    return events


@pytest.mark.parametrize("failing", [None, 3])
def test_results_together_end_as_they_would_one_by_one(failing: int | None) -> None:
    rec = fan_out(20)
    together = engine.apply_results(rec, results(20, failing=failing), CLOCK)
    alone = rec
    for event in results(20, failing=failing):
        if not isinstance(event, TaskStarted):
            alone = engine.apply_result(alone, event, CLOCK) or alone
    assert together is not None
    assert together.nodes == alone.nodes
    assert together.status == alone.status
    if failing is None:
        assert together.nodes["each"].output == [i * 10 for i in range(20)]
        assert [t.node_id for t in batches(together.outbox)] == ["join"]


def test_a_repeated_result_in_a_batch_is_ignored_and_the_first_stands() -> None:
    rec = fan_out(3)
    first = TaskSucceeded(run_id="r1", node_id="each", item=0, attempt=1, output="first")
    second = TaskFailed(run_id="r1", node_id="each", item=0, attempt=1, error="late", retryable=False)
    after = engine.apply_results(rec, [first, second], CLOCK)
    assert after is not None and after.nodes["each"].items[0].output == "first"  # type: ignore[index]
    assert engine.apply_results(after, [second], CLOCK) is None  # nothing left to change
    assert engine.apply_results(rec, [TaskStarted(run_id="r1", node_id="each", item=0, attempt=1)], CLOCK) is None


def test_the_wire_forms_round_trip_and_unpack() -> None:
    rec = fan_out(100)
    batch = batches(batching.batched(rec, rec.outbox, LIMIT))[0]
    assert decode_event(encode(batch)) == batch
    message = TaskResults(run_id="r1", events=results(2))
    back = decode_event(encode(message))
    assert back == message and unpacked(back) == results(2)
    assert unpacked(batch) == [batch]


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, Event, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, subject: str, event: Event, msg_id: str) -> None:
        self.entered.set()
        await self.gate.wait()
        self.messages.append((subject, event, msg_id))


async def test_reporter_sends_alone_when_free_and_together_when_busy() -> None:
    sent = Sent()
    reporter = Reporter(sent, max_bytes=LIMIT)
    events = results(6)
    await reporter.send("fy.run.r1.task.each#0.started", events[0], "r1:each#0:1:started")
    assert sent.messages == [("fy.run.r1.task.each#0.started", events[0], "r1:each#0:1:started")]
    sent.gate.clear()  # the next publish hangs: what comes meanwhile queues behind it
    sent.entered.clear()
    alone = asyncio.create_task(reporter.send("s1", events[1], "id1"))
    await sent.entered.wait()
    pending = [asyncio.create_task(reporter.send(f"s{i}", e, f"id{i}")) for i, e in enumerate(events[2:], start=2)]
    await asyncio.sleep(0)
    assert not alone.done() and not any(t.done() for t in pending)  # none returns before it is stored
    sent.gate.set()
    await asyncio.gather(alone, *pending)
    assert sent.messages[1] == ("s1", events[1], "id1")  # it found the line free: alone, its own id
    subject, message, msg_id = sent.messages[2]
    assert subject == "fy.run.r1.task.results" and isinstance(message, TaskResults)
    assert message.events == events[2:] and msg_id.startswith("r1:results:")
    assert len(sent.messages) == 3


async def test_a_failed_publish_fails_every_waiting_send() -> None:
    async def down(subject: str, event: Event, msg_id: str) -> None:
        raise ConnectionError("nats is away")

    reporter = Reporter(down, max_bytes=LIMIT)
    sends = [reporter.send("s", e, str(i)) for i, e in enumerate(results(2))]
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    await reporter.close()


async def test_events_ready_together_are_cut_by_size() -> None:
    sent = Sent()
    reporter = Reporter(sent, max_bytes=8 * 1024)  # a group's events stay under 4 KiB
    sent.gate.clear()
    sent.entered.clear()
    first = asyncio.create_task(reporter.send("s0", results(1)[0], "id0"))
    await sent.entered.wait()
    big = [TaskSucceeded(run_id="r1", node_id="each", item=i, attempt=1, output="x" * 1500) for i in range(6)]
    rest = [asyncio.create_task(reporter.send(f"s{i}", e, f"id{i}")) for i, e in enumerate(big, start=1)]
    await asyncio.sleep(0)
    sent.gate.set()
    await asyncio.gather(first, *rest)
    groups = [m for _, m, _ in sent.messages[1:]]
    assert all(isinstance(m, TaskResults) and len(encode(m)) < 8 * 1024 for m in groups)
    assert [e for m in groups for e in m.events] == big  # every event once, in order  # type: ignore[union-attr]
    assert len(groups) == 3

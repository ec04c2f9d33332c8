"""The bus against a real nats-server: topology, de-dup, poison, retries, dead letters, headers."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.bus.connection import Bus
from shared.bus.consumer import Consumer
from shared.bus.delivery import Delivery
from shared.bus.server import NatsServer
from shared.bus.topology import ensure_topology
from shared.config.settings import BusConfig, NatsConfig
from shared.contract import subjects
from shared.contract.errors import ConfigurationError, PermanentError, RetryableError
from shared.contract.messages import RunStarted, decode_event


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = Bus(NatsConfig(url=nats_server.url), BusConfig(ack_wait="2s"), name=f"t{secrets.token_hex(3)}")
    await b.connect()
    await ensure_topology(b)
    yield b
    await b.close()


def started(run_id: str) -> RunStarted:
    return RunStarted(run_id=run_id, workflow="w")


async def consume(bus: Bus, handler, *, max_deliver: int = 5):
    run = f"r{secrets.token_hex(4)}"
    consumer = Consumer(
        bus,
        durable=f"test-{run}",
        stream=subjects.RUNS_STREAM,
        # Not fy.run.RUN.>: a dead letter also publishes fy.run.RUN.abandoned for the scheduler.
        filters=[f"fy.run.{run}.started"],
        decode=decode_event,
        handler=handler,
        concurrency=2,
        max_deliver=max_deliver,
    )
    await consumer.ensure()
    task = asyncio.create_task(consumer.run())
    return run, consumer, task


async def dead_letters(bus: Bus) -> list[dict[str, str]]:
    out = []
    sub = await bus.js.subscribe(subjects.dead_letter(bus.name), ordered_consumer=True, stream=subjects.DLQ_STREAM)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                break
            out.append({**(msg.headers or {}), "data": msg.data.decode(errors="replace")})
    finally:
        await sub.unsubscribe()
    return out


async def eventually(check, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_topology_creation_is_idempotent_and_concurrent(nats_server: NatsServer) -> None:
    buses = [Bus(NatsConfig(url=nats_server.url), BusConfig(), name=f"b{i}") for i in range(3)]
    for b in buses:
        await b.connect()
    await asyncio.gather(*(ensure_topology(b) for b in buses))
    await asyncio.gather(*(ensure_topology(b) for b in buses))
    assert await buses[0].topology_present()
    for b in buses:
        await b.close()


async def test_publish_is_deduplicated_by_msg_id(bus: Bus) -> None:
    run = f"r{secrets.token_hex(4)}"
    first = await bus.publish(subjects.run_started(run), started(run), msg_id=f"{run}:started")
    again = await bus.publish(subjects.run_started(run), started(run), msg_id=f"{run}:started")
    assert not first.duplicate and again.duplicate and again.seq == first.seq


async def test_handlers_see_cloudevents_and_trace_headers(bus: Bus) -> None:
    seen: list[Delivery] = []

    async def handler(event: RunStarted, d: Delivery) -> None:
        seen.append(d)

    run, consumer, task = await consume(bus, handler)
    await bus.publish(subjects.run_started(run), started(run), msg_id=f"{run}:s")

    async def got() -> bool:
        return bool(seen)

    await eventually(got)
    consumer.stop()
    await task
    h = seen[0].headers
    assert h["ce-specversion"] == "1.0" and h["ce-type"] == "io.flowyard.run.started.v1" and h["ce-subject"] == run
    assert h["Nats-Msg-Id"] == f"{run}:s"
    assert h["traceparent"].startswith("00-")


async def test_poison_is_terminated_dead_lettered_and_does_not_block(bus: Bus) -> None:
    handled: list[str] = []

    async def handler(event: RunStarted, d: Delivery) -> None:
        handled.append(event.run_id)

    run, consumer, task = await consume(bus, handler)
    await bus.js.publish(f"fy.run.{run}.started", b"\x00 this is not json")
    await bus.js.publish(f"fy.run.{run}.started", b'{"type": "run.started", "run_id": 42}')
    await bus.publish(subjects.run_started(run), started(run), msg_id=f"{run}:ok")

    async def done() -> bool:
        return handled == [run] and len(await dead_letters(bus)) >= 2

    await eventually(done)
    consumer.stop()
    await task
    letters = await dead_letters(bus)
    assert [letter["data"] for letter in letters][:1] == ["\x00 this is not json"]
    assert all(letter["fy-dlq-reason"].startswith("cannot decode message") for letter in letters)
    assert letters[0]["fy-dlq-subject"] == f"fy.run.{run}.started"


async def test_retryable_failures_are_redelivered_then_dead_lettered(bus: Bus) -> None:
    calls: list[int] = []

    async def handler(event: RunStarted, d: Delivery) -> None:
        calls.append(d.num_delivered)
        raise RetryableError("downstream not ready", delay=0.05)

    run, consumer, task = await consume(bus, handler, max_deliver=3)
    await bus.publish(subjects.run_started(run), started(run), msg_id=f"{run}:r")

    async def gave_up() -> bool:
        return any("gave up after 3 deliveries" in x["fy-dlq-reason"] for x in await dead_letters(bus))

    await eventually(gave_up)
    consumer.stop()
    await task
    assert calls == [1, 2, 3]


async def test_permanent_errors_are_dead_lettered_at_once(bus: Bus) -> None:
    calls: list[int] = []

    async def handler(event: RunStarted, d: Delivery) -> None:
        calls.append(d.num_delivered)
        raise PermanentError("workflow refers to a deleted agent")

    run, consumer, task = await consume(bus, handler)
    await bus.publish(subjects.run_started(run), started(run), msg_id=f"{run}:p")

    async def terminated() -> bool:
        return any(x["fy-dlq-reason"] == "workflow refers to a deleted agent" for x in await dead_letters(bus))

    await eventually(terminated)
    await asyncio.sleep(0.3)
    consumer.stop()
    await task
    assert calls == [1]
    # The run the message belonged to is told to end, naming who gave up and why.
    msg = await bus.js.get_last_msg(subjects.RUNS_STREAM, subjects.run_abandoned(run))
    abandoned = decode_event(msg.data)
    assert abandoned.service == bus.name and "deleted agent" in abandoned.reason  # type: ignore[union-attr]


async def test_unreachable_nats_is_a_clear_error() -> None:
    bus = Bus(NatsConfig(url="nats://127.0.0.1:1", connect_timeout="1s"), BusConfig(), name="t")
    with pytest.raises(ConfigurationError, match=r"cannot reach NATS at nats://127.0.0.1:1 .*FLOWYARD_NATS_URL"):
        await bus.connect()


async def test_oversized_payloads_are_refused_with_the_limit(bus: Bus) -> None:
    small = Bus(bus.nats_cfg, BusConfig(max_payload=200), name="small")
    await small.connect()
    try:
        with pytest.raises(PermanentError, match="over the 200-byte limit"):
            await small.publish("fy.run.rbig.started", RunStarted(run_id="rbig", workflow="w" * 500), msg_id="big")
    finally:
        await small.close()


def test_a_run_nobody_plans_says_so_and_gives_up_at_its_timeout(nats_server: NatsServer) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")} | {
        "FLOWYARD_NATS_URL": nats_server.url
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", str(root / "examples/incident-digest.yaml"), "--timeout", "12s"],
        env=env,
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert done.returncode == 3
    assert "nothing has answered for 10s; is a planner running" in done.stderr
    assert "did not finish within 12s" in done.stderr and "Traceback" not in done.stderr


async def test_a_nats_outage_in_a_handler_is_waited_out_not_dead_lettered(bus: Bus) -> None:
    import nats.errors

    calls: list[int] = []

    async def handler(event: RunStarted, d: Delivery) -> None:
        calls.append(d.num_delivered)
        if len(calls) <= 4:  # more than max_deliver (3) failures, all of them NATS being away
            raise nats.errors.TimeoutError

    run, consumer, task = await consume(bus, handler, max_deliver=3)
    await bus.publish(subjects.run_started(run), started(run), msg_id=f"{run}:o")

    async def handled() -> bool:
        return len(calls) == 5

    await eventually(handled, timeout=30)
    consumer.stop()
    await task
    assert not any(run in x.get("fy-dlq-subject", "") for x in await dead_letters(bus))

"""``spec.concurrency``'s admission against a real nats-server: order, replicas, and linear bytes."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator

import msgspec
import pytest

from services.scheduler.admission import Admission, Slots
from shared.bus.connection import Bus
from shared.bus.server import NatsServer
from shared.bus.topology import ensure_topology
from shared.config.settings import BusConfig, NatsConfig
from shared.contract import subjects

BUCKET = subjects.CONCURRENCY_BUCKET


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = Bus(NatsConfig(url=nats_server.url), BusConfig(), name=f"adm{secrets.token_hex(3)}")
    await b.connect()
    await ensure_topology(b)
    yield b
    await b.close()


class Written:
    """Counts the bytes an Admission writes to its bucket (every create, update and put)."""

    def __init__(self) -> None:
        self.bytes = 0

    def wrap(self, admission: Admission) -> Admission:
        kv = admission.kv
        for name in ("create", "update", "put"):
            original = getattr(kv, name)

            def counted(key: str, value: bytes, *args: object, _original=original, **kwargs: object):
                self.bytes += len(key) + len(value)
                return _original(key, value, *args, **kwargs)

            setattr(kv, name, counted)
        return admission


async def admission(bus: Bus) -> Admission:
    return Admission(await bus.kv(BUCKET), bus.js, BUCKET)


def workflow() -> str:
    return f"wf-{secrets.token_hex(4)}"


async def test_runs_wait_their_turn_in_order(bus: Bus) -> None:
    a, wf = await admission(bus), workflow()
    assert (await a.enter(wf, "r1", 2)).now and (await a.enter(wf, "r2", 2)).now
    for run in ("r3", "r4", "r5"):
        entry = await a.enter(wf, run, 2)
        assert not entry.now and entry.admitted == []
    # Redelivered events take no second place.
    assert (await a.enter(wf, "r1", 2)).now
    assert not (await a.enter(wf, "r4", 2)).now
    assert await a.leave(wf, "r1", 2) == ["r3"]
    assert await a.leave(wf, "r1", 2) == []  # freed once only
    # A queued run that is cancelled leaves the queue without being admitted.
    assert await a.leave(wf, "r4", 2) == []
    assert await a.leave(wf, "r2", 2) == ["r5"]
    assert await a.leave(wf, "r3", 2) == [] and await a.leave(wf, "r5", 2) == []
    assert (await a.enter(wf, "r6", 2)).now


async def test_replicas_never_admit_more_than_the_limit(bus: Bus) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    replicas = [await admission(bus) for _ in range(3)]
    wf, limit, runs = workflow(), 3, [f"r{i:03d}" for i in range(40)]
    started: list[str] = []

    async def enter(run: str) -> None:
        entry = await rng.choice(replicas).enter(wf, run, limit)
        started.extend(entry.admitted)
        if entry.now and run not in entry.admitted:
            started.append(run)

    await asyncio.gather(*(enter(run) for run in runs))
    slots = msgspec.json.decode((await replicas[0].kv.get(wf)).value, type=Slots)
    assert len(slots.running) == limit and sorted(started) == sorted(slots.running)
    # Each run that ends lets exactly one more in, until every run has had its turn.
    while started:
        run = started.pop(rng.randrange(len(started)))
        started.extend(await rng.choice(replicas).leave(wf, run, limit))
        slots = msgspec.json.decode((await replicas[0].kv.get(wf)).value, type=Slots)
        assert len(slots.running) <= limit and sorted(slots.running) == sorted(started)
    assert await replicas[0]._head(wf) is None


async def test_a_place_freed_while_a_run_is_queued_is_not_lost(bus: Bus) -> None:
    a, wf = await admission(bus), workflow()
    assert (await a.enter(wf, "r1", 1)).now
    # As if r1 ended between r2 reading the full slots and r2 queueing itself.
    await a._enqueue(wf, "r2")
    assert await a.kv.update(wf, msgspec.json.encode(Slots()), last=(await a.kv.get(wf)).revision)
    entry = await a.enter(wf, "r2", 1)
    assert entry.now and entry.admitted == ["r2"]
    assert await a._head(wf) is None


async def test_a_queue_in_the_old_single_value_is_moved_to_one_key_per_run(bus: Bus) -> None:
    a, wf = await admission(bus), workflow()
    await a.kv.create(wf, msgspec.json.encode(Slots(running=["r1"], queued=["r2", "r3"])))
    assert not (await a.enter(wf, "r4", 1)).now
    assert await a.leave(wf, "r1", 1) == ["r2"]
    assert await a.leave(wf, "r2", 1) == ["r3"]
    assert await a.leave(wf, "r3", 1) == ["r4"]
    assert msgspec.json.decode((await a.kv.get(wf)).value, type=Slots) == Slots(running=["r4"])


async def test_queued_runs_cost_linear_bytes(bus: Bus) -> None:
    async def queue(n: int) -> int:
        written = Written()
        a, wf = written.wrap(await admission(bus)), workflow()
        for i in range(n):
            await a.enter(wf, f"r{i:05d}", 1)
        return written.bytes

    small, large = await queue(300), await queue(1200)
    print(f"bytes written queueing 300 runs: {small}, 1200 runs: {large}")
    # One value holding the queue would write ~16x more for 4x the runs; per-run keys write 4x.
    assert large < 4.5 * small
    assert large / 1200 < 64  # a run's queue key and its run id, nothing that grows with the queue

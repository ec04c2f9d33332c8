"""agents.limits and rate-limit cool-downs in NATS KV: shared by replicas (two Bus connections
stand for two executors), counted once under races, and what the executor's gate does with them."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import AsyncIterator

import msgspec
import pytest

from services.executor.breaker import Breaker
from services.executor.gates import Gates
from services.executor.handlers import Refusal
from shared.bus.connection import Bus
from shared.bus.server import NatsServer
from shared.bus.topology import ensure_topology
from shared.config.secrets import SecretSource
from shared.config.settings import BusConfig, Config, NatsConfig
from shared.contract.messages import AgentSnapshot, TaskDispatched
from shared.state.ratelimits import Limit, Limits


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def buses(nats_server: NatsServer) -> AsyncIterator[tuple[Bus, Bus]]:
    pair = [Bus(NatsConfig(url=nats_server.url), BusConfig(), name=f"l{secrets.token_hex(3)}") for _ in range(2)]
    for b in pair:
        await b.connect()
    await ensure_topology(pair[0])
    yield pair[0], pair[1]
    for b in pair:
        await b.close()


async def test_per_minute_is_shared_across_replicas_and_counted_once(buses: tuple[Bus, Bus]) -> None:
    agent = f"a{secrets.token_hex(3)}"
    clock = Clock(6_000_030.0)  # 30 s into a minute
    one, two = Limits(buses[0], clock), Limits(buses[1], clock)
    limit = Limit(per_minute=5)
    # Ten takes at once from two replicas: exactly five get through (compare-and-set).
    results = await asyncio.gather(*(r.take(agent, limit) for r in (one, two) for _ in range(5)))
    assert sum(r is None for r in results) == 5
    assert all(r == pytest.approx(30.0) for r in results if r is not None)  # room again next minute
    clock.now += 31
    assert await two.take(agent, limit) is None


async def test_per_hour_gives_back_what_a_full_minute_refused(buses: tuple[Bus, Bus]) -> None:
    agent = f"h{secrets.token_hex(3)}"
    clock = Clock(7_200_000.0)
    limits = Limits(buses[0], clock)
    limit = Limit(per_minute=1, per_hour=2)
    assert await limits.take(agent, limit) is None
    assert await limits.take(agent, limit) is not None  # the minute is full; the hour keeps 1 left
    clock.now += 60
    assert await limits.take(agent, limit) is None
    clock.now += 60
    wait = await limits.take(agent, limit)
    assert wait is not None and wait > 60  # the hour is full now: room at the next hour


async def test_tokens_per_minute_and_cool_downs(buses: tuple[Bus, Bus]) -> None:
    agent = f"t{secrets.token_hex(3)}"
    clock = Clock(9_000_000.0)
    one, two = Limits(buses[0], clock), Limits(buses[1], clock)
    await one.add_tokens(agent, 900)
    assert await two.take(agent, Limit(tokens_per_minute=1000)) is None
    await two.add_tokens(agent, 200)
    assert await one.take(agent, Limit(tokens_per_minute=1000)) is not None
    await one.cool(agent, 30)
    assert await two.cooling(agent) == pytest.approx(30)
    clock.now += 31
    assert await two.cooling(agent) is None


async def test_the_gate_routes_on_limits_and_cool_downs(buses: tuple[Bus, Bus]) -> None:
    name = f"g{secrets.token_hex(3)}"
    config = msgspec.convert(
        {"agents": {"limits": {name: {"per_minute": 1}}, "limit_wait": "0s"}}, Config, strict=False
    )
    gates = Gates(config, SecretSource(None, {}), Breaker(threshold=3, cooldown=60), Limits(buses[0]))
    agent = AgentSnapshot(name=name, command=["true"])
    other = AgentSnapshot(name="other", command=["true"])
    routed = TaskDispatched(
        run_id="r", workflow="w", node_id="n", attempt=1, agent=agent, candidates=[agent, other], capability="c"
    )
    assert not isinstance(await gates.prepare(routed), Refusal)
    limited = await gates.prepare(routed)
    assert isinstance(limited, Refusal) and limited.cause == "limited" and f"agents.limits.{name}" in limited.message
    await gates.limits.cool(name, 30)  # type: ignore[union-attr]
    cooling = await gates.prepare(routed)
    assert isinstance(cooling, Refusal) and cooling.cause == "cooling_down"
    plain = TaskDispatched(run_id="r", workflow="w", node_id="n", attempt=1, agent=agent)
    # A node that names its agent is not steered by the cool-down; its limit still holds.
    still = await gates.prepare(plain)
    assert isinstance(still, Refusal) and still.cause == "limited"


async def test_a_plain_node_over_its_limit_fails_retryably(buses: tuple[Bus, Bus]) -> None:
    from services.executor import handlers
    from services.executor.runtimes import ProcessRuntime
    from shared.contract.messages import Event, TaskFailed

    name = f"p{secrets.token_hex(3)}"
    config = msgspec.convert({"agents": {"limits": {name: {"per_minute": 1}}, "limit_wait": "0s"}}, Config)
    gates = Gates(config, SecretSource(None, {}), Breaker(threshold=3, cooldown=60), Limits(buses[0]))
    await gates.limits.take(name, Limit(per_minute=1))  # type: ignore[union-attr]  # the minute's one request
    sent: list[Event] = []

    async def publish(event: Event, kind: str) -> None:
        sent.append(event)

    task = TaskDispatched(
        run_id="r", workflow="w", node_id="n", attempt=1, agent=AgentSnapshot(name=name, command=["true"])
    )
    runtime = ProcessRuntime(max_output_bytes=1024, log_tail_bytes=512, state_dir=tempfile.mkdtemp(prefix="fy-"))
    verdict = await handlers.execute(
        task, runtime=runtime, publish=publish, executor_id="x", log_tail_bytes=512, prepare=gates.prepare
    )
    await runtime.close()
    assert not verdict.ok and verdict.retryable and verdict.cause == "limited"
    assert isinstance(sent[-1], TaskFailed) and sent[-1].retryable and sent[-1].cause == "limited"

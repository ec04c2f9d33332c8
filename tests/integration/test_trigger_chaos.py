"""Triggers survive a planner SIGKILLed at a random moment: no event lost, none run twice, no
scheduled time fired twice. The seed is printed; FLOWYARD_TEST_SEED replays a failing trial."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from shared.bus.server import NatsServer

from .stack import Stack
from .test_triggers import TRIGGERED, runs_of, triggers_idle, wait_for

SEED = int(os.environ.get("FLOWYARD_TEST_SEED", random.randrange(2**32)))
TICK = """
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: chaos-tick}
spec:
  triggers: [{cron: {every: 1s, overlap: allow}}]
  nodes: [{id: a, agent: tnote, with: {at: "{{ trigger.scheduled_at }}"}}]
"""


@pytest.fixture(scope="module")
def stack(nats_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("trigger-chaos")
    server = NatsServer(workdir / "nats").start()
    s = Stack(server, workdir)
    try:
        s.start_all()
        assert s.cli("workflows", "apply", str(TRIGGERED)).returncode == 0
        yield s
    finally:
        s.stop_all()
        server.stop()


@pytest.mark.parametrize("trial", range(3))
def test_nats_events_with_the_planner_killed_at_random(stack: Stack, trial: int) -> None:
    rng = random.Random(SEED + trial)
    print(f"seed {SEED} trial {trial} (FLOWYARD_TEST_SEED={SEED} replays it)")
    tag = f"t{trial}-{time.time_ns()}"
    events = 40
    kill_after = rng.uniform(0.0, 1.5)
    down_for = rng.uniform(0.0, 2.0)

    async def publish_all() -> None:
        nc = await nats.connect(stack.server.url)
        try:
            for i in range(events):
                body = {"service": f"{tag}-{i}", "env": "prod"}
                await nc.publish("deploys.chaos", json.dumps(body).encode(), headers={"ce-id": f"{tag}-{i}"})
                await nc.flush()
                await asyncio.sleep(0.04)
        finally:
            await nc.close()

    async def chaos() -> None:
        await asyncio.sleep(kill_after)
        stack.kill("planner")
        await asyncio.sleep(down_for)
        await asyncio.to_thread(stack.start, "planner")

    async def go() -> None:
        await asyncio.gather(publish_all(), chaos())
        await triggers_idle(stack.server.url)

    asyncio.run(go())
    wanted = {f"{tag}-{i}" for i in range(events)}

    def started() -> Counter[str]:
        return Counter(
            r["trigger"]["data"]["service"]
            for r in runs_of(stack, "on-deploy")
            if str(r["trigger"].get("data", {}).get("service", "")).startswith(tag)
        )

    seen = wait_for(lambda: (lambda c: c if set(c) == wanted else None)(started()), timeout=60, what="every run")
    assert all(n == 1 for n in seen.values()), {k: n for k, n in seen.items() if n != 1}


def test_a_schedule_with_the_planner_killed_at_random_never_fires_a_time_twice(stack: Stack, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    doc = tmp_path / "tick.yaml"
    doc.write_text(TRIGGERED.read_text().split("---\napiVersion: flowyard/v1\nkind: Workflow")[0] + "---" + TICK)
    assert stack.cli("workflows", "apply", str(doc)).returncode == 0
    stack.start_replica("planner")
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 2.0))  # a random moment of the schedule (the scenario)
        stack.kill(rng.choice(["planner", "planner-2"]))
        time.sleep(rng.uniform(0.0, 2.0))
        for name in ("planner", "planner-2"):
            if stack.procs[name].poll() is not None:
                stack.start(name) if name == "planner" else stack.start_replica("planner")
    wait_for(lambda: len(runs_of(stack, "chaos-tick")) >= 5, timeout=30, what="ticks")
    assert stack.cli("workflows", "delete", "chaos-tick").returncode == 0
    times = [r["trigger"]["scheduled_at"] for r in runs_of(stack, "chaos-tick")]
    assert len(times) == len(set(times)), Counter(times).most_common(3)

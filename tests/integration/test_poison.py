"""The poison ceiling: a message whose handling kills the process every time is dead-lettered
after bus.poison_deliveries unanswered deliveries, and the queue behind it moves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import nats

from shared.bus.connection import Bus
from shared.bus.topology import ensure_topology
from shared.config.settings import BusConfig, NatsConfig
from shared.contract.messages import RunRequested, decode_event

from .stack import ROOT


def test_a_message_that_kills_its_handler_every_time_is_dead_lettered(fresh_nats, tmp_path: Path) -> None:
    url = fresh_nats.url
    out = tmp_path / "handled.txt"

    async def publish() -> None:
        bus = Bus(NatsConfig(url=url), BusConfig(), name="test")
        await bus.connect()
        await ensure_topology(bus)
        for run_id in ("rpoison1", "rgood1"):
            event = RunRequested(run_id=run_id, workflow="w", definition={})
            await bus.publish(f"fy.run.{run_id}.requested", event, msg_id=f"{run_id}:requested")
        await bus.close()

    asyncio.run(publish())
    deaths = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        # A supervisor restarting the crashed process, as Kubernetes or systemd would.
        done = subprocess.run(
            [sys.executable, str(Path(__file__).parent / "poison_consumer.py"), url, str(out), "3"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        if done.returncode == 9:
            deaths += 1
            continue
        assert done.returncode == 0, done.stderr[-2000:]
        if out.exists() and "rgood1" in out.read_text():
            break
    assert out.exists() and "rgood1" in out.read_text()  # the queue moved on

    async def dead_letters() -> list[tuple[str, str]]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        sub = await js.subscribe("fy.dlq.>", ordered_consumer=True)
        found = []
        try:
            while True:
                msg = await sub.next_msg(timeout=1)
                found.append((decode_event(msg.data).run_id, msg.headers.get("fy-dlq-reason", "")))
        except nats.errors.TimeoutError:
            pass
        await nc.close()
        return found

    letters = asyncio.run(dead_letters())
    assert [r for r, _ in letters] == ["rpoison1"], letters
    assert "never answered" in letters[0][1] and "bus.poison_deliveries" in letters[0][1]
    assert 2 <= deaths <= 4, deaths  # bounded: it stopped killing the process

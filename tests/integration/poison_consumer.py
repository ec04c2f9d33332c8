"""A consumer whose process dies on a marked message (os._exit, as the OOM killer would), for
test_poison.py. Handles fy.run.*.requested on FY_RUNS; writes each other run id to OUT."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from shared.bus.connection import Bus
from shared.bus.consumer import Consumer
from shared.bus.delivery import Delivery
from shared.bus.topology import ensure_topology
from shared.config.settings import BusConfig, NatsConfig
from shared.contract.messages import decode_event


async def main(url: str, out: Path) -> None:
    bus = Bus(NatsConfig(url=url), BusConfig(ack_wait="1s", poison_deliveries=3), name="poisoned")
    await bus.connect()
    await ensure_topology(bus)

    async def handle(event: object, delivery: Delivery) -> None:
        run_id = event.run_id  # type: ignore[attr-defined]
        if run_id.startswith("rpoison"):
            os._exit(9)  # the process dies with the message in hand, every time
        with out.open("a") as f:
            f.write(run_id + "\n")

    consumer = Consumer(
        bus,
        durable="poison-test",
        stream="FY_RUNS",
        filters=["fy.run.*.requested"],
        decode=decode_event,
        handler=handle,
        concurrency=1,
    )
    await consumer.ensure()
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(float(sys.argv[3]))
    consumer.stop()
    await task
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))

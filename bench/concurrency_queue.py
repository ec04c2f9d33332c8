"""A workflow's ``concurrency`` queue at 1,000 and 10,000 queued runs: bytes written and time.

    .venv/bin/python bench/concurrency_queue.py [--runs 1000,10000]

Starts a nats-server, creates the topology and, for each N, queues N runs of one workflow whose
``concurrency`` is 1 through the scheduler's own ``Admission`` (the code the scheduler runs),
then lets them all through one by one (each leaving admits the next). Prints the bytes written
to ``fy_concurrency`` per queued run (keys and values of every create, update and put), the
bucket's stored bytes with N queued, and the milliseconds per enter and per leave. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import bare_bus  # noqa: E402
from services.scheduler.admission import Admission  # noqa: E402
from shared.bus.connection import Bus  # noqa: E402
from shared.contract import subjects  # noqa: E402

BUCKET = subjects.CONCURRENCY_BUCKET


def counting(kv) -> list[int]:
    """Wrap the bucket's writes; the list's one element is the running byte count."""
    written = [0]
    for name in ("create", "update", "put"):
        original = getattr(kv, name)

        def counted(key, value, *args, _original=original, **kwargs):
            written[0] += len(key) + len(value)
            return _original(key, value, *args, **kwargs)

        setattr(kv, name, counted)
    return written


async def one(bus: Bus, n: int) -> None:
    kv = await bus.kv(BUCKET)
    # The same script measures the layout before per-run queue keys (one argument, a bool back).
    single_value = len(inspect.signature(Admission).parameters) == 1
    admission = Admission(kv) if single_value else Admission(kv, bus.js, BUCKET)
    written = counting(kv)
    wf = f"bench-{n}"
    runs = [f"r{i:06d}" for i in range(n + 1)]
    began = time.perf_counter()
    for run in runs:
        await admission.enter(wf, run, 1)
    entered = time.perf_counter() - began
    stored = (await bus.js.stream_info(f"KV_{BUCKET}")).state.bytes
    on_enter = written[0]
    began = time.perf_counter()
    for run in runs:
        await admission.leave(wf, run, 1)
    left = time.perf_counter() - began
    print(
        f"{n:>6} queued: {on_enter / n:,.0f} bytes written per queued run ({on_enter / 1e6:,.1f} MB), "
        f"{stored / 1e6:,.2f} MB stored with all queued; enter {entered / len(runs) * 1000:.2f} ms, "
        f"leave (admits the next) {left / len(runs) * 1000:.2f} ms" + (" [single-value layout]" if single_value else "")
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="1000,10000", help="comma-separated numbers of queued runs")
    args = ap.parse_args()
    async with bare_bus("bench-queue") as bus:
        for n in (int(x) for x in args.runs.split(",")):
            await one(bus, n)


if __name__ == "__main__":
    asyncio.run(main())

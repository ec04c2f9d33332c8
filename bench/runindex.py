"""Listing runs by status: the run index (ADR 11) against reading every record.

    .venv/bin/python bench/runindex.py [--runs 10000] [--failed 100] [--repeat 5]

Starts a nats-server, creates the topology and stores --runs ended run records (one node each,
--failed of them failed, the rest succeeded) with their index entries, as the scheduler leaves
them. Then times ``list_records(status="failed")`` — what ``GET /v1/runs?status=failed`` and
``flowyard runs list --status failed`` call — with the index, and again with the index's marker
purged, when the same call reads every record (a stack from before the index, until the
scheduler has indexed it). Prints the records read and the median time of --repeat calls;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import bare_bus  # noqa: E402
from shared.api.runs import list_records, new_run_id  # noqa: E402
from shared.bus.connection import Bus  # noqa: E402
from shared.contract import subjects  # noqa: E402
from shared.contract.messages import NodeRecord, RunRecord, encode  # noqa: E402


async def store(bus: Bus, runs: int, failed: int) -> None:
    kv = await bus.kv(subjects.RUNS_BUCKET)
    for start in range(0, runs, 500):
        batch = []
        for i in range(start, min(start + 500, runs)):
            status = "failed" if i % (runs // failed) == 0 and i // (runs // failed) < failed else "succeeded"
            run_id = f"{new_run_id()}{i:05d}"
            record = RunRecord(run_id=run_id, workflow="bench", status=status, nodes={"a": NodeRecord(status=status)})
            batch.append((run_id, status, record))
        await asyncio.gather(*(kv.put(run_id, encode(record)) for run_id, _, record in batch))
        await asyncio.gather(*(bus.mark_active(subjects.ended_run(s, "bench", r)) for r, s, _ in batch))
    await bus.mark_active(subjects.ENDED_INDEXED)


async def timed(bus: Bus, repeat: int, reads: list[str]) -> tuple[float, int, int]:
    times = []
    for _ in range(repeat):
        reads.clear()
        began = time.perf_counter()
        found = await list_records(bus, 50, status="failed")
        times.append(time.perf_counter() - began)
    return statistics.median(times), len(reads), len(found)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--failed", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    async with bare_bus("bench-index") as bus:
        await store(bus, args.runs, args.failed)
        kv = await bus.kv(subjects.RUNS_BUCKET)
        reads: list[str] = []
        get = kv.get

        async def counted(key: str, *a: object, **kw: object) -> object:
            reads.append(key)
            return await get(key, *a, **kw)

        kv.get = counted  # type: ignore[method-assign]
        indexed = await timed(bus, args.repeat, reads)
        await bus.js.purge_stream(subjects.ACTIVE_STREAM, subject=subjects.ENDED_INDEXED)
        unindexed = await timed(bus, args.repeat, reads)
        for name, (seconds, read, found) in (("with the index", indexed), ("reading every record", unindexed)):
            print(
                f"{args.runs} runs, {args.failed} failed, status=failed limit 50, {name}: "
                f"{read} records read, {found} listed, median {seconds * 1000:,.1f} ms"
            )


if __name__ == "__main__":
    asyncio.run(main())

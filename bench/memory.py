"""Scheduler memory per waiting run: RSS with N runs each waiting on an approval.

    .venv/bin/python bench/memory.py [--runs 10000]

A nats-server and the planner, scheduler, executor and approver as separate processes. N runs of
a one-node workflow whose node needs approval are requested straight onto the bus; once every
one is waiting (its approval request recorded), the scheduler's resident memory is read from
/proc and compared with the figure before the runs. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import (  # noqa: E402
    quiet_env,
    start,
    stop_all,
)
from shared.bus.connection import Bus  # noqa: E402
from shared.bus.server import NatsServer  # noqa: E402
from shared.bus.topology import ensure_topology  # noqa: E402
from shared.config.settings import BusConfig, NatsConfig  # noqa: E402
from shared.contract import subjects  # noqa: E402
from shared.contract.messages import RunRequested  # noqa: E402
from shared.state import agents as agent_registry  # noqa: E402
from shared.workflow.loader import load_bundle  # noqa: E402

GATED = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: mgated}
spec:
  risk: approval_required
  command: [cat]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: waits}
spec:
  nodes: [{id: a, agent: mgated, with: {x: 1}, approval: {expires_in: 24h}}]
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fy-bench-mem-") as tmp:
        work = Path(tmp)
        server = NatsServer(work / "nats").start()
        env = quiet_env({"FLOWYARD_NATS_URL": server.url, "FLOWYARD_LOG_LEVEL": "warning"})
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name in ("planner", "scheduler", "executor", "approver"):
                procs[name] = start(name, env, work / f"{name}.log")
            bus = Bus(NatsConfig(url=server.url), BusConfig(), name="bench")
            await bus.connect()
            await ensure_topology(bus)
            bundle = load_bundle(GATED, "memory.yaml")
            await agent_registry.register(bus, bundle.agents.values())
            definition = msgspec.to_builtins(bundle.workflows[0])
            await asyncio.sleep(3)  # the services come up (their logs are at warning level)
            before = rss_kib(procs["scheduler"].pid)
            t0 = time.perf_counter()
            for start_at in range(0, args.runs, 500):
                await asyncio.gather(
                    *(
                        bus.publish(
                            subjects.run_requested(f"rmem{i:06d}"),
                            RunRequested(run_id=f"rmem{i:06d}", workflow="waits", definition=definition),
                            msg_id=f"rmem{i:06d}:requested",
                        )
                        for i in range(start_at, min(start_at + 500, args.runs))
                    )
                )
            while True:
                waiting = len(await bus.kv_keys(subjects.APPROVALS_BUCKET))
                if waiting >= args.runs:
                    break
                await asyncio.sleep(1)
            took = time.perf_counter() - t0
            await asyncio.sleep(2)
            after = rss_kib(procs["scheduler"].pid)
            records = await bus.kv(subjects.RUNS_BUCKET)
            sample = await records.get("rmem000000")
            await bus.close()
            per_run = (after - before) * 1024 / args.runs
            print(f"stack: nats-server + planner, scheduler, executor, approver, one process each; {args.runs} runs")
            print(f"all {args.runs} runs waiting on an approval after {took:.1f} s")
            print(
                f"scheduler RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with the runs waiting: "
                f"{per_run / 1024:.1f} KiB per waiting run (its stored record: {len(sample.value or b'')} bytes)"
            )
        finally:
            stop_all(procs.values(), server)


if __name__ == "__main__":
    asyncio.run(main())

"""End-to-end latency of a 5-node diamond of no-op agents, and how much of it is orchestration.

    .venv/bin/python bench/diamond.py [--runs 200] [--warmup 20] [--concurrent 0] [--separate] [--warm]

Starts `flowyard up` (a private nats-server plus the services in one process) — or, with
--separate, a nats-server and each service as its own `flowyard serve` process — unless
FLOWYARD_NATS_URL points at a running stack, then submits runs one after the other straight onto
the bus and times each from request to the run's finished event. Agent time is what the executor
measured for each attempt (process start to exit); the diamond's agent time is its critical path
a + max(b, c, d) + e. Orchestration overhead = end-to-end minus that. Also prints the idle RSS of
the stack it started. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import BenchStack, pct  # noqa: E402
from shared.bus.connection import Bus  # noqa: E402
from shared.config.settings import BusConfig, NatsConfig  # noqa: E402
from shared.contract import subjects  # noqa: E402
from shared.contract.messages import RunFinished, RunRequested, decode_event, decode_record  # noqa: E402
from shared.state import agents as registry  # noqa: E402
from shared.workflow.loader import load_bundle  # noqa: E402

DIAMOND = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: noop}
spec:
  command: [cat]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: bench-diamond}
spec:
  inputs:
    n: {type: integer, default: 1}
  nodes:
    - {id: a, agent: noop, with: {n: "{{ inputs.n }}"}}
    - {id: b, agent: noop, needs: [a], with: {n: "{{ nodes.a.output.n }}"}}
    - {id: c, agent: noop, needs: [a], with: {n: "{{ nodes.a.output.n }}"}}
    - {id: d, agent: noop, needs: [a], with: {n: "{{ nodes.a.output.n }}"}}
    - {id: e, agent: noop, needs: [b, c, d], with: {parts: ["{{ nodes.b.output.n }}", "{{ nodes.c.output.n }}", "{{ nodes.d.output.n }}"]}}
  outputs:
    parts: "{{ nodes.e.output.parts }}"
"""


def rss_kib(pid: int) -> int:
    """RSS of a process and all its descendants, from /proc."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            for task in Path(f"/proc/{p}/task").iterdir():  # children of every thread
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, AttributeError):
            continue
    return total


class Runner:
    def __init__(self, bus: Bus, definition: dict, workflow: str = "bench-diamond") -> None:
        self.bus = bus
        self.definition = definition
        self.workflow = workflow
        self.waiting: dict[str, asyncio.Future[tuple[float, RunFinished]]] = {}

    async def listen(self) -> None:
        async def on_msg(msg) -> None:
            event = decode_event(msg.data)
            fut = self.waiting.pop(event.run_id, None)
            if fut is not None and not fut.done():
                fut.set_result((time.perf_counter(), event))

        assert self.bus.nc is not None
        for status in ("succeeded", "failed"):
            await self.bus.nc.subscribe(f"fy.run.*.{status}", cb=on_msg)

    async def one(self, i: int) -> tuple[float, float]:
        run_id = f"bench{time.time_ns():x}{i}"
        fut: asyncio.Future[tuple[float, RunFinished]] = asyncio.get_running_loop().create_future()
        self.waiting[run_id] = fut
        request = RunRequested(run_id=run_id, workflow=self.workflow, definition=self.definition, inputs={"n": i})
        t0 = time.perf_counter()
        await self.bus.publish(subjects.run_requested(run_id), request, msg_id=f"{run_id}:requested")
        t1, finished = await asyncio.wait_for(fut, 60)
        if finished.status != "succeeded":
            raise SystemExit(f"run {run_id} {finished.status}: {finished.error}")
        kv = await self.bus.kv(subjects.RUNS_BUCKET)
        record = decode_record((await kv.get(run_id)).value)
        dur = {k: n.duration_s or 0.0 for k, n in record.nodes.items()}
        agent = dur["a"] + max(dur["b"], dur["c"], dur["d"]) + dur["e"]
        return t1 - t0, agent


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--concurrent", type=int, default=0, help="also time this many runs submitted at once")
    ap.add_argument("--separate", action="store_true", help="each service in its own process")
    ap.add_argument("--warm", action="store_true", help="the `cat` agent warm (spec.warm, reuse: agent)")
    args = ap.parse_args()

    external = os.environ.get("FLOWYARD_NATS_URL")
    with tempfile.TemporaryDirectory(prefix="fy-bench-") as tmp:
        if external:
            await measure(external, args)
            return
        async with BenchStack(Path(tmp), separate=args.separate) as stack:
            print(f"stack: {stack.describe()}")
            if not args.separate:
                await asyncio.sleep(2)
                print(
                    f"idle RSS of the embedded stack (flowyard up + nats-server): {rss_kib(stack.pid) / 1024:.1f} MiB"
                )
            await measure(stack.url, args)


async def connected_runner(url: str, *, warm: bool = False) -> tuple[Bus, Runner]:
    """A bus client to the stack at ``url`` with the diamond's agents registered, listening for run ends."""
    bus = Bus(NatsConfig(url=url), BusConfig(), name="bench")
    await bus.connect()
    text = (
        DIAMOND.replace("command: [cat]\n", "command: [cat]\n  warm: {min: 4, max: 8, reuse: agent}\n")
        if warm
        else DIAMOND
    )
    bundle = load_bundle(text, "bench")
    await registry.register(bus, bundle.agents.values())
    runner = Runner(bus, msgspec.to_builtins(bundle.workflow()))
    await runner.listen()
    return bus, runner


async def measure(url: str, args: argparse.Namespace) -> None:
    bus, runner = await connected_runner(url, warm=args.warm)
    try:
        for i in range(args.warmup):
            await runner.one(i)
        e2e, agent = [], []
        for i in range(args.runs):
            total, agent_time = await runner.one(i)
            e2e.append(total * 1000)
            agent.append(agent_time * 1000)
        overhead = [t - a for t, a in zip(e2e, agent, strict=True)]
        print(f"diamond (5 nodes, `cat` agents), {args.runs} sequential runs after {args.warmup} warm-up:")
        print(f"  end-to-end      median {statistics.median(e2e):6.1f} ms   p95 {pct(e2e, 0.95):6.1f} ms")
        print(f"  agent (crit.)   median {statistics.median(agent):6.1f} ms   p95 {pct(agent, 0.95):6.1f} ms")
        print(f"  orchestration   median {statistics.median(overhead):6.1f} ms   p95 {pct(overhead, 0.95):6.1f} ms")
        if args.concurrent:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(runner.one(10_000 + i) for i in range(args.concurrent)))
            makespan = time.perf_counter() - t0
            lat = [r[0] * 1000 for r in results]
            print(
                f"{args.concurrent} concurrent runs: makespan {makespan * 1000:.0f} ms, run latency median "
                f"{statistics.median(lat):.0f} ms, p95 {pct(lat, 0.95):.0f} ms"
            )
    finally:
        await bus.close()


if __name__ == "__main__":
    asyncio.run(main())

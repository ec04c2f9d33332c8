"""Approval latency: from the decision being published to the gated node's agent starting.

    .venv/bin/python bench/approval.py [--runs 200] [--separate]

Starts a stack (planner, scheduler, executor, approver), then over and over: starts a run whose
only node needs approval, waits for the request, sends the decision (the same request/reply
`flowyard approvals approve` uses), and times (a) the decision event on the bus to the node's
`task.started` event, and (b) the decision request sent to `task.started`. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from shared.contract.messages import RunRequested  # noqa: E402
from shared.state import agents as registry  # noqa: E402
from shared.workflow.loader import load_bundle  # noqa: E402

GATED = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: gated}
spec:
  risk: approval_required
  command: [cat]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: bench-gate}
spec:
  nodes:
    - {id: deploy, agent: gated, with: {n: 1}}
"""


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--separate", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fy-bench-") as tmp:
        async with BenchStack(
            Path(tmp), separate=args.separate, services=("planner", "scheduler", "executor", "approver")
        ) as stack:
            print(f"stack: {stack.describe()}")
            bus = Bus(NatsConfig(url=stack.url), BusConfig(), name="bench")
            await bus.connect()
            assert bus.nc is not None
            bundle = load_bundle(GATED, "bench")
            await registry.register(bus, bundle.agents.values())
            definition = msgspec.to_builtins(bundle.workflow())
            seen: dict[str, asyncio.Future[float]] = {}

            async def on_msg(msg) -> None:
                fut = seen.get(msg.subject)
                if fut is not None and not fut.done():
                    fut.set_result(time.perf_counter())

            await bus.nc.subscribe("fy.run.*.approval.deploy.*", cb=on_msg)
            await bus.nc.subscribe("fy.run.*.task.deploy.started", cb=on_msg)
            from_event, from_request = [], []
            approvals = await bus.kv(subjects.APPROVALS_BUCKET)
            loop = asyncio.get_running_loop()
            for i in range(args.runs + 10):
                run_id = f"gate{time.time_ns():x}"
                requested = seen[subjects.approval_requested(run_id, "deploy")] = loop.create_future()
                granted = seen[subjects.approval_decided(run_id, "deploy", "granted")] = loop.create_future()
                started = seen[subjects.task_event(run_id, "deploy", "started")] = loop.create_future()
                request = RunRequested(
                    run_id=run_id, workflow="bench-gate", definition=definition, requested_by="requester"
                )
                await bus.publish(subjects.run_requested(run_id), request, msg_id=f"{run_id}:requested")
                await asyncio.wait_for(requested, 30)
                while True:  # a person decides later than this: wait until the approver has the request
                    try:
                        await approvals.get(f"{run_id}.deploy")
                        break
                    except Exception:
                        await asyncio.sleep(0.005)
                body = {"approval_id": f"{run_id}.deploy", "decision": "approve", "user": "approver"}
                t_request = time.perf_counter()
                reply = await bus.nc.request(subjects.DECIDE, json.dumps(body).encode(), timeout=10)
                assert json.loads(reply.data)["ok"], reply.data
                t_event = await asyncio.wait_for(granted, 30)
                t_start = await asyncio.wait_for(started, 30)
                if i >= 10:  # warm-up
                    from_event.append((t_start - t_event) * 1000)
                    from_request.append((t_start - t_request) * 1000)
                for key in [k for k in seen if run_id in k]:
                    del seen[key]
            print(f"approval latency over {args.runs} approvals (after 10 warm-up):")
            print(
                f"  decision event -> agent started    median {statistics.median(from_event):5.1f} ms   "
                f"p95 {pct(from_event, 0.95):5.1f} ms"
            )
            print(
                f"  decision request -> agent started  median {statistics.median(from_request):5.1f} ms   "
                f"p95 {pct(from_request, 0.95):5.1f} ms"
            )
            await bus.close()


if __name__ == "__main__":
    asyncio.run(main())

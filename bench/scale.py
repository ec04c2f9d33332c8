"""Bytes the scheduler writes per foreach item, at 100, 1,000 and 10,000 items (ADR 11).

    .venv/bin/python bench/scale.py [--items 100,1000,10000] [--pad 560] [--executor-concurrency 16]

Starts a nats-server and one process per service (planner, scheduler, executor), then runs
`make -> each (foreach over N items; the agent, `cat`, echoes about 600 bytes) -> total (gets
the list of N outputs)` once per N and reads the scheduler's
``flowyard_scheduler_state_bytes_total{kind}`` before and after: run records, ended items and
large values written. Linear growth means the bytes per item stay flat as N grows. Prints
figures; asserts nothing (exit 1 only when a run does not succeed).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import quiet_env, start, stop_all, wait_for  # noqa: E402
from shared.api import runs  # noqa: E402
from shared.bus.connection import Bus  # noqa: E402
from shared.bus.server import NatsServer  # noqa: E402
from shared.config.settings import BusConfig, NatsConfig  # noqa: E402
from shared.contract import subjects  # noqa: E402
from shared.contract.messages import RunRequested  # noqa: E402
from shared.state import agents as registry  # noqa: E402
from shared.workflow.loader import load_file  # noqa: E402

WORKFLOW = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: scale-range}
spec:
  command: [python3, -c, "import json, sys; n = json.load(sys.stdin)['n']; print(json.dumps({'items': list(range(n))}))"]
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: scale-echo}
spec:
  command: [cat]
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: scale-count}
spec:
  command: [python3, -c, "import json, sys; print(json.dumps({'n': len(json.load(sys.stdin)['all'])}))"]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: scale}
spec:
  inputs:
    n: {type: integer}
    pad: {type: string}
  nodes:
    - {id: make, agent: scale-range, with: {n: "{{ inputs.n }}"}}
    - {id: each, agent: scale-echo, needs: [make], foreach: "{{ nodes.make.output.items }}", with: {i: "{{ item }}", pad: "{{ inputs.pad }}"}}
    - {id: total, agent: scale-count, needs: [each], with: {all: "{{ nodes.each.output }}"}}
  outputs:
    n: "{{ nodes.total.output.n }}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def state_bytes(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.findall(r'^flowyard_scheduler_state_bytes_total\{kind="(\w+)"\} (\S+)$', text, re.M)
    return {kind: float(value) for kind, value in found}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", default="100,1000,10000")
    ap.add_argument("--pad", type=int, default=560, help="bytes of padding in each item's output")
    ap.add_argument("--executor-concurrency", type=int, default=16)
    args = ap.parse_args()
    sizes = [int(x) for x in args.items.split(",")]
    with tempfile.TemporaryDirectory(prefix="fy-scale-") as tmp:
        data = Path(tmp)
        server = NatsServer(data / "nats").start()
        port = free_port()
        base = quiet_env(
            {
                "FLOWYARD_NATS_URL": server.url,
                "FLOWYARD_EXECUTOR_STATE_DIR": str(data / "spool"),
                "FLOWYARD_EXECUTOR_CONCURRENCY": str(args.executor_concurrency),
                "FLOWYARD_LOG_LEVEL": "info",
            }
        )
        procs = []
        try:
            for name in ("planner", "scheduler", "executor"):
                env = base | ({"FLOWYARD_HTTP_PORT": str(port)} if name == "scheduler" else {})
                log = data / f"{name}.log"
                procs.append(start(name, env, log))
                wait_for(log, "service started", procs[-1])
            bus = Bus(NatsConfig(url=server.url), BusConfig(), name="bench")
            await bus.connect()
            (data / "scale.yaml").write_text(WORKFLOW)
            bundle = load_file(data / "scale.yaml")
            await registry.register(bus, bundle.agents.values())
            definition = msgspec.to_builtins(bundle.workflow())
            print(f"stack: nats-server + planner, scheduler, executor (concurrency {args.executor_concurrency})")
            print(
                f"{'items':>6} {'seconds':>8} {'record B/item':>14} {'item B/item':>12} {'value B/item':>13} {'total B/item':>13}"
            )
            for n in sizes:
                before = state_bytes(port)
                run_id = f"scale{time.time_ns():x}"
                request = RunRequested(
                    run_id=run_id, workflow="scale", definition=definition, inputs={"n": n, "pad": "x" * args.pad}
                )
                t0 = time.monotonic()
                await bus.publish(subjects.run_requested(run_id), request, msg_id=f"{run_id}:requested")
                while True:
                    record = await runs.get_record(bus, run_id, whole=False)
                    if record is not None and record.status != "running":
                        break
                    await asyncio.sleep(0.2)
                took = time.monotonic() - t0
                if record.status != "succeeded" or record.outputs.get("n") != n:
                    print(f"run {run_id} {record.status}: {record.error}")
                    raise SystemExit(1)
                after = state_bytes(port)
                per = {k: (after.get(k, 0) - before.get(k, 0)) / n for k in ("record", "item", "value")}
                print(
                    f"{n:>6} {took:>8.1f} {per['record']:>14.0f} {per['item']:>12.0f} {per['value']:>13.0f} "
                    f"{sum(per.values()):>13.0f}"
                )
            await bus.close()
        finally:
            stop_all(procs, server)


if __name__ == "__main__":
    asyncio.run(main())

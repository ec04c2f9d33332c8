"""Fan-out/fan-in of N no-op items through the whole pipeline: tasks per second.

    .venv/bin/python bench/fanout.py [--items 1000] [--repeat 3] [--executor-concurrency 16] [--separate]

Starts a stack (`flowyard up`, or with --separate a nats-server and one `flowyard serve` process
per service), then runs `make -> each (foreach over N items, agent `cat`) -> join` and reports,
per run, the wall time from request to the run's end and the fan-out rate: N divided by the time
from the foreach node's start to its end (as the scheduler recorded them). Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import BenchStack  # noqa: E402
from shared.api import runs  # noqa: E402
from shared.bus.connection import Bus  # noqa: E402
from shared.config.settings import BusConfig, NatsConfig  # noqa: E402
from shared.contract import subjects  # noqa: E402
from shared.contract.messages import RunRequested, decode_record  # noqa: E402
from shared.state import agents as registry  # noqa: E402
from shared.workflow.loader import load_file  # noqa: E402

WORKFLOW = ROOT / "tests/integration/workflows/fan-out.yaml"


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--executor-concurrency", type=int, default=16)
    ap.add_argument("--separate", action="store_true")
    ap.add_argument("--spool", default=None, help="executor.state_dir (default: the stack's data directory)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fy-bench-") as tmp:
        env = {"FLOWYARD_EXECUTOR_CONCURRENCY": str(args.executor_concurrency)}
        if args.spool:
            env["FLOWYARD_EXECUTOR_STATE_DIR"] = args.spool
        async with BenchStack(Path(tmp), separate=args.separate, env=env) as stack:
            print(f"stack: {stack.describe()}, executor concurrency {args.executor_concurrency}")
            bus = Bus(NatsConfig(url=stack.url), BusConfig(), name="bench")
            await bus.connect()
            bundle = load_file(WORKFLOW)
            await registry.register(bus, bundle.agents.values())
            definition = msgspec.to_builtins(bundle.workflow())
            kv = await bus.kv(subjects.RUNS_BUCKET)
            rates, walls = [], []
            for i in range(args.repeat):
                run_id = f"fan{time.time_ns():x}{i}"
                t0 = time.time()
                request = RunRequested(
                    run_id=run_id, workflow="fan-out", definition=definition, inputs={"n": args.items}
                )
                await bus.publish(subjects.run_requested(run_id), request, msg_id=f"{run_id}:requested")
                while True:
                    try:
                        record = decode_record((await kv.get(run_id)).value)
                        if record.status != "running":
                            break
                    except Exception:
                        pass
                    await asyncio.sleep(0.05)
                # The items are kept outside the record (ADR 11): read it whole.
                record = await runs.get_record(bus, run_id) or record
                wall = time.time() - t0
                if record.status != "succeeded":
                    raise SystemExit(f"run {run_id} {record.status}: {record.error}")
                each = record.nodes["each"]
                span = ts(each.finished_at or "") - ts(each.started_at or "")
                rates.append(args.items / span)
                items = each.items or []
                waits = sorted(ts(it.finished_at or "") - ts(it.started_at or "") for it in items)
                agent = sorted(it.duration_s or 0.0 for it in items)
                print(
                    f"  item latency (dispatch to result recorded) median {waits[len(waits) // 2] * 1000:.0f} ms, "
                    f"agent time median {agent[len(agent) // 2] * 1000:.1f} ms"
                )
                walls.append(wall)
                print(
                    f"  run {i + 1}: {args.items} items, fan-out {span:.2f} s = {args.items / span:.0f} tasks/s, "
                    f"whole run {wall:.2f} s"
                )
            print(
                f"median fan-out rate {statistics.median(rates):.0f} tasks/s; median whole run "
                f"{statistics.median(walls):.2f} s"
            )
            await bus.close()


if __name__ == "__main__":
    asyncio.run(main())

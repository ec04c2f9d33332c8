"""flowyard and Celery side by side, interleaved in one invocation, with the targets of issue 23.

    .venv/bin/pip install -e '.[bench]'; apt-get install redis-server
    .venv/bin/python bench/compare.py [--rounds 3] [--runs 60] [--items 1000] [--no-targets]

Starts an embedded flowyard stack (`flowyard up`, process runtime, executor concurrency 16) and
the Celery peer (bench/peers/celery.py: redis-server and a prefork worker). Each round measures,
on flowyard then on Celery: a five-node diamond's end-to-end latency (``--runs`` sequential
runs; flowyard with warm `cat` agents and with cold ones), the fan-out/fan-in of 100 and of
``--items`` no-op items (tasks per second over the fan-out), and 10 and 100 diamonds submitted at
once (the makespan). Figures are the median over rounds; each is printed for both, with the
ratio. Exits 1 when a target is missed (unless --no-targets); the default run takes about four
minutes on the 2-core machine.
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
# This folder's queue.py would shadow the standard library's (Celery imports it): the project's
# root instead, so the bench modules are imported as bench.*.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.diamond import DIAMOND, Runner  # noqa: E402
from bench.peers.celery import Peer  # noqa: E402
from bench.stack import BenchStack  # noqa: E402
from shared.api import runs  # noqa: E402
from shared.bus.connection import Bus  # noqa: E402
from shared.config.settings import BusConfig, NatsConfig  # noqa: E402
from shared.contract import subjects  # noqa: E402
from shared.contract.messages import RunRequested  # noqa: E402
from shared.state import agents as registry  # noqa: E402
from shared.workflow.loader import load_bundle  # noqa: E402

WARM = "  warm: {min: 8, max: 16, reuse: agent}\n"
WARM_DIAMOND = DIAMOND.replace(
    "name: noop}\nspec:\n  command: [cat]\n", "name: noop-warm}\nspec:\n  command: [cat]\n" + WARM
)
WARM_DIAMOND = WARM_DIAMOND.replace("agent: noop,", "agent: noop-warm,").replace("bench-diamond", "bench-diamond-warm")
FAN_OUT = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: fan-noop}
spec:
  command: [cat]
WARM---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: fan-range}
spec:
  command: [python3, -c, "import json, sys; n = json.load(sys.stdin)['n']; print(json.dumps({'items': list(range(n))}))"]
---
apiVersion: flowyard/v1
kind: Workflow
metadata: {name: bench-fan-out}
spec:
  inputs:
    n: {type: integer, default: 100}
  nodes:
    - {id: make, agent: fan-range, with: {n: "{{ inputs.n }}"}}
    - {id: each, agent: fan-noop, needs: [make], foreach: "{{ nodes.make.output.items }}", with: {i: "{{ item }}"}}
    - {id: join, agent: fan-noop, needs: [each], with: {count: "{{ nodes.each.output }}"}}
""".replace("WARM", WARM)
# Today's figures with cold process agents (docs/performance.md, before warm agents): none may get worse.
COLD_BASELINE = {"diamond_ms": 56.0, "fan_out_tps": 101.0, "concurrent10_s": 0.43}


def ts(text: str | None) -> float:
    return datetime.fromisoformat((text or "").replace("Z", "+00:00")).timestamp()


class Flowyard:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.runners: dict[str, Runner] = {}

    async def setup(self) -> None:
        for text in (DIAMOND, WARM_DIAMOND, FAN_OUT):
            bundle = load_bundle(text, "compare")
            await registry.register(self.bus, bundle.agents.values())
            workflow = bundle.workflow()
            self.runners[workflow.metadata.name] = Runner(
                self.bus, msgspec.to_builtins(workflow), workflow.metadata.name
            )
        # One listener serves them all: they share its table of waiting runs.
        first = next(iter(self.runners.values()))
        await first.listen()
        for runner in self.runners.values():
            runner.waiting = first.waiting

    async def diamonds(self, warm: bool, count: int) -> tuple[float, float]:
        """Median end-to-end and orchestration overhead (ms) of sequential diamonds."""
        runner = self.runners["bench-diamond-warm" if warm else "bench-diamond"]
        e2e, over = [], []
        for i in range(count):
            total, agent = await runner.one(i)
            e2e.append(total * 1000)
            over.append((total - agent) * 1000)
        return statistics.median(e2e), statistics.median(over)

    async def concurrent(self, count: int) -> float:
        runner = self.runners["bench-diamond-warm"]
        t0 = time.perf_counter()
        await asyncio.gather(*(runner.one(100_000 + i) for i in range(count)))
        return time.perf_counter() - t0

    async def fan_out(self, items: int) -> float:
        runner = self.runners["bench-fan-out"]
        run_id = f"cmp{time.time_ns():x}"
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        runner.waiting[run_id] = fut
        request = RunRequested(
            run_id=run_id, workflow="bench-fan-out", definition=runner.definition, inputs={"n": items}
        )
        await self.bus.publish(subjects.run_requested(run_id), request, msg_id=f"{run_id}:requested")
        _, finished = await asyncio.wait_for(fut, 600)
        if finished.status != "succeeded":
            raise SystemExit(f"fan-out run {run_id} {finished.status}: {finished.error}")
        record = await runs.get_record(self.bus, run_id)
        assert record is not None
        each = record.nodes["each"]
        return items / (ts(each.finished_at) - ts(each.started_at))


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:5.2f}x" if theirs else "  n/a"


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--celery-concurrency", type=int, default=2)
    ap.add_argument("--no-targets", action="store_true", help="print the figures, never exit 1")
    args = ap.parse_args()
    figures: dict[str, list[float]] = {}

    def keep(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(prefix="fy-compare-") as tmp, Peer(args.celery_concurrency).running() as peer:
        env = {"FLOWYARD_EXECUTOR_CONCURRENCY": "16"}
        async with BenchStack(Path(tmp), separate=False, env=env) as stack:
            bus = Bus(NatsConfig(url=stack.url), BusConfig(), name="compare")
            await bus.connect()
            fy = Flowyard(bus)
            await fy.setup()
            await fy.diamonds(True, 20)  # warm-up: the workers start, the caches fill
            await fy.diamonds(False, 10)
            await fy.fan_out(100)
            for _ in range(10):
                await asyncio.to_thread(peer.one_diamond)
            for r in range(args.rounds):
                print(f"round {r + 1} of {args.rounds} ...", flush=True)
                e2e, over = await fy.diamonds(True, args.runs)
                keep("fy_diamond_warm", e2e)
                keep("fy_overhead_warm", over)
                lat = [await asyncio.to_thread(peer.one_diamond, i) for i in range(args.runs)]
                keep("cel_diamond", statistics.median(lat) * 1000)
                e2e, over = await fy.diamonds(False, max(args.runs // 3, 10))
                keep("fy_diamond_cold", e2e)
                keep("fy_overhead_cold", over)
                for items in (100, args.items):
                    keep(f"fy_fan_{items}", await fy.fan_out(items))
                    keep(f"cel_fan_{items}", await asyncio.to_thread(peer.fan_out, items))
                for count in (10, 100):
                    keep(f"fy_conc_{count}", await fy.concurrent(count))
                    keep(f"cel_conc_{count}", await asyncio.to_thread(peer.concurrent, count))
            await bus.close()

    m = {k: statistics.median(v) for k, v in figures.items()}
    print(
        f"\nmedians over {args.rounds} rounds (flowyard: process runtime, `cat` agents; Celery: prefork "
        f"-c {args.celery_concurrency}, Redis)"
    )
    print(f"{'figure':44} {'flowyard':>10} {'celery':>10} {'ratio':>7}")
    rows = [
        ("diamond end to end, warm (ms)", m["fy_diamond_warm"], m["cel_diamond"]),
        ("diamond end to end, cold (ms)", m["fy_diamond_cold"], m["cel_diamond"]),
        ("diamond orchestration overhead, warm (ms)", m["fy_overhead_warm"], None),
        ("diamond orchestration overhead, cold (ms)", m["fy_overhead_cold"], None),
        ("fan-out of 100, warm (tasks/s)", m["fy_fan_100"], m["cel_fan_100"]),
        (f"fan-out of {args.items}, warm (tasks/s)", m[f"fy_fan_{args.items}"], m[f"cel_fan_{args.items}"]),
        ("10 concurrent diamonds, warm (makespan s)", m["fy_conc_10"], m["cel_conc_10"]),
        ("100 concurrent diamonds, warm (makespan s)", m["fy_conc_100"], m["cel_conc_100"]),
    ]
    for name, ours, theirs in rows:
        theirs_text = f"{theirs:10.3f}" if theirs is not None else f"{'':>10}"
        print(f"{name:44} {ours:10.3f} {theirs_text} {ratio(ours, theirs) if theirs else '':>7}")
    targets = [
        (
            "diamond warm <= 0.8 x Celery",
            m["fy_diamond_warm"] <= 0.8 * m["cel_diamond"],
            f"{m['fy_diamond_warm'] / m['cel_diamond']:.2f} x",
        ),
        ("diamond orchestration overhead <= 10 ms", m["fy_overhead_warm"] <= 10, f"{m['fy_overhead_warm']:.1f} ms"),
        (
            f"fan-out of {args.items} warm >= 1,000 tasks/s",
            m[f"fy_fan_{args.items}"] >= 1000,
            f"{m[f'fy_fan_{args.items}']:.0f} tasks/s",
        ),
        (
            f"fan-out of {args.items} warm >= 3 x Celery",
            m[f"fy_fan_{args.items}"] >= 3 * m[f"cel_fan_{args.items}"],
            f"{m[f'fy_fan_{args.items}'] / m[f'cel_fan_{args.items}']:.2f} x",
        ),
        (
            "10 concurrent diamonds <= Celery's makespan",
            m["fy_conc_10"] <= m["cel_conc_10"],
            f"{m['fy_conc_10'] / m['cel_conc_10']:.2f} x",
        ),
        ("100 concurrent diamonds <= 1 s", m["fy_conc_100"] <= 1.0, f"{m['fy_conc_100']:.2f} s"),
        (
            "cold diamond no worse than before (56 ms)",
            m["fy_diamond_cold"] <= COLD_BASELINE["diamond_ms"] * 1.1,
            f"{m['fy_diamond_cold']:.1f} ms",
        ),
    ]
    print()
    missed = 0
    for name, ok, value in targets:
        missed += not ok
        print(f"  {'met   ' if ok else 'MISSED'} {name}: {value}")
    return 1 if missed and not args.no_targets else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

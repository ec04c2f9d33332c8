"""What an `llm` step costs beyond the provider's own latency, and what a fallback adds.

    .venv/bin/python bench/llm.py [--runs 100] [--warmup 10] [--latency-ms 50]

Starts a fake Anthropic provider on loopback (tests/fakellm.py) that answers after
``--latency-ms``, and `flowyard up` with the process runtime and two providers: ``good`` (that
fake) and ``limited`` (a fake that answers 429 at once, no retries). Then, one after another:

* **step**: a one-node workflow of the `llm` agent. Its overhead is the node's end-to-end time
  (request to the run's end) minus the provider's latency, and the agent's own share of it is the
  attempt's duration (process start to exit) minus that latency.
* **fallback**: a `capability:` node whose first candidate is rate-limited. The added cost of
  routing is that node's time minus the direct step's, less the failed candidate's own attempt
  (measured on its own: the same agent against the 429 provider).

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import diamond  # noqa: E402
from bench.stack import BenchStack, pct  # noqa: E402
from shared.bus.connection import Bus  # noqa: E402
from shared.config.settings import BusConfig, NatsConfig  # noqa: E402
from shared.contract import subjects  # noqa: E402
from shared.contract.messages import RunFinished, RunRequested, decode_record  # noqa: E402
from shared.state import agents as registry  # noqa: E402
from shared.workflow.loader import load_bundle  # noqa: E402
from tests.fakellm import FakeProvider, answer, error  # noqa: E402

AGENTS = """
apiVersion: flowyard/v1
kind: Agent
metadata: {name: llm-good}
spec: {command: [flowyard-agent-llm], capabilities: [bench_triage], llm: {provider: good}, warm: {max: 4, reuse: agent}}
---
apiVersion: flowyard/v1
kind: Agent
metadata: {name: llm-limited}
spec: {command: [flowyard-agent-llm], capabilities: [bench_triage], llm: {provider: limited}, warm: {max: 4, reuse: agent}}
"""


def workflow(name: str, node: str) -> dict:
    text = f"apiVersion: flowyard/v1\nkind: Workflow\nmetadata: {{name: {name}}}\nspec:\n  nodes:\n    - {node}\n"
    return msgspec.to_builtins(load_bundle(AGENTS + "---\n" + text, "bench").workflow(name))


class Runner(diamond.Runner):
    """The diamond bench's run-end listener, timing one-node workflows of any name."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus, {})

    async def one(self, name: str, definition: dict, want: str = "succeeded") -> tuple[float, float]:
        """(end-to-end ms, the node's attempt duration ms)."""
        run_id = f"bllm{time.time_ns():x}"
        fut: asyncio.Future[tuple[float, RunFinished]] = asyncio.get_running_loop().create_future()
        self.waiting[run_id] = fut
        request = RunRequested(run_id=run_id, workflow=name, definition=definition)
        t0 = time.perf_counter()
        await self.bus.publish(subjects.run_requested(run_id), request, msg_id=f"{run_id}:requested")
        t1, finished = await asyncio.wait_for(fut, 60)
        if finished.status != want:
            raise SystemExit(f"run {run_id} {finished.status}: {finished.error}")
        record = decode_record((await (await self.bus.kv(subjects.RUNS_BUCKET)).get(run_id)).value)
        node = next(iter(record.nodes.values()))
        return (t1 - t0) * 1000, (node.duration_s or 0.0) * 1000


def summary(label: str, values: list[float]) -> str:
    return f"  {label:<34} median {statistics.median(values):7.1f} ms   p95 {pct(values, 0.95):7.1f} ms"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    args = ap.parse_args()
    latency = args.latency_ms
    good = await FakeProvider().then(answer("ok", delay=latency / 1000)).start()
    limited = await FakeProvider().then(error(429)).start()
    with tempfile.TemporaryDirectory(prefix="fy-bench-llm-") as tmp:
        config = Path(tmp) / "flowyard.yaml"
        config.write_text(
            "llm:\n  default_provider: good\n  providers:\n"
            f"    good: {{kind: anthropic, base_url: '{good.url}', default_model: m}}\n"
            f"    limited: {{kind: anthropic, base_url: '{limited.url}', default_model: m, max_retries: 0}}\n"
            "agents:\n  priorities: {bench_triage: [llm-limited, llm-good]}\n  rate_limit_cooldown: 1ms\n"
        )
        async with BenchStack(Path(tmp), separate=False, env={"FLOWYARD_CONFIG": str(config)}) as stack:
            print(f"stack: {stack.describe()}, process runtime; fake provider latency {latency:.0f} ms")
            bus = Bus(NatsConfig(url=stack.url), BusConfig(), name="bench")
            await bus.connect()
            try:
                await registry.register(bus, load_bundle(AGENTS, "bench").agents.values())
                runner = Runner(bus)
                await runner.listen()
                direct = workflow("bench-llm", "{id: ask, agent: llm-good, with: {prompt: hi}}")
                failing = workflow("bench-llm-429", "{id: ask, agent: llm-limited, with: {prompt: hi}}")
                routed = workflow("bench-llm-route", "{id: ask, capability: bench_triage, with: {prompt: hi}}")
                for _ in range(args.warmup):
                    await runner.one("bench-llm", direct)
                    await runner.one("bench-llm-route", routed)
                rows: dict[str, list[tuple[float, float]]] = {"direct": [], "failing": [], "routed": []}
                for _ in range(args.runs):  # interleaved: a drift of the machine hits all three alike
                    rows["direct"].append(await runner.one("bench-llm", direct))
                    rows["failing"].append(await runner.one("bench-llm-429", failing, want="failed"))
                    rows["routed"].append(await runner.one("bench-llm-route", routed))
            finally:
                await bus.close()
    await good.stop()
    await limited.stop()
    e2e = [t for t, _ in rows["direct"]]
    agent = [a for _, a in rows["direct"]]
    print(f"llm step, {args.runs} sequential runs after {args.warmup} warm-up:")
    print(summary("end-to-end", e2e))
    print(summary("step overhead (e2e - provider)", [t - latency for t in e2e]))
    print(summary("agent process (attempt - provider)", [a - latency for a in agent]))
    failed_call = statistics.median(a for _, a in rows["failing"])
    added = [r - d for (r, _), (d, _) in zip(rows["routed"], rows["direct"], strict=True)]
    print("fallback (first candidate 429, the second answers):")
    print(summary("routed node end-to-end", [t for t, _ in rows["routed"]]))
    print(summary("added over the direct step", added))
    print(f"  the failed candidate's own attempt   median {failed_call:7.1f} ms")
    print(f"  routing's cost beyond that call      median {statistics.median(added) - failed_call:7.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
